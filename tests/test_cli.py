"""The `kgen` command as a user runs it: in this process (`kgen_main`), or in a
subprocess where the test needs a real one (training, a kill, another backend)."""

import csv
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import kgen_env
from tests.conftest import kgen_main
from tests.conftest import run_kgen

QUICK = ["--set", "epochs=1", "--set", "steps_per_epoch=3"]


@pytest.mark.backend_agnostic
def test_help_explains_each_command(tmp_path):
    out = kgen_main("--help", cwd=tmp_path).stdout
    for command in ("recipes", "train", "export", "sample"):
        assert command in out
    train_help = kgen_main("train", "--help", cwd=tmp_path).stdout
    assert "--set KEY=VALUE" in train_help and "--backend" in train_help


@pytest.mark.backend_agnostic
def test_help_says_what_runs_code(tmp_path):
    """A recipe path is Python code and a SavedModel is a graph: both run."""
    out = " ".join(kgen_main("--help", cwd=tmp_path).stdout.split())
    assert "`kgen train PATH.py` runs that file's Python code" in out
    assert "`kgen sample` runs the TensorFlow graph of the SavedModel it is given" in out
    assert "--debug" in out and "kgen: error:" in out
    sample_help = " ".join(kgen_main("sample", "--help", cwd=tmp_path).stdout.split())
    assert "use only exports you trust" in sample_help and "--debug" in sample_help


@pytest.mark.backend_agnostic
def test_debug_flag_before_or_after_the_command(tmp_path):
    for args in (["--debug", "sample", "nowhere"], ["sample", "nowhere", "--debug"]):
        result = kgen_main(*args, cwd=tmp_path, check=False)
        assert result.returncode == 2
        assert "Traceback (most recent call last)" in result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            "kgen: error: nowhere: no such exported model (expected "
            "saved_models/NAME or one version's directory)")


@pytest.mark.backend_agnostic
def test_recipes_lists_one_line_each(tmp_path):
    lines = kgen_main("recipes", cwd=tmp_path).stdout.strip().splitlines()
    assert any(line.startswith("vae_digits ") and "digits" in line for line in lines)
    assert any(line.startswith("vae_mnist ") for line in lines)


@pytest.mark.slow
def test_train_export_sample(tmp_path):
    """The README's main job in miniature: train, export, sample a PNG."""
    train = run_kgen("train", "vae_digits", *QUICK, cwd=tmp_path)
    assert "3/3" in train.stdout  # Keras' progress bar reached the last step
    run_dir = tmp_path / "runs" / "vae_digits"
    for written in ("best.keras", "config.json", "history.csv", "samples/epoch_001.png"):
        assert (run_dir / written).exists(), written
    assert list((run_dir / "logs" / "samples").glob("events.out.tfevents.*"))
    assert (tmp_path / "saved_models" / "vae_digits" / "1" / "saved_model.pb").exists()
    assert "exported:    saved_models/vae_digits/1" in train.stdout

    sample = run_kgen("sample", "saved_models/vae_digits", "--n", "9", "--out",
                      "grid.png", cwd=tmp_path)
    assert sample.stdout.strip().endswith("grid.png")
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as picture:
        pixels = np.asarray(picture)
    assert pixels.ndim == 2 and pixels.std() > 0  # a real grid, not blank

    # `kgen export` publishes the next version from the .keras file.
    export = run_kgen("export", run_dir / "best.keras", "--to", "saved_models/vae_digits",
                      cwd=tmp_path)
    assert export.stdout.strip().splitlines()[-1] == "saved_models/vae_digits/2"


@pytest.mark.backend_agnostic
def test_bad_set_value_is_a_clear_error(tmp_path):
    result = kgen_main("train", "vae_digits", "--set", "epochs=abc", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "kgen: error: --set epochs=abc: expected an integer" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.backend_agnostic
def test_bad_data_path_is_a_clear_error(tmp_path):
    result = kgen_main("train", "vae_mnist", "--set", "data=missing_dir", *QUICK,
                      cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "kgen: error: missing_dir: no such file or directory" in result.stderr


@pytest.mark.backend_agnostic
def test_sample_missing_model_is_a_clear_error(tmp_path):
    result = kgen_main("sample", "saved_models/none", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "saved_models/none: no such exported model" in result.stderr


def _epochs_done(history):
    if not history.exists():
        return []
    with history.open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped(tmp_path):
    command = [sys.executable, "-m", "kgen", "train", "vae_digits", "--set", "epochs=4",
               "--set", "steps_per_epoch=25", "--run-dir", "run", "--no-export"]
    history = tmp_path / "run" / "history.csv"
    first = subprocess.Popen(command, cwd=tmp_path, env=kgen_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not _epochs_done(history) and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    still_running = first.poll() is None
    first.kill()
    first.wait()
    assert still_running, "the first run ended before it could be killed"
    done = _epochs_done(history)
    assert done and done[-1] < 3

    second = subprocess.run(command, cwd=tmp_path, env=kgen_env(),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Epoch 1/4" not in second.stdout, "the run started over"
    assert "Epoch 4/4" in second.stdout
    assert _epochs_done(history) == [0, 1, 2, 3]
    assert not (tmp_path / "run" / "backup").exists()


@pytest.mark.slow
def test_conditional_gan_train_and_sample_a_label(tmp_path, mnist_dir):
    run_kgen("train", "cgan_mnist", "--set", f"data={mnist_dir}", *QUICK, cwd=tmp_path)
    assert (tmp_path / "runs" / "cgan_mnist" / "last.keras").exists()
    sample = run_kgen("sample", "saved_models/cgan_mnist", "--n", "4", "--label", "3",
                      "--out", "threes.png", cwd=tmp_path)
    assert sample.stdout.strip().endswith("threes.png")
    bad = kgen_main("sample", "saved_models/cgan_mnist", "--label", "12", cwd=tmp_path,
                   check=False)
    assert bad.returncode == 2 and "--label 12: must be in [0, 10)" in bad.stderr


@pytest.mark.slow
def test_backend_flag_chooses_the_keras_backend(tmp_path):
    """`--backend` wins over $KERAS_BACKEND: it is set before Keras loads."""
    import json

    from tests.conftest import backend

    other = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}[backend()]
    run_kgen("train", "vae_digits", "--backend", other, *QUICK, "--no-export",
             "--run-dir", "run", cwd=tmp_path)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["backend"] == other


@pytest.mark.backend_agnostic
def test_recipes_name_prints_every_setting_with_default_type_and_a_line(tmp_path):
    """`kgen recipes NAME`: one row per setting of the recipe (its CONFIG
    and the common ones), each with its default, type and what it does."""
    from kgen import recipe

    for name in recipe.names():
        rows = recipe.settings(name)
        assert {key for key, *_ in rows} >= set(recipe.load(name).CONFIG), name
        undocumented = [key for key, _, _, note in rows if not note]
        assert not undocumented, (name, undocumented)
    out = kgen_main("recipes", "ddpm_mnist", cwd=tmp_path).stdout
    lines = out.splitlines()
    assert lines[0].startswith("ddpm_mnist: Class-conditional DDPM")
    row = next(line for line in lines if line.startswith("filters "))
    assert row.split()[1:3] == ["32,64,128", "tuple"] and "U-Net levels" in row
    # A setting the recipe extends from another recipe keeps that one's line.
    row = next(line for line in lines if line.startswith("sampler "))
    assert "generate() and the export's default" in row
    row = next(line for line in lines if line.startswith("precision "))
    assert row.split()[1:3] == ["auto", "str"]
    refused = kgen_main("recipes", "no_such_recipe", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "no_such_recipe" in refused.stderr


def test_train_writes_plain_lines_when_stdout_is_not_a_terminal(tmp_path):
    """A log file gets one plain line per epoch: no carriage returns or
    colour codes from a live progress bar."""
    out = kgen_main("train", "vae_digits", "--set", "epochs=2", "--set", "steps_per_epoch=2",
                    "--no-export", "--run-dir", tmp_path / "run", cwd=tmp_path).stdout
    assert "\x1b" not in out and "\r" not in out, repr(out[:500])
    epochs = [line for line in out.splitlines() if line.startswith("2/2 - ")]
    assert len(epochs) == 2 and all("loss:" in line for line in epochs), out
    assert out.splitlines()[0].startswith("precision: ")


@pytest.mark.tf_only
def test_a_missing_extra_is_named_with_its_install_line(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "kserve" else real(name, *a))
    (tmp_path / "models").mkdir()
    refused = kgen_main("serve", tmp_path / "models", cwd=tmp_path, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("kgen: error: kgen serve needs KServe: "
                                      "pip install 'kgen[serving]'")
