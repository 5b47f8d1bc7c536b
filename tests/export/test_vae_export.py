"""The export contract, checked the way TF Serving loads a model: through
`saved_model_cli` (the C++ SavedModel loader and session) and through
`tf.saved_model.load` in a process that cannot import kgen."""

import textwrap

import keras
import numpy as np
import pytest

from kgen.export import export_model
from kgen.export import read_metadata
from kgen.export import versions
from kgen.models import VAE
from kgen.networks import conv_decoder
from kgen.networks import conv_encoder
from tests.export.helpers import FORBIDDEN_OPS
from tests.export.helpers import graph_op_types
from tests.export.helpers import run_without_kgen
from tests.export.helpers import saved_model_cli
from tests.export.helpers import tolerance


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_arrays):
    """A VAE trained a few steps on the current backend, then exported."""
    images, _ = mnist_arrays
    tmp = tmp_path_factory.mktemp("export")
    vae = VAE(conv_encoder((28, 28, 1), 3, (8, 16), 32),
              conv_decoder(3, (28, 28, 1), (16, 8), 32), seed=0)
    vae.compile(optimizer="adam")
    vae.fit(images[:128], batch_size=64, epochs=1, verbose=0)
    vae.save(tmp / "vae.keras")
    version_dir = export_model(tmp / "vae.keras", tmp / "saved_models" / "vae")
    return {"dir": version_dir, "base": tmp / "saved_models" / "vae",
            "model": vae, "tmp": tmp}


def test_first_version_is_1_with_metadata(exported):
    assert exported["dir"].name == "1"
    meta = read_metadata(exported["dir"])
    assert meta["family"] == "VAE" and meta["output_kind"] == "images"
    assert meta["image_shape"] == [28, 28, 1]


@pytest.mark.tf_only
def test_signatures_listed_by_saved_model_cli(exported):
    result = saved_model_cli("show", "--dir", exported["dir"], "--all")
    assert result.returncode == 0, result.stderr
    for name in ("generate", "encode", "decode", "serving_default"):
        assert f"signature_def['{name}']" in result.stdout
    assert "inputs['seed'] tensor_info:\n        dtype: DT_INT64\n        shape: (-1)" in result.stdout


def test_saved_model_cli_run_generate(exported, tmp_path):
    result = saved_model_cli(
        "run", "--dir", exported["dir"], "--tag_set", "serve",
        "--signature_def", "generate", "--input_exprs", "seed=[4,5,6]",
        "--outdir", tmp_path,
    )
    assert result.returncode == 0, result.stderr
    images = np.load(tmp_path / "images.npy")
    assert images.shape == (3, 28, 28, 1) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0


@pytest.mark.tf_only
def test_saved_model_cli_rejects_wrong_dtype(exported):
    result = saved_model_cli(
        "run", "--dir", exported["dir"], "--tag_set", "serve",
        "--signature_def", "decode", "--input_exprs", "latents=[[1,2]]",
    )
    assert result.returncode != 0


NO_KGEN = textwrap.dedent("""
    m = tf.saved_model.load(sys.argv[1])
    gen = m.signatures["generate"]
    a = gen(seed=tf.constant([1, 2, 3], tf.int64))["images"].numpy()
    b = gen(seed=tf.constant([3], tf.int64))["images"].numpy()
    default = m.signatures["serving_default"](seed=tf.constant([1], tf.int64))["images"].numpy()
    enc = m.signatures["encode"](images=tf.constant(a))
    dec = m.signatures["decode"](latents=enc["mean"])["images"].numpy()
    errors = {}
    try:
        m.signatures["encode"](images=tf.constant(a * 3.0))
    except tf.errors.InvalidArgumentError as e:
        errors["range"] = e.message
    try:
        m.signatures["decode"](latents=tf.constant([[float("nan")] * enc["mean"].shape[1]]))
    except tf.errors.InvalidArgumentError as e:
        errors["nan"] = e.message
    print(json.dumps({
        "shape": a.shape, "row_independent": bool(np.allclose(a[2], b[0], atol=1e-5)),
        "default_matches": bool(np.allclose(default[0], a[0], atol=1e-5)),
        "rows_differ": bool(np.abs(a[0] - a[1]).max() > 1e-4),
        "mean_shape": enc["mean"].shape.as_list(), "dec_shape": dec.shape,
        "errors": errors,
    }))
""")


@pytest.mark.tf_only
def test_loads_and_runs_without_kgen(exported, tmp_path):
    out = run_without_kgen(tmp_path, NO_KGEN, exported["dir"])
    assert out["shape"] == [3, 28, 28, 1]
    assert out["row_independent"], "a row's sample must depend on its seed alone"
    assert out["default_matches"], "serving_default must be generate"
    assert out["rows_differ"]
    assert out["mean_shape"] == [3, 3] and out["dec_shape"] == [3, 28, 28, 1]
    assert "images must be in [0, 1]" in out["errors"]["range"]
    assert "latents must be finite" in out["errors"]["nan"]


def test_exported_generate_matches_the_model_decoder(exported):
    """The graph decodes exactly what the trained model decodes."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(exported["dir"]))
    latents = np.random.default_rng(0).normal(size=(2, 3)).astype("float32")
    served = loaded.signatures["decode"](latents=tf.constant(latents))["images"].numpy()
    local = keras.ops.convert_to_numpy(exported["model"].decode(latents))
    np.testing.assert_allclose(served, local, atol=tolerance(exported["model"], 1e-5))


@pytest.mark.tf_only
def test_graph_has_only_core_ops(exported):
    ops = graph_op_types(exported["dir"])
    # kgen.random's integer hash, not TensorFlow's own RNG kernels.
    assert {"BitwiseXor", "RightShift", "Cos", "Log"} <= ops
    assert not ops & FORBIDDEN_OPS


def test_next_export_is_version_2_and_atomic(exported):
    second = export_model(exported["tmp"] / "vae.keras", exported["base"])
    assert second.name == "2"
    assert versions(exported["base"]) == [1, 2]
    assert [p.name for p in exported["base"].iterdir() if p.name.startswith(".")] == []
