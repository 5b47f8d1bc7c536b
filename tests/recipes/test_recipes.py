"""Every recipe trains a few steps on real data, on the current backend."""

import math

import pytest

from kgen import config
from kgen import training
from tests.conftest import shared

# Settings each recipe needs beyond its defaults (data paths).
DATA = {
    "vae_mnist": lambda: {"data": str(shared("mnist"))},
    "ddpm_mnist": lambda: {"data": str(shared("mnist"))},
}


@pytest.mark.parametrize("name", config.recipe_names())
def test_recipe_runs_a_few_steps(name, tmp_path):
    sets = {"epochs": "2", "steps_per_epoch": "3", **DATA.get(name, dict)()}
    result = training.train(name, sets=sets, run_dir=tmp_path / "run", verbose=0)
    assert result["best"].exists()
    assert all(math.isfinite(v) for v in result["logs"].values())
    assert (tmp_path / "run" / "samples" / "epoch_002.png").exists()
