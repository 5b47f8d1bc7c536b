"""A model family's declaration: what the shared modules know of it.

A family (VAE, GAN, diffusion, ...) is a `keras.Model` class that carries
one `Family` declaration, registered by the `declare_family` decorator next to the
class. `kgen.export`, `kgen.evaluate`, `kgen.serving` and `kgen sample`
read the declaration (or, for an exported model, what the export recorded
from it in `kgen.json`) and hold no table of families, so a new family adds
its own files and edits none of theirs.

Subclasses inherit their base's declaration (lookup follows the MRO), so a
subclass of a family is exported and evaluated as that family until it
declares its own.

Example:

```python
from kgen.family import Family, declare_family
from kgen.models.base import GenerativeModel


@declare_family(Family(
    name="video diffusion",
    output_kind="video",
    signatures="kgen.export.video:video_signatures",
    options={"num_steps": "int32", "guidance_scale": "float32"},
    uniform_inputs=("num_steps",),
    evaluation="video",
))
class VideoDiffusionModel(GenerativeModel):
    ...
```
"""

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Optional, Tuple, Union

# The kinds of output `kgen sample` and `kgen evaluate` know how to write
# and judge; the export's `generate` signature returns one output of that name.
OUTPUT_KINDS = ("images", "audio", "text", "video")
# The dtypes a `generate` option may have in a serving signature.
OPTION_DTYPES = ("int32", "int64", "float32", "float64", "string", "bool")

_REGISTRY = {}


class FamilyError(TypeError):
    """A class has no family declaration, or a declaration is malformed."""


@dataclasses.dataclass(frozen=True)
class Family:
    """What the shared modules need to know of one model family.

    Attributes:
        name: the family's name in messages (e.g. `"diffusion"`).
        output_kind: what `generate` makes: `"images"`, `"audio"`,
            `"text"` or `"video"`; also the name of the `generate`
            signature's main output.
        signatures: the export's signature builder, a callable
            `(model, max_rows) -> ({name: tf.function}, metadata dict)`,
            or its `"module:function"` path, imported only when a model is
            exported (so importing a model imports no TensorFlow export
            code).
        options: `generate` option name -> its dtype in the serving
            signature (one of `OPTION_DTYPES`), e.g.
            `{"num_steps": "int32"}`; the same names in Python and in the
            export.
        uniform_inputs: `generate` inputs that must hold one value across a
            whole call (one loop runs per call), so a server never merges
            requests that differ in them.
        evaluation: the kind of evaluation `kgen evaluate` runs (a name it
            resolves: `"images"`, `"audio"` or `"text"`); default the
            output kind.
        evaluation_metrics: extra metrics of that evaluation the family
            supports, e.g. `("negative_elbo",)` for a model with a
            likelihood bound.
        served_defaults: a callable `(input names) -> {input: default}`
            (or its `"module:function"` path): the defaults of the
            `generate` inputs that are the same in every export of the
            family, for a server that publishes no `kgen.json`.
        evaluator: for an `evaluation` `kgen evaluate` does not know (it
            knows `"images"`, `"audio"` and `"text"`), the evaluation
            itself: a callable (or its `"module:function"` path)
            `(source, *, data, n, classifier, seed, batch, keras_path,
            features, inception_weights, settings, progress) -> report`,
            called as `kgen.evaluate.evaluate` calls its own.
        writer: for an `output_kind` `kgen sample` does not write itself
            (it writes images, audio and text), an `OutputWriter` (or its
            `"module:attribute"` path) that checks the output path and
            writes the rows.
    """

    name: str
    output_kind: str
    signatures: Union[str, Callable]
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    uniform_inputs: Tuple[str, ...] = ()
    evaluation: Optional[str] = None
    evaluation_metrics: Tuple[str, ...] = ()
    served_defaults: Union[str, Callable, None] = None
    evaluator: Union[str, Callable, None] = None
    writer: Any = None

    def __post_init__(self):
        if self.output_kind not in OUTPUT_KINDS:
            raise FamilyError(f"family {self.name!r}: output_kind={self.output_kind!r} "
                              f"(expected one of {', '.join(OUTPUT_KINDS)})")
        for option, dtype in dict(self.options).items():
            if dtype not in OPTION_DTYPES:
                raise FamilyError(f"family {self.name!r}: option {option!r} has dtype "
                                  f"{dtype!r} (expected one of {', '.join(OPTION_DTYPES)})")
        object.__setattr__(self, "options", dict(self.options))
        object.__setattr__(self, "uniform_inputs", tuple(self.uniform_inputs))
        object.__setattr__(self, "evaluation_metrics", tuple(self.evaluation_metrics))
        if self.evaluation is None:
            object.__setattr__(self, "evaluation", self.output_kind)

    def signature_builder(self):
        """The export's signature builder (imported on first use)."""
        return _resolve(self.signatures)

    def defaults_for_served(self, input_names):
        """`{input: default}` for a served `generate` signature's inputs."""
        if self.served_defaults is None:
            return {}
        return dict(_resolve(self.served_defaults)(frozenset(input_names)))

    def evaluation_function(self):
        """The declared `evaluator` (imported on first use), or None."""
        return None if self.evaluator is None else _resolve(self.evaluator)

    def output_writer(self):
        """The declared `writer` (imported on first use), or None."""
        return None if self.writer is None else _resolve(self.writer)

    def export_metadata(self):
        """What an export records of the declaration in `kgen.json`, so that
        serving, deploy and `kgen sample` read it with no model code."""
        return {
            "output_kind": self.output_kind,
            "options": dict(self.options),
            "uniform_inputs": list(self.uniform_inputs),
            "evaluation": {"kind": self.evaluation,
                           "metrics": list(self.evaluation_metrics)},
        }


class OutputWriter:
    """How `kgen sample` writes the rows of one output kind (a family's
    `writer`, for a kind beyond images, audio and text).

    Subclass it and declare an instance (or its `"module:attribute"`
    path) as the family's `writer`.

    Attributes:
        kind: the output kind it writes (the `generate` output's name).
        default_out: the file written when `--out` is not given.
    """

    kind = None
    default_out = None

    def check_path(self, out):
        """The output path (`out`, or `default_out` when None), checked
        writable, before any row is drawn; raises
        `kgen.media.OutputError` naming a path it cannot write."""
        raise NotImplementedError

    def write(self, out, values, inputs, columns=None):
        """Write `values` (the `generate` output, finite float32 rows)
        to the checked `out`; `inputs` are the `generate` inputs of the
        rows. Returns the path written (or the first of several)."""
        raise NotImplementedError


def writer_for(kind):
    """The `OutputWriter` a registered family declares for output kind
    `kind`, or None."""
    for declaration in families().values():
        if declaration.output_kind == kind and declaration.writer is not None:
            return declaration.output_writer()
    return None


def evaluator_for(evaluation):
    """The evaluation function a registered family declares for the
    evaluation named `evaluation`, or None."""
    for declaration in families().values():
        if declaration.evaluation == evaluation and declaration.evaluator is not None:
            return declaration.evaluation_function()
    return None


def _resolve(target):
    if callable(target) or (target is not None and not isinstance(target, str)):
        return target
    module, _, name = str(target).partition(":")
    if not module or not name:
        raise FamilyError(f"{target!r}: expected a callable or 'module:function'")
    return getattr(importlib.import_module(module), name)


def declare_family(declaration):
    """Class decorator: register `declaration` as the family of the class.

    The class's `output_kind` attribute is set from the declaration, so the
    model, its callbacks and its export agree.

    Args:
        declaration: a `Family`.
    """
    if not isinstance(declaration, Family):
        raise FamilyError(f"{declaration!r}: expected a kgen.family.Family")

    def register(cls):
        _REGISTRY[cls] = declaration
        cls.output_kind = declaration.output_kind
        return cls

    return register


def family_of(model):
    """The declaration of a model (or a model class), inherited along the MRO.

    Raises:
        FamilyError: naming the class when no class of its MRO declares a
            family.
    """
    cls = model if isinstance(model, type) else type(model)
    for base in cls.__mro__:
        if base in _REGISTRY:
            return _REGISTRY[base]
    load_builtin()
    known = ", ".join(sorted(c.__name__ for c in _REGISTRY))
    raise FamilyError(f"{cls.__name__} declares no model family (kgen.family.declare_family); "
                      f"families: {known}")


def family_named(name):
    """The declaration of the registered class named `name` (as an export's
    `kgen.json` records it), or None."""
    load_builtin()
    found = [f for cls, f in _REGISTRY.items() if cls.__name__ == name]
    return found[-1] if found else None


def families():
    """`{class: Family}` of every registered family, the built-in ones included."""
    load_builtin()
    return dict(_REGISTRY)


def load_builtin():
    """Import kgen's own model families, which registers them."""
    importlib.import_module("kgen.models")


def option_value(declaration: Optional[Family], name: str, text: Any):
    """`--set NAME=TEXT` as a value of the option's declared dtype: an int,
    a float, or the text when the option is a string or undeclared and not
    a number.

    Raises:
        ValueError: naming the option when a numeric option's text is not a
            number.
    """
    dtype = (declaration.options.get(name) if declaration is not None else None)
    if dtype == "string":
        return str(text)
    if dtype == "bool":
        lowered = str(text).lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        raise ValueError(f"--set {name}={text}: expected true or false")
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if dtype is not None:
        raise ValueError(f"--set {name}={text}: expected a number")
    return text
