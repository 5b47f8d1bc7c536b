"""`kgen distill`: progressive distillation of a diffusion model.

The mechanics on tiny denoisers (a teacher with random weights is enough:
the student learns whatever two of its DDIM steps do), the grids the
student trains on, the command end to end with a kill and a resume, and
the inputs it refuses.
"""

import json
import signal
import subprocess

import keras
import numpy as np
import pytest
from keras import ops

from kgen import distill
from kgen.models import DiffusionModel
from kgen.models.distill import ProgressiveDistillation
from kgen.networks import unet
from kgen.schedulers import DDIMScheduler
from kgen.schedulers import DDPMScheduler
from tests import faults
from tests.conftest import kgen_env
from tests.conftest import run_kgen
from tests.test_bad_inputs import kgen


def random_teacher(num_classes=10, T=100, clip=False):
    """A tiny conditional teacher whose denoiser has random (not trained,
    not zero) weights, so that its steps do something to learn."""
    keras.utils.set_random_seed(3)
    teacher = DiffusionModel(
        unet((8, 8, 1), filters=(8, 16), num_classes=num_classes, groups=4),
        DDPMScheduler(T, "linear", clip_sample=clip), num_classes=num_classes,
        ema_decay=None, seed=1)
    rng = np.random.default_rng(0)
    for w in teacher.denoiser.weights:
        value = ops.convert_to_numpy(w)
        w.assign((value + 0.2 * rng.standard_normal(value.shape)).astype(value.dtype))
    return teacher


def settings(**changes):
    return distill.check_settings({**distill.DEFAULTS, **changes})


def digits(n=256):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return {"images": (x[:n] / 16.0).reshape(-1, 8, 8, 1).astype("float32"),
            "labels": y[:n].astype("int32")}


def distiller_for(teacher, student_steps, ema_decay=0.0, lr=1e-3, seed=0):
    config = settings(steps=student_steps, start_steps=2 * student_steps,
                      ema_decay=ema_decay)
    student = distill.make_student(teacher, config, student_steps)
    model = ProgressiveDistillation(teacher, student, student_steps,
                                    guidance_scale=distill.teacher_guidance(teacher, config),
                                    seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(lr))
    return model, student


def fixed_loss(model, batch, state):
    """The loss on `batch` with the model's draws fixed (seed state `state`)."""
    model.seed_generator.state.assign(state)
    return float(model.evaluate(batch, batch_size=len(batch["labels"]), verbose=0))


# === The grids ===


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 64])
def test_the_2n_step_ddim_grid_nests_over_the_n_step_grid(n):
    ddim = DDIMScheduler(1000)
    coarse = ops.convert_to_numpy(ddim.timestep(np.arange(n + 1), n))
    fine = ops.convert_to_numpy(ddim.timestep(np.arange(2 * n + 1), 2 * n))
    np.testing.assert_array_equal(fine[::2], coarse)
    assert coarse[-1] == -1 and coarse[0] == 999


def test_the_settings_plan_one_round_per_halving():
    assert distill.rounds(settings(steps=4, start_steps=32)) == [(32, 16), (16, 8), (8, 4)]
    assert distill.rounds(settings(steps=1, start_steps=2)) == [(2, 1)]


# === One round ===


def test_one_round_loss_goes_down():
    teacher = random_teacher()
    model, student = distiller_for(teacher, 2, lr=1e-3)
    batch = digits(64)
    state = ops.convert_to_numpy(model.seed_generator.state)
    before = fixed_loss(model, batch, state)
    model.fit(batch, batch_size=16, epochs=8, verbose=0)
    after = fixed_loss(model, batch, state)
    assert np.isfinite(before) and before > 0
    assert after < 0.8 * before, (before, after)
    # The teacher is frozen; the student's EMA followed its training.
    assert not teacher.trainable
    assert float(ops.convert_to_numpy(student.ema_updates)) == 32.0


def test_the_student_starts_as_the_teacher_and_samples_in_one_pass():
    teacher = random_teacher()
    _, student = distiller_for(teacher, 2)
    for a, b in zip(student.ema_denoiser.weights, teacher.sampling_denoiser.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    assert student.default_num_steps == 2 and student.sampler == "ddim"
    assert student.guidance_distilled
    # The guidance is in the weights: the scale asked for changes nothing.
    one = student.generate(2, seed=5, labels=[1, 2], guidance_scale=1.0)
    other = student.generate(2, seed=5, labels=[1, 2], guidance_scale=7.0)
    np.testing.assert_array_equal(one, other)
    assert student.get_config()["distilled"] == {
        "steps": 2, "teacher_steps": 4, "method": "progressive", "guidance_scale": 2.0}


def trained_teacher():
    """A tiny conditional v-predicting teacher after a few epochs on digits
    (v keeps the predicted clean sample well-conditioned at the noisiest
    step, where an epsilon student cannot change its first step)."""
    keras.utils.set_random_seed(3)
    teacher = DiffusionModel(
        unet((8, 8, 1), filters=(8, 16), num_classes=10, groups=4),
        DDPMScheduler(100, "cosine", prediction_type="v"), num_classes=10,
        ema_decay=None, seed=1)
    teacher.compile(optimizer=keras.optimizers.Adam(3e-3))
    teacher.fit(digits(512), batch_size=32, epochs=3, verbose=0)
    return teacher


@pytest.mark.slow
def test_the_student_at_n_steps_is_closer_to_the_teacher_at_2n_than_the_teacher_at_n():
    teacher = trained_teacher()
    n, guidance = 2, teacher.guidance_scale
    model, student = distiller_for(teacher, n, lr=1e-3)
    model.fit(digits(512), batch_size=32, epochs=6, verbose=0)
    labels = np.arange(16) % 10
    target = teacher.generate(16, seed=100, labels=labels, num_steps=2 * n,
                              scheduler="ddim", guidance_scale=guidance)
    teacher_n = teacher.generate(16, seed=100, labels=labels, num_steps=n,
                                 scheduler="ddim", guidance_scale=guidance)
    student_n = student.generate(16, seed=100, labels=labels)  # its default: DDIM, n steps
    teacher_error = np.mean((teacher_n - target) ** 2)
    student_error = np.mean((student_n - target) ** 2)
    assert student_error < 0.95 * teacher_error, (student_error, teacher_error)


# === The command ===

TINY_TEACHER = ("--set", "epochs=1", "--set", "steps_per_epoch=2", "--set", "filters=8,16",
                "--set", "batch_size=16", "--set", "sample_steps=2",
                "--set", "num_train_timesteps=100")
TINY_DISTILL = ("--set", "start_steps=4", "--set", "epochs_per_round=2",
                "--set", "steps_per_epoch=1", "--set", "batch_size=4")


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A finished tiny `kgen train ddpm_digits` run (TensorFlow)."""
    root = tmp_path_factory.mktemp("teacher")
    run_kgen("train", "ddpm_digits", *TINY_TEACHER, "--backend", "tensorflow",
             "--run-dir", root / "teacher", "--no-export", cwd=root)
    return root / "teacher"


def files(directory):
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.tf_only
def test_distill_killed_then_rerun_finishes_exports_and_samples(tmp_path, teacher_run):
    teacher_files = files(teacher_run)
    run, base = tmp_path / "student", tmp_path / "saved_models" / "student"
    args = ["distill", teacher_run, "--steps", "1", *TINY_DISTILL, "--backend",
            "tensorflow", "--run-dir", run, "--export", base]

    def killed_at(fault):
        return subprocess.run(faults.command(fault, "-m", "kgen", *map(str, args)),
                              cwd=tmp_path, env=faults.environment(kgen_env()),
                              capture_output=True, text=True, timeout=900)

    # Killed while round 1 of 2 writes its epoch 2 backup.
    first = killed_at("backup:2")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert "round 1 of 2: 4 teacher steps -> 2 student steps" in first.stdout
    assert not (run / "round-1" / "student.keras").exists()
    # Again: round 1 resumes after epoch 1 and ends; killed in round 2's epoch 1.
    second = killed_at("backup:1")
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert f"resuming round 1 after epoch 1 (backup {run / 'round-1' / 'backup'}" \
        in second.stdout, second.stdout[-2000:]
    assert (run / "round-1" / "student.keras").is_file()
    # Again, unarmed: round 1 is not trained again; round 2 runs; exported.
    last = run_kgen(*args, cwd=tmp_path)
    assert "round 1 of 2" not in last.stdout
    assert "round 2 of 2: 2 teacher steps -> 1 student steps" in last.stdout
    assert f"exported:    {base / '1'}" in last.stdout
    history = (run / "round-2" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header, epochs 1 and 2, each once
    meta = json.loads((base / "1" / "assets.extra" / "kgen.json").read_text())
    assert meta["defaults"]["num_steps"] == 1
    assert meta["scheduler"] == "DDIMScheduler"
    assert meta["distilled"]["steps"] == 1 and meta["distilled"]["teacher_steps"] == 4
    assert meta["distilled"]["method"] == "progressive"
    # The teacher's run is only read.
    assert files(teacher_run) == teacher_files
    # `kgen sample` on the export, with the export's own default steps.
    out = tmp_path / "grid.npy"
    run_kgen("sample", base, "--n", "3", "--out", out, cwd=tmp_path)
    rows = np.load(out)
    assert rows.shape == (3, 8, 8, 1) and np.isfinite(rows).all()
    # A rerun of the finished distillation trains nothing.
    again = run_kgen(*args, cwd=tmp_path)
    assert "nothing trained" in again.stdout and "Epoch" not in again.stdout


# === Refusals ===


def assert_refused(capfd, args, *named):
    status, out, err = kgen(capfd, *args)
    lines = err.strip().splitlines()
    assert status == 2, f"exit status {status}:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("kgen: error: "), err
    for value in named:
        assert str(value) in lines[0], (value, lines[0])
    return lines[0]


@pytest.mark.backend_agnostic
def test_a_missing_run_is_refused_naming_it(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_refused(capfd, ["distill", tmp_path / "nope"], tmp_path / "nope")
    # A recipe name whose runs/RECIPE does not exist.
    assert_refused(capfd, ["distill", "ddpm_digits"], "runs/ddpm_digits")
    assert not (tmp_path / "runs").exists()


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("args, named", [
    (["--steps", "4", "--set", "start_steps=12"], "start_steps=12"),
    (["--steps", "4", "--set", "start_steps=4"], "start_steps=4"),
    (["--steps", "3", "--set", "start_steps=16"], "start_steps=16"),
    (["--steps", "0"], "0"),
    (["--set", "epochs_per_round=0"], "epochs_per_round=0"),
    (["--set", "learning_rate=-1"], "learning_rate=-1"),
    (["--set", "ema_decay=1.5"], "ema_decay=1.5"),
    (["--set", "warp=9"], "warp"),
    (["--steps", "4", "--set", "steps=8"], "steps=8"),
])
def test_bad_settings_are_refused_naming_the_value(capfd, tmp_path, args, named):
    assert_refused(capfd, ["distill", tmp_path, *args], named)


@pytest.mark.backend_agnostic
def test_a_teacher_run_stopped_before_its_first_epoch_is_refused(capfd, tmp_path):
    # Killed before any best.keras: nothing to distil. (A run stopped later
    # is distilled from its best epoch so far; one still training is held
    # by its lock, which `kgen distill` takes to read it.)
    run = tmp_path / "teacher"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"recipe": "ddpm_digits", "config": {}}))
    (run / "state.json").write_text(json.dumps({"status": "training"}))
    assert_refused(capfd, ["distill", run], str(run), "best.keras is missing")
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "state.json"]


@pytest.mark.tf_only
def test_a_non_diffusion_run_is_refused_naming_it(capfd, tmp_path):
    from kgen import training

    run = tmp_path / "vae"
    training.train("vae_digits", sets={"epochs": "1", "steps_per_epoch": "1",
                                       "latent_dim": "2"},
                   run_dir=run, export_to=None, verbose=0)
    before = files(run)
    line = assert_refused(capfd, ["distill", run, "--run-dir", tmp_path / "out"],
                          str(run), "VAE", "not an image diffusion model")
    assert "Traceback" not in line
    assert files(run) == before
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.tf_only
def test_a_distillation_with_other_settings_is_refused_unless_overwrite(
        tmp_path, teacher_run):
    run = tmp_path / "student"
    args = ["distill", teacher_run, "--steps", "1", *TINY_DISTILL, "--backend",
            "tensorflow", "--run-dir", run, "--no-export"]
    run_kgen(*args, "--set", "start_steps=2", cwd=tmp_path)  # one round, 2 -> 1
    refused = run_kgen(*args, cwd=tmp_path, check=False)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
    assert lines[0].startswith(f"kgen: error: {run} holds a distillation with other "
                               "settings (start_steps: 2 -> 4)"), lines[0]
    again = run_kgen(*args, "--overwrite", cwd=tmp_path)
    assert "round 1 of 2" in again.stdout and "round 2 of 2" in again.stdout
    assert (run / "round-2" / "student.keras").is_file()
