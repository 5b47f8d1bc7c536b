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
