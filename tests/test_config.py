import pytest

from kgen import config
from kgen import recipe as kgen_recipe
from kgen.config import ConfigError
from kgen.recipe import Recipe

pytestmark = pytest.mark.backend_agnostic

DEFAULTS = dict(data=None, epochs=10, steps_per_epoch=None, learning_rate=1e-3,
                filters=(32, 64), likelihood="bernoulli", augment=False, seed=0)


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
        ("learning_rate=-1", r"--set learning_rate=-1.0: learning_rate must be a finite number > 0"),
        ("learning_rate=inf", r"--set learning_rate=inf: expected a finite number \(not nan or inf\)"),
        ("learning_rate=nan", r"--set learning_rate=nan: expected a finite number \(not nan or inf\)"),
        ("seed=-1", r"--set seed=-1: seed must be an integer in \[0, 2\*\*32\)"),
        ("seed=4294967296", r"--set seed=4294967296: seed must be an integer in \[0, 2\*\*32\)"),
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
    recipe = config.load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.name == "mine" and recipe.CONFIG == {"epochs": 1}
    # The optional parts, with their defaults.
    assert recipe.EXPORT is True
    assert recipe.sample_kwargs({}) == {} and recipe.val_kid_kwargs({}) == {}


def test_recipe_path_that_is_not_python(tmp_path):
    (tmp_path / "notes.txt").write_text("CONFIG = {}\n")
    with pytest.raises(ConfigError, match=r"notes\.txt: expected a Python file ending in \.py"):
        config.load_recipe(tmp_path / "notes.txt")
    (tmp_path / "broken.py").write_text("CONFIG = dict(\n")
    with pytest.raises(ConfigError, match=r"broken\.py: not valid Python \(line 1: "):
        config.load_recipe(tmp_path / "broken.py")
    (tmp_path / "blob.py").write_bytes(b"\x00\x01\x02")
    with pytest.raises(ConfigError, match=r"blob\.py: not a readable Python file"):
        config.load_recipe(tmp_path / "blob.py")
    (tmp_path / "fails.py").write_text("CONFIG = {}\nraise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match=r"fails\.py: its code failed \(RuntimeError: boom"):
        config.load_recipe(tmp_path / "fails.py")


@pytest.mark.parametrize(
    "source, message",
    [
        ("def build(config):\n    return None, None\n",
         r"^recipe '.*r\.py' has no CONFIG \(a recipe defines CONFIG, a dict of settings, "
         r"and build\(config\)"),
        ("CONFIG = {}\n", r"^recipe '.*r\.py' has no build \("),
        ("X = 1\n", r"^recipe '.*r\.py' has no CONFIG and no build \("),
        ("CONFIG = [('epochs', 1)]\ndef build(c):\n    pass\n",
         r"^recipe '.*r\.py': CONFIG must be a dict, found list$"),
        ("CONFIG = {}\nbuild = 3\n",
         r"^recipe '.*r\.py': build must be a function of the config, found int$"),
        ("CONFIG = {}\ndef build(c):\n    pass\nsample_kwargs = {'num_steps': 2}\n",
         r"^recipe '.*r\.py': sample_kwargs must be a function of the config, found dict$"),
        ("CONFIG = {}\ndef build(c):\n    pass\nEXPORT = 'no'\n",
         r"^recipe '.*r\.py': EXPORT must be True or False, found 'no'$"),
    ],
)
def test_a_recipe_that_breaks_the_protocol_is_named(tmp_path, source, message):
    (tmp_path / "r.py").write_text(source)
    with pytest.raises(ConfigError, match=message):
        kgen_recipe.load(tmp_path / "r.py")


def test_optional_parts_of_a_recipe(tmp_path):
    (tmp_path / "r.py").write_text(
        "CONFIG = dict(steps=4)\nEXPORT = False\n\ndef build(config):\n    pass\n\n"
        "def sample_kwargs(config):\n    return dict(num_steps=config['steps'])\n\n"
        "def val_kid_kwargs(config):\n    return [1]\n")
    recipe = kgen_recipe.load(tmp_path / "r.py")
    assert recipe.EXPORT is False
    assert recipe.sample_kwargs({"steps": 2}) == {"num_steps": 2}
    with pytest.raises(ConfigError, match=r"^recipe r: val_kid_kwargs\(config\) must "
                                          r"return a dict of generate options, got list$"):
        recipe.val_kid_kwargs({})


def test_shipped_recipes_follow_the_protocol():
    """Each shipped recipe loads, and its hooks give dicts for its defaults."""
    for name in kgen_recipe.names():
        recipe = kgen_recipe.load(name)
        assert recipe.name == name and isinstance(recipe.EXPORT, bool)
        defaults = config.apply_overrides(recipe.CONFIG, {})
        assert isinstance(recipe.sample_kwargs(defaults), dict)
        assert isinstance(recipe.val_kid_kwargs(defaults), dict)
    assert kgen_recipe.load("digits_classifier").EXPORT is False
    assert kgen_recipe.load("ddpm_digits").val_kid_kwargs(
        config.apply_overrides(kgen_recipe.load("ddpm_digits").CONFIG, {}))


def test_the_recipe_example_is_a_recipe(tmp_path):
    """The recipe file in `kgen.recipe`'s docstring loads and builds."""
    example = kgen_recipe.__doc__.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_vae.py").write_text(example)
    recipe = kgen_recipe.load(tmp_path / "my_vae.py")
    model, data = recipe.build(config.apply_overrides(recipe.CONFIG, {}))
    assert hasattr(model, "generate") and data.train is not None


RECIPE = '''
CONFIG = dict(width=8, depth=2, mode="a")


def build(config):
    if config["width"] < 1:
        raise ValueError(f"units={config['width']}: expected a positive integer")
    if config["mode"] not in ("a", "b"):
        raise ValueError(f"mode={config['mode']!r}: expected 'a' or 'b'")
    if config["depth"] > 4:
        raise TypeError("too deep for this network")
    return "model", "data"
'''


@pytest.mark.parametrize(
    "sets, message",
    [
        # The message names the setting: that one is blamed.
        ({"mode": "c", "width": "3"}, r"^--set mode=c: mode='c': expected 'a' or 'b'$"),
        # It does not: the settings that differ from the defaults are.
        ({"width": "0"}, r"^--set width=0: units=0: expected a positive integer$"),
        ({"depth": "9"}, r"^--set depth=9: too deep for this network$"),
    ],
)
def test_build_errors_name_the_set_value(tmp_path, sets, message):
    (tmp_path / "r.py").write_text(RECIPE)
    recipe = config.load_recipe(tmp_path / "r.py")
    with pytest.raises(ConfigError, match=message):
        recipe.build(config.apply_overrides(recipe.CONFIG, sets))
    assert recipe.build(dict(recipe.CONFIG)) == ("model", "data")


def test_build_error_without_a_set_value_is_the_recipes_own(tmp_path):
    (tmp_path / "r.py").write_text(RECIPE.replace("width=8", "width=0"))
    recipe = config.load_recipe(tmp_path / "r.py")
    with pytest.raises(ValueError, match=r"^units=0") as raised:
        recipe.build(dict(recipe.CONFIG))
    assert not isinstance(raised.value, ConfigError)


def test_data_errors_pass_through_build(tmp_path):
    from kgen.data import DataError

    recipe_text = ("from kgen.data import load_images\nCONFIG = dict(data='none')\n\n"
                   "def build(config):\n    return load_images(config['data'])\n")
    (tmp_path / "d.py").write_text(recipe_text)
    recipe = config.load_recipe(tmp_path / "d.py")
    with pytest.raises(DataError, match=r"missing: no such file or directory"):
        recipe.build({"data": str(tmp_path / "missing")})


def test_values_are_shown_as_set_spells_them():
    assert [config.format_value(v) for v in (None, True, (32, 64), 0.5, "x")] == [
        "none", "true", "32,64", "0.5", "x"]
