"""The video export contract: `generate` and `extend` loaded in a process
that cannot import kgen, equal to `generate()` and `extend()` row by row,
and every bound refused by name."""

import json
import textwrap

import keras
import numpy as np
import pytest

from kgen.export import export_model
from kgen.export import read_metadata
from kgen.export.warmup import WARMUP_FILE
from kgen.export.warmup import read_warmup_file
from kgen.models import VideoDiffusionModel
from kgen.networks import video_unet
from kgen.schedulers import DDPMScheduler
from tests.export.helpers import FORBIDDEN_OPS
from tests.export.helpers import graph_op_types
from tests.export.helpers import run_without_kgen
from tests.export.helpers import tolerance
from tests.models.test_video import moving_squares

pytestmark = pytest.mark.tf_only

MAX_ROWS = 4
SHAPE = (4, 8, 8, 1)
CLIP_SETTINGS = {"frames": 4, "size": 8, "square": 3}


def trained_tiny(clip_settings):
    """A conditional video model of `SHAPE` clips, trained a few steps."""
    keras.utils.set_random_seed(0)
    model = VideoDiffusionModel(
        video_unet(SHAPE, filters=(8, 16), num_classes=10, groups=4),
        # v-prediction: a barely trained denoiser still gives clips that
        # depend on the step count (see test_diffusion_export.py).
        DDPMScheduler(100, "cosine", prediction_type="v"), num_classes=10,
        sampler="ddim", guidance_scale=3.0, clip_settings=clip_settings, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit({"videos": moving_squares(16), "labels": np.arange(16) % 10},
              batch_size=8, verbose=0)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A conditional model trained a few steps, saved as `.keras` and
    exported."""
    tmp = tmp_path_factory.mktemp("video_export")
    model = trained_tiny(CLIP_SETTINGS)
    model.save(tmp / "model.keras")
    base = tmp / "saved_models" / "video"
    version_dir = export_model(tmp / "model.keras", base, max_rows=MAX_ROWS)
    return {"dir": version_dir, "base": base, "model": model}


def test_metadata(exported):
    meta = read_metadata(exported["dir"])
    assert meta["family"] == "VideoDiffusionModel" and meta["output_kind"] == "video"
    assert meta["video_shape"] == [4, 8, 8, 1] and "image_shape" not in meta
    assert meta["clip_settings"] == CLIP_SETTINGS
    assert meta["extend"] == {"min_known": 1, "max_known": 3}
    assert meta["num_classes"] == 10 and meta["scheduler"] == "DDIMScheduler"
    assert meta["defaults"]["num_steps"] == 50 and meta["defaults"]["guidance_scale"] == 3.0
    assert meta["max_rows"] == MAX_ROWS and meta["max_row_steps"] == MAX_ROWS * 50
    assert meta["uniform_inputs"] == ["num_steps"]
    assert meta["evaluation"] == {"kind": "video", "metrics": []}
    assert "video float32 [batch, frames, h, w, c]" in meta["signatures"]["generate"]
    assert "frames float32 [batch, k, 8, 8, 1]" in meta["signatures"]["extend"]
    assert meta["warmup"] == {"frames": {"shape": [1, 8, 8, 1], "fill": 0.5}}
    # One warm-up request per signature, extend's included.
    logs = read_warmup_file(exported["dir"] / WARMUP_FILE)
    assert sorted(log.predict_log.request.model_spec.signature_name for log in logs) == [
        "extend", "generate", "serving_default"]


def test_graph_has_the_loops_in_core_ops(exported):
    ops = graph_op_types(exported["dir"])
    assert "While" in ops or "StatelessWhile" in ops, "the loops must be in the graph"
    assert not ops & FORBIDDEN_OPS


NO_KGEN = textwrap.dedent("""
    m = tf.saved_model.load(sys.argv[1])
    feeds = json.loads(sys.argv[2])
    specs = {"seed": tf.int64, "label": tf.int32, "num_steps": tf.int32,
             "guidance_scale": tf.float32, "frames": tf.float32}

    def run(name, **inputs):
        return m.signatures[name](
            **{k: tf.constant(v, specs[k]) for k, v in inputs.items()})["video"].numpy()

    def refused(name, **inputs):
        try:
            run(name, **inputs)
        except Exception as e:  # INVALID_ARGUMENT, or a shape the signature refuses
            return getattr(e, "message", None) or str(e)
        return None

    gen, ext = feeds["generate"], feeds["extend"]
    generated = run("generate", **gen)
    default = run("serving_default", **gen)
    extended = [run("extend", **e) for e in ext]
    alone = run("extend", **{k: v[1:2] for k, v in ext[0].items()})
    frames = np.array(ext[0]["frames"], "float32")
    one = dict(seed=[1], frames=frames[:1].tolist(), num_steps=[2])
    g1 = dict(seed=[1], label=[0], num_steps=[2], guidance_scale=[1.0])
    errors = {
        "generate_rows": refused("generate", seed=list(range(5)), label=[0] * 5,
                                 num_steps=[2] * 5, guidance_scale=[1.0] * 5),
        "generate_steps": refused("generate", **dict(g1, seed=[1, 2], label=[0, 0],
                                                     num_steps=[2, 3],
                                                     guidance_scale=[1.0, 1.0])),
        "label": refused("generate", **dict(g1, label=[11])),
        "row_steps": refused("generate", seed=list(range(4)), label=[0] * 4,
                             num_steps=[51] * 4, guidance_scale=[1.0] * 4),
        "known_zero": refused("extend", **dict(one, frames=np.zeros((1, 0, 8, 8, 1)))),
        "known_all": refused("extend", **dict(one, frames=np.zeros((1, 4, 8, 8, 1)).tolist())),
        "frames_size": refused("extend", **dict(one, frames=frames[:1, :, :4].tolist())),
        "frames_range": refused("extend", **dict(one, frames=(frames[:1] + 1.5).tolist())),
        "frames_nan": refused("extend", **dict(one, frames=(frames[:1] * np.nan).tolist())),
        "extend_rows": refused("extend", seed=list(range(5)),
                               frames=np.zeros((5, 3, 8, 8, 1)).tolist(),
                               num_steps=[2] * 5),
        "extend_steps": refused("extend", **dict(one, seed=[1, 2],
                                                 frames=frames[:2].tolist(),
                                                 num_steps=[2, 3])),
        "extend_frame_rows": refused("extend", **dict(one, seed=[1, 2],
                                                      num_steps=[2, 2])),
    }
    print(json.dumps({"generate": generated.tolist(),
                      "extend": [e.tolist() for e in extended],
                      "default_matches": bool(np.array_equal(default, generated)),
                      "alone": bool(np.allclose(alone[0], extended[0][1], atol=1e-5)),
                      "errors": errors}))
""")


def test_export_rows_equal_python_rows_and_refuse_bad_requests(exported, tmp_path):
    """Loaded without kgen: `generate` row r is `generate(1, seed=s + r,
    labels=label[r])` (label 10 = no label), and `extend` row r is
    `extend(frames[r:r+1], seed=s + r)` for requests of each k; each bound
    is refused by name."""
    model, s = exported["model"], 2**40 + 3  # seeds use all 64 bits
    clips = moving_squares(3, seed=9)
    known = [1, 3, 2]
    feeds = {
        "generate": dict(seed=[s, s + 1, s + 2], label=[3, 7, 10], num_steps=[3] * 3,
                         guidance_scale=[2.0] * 3),
        "extend": [dict(seed=[s, s + 1, s + 2], frames=clips[:, :k].tolist(),
                        num_steps=[3] * 3) for k in known],
    }
    out = run_without_kgen(tmp_path, NO_KGEN, exported["dir"], json.dumps(feeds))
    generated = np.array(out["generate"], "float32")
    extended = [np.array(e, "float32") for e in out["extend"]]
    assert generated.shape == extended[0].shape == extended[1].shape == (3, *SHAPE)
    assert 0.0 <= generated.min() and generated.max() <= 1.0
    assert out["default_matches"] and out["alone"]
    atol = tolerance(model, 1e-5)
    np.testing.assert_allclose(
        generated[:2], model.generate(2, seed=s, labels=[3, 7], num_steps=3,
                                      guidance_scale=2.0), atol=atol)
    np.testing.assert_allclose(generated[2], model.generate(1, seed=s + 2, num_steps=3)[0],
                               atol=atol)
    for i, k in enumerate(known):
        np.testing.assert_allclose(
            extended[i], model.extend(clips[:, :k], seed=s, num_steps=3), atol=atol)
        np.testing.assert_array_equal(extended[i][:, :k], clips[:, :k])
    row = model.extend(clips[2:3, :2], seed=s + 2, num_steps=3)[0]  # row 2 alone
    np.testing.assert_allclose(extended[2][2], row, atol=atol)

    errors = out["errors"]
    assert "seed has more rows than this export allows (max_rows=4)" in errors["generate_rows"]
    assert "seed has more rows than this export allows (max_rows=4)" in errors["extend_rows"]
    for name in ("generate_steps", "extend_steps"):
        assert "num_steps must be the same in every row" in errors[name]
    assert "label must be in [0, 10] (10: no label)" in errors["label"]
    assert "rows (seed) x num_steps must be at most 200" in errors["row_steps"]
    for name in ("known_zero", "known_all"):
        assert "frames must hold 1 to 3 known frames (clips have 4)" in errors[name]
    assert "frames must have shape [batch, k, 8, 8, 1]" in errors["frames_size"]
    assert "frames must be in [0, 1]" in errors["frames_range"]
    assert "frames must be finite" in errors["frames_nan"]
    assert "frames must have one value per row (as seed)" in errors["extend_frame_rows"]
