"""The diffusion export contract, checked as TF Serving loads a model: through
`saved_model_cli` and in a process that cannot import kgen."""

import textwrap

import numpy as np
import pytest

from kgen.export import export_model
from kgen.export import read_metadata
from kgen.models import DiffusionModel
from kgen.networks import unet
from kgen.schedulers import DDPMScheduler
from tests.conftest import backend
from tests.conftest import run_kgen
from tests.export.helpers import FORBIDDEN_OPS
from tests.export.helpers import graph_op_types
from tests.export.helpers import run_without_kgen
from tests.export.helpers import saved_model_cli



@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_arrays):
    """A conditional model trained a few steps on the current backend, saved
    as `.keras` and exported (from JAX/torch via a TensorFlow subprocess)."""
    images, labels = mnist_arrays
    tmp = tmp_path_factory.mktemp("export")
    images = images[:64, ::2, ::2]  # 14x14 keeps the test fast
    model = DiffusionModel(
        unet((14, 14, 1), widths=(8, 16), num_classes=10, groups=4),
        # v-prediction: a barely trained denoiser (output near 0) still gives
        # images that depend on the step count (with epsilon-prediction the
        # clipped x0 saturates every pixel to 0 or 1 whatever the steps).
        DDPMScheduler(100, "cosine", prediction_type="v"), num_classes=10,
        sampler="ddim", seed=0,
    )
    model.compile(optimizer="adam")
    model.fit({"images": images, "labels": labels[:64]}, batch_size=32, verbose=0)
    model.save(tmp / "model.keras")
    version_dir = export_model(tmp / "model.keras", tmp / "saved_models" / "ddpm")
    return {"dir": version_dir, "base": tmp / "saved_models" / "ddpm", "tmp": tmp}


def test_metadata(exported):
    meta = read_metadata(exported["dir"])
    assert meta["family"] == "DiffusionModel" and meta["output_kind"] == "images"
    assert meta["image_shape"] == [14, 14, 1] and meta["num_classes"] == 10
    assert meta["scheduler"] == "DDIMScheduler"
    assert meta["defaults"] == {"num_steps": 50, "guidance_scale": 2.0}


def test_saved_model_cli_show_and_run(exported, tmp_path):
    shown = saved_model_cli("show", "--dir", exported["dir"], "--all")
    assert shown.returncode == 0, shown.stderr
    for name in ("generate", "serving_default"):
        assert f"signature_def['{name}']" in shown.stdout
    for name, dtype in [("seed", "DT_INT64"), ("label", "DT_INT32"),
                        ("num_steps", "DT_INT32"), ("guidance_scale", "DT_FLOAT")]:
        assert f"inputs['{name}'] tensor_info:\n        dtype: {dtype}\n        shape: (-1)" \
            in shown.stdout
    feeds = tmp_path / "inputs.npz"
    np.savez(feeds, seed=np.array([4, 5], "int64"), label=np.array([3, 7], "int32"),
             num_steps=np.array([10, 10], "int32"),
             guidance_scale=np.array([2.0, 2.0], "float32"))
    result = saved_model_cli(
        "run", "--dir", exported["dir"], "--tag_set", "serve",
        "--signature_def", "generate", "--inputs",
        ";".join(f"{k}={feeds}[{k}]" for k in ("seed", "label", "num_steps",
                                               "guidance_scale")),
        "--outdir", tmp_path / "out",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    images = np.load(tmp_path / "out" / "images.npy")
    assert images.shape == (2, 14, 14, 1) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0


NO_KGEN = textwrap.dedent("""
    import json, sys
    sys.modules["kgen"] = None  # any `import kgen` now fails
    import numpy as np
    import tensorflow as tf

    m = tf.saved_model.load(sys.argv[1])
    gen = m.signatures["generate"]

    def run(seeds, labels, steps, guidance=2.0, fn=gen):
        n = len(seeds)
        return fn(seed=tf.constant(seeds, tf.int64), label=tf.constant(labels, tf.int32),
                  num_steps=tf.constant([steps] * n, tf.int32),
                  guidance_scale=tf.constant([guidance] * n, tf.float32))["images"].numpy()

    a = run([1, 2, 3], [0, 1, 2], 10)
    b = run([1, 2, 3], [0, 1, 2], 10)
    c = run([3], [2], 10)
    d = run([1, 2, 3], [0, 1, 2], 50)
    default = run([1], [0], 10, fn=m.signatures["serving_default"])
    errors = {}
    for name, kwargs in [("zero", dict(steps=0)), ("negative", dict(steps=-2)),
                         ("too_many", dict(steps=101))]:
        try:
            run([1], [0], **kwargs)
        except tf.errors.InvalidArgumentError as e:
            errors[name] = e.message
    try:
        run([1], [10], 5)
    except tf.errors.InvalidArgumentError as e:
        errors["label"] = e.message
    try:
        gen(seed=tf.constant([1, 2], tf.int64), label=tf.constant([0, 0], tf.int32),
            num_steps=tf.constant([5, 6], tf.int32),
            guidance_scale=tf.constant([1.0, 1.0], tf.float32))
    except tf.errors.InvalidArgumentError as e:
        errors["mixed"] = e.message
    print(json.dumps({
        "shape": a.shape, "same": bool(np.array_equal(a, b)),
        "row_independent": bool(np.allclose(a[2], c[0], atol=1e-5)),
        "default_matches": bool(np.allclose(default[0], a[0], atol=1e-5)),
        "rows_differ": bool(np.abs(a[0] - a[1]).max() > 1e-4),
        "steps_differ": bool(np.abs(a - d).max() > 1e-4),
        "range": [float(d.min()), float(d.max())], "errors": errors,
    }))
""")


def test_loads_and_runs_without_kgen(exported, tmp_path):
    out = run_without_kgen(tmp_path, NO_KGEN, exported["dir"])
    assert out["shape"] == [3, 14, 14, 1]
    assert out["same"], "the same seed must give the same images"
    assert out["row_independent"], "a row's sample must depend on its own inputs alone"
    assert out["default_matches"], "serving_default must be generate"
    assert out["rows_differ"] and out["steps_differ"]
    assert 0.0 <= out["range"][0] and out["range"][1] <= 1.0
    for name in ("zero", "negative", "too_many"):
        assert "num_steps must be between 1 and 100" in out["errors"][name]
    assert "label must be in [0, 10)" in out["errors"]["label"]
    assert "num_steps must be the same in every row" in out["errors"]["mixed"]


def test_graph_has_only_core_ops(exported):
    ops = graph_op_types(exported["dir"])
    assert "While" in ops or "StatelessWhile" in ops, "the loop must be in the graph"
    assert not ops & FORBIDDEN_OPS


def test_kgen_sample_fills_the_inputs(exported, tmp_path):
    out = tmp_path / "grid.png"
    run_kgen("sample", exported["base"], "--n", "4", "--out", out, cwd=tmp_path)
    assert out.is_file() and out.stat().st_size > 0


@pytest.mark.skipif(backend() != "tensorflow",
                    reason="in-process export only happens on TensorFlow; other "
                           "backends export a reloaded .keras file")
def test_a_model_that_has_sampled_exports(tmp_path):
    """The cache of compiled sampling functions must not end up in the graph
    (and an unconditional model has no `label` input)."""
    model = DiffusionModel(unet((8, 8, 1), (8, 16), groups=4), DDPMScheduler(50), seed=0)
    model.generate(2, seed=0, num_steps=3)
    version_dir = export_model(model, tmp_path / "uncond")
    meta = read_metadata(version_dir)
    assert meta["num_classes"] == 0 and meta["defaults"]["guidance_scale"] == 1.0
    import tensorflow as tf

    generate = tf.saved_model.load(str(version_dir)).signatures["generate"]
    assert set(generate.structured_input_signature[1]) == {
        "seed", "num_steps", "guidance_scale"}
    images = generate(seed=tf.constant([1, 2], tf.int64),
                      num_steps=tf.constant([4, 4], tf.int32),
                      guidance_scale=tf.constant([1.0, 1.0]))["images"]
    assert images.shape == (2, 8, 8, 1)
