import pytest

from kgen import config
from kgen.config import ConfigError

DEFAULTS = dict(data=None, epochs=10, steps_per_epoch=None, learning_rate=1e-3,
                filters=(32, 64), likelihood="bernoulli", augment=False)


def test_sets_are_coerced_to_the_defaults_types():
    sets = config.parse_sets(["epochs=3", "steps_per_epoch=5", "learning_rate=2e-4",
                              "filters=8,16,32", "augment=true", "data=/tmp/x"])
    cfg = config.apply_overrides(DEFAULTS, sets)
    assert cfg["epochs"] == 3 and cfg["steps_per_epoch"] == 5
    assert cfg["learning_rate"] == pytest.approx(2e-4)
    assert cfg["filters"] == (8, 16, 32) and cfg["augment"] is True
    assert cfg["data"] == "/tmp/x" and cfg["likelihood"] == "bernoulli"


def test_none_resets_an_optional_setting():
    cfg = config.apply_overrides(dict(DEFAULTS, steps_per_epoch=4), {"steps_per_epoch": "none"})
    assert cfg["steps_per_epoch"] is None


@pytest.mark.parametrize(
    "item, message",
    [
        ("epochs=abc", r"--set epochs=abc: expected an integer"),
        ("learning_rate=fast", r"--set learning_rate=fast: expected a number"),
        ("augment=maybe", r"--set augment=maybe: expected true or false"),
        ("epochs=0", r"--set epochs=0: epochs must be an integer >= 1"),
        ("learning_rate=-1", r"--set learning_rate=-1.0: learning_rate must be a number > 0"),
        ("steps_per_epoch=0", r"--set steps_per_epoch=0: steps_per_epoch must be none or an integer >= 1"),
        ("colour=red", r"--set colour=red: unknown setting 'colour'; this recipe's settings are: augment, data"),
    ],
)
def test_bad_sets_name_the_setting(item, message):
    with pytest.raises(ConfigError, match=message):
        config.apply_overrides(DEFAULTS, config.parse_sets([item]))


def test_set_without_equals():
    with pytest.raises(ConfigError, match=r"--set 'epochs': expected key=value"):
        config.parse_sets(["epochs"])


def test_recipes_are_listed_with_a_summary():
    names = config.recipe_names()
    assert {"vae_digits", "vae_mnist"} <= set(names)
    for name in names:
        assert config.recipe_summary(name), f"recipe {name} has no docstring"


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown recipe 'vae_cifar'; available: .*vae_digits"):
        config.load_recipe("vae_cifar")


def test_recipe_from_a_path(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("CONFIG = dict(epochs=1)\n\ndef build(config):\n    return None, None\n")
    module = config.load_recipe(path)
    assert module.RECIPE_NAME == "mine" and module.CONFIG == {"epochs": 1}
