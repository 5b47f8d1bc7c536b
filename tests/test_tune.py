"""`kgen tune`: trials as kgen runs, pruning, resuming, workers, errors.

The search runs `vae_digits` (embedded data) for 1-2 epochs of 3 steps per
trial. The CLI runs on TensorFlow only here: the trials are ordinary kgen
runs, which the training tests cover on every backend.
"""

import contextlib
import json
import os
import signal
import subprocess
import re
import sys
import time

import pytest

from tests import faults
from tests.conftest import backend
from tests.conftest import kgen_env
from tests.conftest import kgen_main
from tests.conftest import run_kgen

pytestmark = pytest.mark.skipif(
    backend() != "tensorflow",
    reason="kgen tune's tests run on TensorFlow only (each trial is a kgen run, "
           "tested on every backend by the training tests); this keeps the suite's time",
)
pytestmark = [pytestmark, pytest.mark.tf_only]

optuna = pytest.importorskip("optuna")

TINY = ["--set", "epochs=2", "--set", "steps_per_epoch=3"]


def _study(directory):
    return optuna.load_study(study_name=directory.name,
                             storage=f"sqlite:///{directory.resolve() / 'study.db'}")


def _states(study):
    return [t.state.name for t in study.get_trials()]


@pytest.mark.slow
def test_three_trials_prune_the_worse_one_and_print_the_best(tmp_path):
    """The rule: the median pruner with one startup trial prunes a trial whose
    val_loss after epoch 1 is above the median (here: the only value) of the
    completed trials' epoch 1. Trial #1 trains with a learning rate 300x
    smaller than trial #0's from the same initial weights and batches, so its
    epoch-1 val_loss is clearly higher: it must be pruned after epoch 1."""
    directory = tmp_path / "tunes" / "lr"
    directory.mkdir(parents=True)
    study = optuna.create_study(study_name="lr", direction="minimize",
                                storage=f"sqlite:///{directory / 'study.db'}")
    for lr in (3e-3, 1e-5, 2e-3):  # the order the trials run in
        study.enqueue_trial({"learning_rate": lr})
    result = run_kgen(
        "tune", "vae_digits", "--space", "learning_rate=float:1e-5:1e-2:log",
        "--objective", "val_loss", "--trials", "3", "--dir", directory,
        "--pruner", "median", "--pruner-startup", "1", *TINY, cwd=tmp_path)
    out = result.stdout

    trials = _study(directory).get_trials()
    assert [t.params["learning_rate"] for t in trials] == [3e-3, 1e-5, 2e-3]
    assert trials[0].state.name == "COMPLETE" and trials[1].state.name == "PRUNED"
    assert trials[1].intermediate_values[0] > trials[0].intermediate_values[0]
    assert list(trials[1].intermediate_values) == [0]  # stopped after epoch 1
    pruned = json.loads((directory / "trial-0001" / "state.json").read_text())
    assert pruned["status"] == "pruned" and pruned["epoch"] == 1
    for number in (0, 1, 2):  # each trial is a kgen run in its own directory
        run = directory / f"trial-{number:04d}"
        assert (run / "config.json").exists() and (run / "history.csv").exists()
        config = json.loads((run / "config.json").read_text())["config"]
        assert config["learning_rate"] == trials[number].params["learning_rate"]
    assert not (tmp_path / "saved_models").exists()  # trials are never exported

    # Progress, the table, and the best settings as a --set line.
    assert "trial 1 of 3 (#0" in out and "trial 3 of 3 (#2" in out
    assert "trial #1 PRUNED at epoch 1" in out
    header = next(line for line in out.splitlines() if line.startswith("trial  state"))
    assert header.split() == ["trial", "state", "params", "val_loss", "epochs", "seconds"]
    row = next(line for line in out.splitlines() if line.startswith("1 ") and "PRUNED" in line)
    assert "learning_rate=1e-05" in row and row.split()[-2] == "1"
    best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    line = (directory / "best.txt").read_text().strip()
    assert line == (f"--set epochs=2 --set steps_per_epoch=3 "
                    f"--set learning_rate={best.params['learning_rate']}")
    assert f"best settings ({directory / 'best.txt'}): {line}" in out
    assert best.value == min(t.intermediate_values[e] for t in [best]
                             for e in t.intermediate_values)

    # TensorBoard HParams: the config, and one session per finished trial.
    import tensorflow as tf

    def plugins(path):
        found = set()
        for event_file in path.glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(event_file)):
                for value in event.summary.value:
                    found.add((value.tag, value.metadata.plugin_data.plugin_name))
        return found

    assert ("_hparams_/experiment", "hparams") in plugins(directory / "hparams")
    for number in (0, 1, 2):
        assert ("_hparams_/session_start_info", "hparams") in plugins(
            directory / "hparams" / f"trial-{number:04d}")


@pytest.mark.slow
def test_a_killed_search_resumes_without_redoing_finished_trials(tmp_path):
    """Killed (SIGKILL) after the first epoch of its second trial; the rerun
    keeps trial #0, resumes #1's run from its backup, and ends at 2 trials."""
    args = ["tune", "vae_digits", "--space", "learning_rate=float:1e-3:3e-3:log",
            "--objective", "val_loss", "--trials", "2", "--pruner", "none", *TINY]
    killed = subprocess.run(faults.command("trial:2", "-m", "kgen", *args), cwd=tmp_path,
                            env=faults.environment(kgen_env()), capture_output=True,
                            text=True, timeout=900)
    assert killed.returncode == -9, killed.stderr[-2000:]
    directory = tmp_path / "tunes" / "vae_digits"
    assert _states(_study(directory)) == ["COMPLETE", "RUNNING"]
    first = directory / "trial-0000" / "best.keras"
    stamp = first.stat().st_mtime_ns
    killed_params = _study(directory).trials[1].params

    out = run_kgen(*args, cwd=tmp_path).stdout
    assert "trial #1 was left running by a process that is gone" in out
    assert "resuming tunes/vae_digits/trial-0001 after epoch 1" in out
    assert "(#0" not in out  # finished trial not redone
    assert first.stat().st_mtime_ns == stamp
    trials = _study(directory).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params == killed_params and trials[2].user_attrs["retry_of"] == 1
    assert trials[2].user_attrs["run_dir"] == "trial-0001"
    history = (directory / "trial-0001" / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["0", "1"]  # no epoch twice
    assert sorted(trials[2].intermediate_values) == [0, 1]
    assert "2      COMPLETE (retry of #1)" in out
    assert "trial 2 of 2 (#2, tunes/vae_digits/trial-0001)" in out


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path):
    directory = tmp_path / "shared"
    out = run_kgen(
        "tune", "vae_digits", "--space", "learning_rate=float:1e-4:1e-2:log",
        "--objective", "val_loss", "--trials", "3", "--workers", "2", "--dir", directory,
        "--set", "epochs=1", "--set", "steps_per_epoch=2", cwd=tmp_path).stdout
    trials = _study(directory).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert len({t.params["learning_rate"] for t in trials}) == 3
    assert len({t.user_attrs["pid"] for t in trials} - {os.getpid()}) >= 1
    for t in trials:  # each trial ran once, in its own run directory
        run = directory / f"trial-{t.number:04d}"
        assert len((run / "history.csv").read_text().splitlines()) == 2
        config = json.loads((run / "config.json").read_text())["config"]
        assert config["learning_rate"] == t.params["learning_rate"]
        assert out.count(f"(#{t.number}, ") == 1
    assert "[worker 0]" in out and (directory / "best.txt").exists()


# === Refused arguments: each names the bad value ===


def _error(tmp_path, *args):
    result = kgen_main("tune", "vae_digits", "--objective", "val_loss", "--trials", "1",
                      "--dir", tmp_path / "t", *args, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("spec, message", [
    ("learning_rate=float:1e-2", "expected float:LOW:HIGH[:log]"),
    ("learning_rate=float:0.01:0.001", "LOW 0.01 must be below HIGH 0.001"),
    ("learning_rate=float:0:0.1:log", "a log range needs LOW > 0, got 0"),
    ("learning_rate=float:1e-4:x", "'x' is not a number"),
    ("learning_rate=float:1e-4:1e-2:lg", "got 'lg' after HIGH"),
    ("latent_dim=int:2:8:4", "HIGH - LOW = 6 is not a multiple of STEP 4"),
    ("latent_dim=int:2:8.5", "'8.5' is not an integer"),
    ("latent_dim=normal:2:8", "unknown kind 'normal'"),
    ("latent_dim=choice:", "expected choice:A,B,C"),
    ("latent_dim=choice:2,two", "--set latent_dim=two: expected an integer"),
    ("learning_rate=float:-1:1", "learning_rate must be a finite number > 0"),
    ("latent_dim", "expected KEY=SPEC"),
])
def test_bad_spec_is_named(spec, message):
    from kgen import config
    from kgen import tune

    recipe = config.load_recipe("vae_digits")
    with pytest.raises(tune.TuneError) as error:
        tune.parse_space([spec], recipe.CONFIG, "vae_digits", {})
    assert str(error.value).startswith(f"--space {spec}") or repr(spec) in str(error.value)
    assert message in str(error.value)


def test_refused_arguments_on_the_command_line(tmp_path):
    line = _error(tmp_path, "--space", "widht=int:1:4")
    assert line.startswith("kgen: error: --space widht=int:1:4: 'widht' is not a setting "
                           "of recipe vae_digits; its settings are: ")
    assert "latent_dim" in line


def test_a_searched_key_cannot_also_be_set():
    from kgen import config
    from kgen import tune

    recipe = config.load_recipe("vae_digits")
    with pytest.raises(tune.TuneError, match=r"^--space beta=float:1:2: beta is also "
                                             r"fixed by --set beta=1; give one or the other$"):
        tune.parse_space(["beta=float:1:2"], recipe.CONFIG, "vae_digits", {"beta": "1"})


@pytest.mark.parametrize("args, message", [
    (["--space", "likelihood=choice:bernoulli,bogus"],
     "--space likelihood=choice:bernoulli,bogus: likelihood=bogus is refused by recipe "
     "vae_digits (likelihood='bogus': expected one of ('bernoulli', 'gaussian'))"),
    (["--space", "latent_dim=int:0:4"],
     "--space latent_dim=int:0:4: latent_dim=0 is refused by recipe vae_digits "
     "(Received an invalid value for `units`, expected a positive integer. "
     "Received: units=0)"),
    (["--space", "beta=float:0.5:2", "--objective", "val_nope"],
     "--objective val_nope: not logged by recipe vae_digits; the logged values are: "
     "kl_loss, loss, reconstruction_loss, val_kl_loss, val_loss, val_reconstruction_loss"),
    (["--space", "val_kid_n=int:50:100", "--objective", "val_kid"],
     "--objective val_kid: not logged by recipe vae_digits; the logged values are: "
     "kl_loss, loss, reconstruction_loss, val_kl_loss, val_loss, val_reconstruction_loss"),
])
def test_the_search_is_checked_against_the_recipe_before_trial_1(tmp_path, args, message):
    """Each choice and range end is built (not trained) and the objective
    looked up among what the built model logs, before any trial and before
    the study records the search (so a corrected command is accepted)."""
    result = kgen_main("tune", "vae_digits", "--objective", "val_loss", "--trials", "1",
                       "--dir", tmp_path / "t", *args, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"kgen: error: {message}"
    assert "trial" not in result.stdout
    assert not (tmp_path / "t").exists()  # no study, no trial directory


def test_a_range_end_too_large_for_memory_is_refused_before_it_is_built(tmp_path):
    """The end of a range is estimated (kgen.memory) before the model is
    built with it, so a search that reaches an impossible size is named
    at once instead of building a 400 GiB layer."""
    result = kgen_main("tune", "vae_digits", "--objective", "val_loss", "--trials", "1",
                       "--dir", tmp_path / "t", "--space", "latent_dim=int:1:100000000",
                       cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert re.fullmatch(r"kgen: error: --space latent_dim=int:1:100000000 at 100000000: the "
                        r"model would need about [\d,.]+ GiB .*; this machine has .* GiB "
                        r"available .*", result.stderr.strip().splitlines()[-1])
    assert not (tmp_path / "t").exists()


def test_the_objective_is_looked_up_in_every_value_of_the_space(mnist_dir):
    """`gradient_penalty` is logged only where its weight is above 0."""
    from kgen import recipe
    from kgen import tune

    loaded, sets = recipe.load("wgan_gp_mnist"), {"data": str(mnist_dir)}
    space = tune.parse_space(["gradient_penalty_weight=float:0:10"], loaded.CONFIG,
                             loaded.name, sets)
    tune.check_against_recipe(loaded, space, sets, "d_loss")
    with pytest.raises(tune.TuneError, match=r"^--objective gradient_penalty: not logged "
                                             r"with --space gradient_penalty_weight="
                                             r"float:0:10 at 0\.0; the logged values are: "
                                             r"d_loss, fake_score, g_loss, real_score$"):
        tune.check_against_recipe(loaded, space, sets, "gradient_penalty")


def test_help_documents_the_spec_grammar(capsys):
    from kgen import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["tune", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for grammar in ("float:LOW:HIGH[:log]", "int:LOW:HIGH[:STEP]", "choice:A,B,C",
                    "--storage URL", "--workers N", "--pruner {median,hyperband,none}"):
        assert grammar in out, grammar


def test_a_directory_holds_one_search(tmp_path):
    """A rerun with another objective or direction is refused, naming both."""
    from kgen import tune

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    attrs = {"kgen_recipe": "vae_digits", "kgen_objective": "val_loss",
             "kgen_space": {"beta": "float:0.5:2"}, "kgen_sets": {}}
    tune.open_study(storage, "s", "minimize", None, attrs)
    tune.open_study(storage, "s", "minimize", None, attrs)  # the same search: resumes
    with pytest.raises(tune.TuneError, match=r"^study 's' holds another search "
                                             r"\(objective: val_loss -> loss; direction: "
                                             r"minimize -> maximize\)"):
        tune.open_study(storage, "s", "maximize", None, {**attrs, "kgen_objective": "loss"})


def test_specs_parse_to_optuna_ranges():
    from kgen import config
    from kgen import tune

    recipe = config.load_recipe("vae_digits")
    space = tune.parse_space(
        ["learning_rate=float:1e-4:1e-2:log", "beta=float:0.5:2", "latent_dim=int:4:16:4",
         "likelihood=choice:bernoulli,gaussian", "filters=choice:16,32|32,64"],
        recipe.CONFIG, "vae_digits", {"epochs": "1"})
    lr, beta, latent, likelihood, filters = space.values()
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    assert (beta.kind, beta.log) == ("float", False)
    assert (latent.kind, latent.low, latent.high, latent.step) == ("int", 4, 16, 4)
    assert likelihood.choices == ("bernoulli", "gaussian")
    assert filters.choices == ("16,32", "32,64")  # a list setting: choices split on |
    assert config.apply_overrides(recipe.CONFIG, {"filters": "32,64"})["filters"] == (32, 64)


def test_a_storage_that_cannot_open_is_named():
    from kgen import tune

    with pytest.raises(tune.TuneError, match=r"^--storage nosuchdb://x/y: cannot open it"):
        tune._storage("nosuchdb://x/y")


def test_a_diverged_trial_fails_and_the_search_goes_on(tmp_path, capsys, monkeypatch):
    """In this process: every trial's first epoch gets a NaN weight
    (fault `nonfinite:1`, see `tests/faults.py`), so each trial fails with a
    named error, and the search still runs --trials of them and writes no
    best settings."""
    from kgen import cli

    monkeypatch.chdir(tmp_path)
    faults.arm("nonfinite:1", monkeypatch)
    cli.main(["tune", "vae_digits", "--space", "beta=float:0.5:2", "--objective",
              "val_loss", "--trials", "2", "--dir", "t", "--set", "epochs=1",
              "--set", "steps_per_epoch=1"])
    out = capsys.readouterr().out
    trials = _study(tmp_path / "t").get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all(t.user_attrs["error"].startswith("training diverged") for t in trials)
    assert "trial #1 FAIL: training diverged" in out
    assert "no trial completed: no best settings" in out
    assert not (tmp_path / "t" / "best.txt").exists()


# === The Python call: plain arguments ===


@pytest.mark.parametrize("kwargs, message", [
    ({"trials": 0}, r"^--trials 0: expected an integer >= 1$"),
    ({"workers": 0}, r"^--workers 0: expected an integer >= 1$"),
    ({"direction": "up"}, r"^--direction up: expected one of minimize, maximize$"),
    ({"space": {}}, r"^give at least one --space KEY=SPEC to search$"),
    ({"space": {"widht": "int:1:4"}}, r"^--space widht=int:1:4: 'widht' is not a setting "
                                      r"of recipe vae_digits"),
    ({"pruner": "none", "pruner_startup": 2},
     r"^--pruner-startup 2: only the median pruner has startup trials"),
])
def test_tune_call_names_a_bad_argument(tmp_path, kwargs, message):
    from kgen import tune

    arguments = {"recipe": "vae_digits", "space": {"beta": "float:0.5:2"},
                 "objective": "val_loss", "trials": 1, "directory": tmp_path / "t",
                 **kwargs}
    with pytest.raises(tune.TuneError, match=message):
        tune.tune(**arguments)


def test_worker_command_is_the_same_search(tmp_path):
    """The command line a worker process runs parses back to the search's
    arguments (the recipe, space, sets, study and limits)."""
    from kgen import cli
    from kgen import tune

    search = tune._search("vae_digits", ["beta=float:0.5:2", "latent_dim=int:4:8:2"],
                          "val_loss", "maximize", {"epochs": "1", "data": "a=b"},
                          tmp_path / "t", None, "s")
    command = tune._worker_command(search, ["beta=float:0.5:2", "latent_dim=int:4:8:2"],
                                   5, "median", 2, 30.0)
    assert command[1:3] == ["-m", "kgen"]
    args = cli._parser().parse_args(command[3:] + ["--worker-index", "1"])
    assert (args.recipe, args.space, args.objective, args.direction, args.trials) == (
        "vae_digits", ["beta=float:0.5:2", "latent_dim=int:4:8:2"], "val_loss",
        "maximize", 5)
    assert args.sets == ["epochs=1", "data=a=b"] and args.dir == tmp_path / "t"
    assert (args.storage, args.study) == (search["storage"], "s")
    assert (args.pruner, args.pruner_startup, args.timeout) == ("median", 2, 30.0)
    assert (args.workers, args.worker_index) == (1, 1)


def _running(pid):
    """Whether process `pid` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc (Linux)")
def test_workers_end_with_their_parent(tmp_path):
    """`kgen tune --workers 2` killed (SIGKILL, which it cannot catch) while
    both train: the kernel tells the worker (PR_SET_PDEATHSIG), which ends
    too, records its trial for a retry and releases its run directory."""
    directory = tmp_path / "t"
    parent = subprocess.Popen(
        [sys.executable, "-m", "kgen", "tune",
         "vae_digits", "--space", "beta=float:0.5:2", "--objective", "val_loss",
         "--trials", "4", "--workers", "2", "--pruner", "none", "--dir", directory,
         "--set", "epochs=500", "--set", "steps_per_epoch=2"],
        cwd=tmp_path, env=kgen_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    try:
        deadline, worker = time.monotonic() + 300, None
        while worker is None:
            assert parent.poll() is None, parent.stderr.read()
            assert time.monotonic() < deadline, "no worker's trial started"
            for lock in directory.glob("trial-*/kgen.lock"):
                with contextlib.suppress(ValueError, OSError):
                    pid = json.loads(lock.read_text())["pid"]
                    if pid != parent.pid:
                        worker, worker_lock = pid, lock
            time.sleep(0.2)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=120)
        deadline = time.monotonic() + 120
        while _running(worker):
            assert time.monotonic() < deadline, f"worker {worker} outlived its parent"
            time.sleep(0.2)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert not worker_lock.exists()  # released as it stopped
    trials = _study(directory).get_trials()
    own = [t for t in trials if t.user_attrs.get("pid") == worker]
    assert [t.state.name for t in own] == ["FAIL"]
    assert any(t.user_attrs.get("retry_of") == own[0].number for t in trials)


def test_a_trial_whose_run_directory_is_held_is_refused(tmp_path):
    """Another process holds `trial-0000` (a `kgen train --run-dir` on it):
    the trial is refused naming it, recorded FAIL, and nothing is trained."""
    from tests.test_lock import held_elsewhere

    run_dir = tmp_path / "t" / "trial-0000"
    with held_elsewhere(run_dir, "kgen train vae_digits") as holder:
        result = kgen_main("tune", "vae_digits", "--space", "beta=float:0.5:2",
                           "--objective", "val_loss", "--trials", "1", "--dir",
                           tmp_path / "t", "--set", "epochs=1", cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"kgen: error: {run_dir}: in use by pid {holder.pid} on host ")
    trials = _study(tmp_path / "t").get_trials()
    assert [t.state.name for t in trials] == ["FAIL"]
    assert trials[0].user_attrs["error"].startswith(f"{run_dir}: in use by pid")
    assert not (run_dir / "config.json").exists()
