"""The video diffusion model on the current backend: the masked training
loss, the generate contract for whole clips and for extended ones,
refusals, training, `.keras` files and the family declaration."""

import keras
import numpy as np
import pytest
from keras import ops

from kgen.family import family_of
from kgen.models import VideoDiffusionModel
from kgen.networks import video_unet
from kgen.schedulers import DDPMScheduler

SHAPE = (4, 8, 8, 1)  # frames, height, width, channels


def tiny_model(num_classes=10, **kwargs):
    kwargs.setdefault("scheduler", DDPMScheduler(100))
    return VideoDiffusionModel(
        video_unet(SHAPE, filters=(8, 16), num_classes=num_classes, groups=4),
        num_classes=num_classes, seed=1, **kwargs)


def moving_squares(n, seed=0, frames=4, size=8, square=3):
    """`n` clips of one bright square moving one pixel a frame, bouncing
    off the edges: float32 `(n, frames, size, size, 1)` in [0, 1]."""
    rng = np.random.default_rng(seed)
    clips = np.zeros((n, frames, size, size, 1), "float32")
    for i in range(n):
        pos = rng.integers(0, size - square + 1, size=2)
        step = rng.choice([-1, 1], size=2)
        for f in range(frames):
            clips[i, f, pos[0]:pos[0] + square, pos[1]:pos[1] + square] = 1.0
            for axis in range(2):
                if not 0 <= pos[axis] + step[axis] <= size - square:
                    step[axis] = -step[axis]
                pos[axis] += step[axis]
    return clips


def batch(n=8, seed=0):
    return {"videos": moving_squares(n, seed), "labels": np.arange(n) % 10}


def to_numpy(x):
    return ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def trained():
    """A conditional v-prediction model after a few steps (one compile)."""
    model = tiny_model(scheduler=DDPMScheduler(100, "cosine", prediction_type="v"),
                       sampler="ddim", ema_decay=0.9,
                       clip_settings={"frames": 4, "size": 8, "square": 3})
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(batch(16), batch_size=8, epochs=1, verbose=0)
    return model


def test_the_family_is_declared_beside_the_class():
    declaration = family_of(VideoDiffusionModel)
    assert declaration.output_kind == "video" and VideoDiffusionModel.output_kind == "video"
    assert declaration.signatures == "kgen.export.video:video_signatures"
    assert declaration.options == {"num_steps": "int32", "guidance_scale": "float32"}
    assert declaration.uniform_inputs == ("num_steps",)
    assert declaration.evaluation == "video"


def test_shapes_and_the_context_input():
    model = tiny_model()
    assert model.video_shape == SHAPE and model.frames == 4 and model.image_shape == SHAPE
    assert tuple(model.denoiser.inputs[0].shape[1:]) == (4, 8, 8, 3)
    out = model(batch(6), training=False)
    assert set(out) == {"prediction", "target", "loss_mask"}
    assert tuple(out["prediction"].shape) == tuple(out["target"].shape) == (6, *SHAPE)
    assert tuple(out["loss_mask"].shape) == (6, 4, 1, 1, 1)
    mask = model.frame_mask(np.array([0, 2], "int32"))
    np.testing.assert_array_equal(to_numpy(mask)[:, :, 0, 0, 0],
                                  [[0, 0, 0, 0], [1, 1, 0, 0]])
    noisy = np.full((2, *SHAPE), -0.5, "float32")
    clean = np.full((2, *SHAPE), 0.25, "float32")
    x = to_numpy(model.model_input(noisy, clean, mask))
    assert x.shape == (2, 4, 8, 8, 3)
    np.testing.assert_array_equal(x[1, :2, ..., 0], 0.25)   # known frames clean
    np.testing.assert_array_equal(x[1, 2:, ..., 0], -0.5)   # the rest noisy
    np.testing.assert_array_equal(x[1, :, 0, 0, 1], [0.25, 0.25, 0, 0])
    np.testing.assert_array_equal(x[1, :, 0, 0, 2], [1, 1, 0, 0])
    np.testing.assert_array_equal(x[0, ..., 1:], 0.0)


@pytest.mark.parametrize("min_snr_gamma", [None, 5])
def test_the_loss_counts_only_the_unknown_frames(min_snr_gamma):
    model = tiny_model(extend_fraction=1.0, min_snr_gamma=min_snr_gamma)
    data = batch(8, seed=2)
    out = model(data, training=False)
    keep = to_numpy(out["loss_mask"])
    known = 4 - keep.reshape(8, 4).sum(axis=1)
    assert known.min() >= 1 and known.max() <= 3  # every row has a prefix
    assert len(set(known.tolist())) > 1  # of several lengths
    error = (to_numpy(out["prediction"]) - to_numpy(out["target"])) ** 2
    per_row = np.array([error[r, int(known[r]):].mean() for r in range(8)])
    if min_snr_gamma is not None:
        per_row = per_row * to_numpy(out["weight"])
    np.testing.assert_allclose(to_numpy(model.compute_loss(data, None, out)),
                               per_row.mean(), rtol=1e-5)
    # Fixed per row index: the same draws on every call.
    again = model(data, training=False)
    np.testing.assert_array_equal(to_numpy(again["loss_mask"]), keep)
    no_prefix = tiny_model(extend_fraction=0.0)(data, training=False)
    np.testing.assert_array_equal(to_numpy(no_prefix["loss_mask"]), 1.0)


def test_training_draws_prefixes_from_the_seed_generator():
    model = tiny_model(extend_fraction=0.5)
    lengths = np.concatenate([to_numpy(model.training_context(64)[0]) for _ in range(4)])
    assert lengths.min() == 0 and set(lengths.tolist()) <= {0, 1, 2, 3}
    assert 0.3 < np.mean(lengths > 0) < 0.7
    assert {1, 2, 3} <= set(lengths.tolist())


def test_loss_goes_down_on_a_fixed_batch():
    keras.utils.set_random_seed(0)
    model = tiny_model(ema_decay=None, scheduler=DDPMScheduler(100, "cosine"))
    data = batch(16, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = model.evaluate(data, batch_size=16, verbose=0)
    model.fit(data, batch_size=8, epochs=10, verbose=0)
    after = model.evaluate(data, batch_size=16, verbose=0)
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_row_i_is_seed_plus_i_alone(trained, scheduler):
    """`generate(3, seed=5)[1] == generate(1, seed=6)[0]`, guided and
    unlabelled rows alike; the same seed gives the same clip."""
    kwargs = dict(num_steps=3, scheduler=scheduler, guidance_scale=2.0)
    for labels in ([4, 2, 9], None):
        rows = trained.generate(3, seed=5, labels=labels, **kwargs)
        assert rows.shape == (3, *SHAPE) and rows.dtype == np.float32
        assert 0.0 <= rows.min() and rows.max() <= 1.0
        for i in range(3):
            one = trained.generate(1, seed=5 + i,
                                   labels=None if labels is None else labels[i], **kwargs)
            np.testing.assert_allclose(rows[i], one[0], atol=1e-5)
        np.testing.assert_array_equal(rows, trained.generate(3, seed=5, labels=labels,
                                                             **kwargs))
        assert np.abs(rows[0] - rows[1]).max() > 1e-4


def test_extend_keeps_the_given_frames_and_rows_are_independent(trained):
    clips = moving_squares(3, seed=4)
    count = len(trained._compiled_functions.functions)
    for k in (1, 3):
        rows = trained.extend(clips[:, :k], seed=11, num_steps=3)
        assert rows.shape == (3, *SHAPE) and rows.dtype == np.float32
        np.testing.assert_array_equal(rows[:, :k], clips[:, :k])  # exactly
        assert 0.0 <= rows.min() and rows.max() <= 1.0
        for i in range(3):
            one = trained.extend(clips[i:i + 1, :k], seed=11 + i, num_steps=3)
            np.testing.assert_allclose(rows[i], one[0], atol=1e-5)
        np.testing.assert_array_equal(rows, trained.extend(clips[:, :k], seed=11,
                                                           num_steps=3))
    # One compiled loop serves every k.
    assert len(trained._compiled_functions.functions) == count + 1
    # The given frames change the rest of the clip.
    other = trained.extend(1.0 - clips[:, :2], seed=11, num_steps=3)
    assert np.abs(other[:, 2:] - trained.extend(clips[:, :2], seed=11,
                                                num_steps=3)[:, 2:]).max() > 1e-5


def test_sample_with_num_known_equals_sample_with_the_frames_alone(trained):
    """The padded form (the export's) and the plain form of `known` agree."""
    clips = moving_squares(2, seed=5)
    pairs = np.array([[3, 0], [4, 0]], "int32")
    plain = trained.sample(pairs, None, 1.0, 2, "ddim", known=clips[:, :2])
    padded = np.concatenate([clips[:, :2], np.zeros_like(clips[:, :1])], axis=1)
    masked = trained.sample(pairs, None, 1.0, 2, "ddim", known=padded,
                            num_known=np.array([2, 2], "int32"))
    np.testing.assert_allclose(to_numpy(plain), to_numpy(masked), atol=1e-6)


def test_refusals_name_the_bad_value(trained):
    clips = moving_squares(2)
    for frames, match in [
        (clips[:, :0], r"frames with shape \(2, 0, 8, 8, 1\): k=0"),
        (clips, r"frames with shape \(2, 4, 8, 8, 1\): k=4 known frames; expected 1 to 3"),
        (clips[:, :2, :4], r"frames with shape \(2, 2, 4, 8, 1\)"),
        (clips[0, :2], r"frames with shape \(2, 8, 8, 1\)"),
        (clips[:, :2] * 2.0, r"frames with shape \(2, 2, 8, 8, 1\): values in \[0, 2\]"),
        (np.full((1, 2, 8, 8, 1), np.nan, "float32"), "non-finite"),
        (np.full((1, 2, 8, 8, 1), "a"), "expected floats"),
    ]:
        with pytest.raises(ValueError, match=match):
            trained.extend(frames, seed=0, num_steps=2)
    for kwargs, match in [(dict(num_steps=0), "num_steps=0"),
                          (dict(num_steps=2.5), "num_steps=2.5"),
                          (dict(seed=2**63 - 1), "seed=")]:
        with pytest.raises(ValueError, match=match):
            trained.extend(clips[:, :1], **{"seed": 0, "num_steps": 2, **kwargs})
    with pytest.raises(ValueError, match="labels=10"):
        trained.generate(1, seed=0, labels=10, num_steps=2)
    with pytest.raises(ValueError, match="extend_fraction=1.5"):
        tiny_model(extend_fraction=1.5)
    with pytest.raises(ValueError, match="build it with context=True"):
        VideoDiffusionModel(video_unet(SHAPE, (8, 16), context=False, groups=4))
    with pytest.raises(ValueError, match="needs {'videos', 'labels'}"):
        trained({"videos": clips})


def test_preview_images_are_strips_of_frames(trained):
    clips = moving_squares(2, seed=3)
    strips = trained.preview_images(clips)
    assert strips.shape == (2, 8, 4 * 8 + 3, 1)  # one-pixel gaps between frames
    np.testing.assert_array_equal(strips[1, :, 18:26], clips[1, 2])


def test_keras_file_round_trip(trained, tmp_path):
    path = tmp_path / "video.keras"
    trained.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, VideoDiffusionModel)
    assert loaded.clip_settings == {"frames": 4, "size": 8, "square": 3}
    assert loaded.extend_fraction == 0.5 and loaded.video_shape == SHAPE
    kwargs = dict(seed=3, labels=[1, 2], num_steps=3)
    # Equal to float32 rounding (a new trace may order the sums otherwise).
    np.testing.assert_allclose(loaded.generate(2, **kwargs), trained.generate(2, **kwargs),
                               atol=1e-5)
    clips = moving_squares(2, seed=6)[:, :2]
    np.testing.assert_allclose(loaded.extend(clips, seed=1, num_steps=2),
                               trained.extend(clips, seed=1, num_steps=2), atol=1e-5)
