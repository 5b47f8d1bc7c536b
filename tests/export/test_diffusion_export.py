"""The diffusion export contract, checked as TF Serving loads a model: through
`saved_model_cli` and in a process that cannot import kgen."""

import json
import textwrap

import numpy as np
import pytest

from kgen.export import export_model
from kgen.export import read_metadata
from kgen.models import DiffusionModel
from kgen.networks import unet
from kgen.schedulers import DDPMScheduler
from tests.conftest import run_kgen
from tests.export.helpers import FORBIDDEN_OPS
from tests.export.helpers import graph_op_types
from tests.export.helpers import run_without_kgen
from tests.export.helpers import saved_model_cli
from tests.export.helpers import tolerance

MAX_ROWS = 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_arrays):
    """A conditional model trained a few steps on the current backend, saved
    as `.keras` and exported (from JAX/torch via a TensorFlow subprocess)."""
    images, labels = mnist_arrays
    tmp = tmp_path_factory.mktemp("export")
    images = images[:64, ::2, ::2]  # 14x14 keeps the test fast
    model = DiffusionModel(
        unet((14, 14, 1), filters=(8, 16), num_classes=10, groups=4),
        # v-prediction: a barely trained denoiser (output near 0) still gives
        # images that depend on the step count (with epsilon-prediction the
        # clipped x0 saturates every pixel to 0 or 1 whatever the steps).
        DDPMScheduler(100, "cosine", prediction_type="v"), num_classes=10,
        sampler="ddim", guidance_scale=3.0, seed=0,
    )
    model.compile(optimizer="adam")
    model.fit({"images": images, "labels": labels[:64]}, batch_size=32, verbose=0)
    model.save(tmp / "model.keras")
    version_dir = export_model(tmp / "model.keras", tmp / "saved_models" / "ddpm",
                               max_rows=MAX_ROWS)
    return {"dir": version_dir, "base": tmp / "saved_models" / "ddpm", "tmp": tmp,
            "model": model}


@pytest.mark.tf_only
def test_metadata(exported):
    meta = read_metadata(exported["dir"])
    assert meta["family"] == "DiffusionModel" and meta["output_kind"] == "images"
    assert meta["image_shape"] == [14, 14, 1] and meta["num_classes"] == 10
    assert meta["scheduler"] == "DDIMScheduler"
    # The model's own guidance is the default `kgen sample` asks for.
    assert meta["defaults"] == {"num_steps": 50, "guidance_scale": 3.0}
    assert meta["max_rows"] == MAX_ROWS and meta["uses_ema_weights"] is True
    # rows x num_steps: max_rows at the default step count
    assert meta["max_row_steps"] == MAX_ROWS * 50
    assert "rows x num_steps <= 400" in meta["signatures"]["generate"]


@pytest.mark.tf_only
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
    def refused(seeds, labels, steps, guidance):
        try:
            gen(seed=tf.constant(seeds, tf.int64), label=tf.constant(labels, tf.int32),
                num_steps=tf.constant(steps, tf.int32),
                guidance_scale=tf.constant(guidance, tf.float32))
        except tf.errors.InvalidArgumentError as e:
            return e.message
        return None

    errors = {name: refused(*args) for name, args in {
        "zero": ([1], [0], [0], [2.0]), "negative": ([1], [0], [-2], [2.0]),
        "too_many": ([1], [0], [101], [2.0]), "label": ([1], [11], [5], [2.0]),
        "negative_label": ([1], [-1], [5], [2.0]),
        "mixed": ([1, 2], [0, 0], [5, 6], [1.0, 1.0]),
        "empty": ([], [], [], []), "rows": (list(range(9)), [0] * 9, [2] * 9, [1.0] * 9),
        "row_steps": (list(range(8)), [0] * 8, [51] * 8, [1.0] * 8),
        "label_rows": ([1, 2], [0], [5, 5], [1.0, 1.0]),
        "steps_rows": ([1, 2], [0, 0], [5], [1.0, 1.0]),
        "guidance_rows": ([1, 2], [0, 0], [5, 5], [1.0]),
        "guidance_nan": ([1], [0], [5], [float("nan")]),
    }.items()}
    accepted = {
        "no_label": refused([1], [10], [5], [2.0]) is None,
        "max_rows_at_max_steps": refused(list(range(8)), [0] * 8, [50] * 8, [1.0] * 8) is None,
    }
    print(json.dumps({
        "shape": a.shape, "same": bool(np.array_equal(a, b)),
        "row_independent": bool(np.allclose(a[2], c[0], atol=1e-5)),
        "default_matches": bool(np.allclose(default[0], a[0], atol=1e-5)),
        "rows_differ": bool(np.abs(a[0] - a[1]).max() > 1e-4),
        "steps_differ": bool(np.abs(a - d).max() > 1e-4),
        "range": [float(d.min()), float(d.max())], "errors": errors, "accepted": accepted,
    }))
""")


@pytest.mark.tf_only
def test_loads_and_runs_without_kgen(exported, tmp_path):
    out = run_without_kgen(tmp_path, NO_KGEN, exported["dir"])
    assert out["shape"] == [3, 14, 14, 1]
    assert out["same"], "the same seed must give the same images"
    assert out["row_independent"], "a row's sample must depend on its own inputs alone"
    assert out["default_matches"], "serving_default must be generate"
    assert out["rows_differ"] and out["steps_differ"]
    assert 0.0 <= out["range"][0] and out["range"][1] <= 1.0
    errors = out["errors"]
    for name in ("zero", "negative", "too_many"):
        assert "num_steps must be between 1 and 100" in errors[name]
    for name in ("label", "negative_label"):
        assert "label must be in [0, 10] (10: no label)" in errors[name]
    assert "num_steps must be the same in every row" in errors["mixed"]
    assert "seed must have at least one row (empty batch)" in errors["empty"]
    assert "seed has more rows than this export allows (max_rows=8)" in errors["rows"]
    assert "rows (seed) x num_steps must be at most 400" in errors["row_steps"]
    for name in ("label", "num_steps", "guidance_scale"):
        key = {"label": "label_rows", "num_steps": "steps_rows",
               "guidance_scale": "guidance_rows"}[name]
        assert f"{name} must have one value per row (as seed)" in errors[key]
    assert "guidance_scale must be finite" in errors["guidance_nan"]
    assert out["accepted"] == {"no_label": True, "max_rows_at_max_steps": True}


@pytest.mark.tf_only
def test_graph_has_only_core_ops(exported):
    ops = graph_op_types(exported["dir"])
    assert "While" in ops or "StatelessWhile" in ops, "the loop must be in the graph"
    assert not ops & FORBIDDEN_OPS


@pytest.mark.tf_only
def test_kgen_sample_fills_the_inputs(exported, tmp_path):
    out = tmp_path / "grid.png"
    run_kgen("sample", exported["base"], "--n", "4", "--out", out, cwd=tmp_path)
    assert out.is_file() and out.stat().st_size > 0


EXPORT_ROWS = textwrap.dedent("""
    m = tf.saved_model.load(sys.argv[1])
    gen = m.signatures["generate"]
    feeds = json.loads(sys.argv[2])
    specs = {"seed": tf.int64, "label": tf.int32, "num_steps": tf.int32,
             "guidance_scale": tf.float32}
    images = gen(**{k: tf.constant(v, specs[k]) for k, v in feeds.items()})["images"]
    print(json.dumps({"inputs": sorted(gen.structured_input_signature[1]),
                      "images": images.numpy().tolist()}))
""")


def export_rows(tmp_path, version_dir, **feeds):
    """The export's images for `feeds`, run in a process without kgen."""
    out = run_without_kgen(tmp_path, EXPORT_ROWS, version_dir, json.dumps(feeds))
    return out["inputs"], np.array(out["images"], "float32")


def test_export_rows_equal_python_generate_rows(exported, tmp_path):
    """Row i of the export for seed s + i is `generate(1, seed=s + i)` and row
    i of `generate(n, seed=s)`, labelled (guided) and unlabelled rows alike
    (label 10 = the "no label" class = `labels=None`)."""
    model, s = exported["model"], 2**40 + 3  # seeds use all 64 bits
    _, rows = export_rows(tmp_path, exported["dir"], seed=[s, s + 1, s + 2],
                          label=[3, 7, 10], num_steps=[4] * 3, guidance_scale=[2.0] * 3)
    labelled = model.generate(2, seed=s, labels=[3, 7], num_steps=4, guidance_scale=2.0)
    unlabelled = model.generate(3, seed=s, num_steps=4)
    np.testing.assert_allclose(rows[:2], labelled, atol=tolerance(model, 1e-4))
    np.testing.assert_allclose(rows[2], unlabelled[2], atol=tolerance(model, 1e-4))
    for i, label in enumerate([3, 7, None]):
        one = model.generate(1, seed=s + i, labels=label, num_steps=4, guidance_scale=2.0)
        np.testing.assert_allclose(rows[i], one[0], atol=tolerance(model, 1e-4))
    assert np.abs(rows[0] - rows[1]).max() > 1e-4


def test_unconditional_export_after_sampling(tmp_path):
    """A model that has sampled exports (the cache of compiled functions stays
    out of the graph), has no `label` input, and its stochastic (DDPM) rows,
    whose step noise is drawn inside the loop, equal `generate()`'s."""
    model = DiffusionModel(unet((8, 8, 1), (8, 16), groups=4), DDPMScheduler(50),
                           sampler="ddpm", seed=0)
    model.compile(optimizer="adam")
    images = np.random.default_rng(0).uniform(size=(16, 8, 8, 1)).astype("float32")
    model.fit(images, batch_size=8, verbose=0)
    python_rows = model.generate(3, seed=-5, num_steps=5)
    version_dir = export_model(model, tmp_path / "uncond")
    meta = read_metadata(version_dir)
    assert meta["num_classes"] == 0 and meta["defaults"] == {
        "num_steps": 50, "guidance_scale": 1.0}
    assert meta["max_row_steps"] == 256 * 50
    inputs, rows = export_rows(tmp_path, version_dir, seed=[-5, -4, -3],
                               num_steps=[5] * 3, guidance_scale=[1.0] * 3)
    assert inputs == ["guidance_scale", "num_steps", "seed"]
    np.testing.assert_allclose(rows, python_rows, atol=tolerance(model, 1e-4))
    np.testing.assert_allclose(rows[1], model.generate(1, seed=-4, num_steps=5)[0],
                               atol=tolerance(model, 1e-4))
