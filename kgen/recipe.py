"""Recipes: what a recipe file holds, and how kgen finds and loads one.

A recipe is one flat Python file: a model and its data, built from one dict
of settings. The recipes that ship with kgen live in `recipes/` (installed
as `kgen.recipes`) and are named by their file's stem (`vae_digits`); any
other `.py` file is a recipe too, named by its path. The file defines:

Required:

- `CONFIG`: a dict of every setting the recipe takes and its default.
  `--set KEY=VALUE` overrides one, coerced to the default's type
  (`kgen.config.apply_overrides`); the settings every recipe takes
  (`kgen.config.COMMON`) are added where `CONFIG` does not set them.
- `build(config)`: returns `(model, data)`, a compiled Keras model and its
  data (an object with `train` and `validation` streams, see `kgen.data`),
  from the resolved settings. A setting the model refuses raises
  `ValueError` naming its own argument.

Optional:

- `EXPORT = False`: the model is kept as its `.keras` file and never
  exported (a classifier that judges other models' samples). Default True.
- `sample_kwargs(config)`: the `generate` options of the samples logged
  each epoch (e.g. diffusion steps). Default: none.
- `val_kid_kwargs(config)`: the `generate` options of the samples that
  `--set val_kid=...` scores each epoch. Default: none.

kgen reads nothing else from the file. `load` checks these names and their
types and returns a `Recipe`, the one object kgen's commands use.

Example (`my_vae.py`, run with `kgen train my_vae.py`):

```python
import keras

from kgen import data, models, networks

CONFIG = dict(data="digits", latent_dim=8, epochs=10, batch_size=32,
              learning_rate=1e-3, validation_fraction=0.1, seed=0)


def build(config):
    ds = data.load_image_data(config["data"], batch_size=config["batch_size"],
                              validation_fraction=config["validation_fraction"],
                              seed=config["seed"])
    encoder, decoder = networks.conv_vae_networks(ds.image_shape, config["latent_dim"])
    model = models.VAE(encoder, decoder, seed=config["seed"])
    model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]))
    return model, ds
```

A recipe path runs that file's Python code, as `python my_vae.py` would:
load only recipes you trust.
"""

import ast
import importlib
import os
import pathlib
import pkgutil
import re
import types

from kgen.config import ConfigError
from kgen.config import format_value
from kgen.errors import UserError
from kgen.errors import first_line

# The optional functions of a recipe, each `f(config) -> dict` of generate options.
HOOKS = ("sample_kwargs", "val_kid_kwargs")


class Recipe:
    """A loaded recipe (see the module docstring for what its file holds).

    Made by `load`, which checks the file; every part kgen uses is an
    attribute or a method here, with its default filled in.

    Attributes:
        name: the recipe's name (its file's stem).
        module: the recipe's module.
        CONFIG: the recipe's settings and their defaults (its `CONFIG`).
        EXPORT: whether its model is exported (its `EXPORT`, default True).
    """

    def __init__(self, module, name):
        self.module = module
        self.name = name
        self.CONFIG = module.CONFIG
        self.EXPORT = getattr(module, "EXPORT", True)
        self._hooks = {hook: getattr(module, hook, None) for hook in HOOKS}

    def __repr__(self):
        return f"Recipe({self.name!r})"

    def build(self, config):
        """`(model, data)` of the recipe's `build(config)`.

        It runs under the dtype policy of the config's `precision`
        (`kgen.precision.policy_scope`; float32 when unset). Model
        constructors raise `ValueError` (or Keras a `TypeError`) naming
        their own argument; that becomes a `ConfigError` naming the `--set`
        value that caused it: the setting the message names, else the
        settings that differ from the recipe's defaults. With no such
        setting the error is the recipe's own and is raised unchanged, as
        is a `UserError` (a data file's `DataError` names its file).
        """
        from kgen import precision

        try:
            with precision.policy_scope(config.get("precision")):
                return self.module.build(config)
        except UserError:
            raise
        except (ValueError, TypeError) as e:
            changed = {k: v for k, v in config.items()
                       if k in self.CONFIG and v != self.CONFIG[k]}
            if not changed:
                raise
            message = first_line(e)
            named = [k for k in sorted(changed, key=len, reverse=True)
                     if re.search(rf"(?<![\w]){re.escape(k)}(?![\w])", message)]
            culprits = named[:1] or sorted(changed)
            sets = " ".join(f"--set {k}={format_value(changed[k])}" for k in culprits)
            raise ConfigError(f"{sets}: {message}") from e

    def sample_kwargs(self, config):
        """The `generate` options of the samples logged each epoch
        (`{}` when the recipe defines no `sample_kwargs`)."""
        return self._call_hook("sample_kwargs", config)

    def val_kid_kwargs(self, config):
        """The `generate` options of the samples `val_kid` scores (`{}`
        when the recipe defines no `val_kid_kwargs`)."""
        return self._call_hook("val_kid_kwargs", config)

    def _call_hook(self, hook, config):
        function = self._hooks[hook]
        if function is None:
            return {}
        options = function(config)
        if not isinstance(options, dict):
            raise ConfigError(f"recipe {self.name}: {hook}(config) must return a dict "
                              f"of generate options, got {type(options).__name__}")
        return options


def names():
    """Names of the recipes that ship with kgen, sorted."""
    import kgen.recipes

    return sorted(
        m.name for m in pkgutil.iter_modules(kgen.recipes.__path__)
        if not m.name.startswith("_")
    )


def summary(name):
    """First line of a shipped recipe's docstring, read without importing it
    (`""` when it has none)."""
    import kgen.recipes

    for folder in kgen.recipes.__path__:
        path = pathlib.Path(folder) / f"{name}.py"
        if path.is_file():
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
            return first_line(doc or "")
    return ""


# One line for the settings many recipes share, where a recipe's own file
# says nothing about one.
SHARED_SETTINGS = {
    "data": "the training data (a folder, file, or an embedded data set's name)",
    "epochs": "passes over the training data (or of steps_per_epoch steps)",
    "steps_per_epoch": "steps per epoch; none: one pass over the training split",
    "batch_size": "examples per training step",
    "learning_rate": "the optimizer's (peak) learning rate",
    "seed": "seeds the data order, the weights and the samples",
    "precision": "auto (bfloat16 only where the device computes it natively), "
                 "float32, mixed_bfloat16 or mixed_float16",
    "validation_fraction": "the share of the data held out to rank epochs",
    "filters": "channels per level of the main network",
    "d_filters": "channels per level of the GAN's discriminator",
    "ema_decay": "decay of the exponential moving average of the sampling weights",
    "conditional": "class-conditional: generate(labels=...) asks for a class",
    "latent_dim": "size of the latent vector",
    "val_kid": "a classifier .keras: log val_kid each epoch and keep the epoch it ranks best",
    "val_kid_n": "samples (and real images) per val_kid",
    "sample_count": "samples logged each epoch",
    "hidden_dim": "width of the hidden layers",
    "dropout": "dropout rate",
    "beta_1": "Adam's beta_1",
    "beta_2": "Adam's beta_2",
    # diffusion
    "blocks_per_level": "residual blocks per U-Net level",
    "num_train_timesteps": "noise levels of the forward process",
    "beta_schedule": "the noise schedule: linear, scaled_linear or cosine",
    "prediction_type": "what the network predicts: epsilon, sample or v_prediction",
    "guidance_scale": "classifier-free guidance of generate() and the export "
                      "(1: none)",
    # GAN
    "loss": "the GAN loss: non_saturating, hinge or wasserstein",
    "gradient_penalty_weight": "weight of the discriminator's gradient penalty (0: none)",
    # VAE
    "likelihood": "the decoder's likelihood: bernoulli or gaussian",
    "beta": "weight of the KL term (beta-VAE; 1: the ELBO)",
    # language model
    "num_layers": "Transformer blocks",
    "num_heads": "attention heads per block",
    "tie_weights": "the output layer reuses the token embedding",
    "min_learning_rate": "the learning rate at the end of the cosine decay",
    "warmup_steps": "steps of linear learning-rate warm-up",
    "weight_decay": "AdamW's weight decay",
    "clipnorm": "gradients clipped to this global norm",
    "sample_prompts": "prompts of the text samples logged each epoch",
    "sample_max_new_tokens": "length of the text samples logged each epoch",
    "sample_temperature": "temperature of the text samples logged each epoch",
    "sample_top_k": "top-k of the text samples logged each epoch (0: off)",
    # audio
    "num_mel_bins": "mel bands of the classifier's log-mel input",
}


def settings(name_or_path):
    """A recipe's settings as `[(key, default, type name, one line), ...]`,
    in the order of its `CONFIG` (then `kgen.config.COMMON`'s).

    The line is the comment beside (or just above) the setting in the
    recipe's file, or in the recipe whose `CONFIG` it extends, else the
    shared description of that setting (`SHARED_SETTINGS`), else "".
    """
    loaded = load(name_or_path)
    notes = _setting_notes(pathlib.Path(loaded.module.__file__))
    rows = []
    for key, default in loaded.CONFIG.items():
        kind = "none" if default is None else type(default).__name__
        rows.append((key, default, kind, notes.get(key) or SHARED_SETTINGS.get(key, "")))
    return rows


_SETTING = re.compile(r"^(\s+)(\w+)=")
_BASE = re.compile(r"^from kgen\.recipes\.(\w+) import CONFIG\b", re.M)


def _setting_notes(path, seen=None):
    """`{key: comment}` from a recipe file's `key=value,  # comment` lines
    (a comment line just above a setting, or continuing the one beside the
    setting above it, counts too), then from the recipe it extends."""
    import io
    import tokenize

    seen = seen or set()
    if path in seen or not path.is_file():
        return {}
    seen.add(path)
    text = path.read_text(encoding="utf-8")
    comments = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                comments[token.start[0]] = (token.start[1], token.string[1:].strip())
    except (tokenize.TokenError, SyntaxError):
        return {}
    notes, above, last = {}, [], None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _SETTING.match(line)
        if match:
            key = match.group(2)
            beside = comments.get(number)
            parts = above + ([beside[1]] if beside else [])
            if parts:
                notes.setdefault(key, " ".join(parts))
            above, last = [], (key, beside[0] if beside else None)
            continue
        if number in comments and not line[:comments[number][0]].strip():
            column, comment = comments[number]
            if last and last[1] is not None and column >= last[1]:
                notes[last[0]] = f"{notes.get(last[0], '')} {comment}".strip()
            else:
                above.append(comment)
            continue
        above, last = [], None
    for base in _BASE.findall(text):
        for key, note in _setting_notes(path.with_name(f"{base}.py"), seen).items():
            notes.setdefault(key, note)
    return {key: note for key, note in notes.items() if note}


def load(name_or_path):
    """The recipe named `name_or_path` (`vae_digits`) or at that path
    (`my_recipe.py`), checked.

    A path runs that file's Python code, as `python my_recipe.py` would:
    load only recipes you trust.

    Returns:
        A `Recipe`.

    Raises:
        ConfigError: naming the recipe when it is unknown, cannot be read
            or run, lacks `CONFIG` or `build`, or defines one of them (or
            an optional part) with the wrong type.
    """
    text = str(name_or_path)
    # A recipe's name means the recipe that ships with kgen, whatever files
    # the working directory holds; a path is one ending in .py or holding a
    # separator (`./vae_digits.py`, `recipes/mine.py`).
    if text.endswith(".py") or "/" in text or os.sep in text or (
            text not in names() and pathlib.Path(text).is_file()):
        name = pathlib.Path(text).stem
        module = _load_file(pathlib.Path(text))
    else:
        if text not in names():
            raise ConfigError(f"unknown recipe {text!r}; available: {', '.join(names())}")
        name = text
        module = importlib.import_module(f"kgen.recipes.{text}")
    _check(module, text)
    return Recipe(module, name)


def _check(module, where):
    missing = [attr for attr in ("CONFIG", "build") if not hasattr(module, attr)]
    if missing:
        raise ConfigError(
            f"recipe {where!r} has no {' and no '.join(missing)} (a recipe defines "
            f"CONFIG, a dict of settings, and build(config), returning the model "
            f"and its data)")
    if not isinstance(module.CONFIG, dict):
        raise ConfigError(f"recipe {where!r}: CONFIG must be a dict, found "
                          f"{type(module.CONFIG).__name__}")
    for attr in ("build", *HOOKS):
        if hasattr(module, attr) and not callable(getattr(module, attr)):
            raise ConfigError(f"recipe {where!r}: {attr} must be a function of the "
                              f"config, found {type(getattr(module, attr)).__name__}")
    if not isinstance(getattr(module, "EXPORT", True), bool):
        raise ConfigError(f"recipe {where!r}: EXPORT must be True or False, found "
                          f"{getattr(module, 'EXPORT')!r}")


def _load_file(path):
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
            f"{first_line(e)}; --debug shows where)"
        ) from e
    return module
