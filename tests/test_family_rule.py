"""The family is the unit of extension: the rule, checked.

(a) The shared modules hold no family knowledge: no family class's name as
an identifier or as an exact string (a table key, a comparison), and no
import of `kgen.models`' concrete classes. (b) A family declared entirely
inside this file (`EchoModel`: seeded noise images, one float option) goes
through export -> kgen.json -> `kgen sample` / serving / deploy / evaluate
without any shared module knowing of it.
"""

import ast
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from kgen.family import Family
from kgen.family import FamilyError
from kgen.family import declare_family
from kgen.family import family_of

REPO = pathlib.Path(__file__).resolve().parents[1]

FAMILY_MODULES = (
    "kgen/models/<family>.py",
    "kgen/models/__init__.py",
    "kgen/export/<family>.py",
    "kgen/networks/<network>.py",
    "kgen/data/<modality>.py",
    "kgen/metrics/<family>.py",
    "kgen/<output kind>.py",
    "recipes/<recipe>.py",
    "tests/models/test_<family>.py",
    "tests/export/test_<family>_export.py",
    "docs/",
)
"""Adding a family.

A model family is a `keras.Model` class in its own file under
`kgen/models/`, decorated with `kgen.family.declare_family(Family(...))`:
its name, its output kind (images, audio, text, video), its export
signature builder (a `"module:function"` path into
`kgen/export/<family>.py`, imported only when exporting), its `generate`
options with their serving dtypes, the inputs that must hold one value
across a call, and the evaluation `kgen evaluate` runs for it. Subclasses
inherit the declaration. `kgen export` records these facts in the export's
`kgen.json`; `kgen sample`, `kgen serve`, `kgen deploy` and
`kgen evaluate` read them there (or from the declaration). So a new family
adds the files in `FAMILY_MODULES` (plus one import line in
`kgen/models/__init__.py`, so that `.keras` files find the class, and in
`kgen/networks/__init__.py` or `kgen/data/__init__.py` for a new network
or loader) and
edits none of `SHARED_MODULES`: a shared module names no family class in
its code (documentation may, as an example) and imports no concrete model
class. A family whose output kind kgen does not write or judge itself
(beyond images, audio and text, e.g. video) declares those too: its
`OutputWriter` for `kgen sample` and its evaluator for `kgen evaluate`,
in its own files.
"""


def rule():
    """The rule: `FAMILY_MODULES`' docstring, as written above."""
    tree = ast.parse(pathlib.Path(__file__).read_text(encoding="utf-8"))
    for node, following in zip(tree.body, tree.body[1:]):
        if (isinstance(node, ast.Assign) and node.targets[0].id == "FAMILY_MODULES"
                and isinstance(following, ast.Expr)):
            return following.value.value
    raise AssertionError("FAMILY_MODULES has no docstring")

SHARED_MODULES = (
    "kgen/family.py",
    "kgen/export/__init__.py",
    "kgen/export/_worker.py",
    "kgen/export/common.py",
    "kgen/export/metadata.py",
    "kgen/export/publish.py",
    "kgen/export/sample.py",
    "kgen/export/warmup.py",
    "kgen/evaluate.py",
    "kgen/serving/*.py",
    "kgen/cli.py",
)

FAMILY_CLASSES = ("VAE", "GAN", "DiffusionModel", "AudioDiffusionModel", "CausalLM",
                  "VideoDiffusionModel")


def shared_files():
    files = []
    for pattern in SHARED_MODULES:
        found = sorted(REPO.glob(pattern))
        assert found, f"{pattern}: no such module (update SHARED_MODULES)"
        files += found
    return files


def family_mentions(source, filename="<source>"):
    """`(line, what)` for each place `source` names a family class in code.

    Counted: an identifier or attribute with a family class's name, a string
    constant that is exactly such a name (a table key, a comparison), and an
    import of `kgen.models`' classes or family modules. Not counted:
    comments, docstrings and prose that mentions a family among other
    words.
    """
    tree = ast.parse(source, filename)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                             ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in FAMILY_CLASSES:
            found.append((node.lineno, f"name {node.id}"))
        elif isinstance(node, ast.Attribute) and node.attr in FAMILY_CLASSES:
            found.append((node.lineno, f"attribute .{node.attr}"))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in docstrings and node.value.strip() in FAMILY_CLASSES):
            found.append((node.lineno, f"string {node.value!r}"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kgen.models"):
            found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kgen.models."):
                    found.append((node.lineno, f"import {alias.name}"))
    return found


@pytest.mark.backend_agnostic
def test_shared_modules_name_no_family():
    offences = []
    for path in shared_files():
        for line, what in family_mentions(path.read_text(encoding="utf-8"), str(path)):
            offences.append(f"{path.relative_to(REPO)}:{line}: {what}")
    assert not offences, rule() + "\nFamily knowledge in shared modules:\n" + "\n".join(offences)


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("source, expected", [
    ('IMAGE_FAMILIES = ("VAE", "GAN")', 2),
    ('if meta.get("family") == "DiffusionModel": pass', 1),
    ('UNIFORM = {"DiffusionModel": ("num_steps",)}', 1),
    ("from kgen import models\nbuilders = {models.VAE: 1}", 1),
    ("from kgen.models import CausalLM", 1),
    ("import kgen.models.gan", 1),
    ('"""A VAE adds its ELBO."""\nhelp = "a VAE\'s test negative ELBO"', 0),
    ("kind = metadata['output_kind']  # VAE, GAN", 0),
])
def test_the_scan_finds_family_knowledge(source, expected):
    """The scan is not blind: it finds each kind of family knowledge the
    shared modules once held, and passes documentation."""
    assert len(family_mentions(source)) == expected, family_mentions(source)


@pytest.mark.backend_agnostic
def test_importing_a_model_imports_no_export_code():
    """Signature builders are named by path and imported on export only."""
    code = ("import sys, kgen.models, kgen.family as f; "
            "f.family_of(kgen.models.VAE).name; "
            "print(sorted(m for m in sys.modules if m.startswith('kgen.export.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = eval(done.stdout.strip().splitlines()[-1])
    assert not [m for m in loaded if m not in ("kgen.export.metadata",)], loaded


@pytest.mark.backend_agnostic
def test_kgens_families_declare_themselves():
    """Each of kgen's own families is declared beside its class, with its
    builder named by path, and the class's output_kind is the declared one."""
    from kgen import models
    from kgen.family import families

    declared = {cls.__name__: f for cls, f in families().items()
                if cls.__module__.startswith("kgen.models.")}
    assert set(declared) == set(FAMILY_CLASSES)
    for name, declaration in declared.items():
        assert getattr(models, name).output_kind == declaration.output_kind
        module, _, function = declaration.signatures.partition(":")
        assert module.startswith("kgen.export.") and function, (name, declaration.signatures)
    assert declared["AudioDiffusionModel"].output_kind == "audio"
    assert declared["CausalLM"].output_kind == "text"
    assert declared["DiffusionModel"].uniform_inputs == ("num_steps",)
    assert declared["VAE"].evaluation_metrics == ("negative_elbo",)


# === A family defined here alone ===


def echo_signatures(model, max_rows):
    """`generate`: seed (and brightness) -> noise images, one per seed."""
    import tensorflow as tf

    from kgen.export import common

    shape = list(model.image_shape)

    @tf.function(input_signature=[
        common.SEED_SPEC, tf.TensorSpec([None], tf.float32, name="brightness")])
    def generate(seed, brightness):
        checks = common.check_rows(seed, max_rows)
        checks += common.check_same_rows(seed, brightness=brightness)
        with tf.control_dependencies(checks):
            noise = tf.sigmoid(common.normal_per_row(seed, shape))
        gain = tf.convert_to_tensor(model.gain.value)
        images = noise * tf.reshape(brightness, [-1, 1, 1, 1]) * gain
        return {"images": tf.clip_by_value(images, 0.0, 1.0)}

    metadata = {"image_shape": shape, "defaults": {"brightness": 0.5},
                "signatures": {"generate": "seed int64, brightness float32 [batch] -> "
                                           "images float32 [batch, h, w, c] in [0, 1]"}}
    return {"generate": generate}, metadata


@declare_family(Family(
    name="echo",
    output_kind="images",
    signatures=echo_signatures,
    options={"brightness": "float32"},
    uniform_inputs=("brightness",),
))
@keras.saving.register_keras_serializable(package="kgen_test_family")
class EchoModel(keras.Model):
    """Seeded noise images scaled by one weight: a family in a test file."""

    def __init__(self, image_shape=(4, 4, 1), **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(image_shape)
        self.gain = self.add_weight(shape=(), initializer="ones", name="gain")
        self.built = True

    def call(self, images):
        return images * self.gain

    def get_config(self):
        return {**super().get_config(), "image_shape": list(self.image_shape)}


class LoudEchoModel(EchoModel):
    """A subclass: it inherits the echo family's declaration."""


@pytest.mark.backend_agnostic
def test_a_family_declared_here_is_found_by_class_and_inherited():
    declaration = family_of(EchoModel)
    assert declaration.name == "echo" and family_of(LoudEchoModel()) is declaration
    assert EchoModel.output_kind == "images"
    assert declaration.export_metadata() == {
        "output_kind": "images", "options": {"brightness": "float32"},
        "uniform_inputs": ["brightness"],
        "evaluation": {"kind": "images", "metrics": []}}
    with pytest.raises(FamilyError, match="Plain declares no model family"):
        family_of(type("Plain", (keras.Model,), {}))
    with pytest.raises(FamilyError, match="option 'speed' has dtype 'int'"):
        Family(name="bad", output_kind="images", signatures=echo_signatures,
               options={"speed": "int"})


def _tensorflow():
    return keras.backend.backend() == "tensorflow"


@pytest.fixture(scope="module")
def echo_export(tmp_path_factory):
    from kgen.export import export_model

    base = tmp_path_factory.mktemp("tree") / "echo"
    return export_model(LoudEchoModel(), base, max_rows=4)


# Exports are written by the TensorFlow backend; from JAX or PyTorch a
# child process reloads the `.keras` file, which finds kgen's own families
# (imported with `kgen.models`) but not a class defined in a test file.
tf_only = pytest.mark.tf_only


@tf_only
def test_export_records_the_declaration_in_kgen_json(echo_export):
    from kgen.export.metadata import read_metadata
    from kgen.export.metadata import uniform_inputs

    assert echo_export.name == "1"
    meta = read_metadata(echo_export)
    assert meta["family"] == "LoudEchoModel" and meta["output_kind"] == "images"
    assert meta["options"] == {"brightness": "float32"}
    assert meta["uniform_inputs"] == ["brightness"] and meta["max_rows"] == 4
    assert meta["evaluation"] == {"kind": "images", "metrics": []}
    assert uniform_inputs(meta) == {"brightness"}


@tf_only
def test_kgen_sample_writes_the_new_familys_images(echo_export, tmp_path):
    from kgen.export.sample import sample_saved_model

    base = echo_export.parent
    rows = np.load(sample_saved_model(base, n=6, seed=7, out=tmp_path / "rows.npy"))
    assert rows.shape == (6, 4, 4, 1) and 0 < rows.min() and rows.max() <= 0.5
    # Row i depends on seed 7 + i alone (split by max_rows=4 into two calls).
    one = np.load(sample_saved_model(base, n=1, seed=12, out=tmp_path / "one.npy"))
    np.testing.assert_allclose(rows[5], one[0], atol=1e-6)
    # The declared option, over the export's default.
    dim = np.load(sample_saved_model(base, n=6, seed=7, out=tmp_path / "dim.npy",
                                     settings={"brightness": "0.25"}))
    np.testing.assert_allclose(dim, rows / 2, atol=1e-6)
    grid = sample_saved_model(base, n=4, seed=0, out=tmp_path / "grid.png")
    assert grid.stat().st_size > 0


@tf_only
def test_serving_and_deploy_read_the_uniform_inputs(echo_export, tmp_path):
    from kgen.serving.deploy import write_deployment
    from kgen.serving.models import Version

    version = Version("echo", 1, echo_export)
    assert version.uniform == {"brightness"} and version.max_rows == 4
    result = write_deployment(echo_export.parent.parent, tmp_path / "deploy", batching=True)
    assert ("batching merges requests: requests to echo must then share brightness "
            "(one loop runs per merged batch)") in result["notes"]


@tf_only
def test_evaluate_runs_the_declared_evaluation(echo_export):
    from kgen import evaluate

    source = evaluate._source(echo_export.parent, None)
    assert source.evaluation == "images" and source.evaluation_metrics == ()
    # The image evaluation, which asks first for the real images.
    with pytest.raises(evaluate.EvaluateError, match="--data: needed, the real images"):
        evaluate.evaluate(echo_export.parent, n=2, progress=False)


def test_a_model_with_no_family_is_not_exported(tmp_path):
    from kgen.export import export_model

    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    # On JAX and PyTorch the TensorFlow child raises it; the parent raises
    # the same error again.
    with pytest.raises(TypeError, match="no serving signatures for Sequential"):
        export_model(plain, tmp_path / "plain")
    assert not (tmp_path / "plain" / "1").exists()


# === An evaluation the family brings itself ===


def mean_brightness(source, *, n, seed, settings, **_):
    """A family's own evaluation: the mean pixel of `n` samples."""
    rows = source.generate(seed, n, None, settings)
    return {"family": source.family, "n": n, "seed": seed,
            "samples": {"mean_brightness": float(np.mean(rows))}, "floor": {}}


@declare_family(Family(
    name="judged echo",
    output_kind="images",
    signatures=echo_signatures,
    options={"brightness": "float32"},
    uniform_inputs=("brightness",),
    evaluation="mean brightness",
    evaluator=mean_brightness,
))
class JudgedEchoModel(EchoModel):
    """An echo model whose evaluation is its own (not kgen's image one)."""


@tf_only
def test_evaluate_runs_an_evaluator_the_family_declares(tmp_path):
    from kgen import evaluate
    from kgen.export import export_model

    version = export_model(JudgedEchoModel(), tmp_path / "judged", max_rows=4)
    report = evaluate.evaluate(version.parent, n=6, seed=3, progress=False,
                               settings={"brightness": "0.5"})
    assert report["family"] == "JudgedEchoModel" and report["n"] == 6
    # sigmoid of standard normal noise has mean 1/2; times brightness 0.5.
    assert 0.18 < report["samples"]["mean_brightness"] < 0.32
    assert "mean_brightness" in evaluate.format_report(report)
