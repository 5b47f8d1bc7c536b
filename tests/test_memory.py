"""`kgen.memory`: the estimate read from a recipe's settings."""

import pytest

from kgen import config
from kgen import memory
from kgen import recipe

pytestmark = pytest.mark.backend_agnostic


@pytest.mark.parametrize("name", recipe.names())
def test_every_recipe_at_its_defaults_passes(name):
    """No recipe's defaults come near a refusal: the estimate is a floor."""
    defaults = config.with_common(recipe.load(name).CONFIG)
    assert memory.total(memory.estimate(defaults)) < 2**30
    memory.check(defaults)


def test_the_setting_to_blame_is_named(monkeypatch):
    monkeypatch.setattr(memory, "available", lambda: (8 * 2**30, 16 * 2**30))
    defaults = {"latent_dim": 8, "hidden_dim": 256, "batch_size": 32, "epochs": 1}
    settings = {**defaults, "latent_dim": 10**8, "epochs": 3}
    with pytest.raises(memory.MemoryTooSmallError) as refused:
        memory.check(settings, {"latent_dim": "100000000", "epochs": "3"}, defaults)
    message = str(refused.value)
    assert message.startswith("--set latent_dim=100000000: the model would need about ")
    assert "this machine has 8.0 GiB available (of 16.0 GiB)" in message
    assert message.endswith("the recipe's default is latent_dim=8")


def test_what_fits_passes(monkeypatch):
    monkeypatch.setattr(memory, "available", lambda: (8 * 2**30, 16 * 2**30))
    settings = {"latent_dim": 64, "hidden_dim": 1024, "batch_size": 512}
    assert memory.check(settings, {"batch_size": "512"}, {"batch_size": 32}) is settings
