"""`--strategy multi_worker`: two TensorFlow workers on 127.0.0.1.

Two processes join one `MultiWorkerMirroredStrategy` cluster through
`TF_CONFIG` (free loopback ports). One pair of processes
(`python -m tests.test_multi_worker`, one per worker) trains a recipe of
each family for two epochs of two steps (`kgen.training.train`, the code
path of `kgen train`), each worker with its own `--run-dir` and export
path, then trains one step of each family's tiny model on a fixed global
batch, under the strategy and on one device. Another pair, started as
`python -m kgen train`, has its second worker killed in its second epoch
(fault `epoch:2`, run as `python -m tests.faults epoch:2 -m kgen train`);
both are restarted, as TensorFlow's fault tolerance
requires, and the run finishes from the chief's backup.

TensorFlow only: multi-worker training is `tf.distribute`'s.
"""

import contextlib
import csv
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from kgen import distribute
from kgen.config import ConfigError
from tests import faults
from tests.conftest import REPO
from tests.conftest import backend

TF_ONLY = "multi-worker training is tf.distribute's (TensorFlow backend)"

# Two epochs of two steps at tiny sizes, per family.
RECIPES = {
    "vae_digits": {"filters": "8,16", "hidden_dim": "16", "batch_size": "16",
                   "validation_fraction": "0.02"},
    "dcgan_digits": {"latent_dim": "8", "filters": "16,8", "d_filters": "8,16",
                     "batch_size": "16"},
    "ddpm_digits": {"filters": "8,16", "sample_steps": "2", "batch_size": "16",
                    "validation_fraction": "0.02"},
    "char_lm_pydoc": {"context": "16", "num_layers": "1", "num_heads": "1",
                      "hidden_dim": "16", "batch_size": "8", "validation_batches": "2",
                      "sample_max_new_tokens": "8", "warmup_steps": "2"},
}
QUICK = {"epochs": "2", "steps_per_epoch": "2"}
# The recipe whose chief also exports (an export per family costs minutes).
EXPORTED = "vae_digits"
# The one-step equivalence: the families of `tests/export/helpers.tiny`
# (the audio diffusion model's only multi-worker run here: its recipe
# needs the FSDD recordings).
FAMILIES = ("vae", "gan", "diffusion", "audio", "lm")
GLOBAL_BATCH = 8


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    with contextlib.ExitStack() as stack:
        for s in sockets:
            stack.enter_context(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def worker_env(ports, index, tmp, **extra):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
           "TF_CONFIG": tf_config(ports, index), "TMPDIR": str(tmp)}
    return {**env, **extra}


def start_pair(args, tmp_path, name, fault=None):
    """Two worker processes running `args`; worker 1 runs under `fault`
    (`POINT:N`, see `tests/faults.py`)."""
    ports = free_ports(2)
    procs = []
    for index in (0, 1):
        scratch = tmp_path / f"{name}-tmp{index}"
        scratch.mkdir(exist_ok=True)
        argv = ([sys.executable, *args(index)] if not fault or index != 1
                else faults.command(fault, *args(index)))
        log = open(tmp_path / f"{name}-{index}.log", "w")
        procs.append(subprocess.Popen(
            argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env=faults.environment(worker_env(ports, index, scratch))))
    return procs


def wait(procs, tmp_path, name, timeout=300):
    deadline = time.time() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            codes.append(None)
    logs = [(tmp_path / f"{name}-{i}.log").read_text() for i in (0, 1)]
    return codes, logs


def history_epochs(path):
    with open(path) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


# === The worker process (python -m tests.test_multi_worker OUT) ===

def _weights(model):
    import keras

    return {v.path: keras.ops.convert_to_numpy(v.value) for v in model.variables}


def _one_step(family, scope):
    """One `fit()` step of `family`'s tiny model (SGD) on a fixed global
    batch under `scope`: its logs and every variable afterwards."""
    import keras

    from tests.export.helpers import tiny

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, GLOBAL_BATCH).astype("int32")
    images = rng.uniform(0.0, 1.0, (GLOBAL_BATCH, 8, 8, 1)).astype("float32")
    y = None
    if family == "vae":
        x = {"images": images}
    elif family in ("gan", "diffusion"):
        x = {"images": images, "labels": labels}
    elif family == "audio":
        t = np.arange(8000, dtype="float32") / 8000.0
        audio = 0.5 * np.sin(2 * np.pi * (200.0 + 50.0 * labels[:, None]) * t)
        x = {"audio": audio.astype("float32"), "labels": labels}
    else:
        tokens = rng.integers(0, 10, (GLOBAL_BATCH, 17)).astype("int32")
        x, y = tokens[:, :-1], tokens[:, 1:]
    steps = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append({k: float(v) for k, v in (logs or {}).items()})

    keras.utils.set_random_seed(0)
    with scope():
        model = tiny(family)
        if family == "gan":
            model.compile(g_optimizer=keras.optimizers.SGD(0.05),
                          d_optimizer=keras.optimizers.SGD(0.05))
        elif family == "lm":
            model.compile(optimizer=keras.optimizers.SGD(0.5),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        else:
            model.compile(optimizer=keras.optimizers.SGD(0.1))
        model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0,
                  callbacks=[Record()])
    return {"logs": steps, "weights": [[k, v.tolist()] for k, v in _weights(model).items()]}


def main(out):
    """One worker: the four recipes, then the one-step comparison."""
    import keras

    from kgen import training

    out = pathlib.Path(out)
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]

    class FinalWeights(keras.callbacks.Callback):
        def __init__(self, path):
            super().__init__()
            self.path = path

        def on_train_end(self, logs=None):
            np.savez(self.path, **{k.replace("/", "|"): v
                                   for k, v in _weights(self.model).items()})

    for recipe, sets in RECIPES.items():
        start = time.perf_counter()
        training.train(
            recipe, sets={**QUICK, **sets}, strategy="multi_worker", verbose=0,
            run_dir=out / f"runs{index}" / recipe,
            export_to=out / f"saved{index}" / recipe if recipe == EXPORTED else None,
            callbacks=[FinalWeights(out / f"weights{index}-{recipe}.npz")])
        print(f"{recipe}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    start = time.perf_counter()
    dist = distribute.distribution("multi_worker")
    steps = {}
    for family in FAMILIES:
        steps[family] = {"two": _one_step(family, dist.scope)}
        if dist.is_chief:  # one device: the chief alone
            steps[family]["one"] = _one_step(family, contextlib.nullcontext)
    print(f"one steps: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    (out / f"steps{index}.json").write_text(json.dumps(steps))


# === Tests ===

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both workers' outputs of the recipes and of the one-step runs."""
    if backend() != "tensorflow":
        pytest.skip(TF_ONLY)
    tmp = tmp_path_factory.mktemp("multi_worker")
    procs = start_pair(lambda i: ["-m", "tests.test_multi_worker", str(tmp)], tmp, "pair")
    codes, logs = wait(procs, tmp, "pair", timeout=420)
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    return tmp


@pytest.mark.tf_only
@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_two_workers_train_each_family_and_only_the_chief_writes(trained, recipe):
    chief_run, worker_run = trained / "runs0" / recipe, trained / "runs1" / recipe
    assert history_epochs(chief_run / "history.csv") == [0, 1]
    assert json.loads((chief_run / "state.json").read_text())["status"] == "trained"
    names = {p.name for p in chief_run.iterdir()}
    assert {"config.json", "state.json", "history.csv", "logs", "samples"} <= names
    assert names & {"best.keras", "last.keras"}
    assert list((chief_run / "logs").rglob("events.out.tfevents.*"))
    if recipe == EXPORTED:
        assert [p.name for p in (trained / "saved0" / recipe).iterdir()] == ["1"]
    # The other worker wrote nothing: no run directory, no export, and its
    # scratch directory (in its TMPDIR) is gone.
    assert not worker_run.exists() and not (trained / "saved1").exists()
    assert not list((trained / "pair-tmp1").glob("kgen-worker-*"))
    # Every variable, in order (the chief's exports number its seed
    # generators differently).
    chief = np.load(trained / f"weights0-{recipe}.npz")
    worker = np.load(trained / f"weights1-{recipe}.npz")
    assert len(chief.files) == len(worker.files) > 0
    for name, other in zip(chief.files, worker.files):
        np.testing.assert_array_equal(chief[name], worker[other], err_msg=name)


@pytest.mark.tf_only
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_one_step_on_two_workers_equals_one_device(trained, family):
    """The same global batch, one SGD step: the losses and every weight
    match one device's (a loss left unscaled by the replica count, or a
    missing all-reduce, would not)."""
    chief = json.loads((trained / "steps0.json").read_text())[family]
    worker = json.loads((trained / "steps1.json").read_text())[family]
    one, two = chief["one"], chief["two"]
    assert len(one["logs"]) == len(two["logs"]) == 1
    for key, value in one["logs"][0].items():
        assert np.isclose(two["logs"][0][key], value, rtol=1e-4, atol=1e-5), (
            f"{family} {key}: one device {value}, two workers {two['logs'][0][key]}")
    # Every variable in order (each build numbers its seed generators anew).
    assert len(one["weights"]) == len(two["weights"]) == len(worker["two"]["weights"])
    for (name, value), (_, other), (_, theirs) in zip(
            one["weights"], two["weights"], worker["two"]["weights"]):
        a, b = np.asarray(value), np.asarray(other)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=f"{family} {name}")
        np.testing.assert_array_equal(np.asarray(theirs), b,
                                      err_msg=f"{family} {name}: the workers differ")


@pytest.mark.tf_only
@pytest.mark.slow
def test_killed_worker_resumes_with_no_epoch_lost_or_repeated(tmp_path):
    """Worker 1 dies in epoch 2 (after its first batch); both workers are
    restarted, resume after epoch 1 from the chief's backup and finish."""
    if backend() != "tensorflow":
        pytest.skip(TF_ONLY)
    run_dir = tmp_path / "run"
    sets = [arg for key, value in {"epochs": "3", "steps_per_epoch": "2",
                                   **RECIPES["vae_digits"]}.items()
            for arg in ("--set", f"{key}={value}")]
    args = lambda i: ["-m", "kgen", "train", "vae_digits", "--strategy", "multi_worker",  # noqa: E731
                      "--run-dir", str(run_dir), "--no-export", *sets]
    procs = start_pair(args, tmp_path, "first", fault="epoch:2")
    try:
        assert procs[1].wait(timeout=240) == -signal.SIGKILL
    finally:
        for proc in procs:  # the chief waits on its dead peer: restart both
            proc.kill()
            proc.wait()
    assert history_epochs(run_dir / "history.csv") == [0]
    procs = start_pair(args, tmp_path, "again")
    codes, logs = wait(procs, tmp_path, "again", timeout=240)
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert f"resuming {run_dir} after epoch 1" in logs[0]
    assert history_epochs(run_dir / "history.csv") == [0, 1, 2]
    assert json.loads((run_dir / "state.json").read_text())["status"] == "trained"
    assert not (run_dir / "backup").exists()


def test_tpu_without_a_tpu_is_a_named_error():
    if backend() != "tensorflow":
        with pytest.raises(ConfigError, match=r"--strategy tpu needs --backend tensorflow"):
            distribute.distribution("tpu")
        return
    with pytest.raises(ConfigError, match=r"--strategy tpu: no TPU was found"):
        distribute.distribution("tpu")


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("name", ["mirrored", "multi_worker", "tpu", "data_parallel"])
def test_torch_runs_only_strategy_none(name):
    with pytest.raises(ConfigError, match=rf"--strategy {name} needs --backend "
                                          r"\w+ \(got torch\); torch supports --strategy none$"):
        distribute.check(name, backend="torch")
    distribute.check("none", backend="torch")


def test_kgen_train_on_torch_refuses_mirrored(tmp_path, capsys):
    if backend() != "torch":
        pytest.skip("the PyTorch backend's own refusal (the rule is checked everywhere above)")
    from kgen import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "vae_digits", "--strategy", "mirrored", "--no-export",
                  "--run-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert ("kgen: error: --strategy mirrored needs --backend tensorflow (got torch); "
            "torch supports --strategy none") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.tf_only
def test_multi_worker_needs_tf_config(monkeypatch):
    if backend() != "tensorflow":
        pytest.skip(TF_ONLY)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match=r"--strategy multi_worker needs TF_CONFIG"):
        distribute.distribution("multi_worker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": '
                                    '{"type": "worker", "index": 3}}')
    with pytest.raises(ConfigError, match=r"TF_CONFIG=.*index 3 outside the worker list"):
        distribute.distribution("multi_worker")


if __name__ == "__main__":
    main(sys.argv[1])
