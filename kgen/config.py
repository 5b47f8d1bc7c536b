"""A recipe's settings: `--set key=value`, their types, validation.

Recipes themselves (what a recipe file holds, loading one) are
`kgen.recipe`'s.
"""

import ast
import math

from kgen.errors import UserError


class ConfigError(UserError, ValueError):
    """A recipe name or a `--set` value is wrong; the message names it."""


# Settings every recipe takes (a recipe's CONFIG may give its own default):
# `precision` is the Keras dtype policy its model is built under
# (`kgen.precision`).
COMMON = {"precision": "auto"}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null"}


def recipe_names():
    """Names of the recipes that ship with kgen (`kgen.recipe.names`)."""
    from kgen import recipe

    return recipe.names()


def recipe_summary(name):
    """First line of a shipped recipe's docstring (`kgen.recipe.summary`)."""
    from kgen import recipe

    return recipe.summary(name)


def load_recipe(name_or_path):
    """A recipe by name or path, checked: a `kgen.recipe.Recipe`
    (`kgen.recipe.load`)."""
    from kgen import recipe

    return recipe.load(name_or_path)


def format_value(value):
    """A setting as `--set` spells it: `none`, `true`, `32,64`."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    return str(value)


def parse_sets(items):
    """`["epochs=3", "data=/x"]` -> `{"epochs": "3", "data": "/x"}`."""
    sets = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        sets[key] = value.strip()
    return sets


def _coerce(key, text, default):
    where = f"--set {key}={text}"
    lowered = text.lower()
    if lowered in _NONE:
        return None  # validate() rejects None where a setting needs a value
    if isinstance(default, bool):
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{where}: expected true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer") from None
    if isinstance(default, float):
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{where}: expected a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number (not nan or inf)")
        return value
    if isinstance(default, (tuple, list)):
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        if not parts:
            raise ConfigError(f"{where}: expected a comma-separated list")
        sample = default[0] if default else ""
        return type(default)(_coerce(key, p.strip(), sample) for p in parts)
    if default is None:
        if lowered in _TRUE - {"1"} or lowered in _FALSE - {"0"}:
            return lowered in _TRUE
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number (not nan or inf)")
        return value
    return text


def with_common(defaults):
    """A recipe's CONFIG with the settings every recipe takes (`COMMON`)
    added where it does not set them."""
    return {**COMMON, **defaults}


def apply_overrides(defaults, sets):
    """A copy of `defaults` (and `COMMON`) with `sets` (strings) coerced to
    their types."""
    defaults = with_common(defaults)
    config = dict(defaults)
    for key, text in sets.items():
        if key not in defaults:
            raise ConfigError(
                f"--set {key}={text}: unknown setting {key!r}; this recipe's "
                f"settings are: {', '.join(sorted(defaults))}"
            )
        config[key] = _coerce(key, text, defaults[key])
    validate(config)
    return config


def _require(config, key, ok, what):
    if key in config and not ok(config[key]):
        raise ConfigError(f"--set {key}={config[key]}: {key} must be {what}")


def validate(config):
    """Checks every recipe shares; recipes may add their own in `build`."""
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    _require(config, "epochs", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    _require(config, "batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    _require(config, "steps_per_epoch", lambda v: v is None or (is_int(v) and v >= 1),
             "none or an integer >= 1")
    _require(config, "learning_rate",
             lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v > 0,
             "a finite number > 0")
    # keras.utils.set_random_seed seeds NumPy, which takes 32-bit seeds.
    _require(config, "seed", lambda v: is_int(v) and 0 <= v < 2**32,
             "an integer in [0, 2**32)")
    _require(config, "sample_count", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    _require(config, "validation_fraction",
             lambda v: isinstance(v, (int, float)) and 0 < v < 1, "in (0, 1)")
    if "precision" in config:
        from kgen import precision

        precision.check(config["precision"])
    return config
