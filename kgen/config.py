"""Recipes and their settings: loading, `--set key=value`, validation."""

import ast
import importlib
import math
import pathlib
import pkgutil
import re
import types


class ConfigError(ValueError):
    """A recipe name or a `--set` value is wrong; the message names it."""


# Settings every recipe takes (a recipe's CONFIG may give its own default):
# `precision` is the Keras dtype policy its model is built under
# (`kgen.precision`).
COMMON = {"precision": "float32"}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null"}


def recipe_names():
    """Names of the recipes that ship with kgen, sorted."""
    import kgen.recipes

    return sorted(
        m.name for m in pkgutil.iter_modules(kgen.recipes.__path__)
        if not m.name.startswith("_")
    )


def recipe_summary(name):
    """First line of a recipe's docstring, read without importing it."""
    import kgen.recipes

    for folder in kgen.recipes.__path__:
        path = pathlib.Path(folder) / f"{name}.py"
        if path.is_file():
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
            return (doc or "").strip().splitlines()[0] if doc else ""
    return ""


def load_recipe(name_or_path):
    """Import a recipe by name (`vae_digits`) or by path (`my_recipe.py`).

    A path runs that file's Python code, as `python my_recipe.py` would:
    load only recipes you trust.

    Returns:
        A `Recipe`: the module's attributes, with a `build` that reports a
        setting the model refuses as a `ConfigError`.
    """
    text = str(name_or_path)
    if text.endswith(".py") or "/" in text or pathlib.Path(text).is_file():
        module = _load_recipe_file(pathlib.Path(text))
        name = module.RECIPE_NAME = pathlib.Path(text).stem
    else:
        if text not in recipe_names():
            raise ConfigError(
                f"unknown recipe {text!r}; available: {', '.join(recipe_names())}"
            )
        module = importlib.import_module(f"kgen.recipes.{text}")
        name = module.RECIPE_NAME = text
    for attr in ("CONFIG", "build"):
        if not hasattr(module, attr):
            raise ConfigError(f"recipe {text!r} has no {attr}")
    if not isinstance(module.CONFIG, dict):
        raise ConfigError(f"recipe {text!r}: CONFIG must be a dict, found "
                          f"{type(module.CONFIG).__name__}")
    return Recipe(module, name)


def _load_recipe_file(path):
    if not path.exists():
        raise ConfigError(f"recipe file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"recipe file {path}: is a directory, expected a .py file")
    if path.suffix != ".py":
        raise ConfigError(
            f"recipe file {path}: expected a Python file ending in .py "
            "(or a recipe name; see `kgen recipes`)"
        )
    try:
        source = path.read_bytes()
        code = compile(source, str(path), "exec")
    except SyntaxError as e:
        if e.lineno is None:  # null bytes: a binary file
            raise ConfigError(
                f"recipe file {path}: not a readable Python file ({e.msg})"
            ) from None
        raise ConfigError(
            f"recipe file {path}: not valid Python (line {e.lineno}: {e.msg})"
        ) from None
    except (ValueError, OSError) as e:  # null bytes, unreadable
        raise ConfigError(f"recipe file {path}: not a readable Python file ({e})") from None
    module = types.ModuleType(f"kgen_recipe_{path.stem}")
    module.__file__ = str(path)
    try:
        exec(code, module.__dict__)
    except Exception as e:
        raise ConfigError(
            f"recipe file {path}: its code failed ({type(e).__name__}: "
            f"{_first_line(e)}; --debug shows where)"
        ) from e
    return module


class Recipe:
    """A loaded recipe: reads fall through to its module; `build(config)`
    runs the recipe's `build` under the dtype policy of the config's
    `precision` (`kgen.precision.policy_scope`; float32 when unset) and
    reports a setting the model refuses.

    Model constructors raise `ValueError` (or Keras a `TypeError`) naming
    their own argument; `build` turns that into a `ConfigError` naming the
    `--set` value that caused it: the setting the message names, else the
    settings that differ from the recipe's defaults. With no such setting
    the error is the recipe's own and is raised unchanged.
    """

    def __init__(self, module, name):
        self.module = module
        self.RECIPE_NAME = name

    def __getattr__(self, attr):
        return getattr(self.module, attr)

    def build(self, config):
        from kgen import precision

        try:
            with precision.policy_scope(config.get("precision")):
                return self.module.build(config)
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            if _is_data_error(e):
                raise
            changed = {k: v for k, v in config.items()
                       if k in self.module.CONFIG and v != self.module.CONFIG[k]}
            if not changed:
                raise
            message = _first_line(e)
            named = [k for k in sorted(changed, key=len, reverse=True)
                     if re.search(rf"(?<![\w]){re.escape(k)}(?![\w])", message)]
            culprits = named[:1] or sorted(changed)
            sets = " ".join(f"--set {k}={format_value(changed[k])}" for k in culprits)
            raise ConfigError(f"{sets}: {message}") from e


def _is_data_error(error):
    from kgen.data.errors import DataError

    return isinstance(error, DataError)


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


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
            return float(text)
        except ValueError:
            raise ConfigError(f"{where}: expected a number") from None
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
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
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
