"""`kgen.training.train` under the distribution strategies of each backend."""

import math

import pytest

from kgen import training
from kgen.config import ConfigError
from tests.conftest import backend

QUICK = {"epochs": "1", "steps_per_epoch": "2"}


@pytest.mark.parametrize("recipe", ["vae_digits", "dcgan_digits"])
def test_mirrored_strategy_on_tensorflow(tmp_path, recipe):
    """Both of a GAN's optimizers are built under the strategy scope."""
    if backend() != "tensorflow":
        with pytest.raises(ConfigError, match=r"--strategy mirrored needs --backend tensorflow"):
            training.strategy_scope("mirrored")
        return
    result = training.train(recipe, sets=QUICK, run_dir=tmp_path / "run",
                            strategy="mirrored", verbose=0)
    assert result["logs"] and all(math.isfinite(v) for v in result["logs"].values())
    assert result["best"].exists()


@pytest.mark.parametrize("recipe", ["vae_digits", "dcgan_digits"])
def test_data_parallel_on_jax(tmp_path, recipe):
    if backend() != "jax":
        with pytest.raises(ConfigError, match=r"--strategy data_parallel needs --backend jax"):
            training.strategy_scope("data_parallel")
        return
    import keras

    try:
        result = training.train(recipe, sets=QUICK, run_dir=tmp_path / "run",
                                strategy="data_parallel", verbose=0)
    finally:
        keras.distribution.set_distribution(None)
    assert result["logs"] and all(math.isfinite(v) for v in result["logs"].values())


def test_config_json_records_the_run(tmp_path):
    import json

    training.train("vae_digits", sets={**QUICK, "latent_dim": "3"}, run_dir=tmp_path / "run",
                   verbose=0)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["recipe"] == "vae_digits" and recorded["backend"] == backend()
    assert recorded["config"]["latent_dim"] == 3


# === Writes that a kill cannot damage (kgen.io, kgen.callbacks.checkpoints) ===


@pytest.mark.backend_agnostic
def test_atomic_write_keeps_the_previous_file_when_the_write_fails(tmp_path):
    from kgen import io as kgen_io

    path = tmp_path / "history.csv"
    kgen_io.write_text(path, "epoch\n0\n")

    def fail_half_way(tmp):
        tmp.write_text("epoch\n0\n1")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        kgen_io.atomic_write(path, fail_half_way)
    assert path.read_text() == "epoch\n0\n"
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.backend_agnostic
def test_only_abandoned_temporaries_are_cleaned(tmp_path):
    import os
    import subprocess
    import sys

    from kgen import io as kgen_io

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    abandoned = tmp_path / f"best.keras.tmp-{gone}-0123abcd.keras"
    in_use = tmp_path / f"best.keras.tmp-{os.getpid()}-4567abcd.keras"
    export_dir = tmp_path / f".tmp-{gone}-89abcdef"
    for path in (abandoned, in_use):
        path.write_bytes(b"partial")
    export_dir.mkdir()
    (export_dir / "saved_model.pb").write_bytes(b"partial")
    removed = kgen_io.clean_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([abandoned, export_dir])
    assert in_use.exists() and not abandoned.exists() and not export_dir.exists()


def _tiny_model():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_backup_skips_a_damaged_generation_and_names_it(tmp_path):
    import keras
    import numpy as np

    from kgen.callbacks import HistoryLog
    from kgen.callbacks import TrainingBackup

    model = _tiny_model()
    messages = []
    history = HistoryLog(tmp_path / "history.csv")
    backup = TrainingBackup(tmp_path / "backup", history=history, log=messages.append)
    backup.set_model(model)
    for epoch in range(3):
        model.layers[0].kernel.assign(np.full((3, 2), float(epoch + 1), "float32"))
        backup.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)})
        history.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)})
    assert backup.generations() == [3, 2]  # the two newest are kept

    newest = backup.weights_path(3)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    restored = backup.select()
    assert restored["epoch"] == 2
    assert [row["epoch"] for row in restored["history"]] == ["0", "1"]
    assert len(messages) == 1 and f"backup {newest} is damaged" in messages[0]

    fresh = _tiny_model()
    backup.set_model(fresh)
    backup.on_train_begin()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fresh.layers[0].kernel),
                                  np.full((3, 2), 2.0))

    backup.weights_path(2).write_bytes(b"")
    messages.clear()
    assert backup.select() is None
    assert f"backup {backup.weights_path(2)} is damaged (0 bytes)" in messages[1]
    assert "training starts again from epoch 1" in messages[-1]


def test_non_finite_weight_is_named(tmp_path):
    import numpy as np

    from kgen.callbacks import FiniteCheck
    from kgen.callbacks import NonFiniteError

    model = _tiny_model()
    check = FiniteCheck()
    check.set_model(model)
    check.on_epoch_end(0, {"loss": 1.0})  # all finite: nothing raised
    with pytest.raises(NonFiniteError, match=r"loss is inf at epoch 1, batch 3"):
        check.on_train_batch_end(2, {"loss": float("inf")})
    model.layers[0].bias.assign(np.array([0.0, np.nan], "float32"))
    with pytest.raises(NonFiniteError,
                       match=r"weight \S*bias holds nan at the end of epoch 2"):
        check.on_epoch_end(1, {"loss": 1.0})


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("name, text, kind", [
    ("state.json", "[1, 2]", "list"), ("state.json", '"trained"', "string"),
    ("config.json", "[]", "list"), ("config.json", "null", "null")])
def test_a_run_record_holding_no_object_is_named(tmp_path, name, text, kind):
    """A `state.json` (or `config.json`) that is valid JSON but no object:
    named, with what was expected, before anything is built."""
    import json

    from kgen import config as kgen_config
    from kgen import recipe as kgen_recipe
    from tests.conftest import kgen_main

    run = tmp_path / "run"
    run.mkdir()
    recipe = kgen_recipe.load("vae_digits")
    config = training._resolve_precision(
        kgen_config.apply_overrides(recipe.CONFIG, {"epochs": "1"}), verbose=0)
    (run / "config.json").write_text(json.dumps(training._settings(recipe, config, "none")))
    (run / name).write_text(text)
    result = kgen_main("train", "vae_digits", "--set", "epochs=1", "--run-dir", run,
                       "--no-export", check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"kgen: error: {run / name} is damaged (it holds a JSON {kind}, expected an "
        f"object of the run's record); rerun with --overwrite to start the run again")
    assert not (run / "kgen.lock").exists()


@pytest.mark.slow
@pytest.mark.tf_only
def test_a_rerun_that_only_exports_reports_the_earlier_training(tmp_path):
    """A trained run not yet exported (as a kill during its export leaves
    it): the rerun exports it and says when it was trained, not 0.0s."""
    from tests.conftest import kgen_main

    args = ["train", "vae_digits", "--set", "epochs=1", "--set", "steps_per_epoch=2",
            "--run-dir", tmp_path / "run"]
    kgen_main(*args, "--no-export")
    out = kgen_main(*args, "--export", tmp_path / "export").stdout
    assert "\ntrained earlier in " in out and "s (this run only exported it): " in out
    assert "trained in " not in out and "Epoch" not in out
    assert f"exported:    {tmp_path / 'export' / '1'}" in out
