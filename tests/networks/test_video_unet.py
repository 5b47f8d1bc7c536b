"""The space-time U-Net and its temporal attention, on the current backend."""

import keras
import numpy as np
import pytest
from keras import ops

from kgen.networks import TemporalAttention
from kgen.networks import video_unet

SHAPE = (4, 8, 8, 1)


def inputs(net, n=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *net.inputs[0].shape[1:])).astype("float32")
    feeds = [x, np.arange(n, dtype="int32") * 7]
    if len(net.inputs) == 3:
        feeds.append(np.arange(n, dtype="int32") % 10)
    return feeds


def test_shapes_context_and_pooling_in_space_only():
    net = video_unet(SHAPE, filters=(8, 16), num_classes=10, groups=4)
    assert tuple(net.inputs[0].shape[1:]) == (4, 8, 8, 3)  # noisy, known, mask
    assert [i.dtype for i in net.inputs[1:]] == ["int32", "int32"]
    out = net(inputs(net))
    assert tuple(out.shape) == (2, *SHAPE) and "float32" in str(out.dtype)
    # The lowest level keeps every frame at half the height and width.
    assert tuple(net.get_layer("mid1_out").output.shape) == (None, 4, 4, 4, 16)
    assert [type(layer).__name__ for layer in net.layers].count("TemporalAttention") == 3
    plain = video_unet(SHAPE, filters=(8, 16), context=False, groups=4,
                       temporal_attention_levels=())
    assert tuple(plain.inputs[0].shape[1:]) == SHAPE and len(plain.inputs) == 2
    assert not any(isinstance(layer, TemporalAttention) for layer in plain.layers)


def test_frames_see_each_other():
    """A change in the first frame reaches the last frame's output."""
    net = video_unet(SHAPE, filters=(8, 16), groups=4)
    out_init = net.get_layer("out")
    out_init.kernel.assign(np.random.default_rng(0).normal(
        size=out_init.kernel.shape).astype("float32") * 0.1)
    feeds = inputs(net, 1)
    base = ops.convert_to_numpy(net(feeds))
    feeds[0] = feeds[0].copy()
    feeds[0][:, 0] += 1.0
    changed = ops.convert_to_numpy(net(feeds))
    assert np.abs(changed[:, -1] - base[:, -1]).max() > 1e-6


def test_temporal_attention_mixes_frames_not_pixels(tmp_path):
    layer = TemporalAttention(num_heads=2, groups=2)
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 4, 8)).astype("float32")
    y = ops.convert_to_numpy(layer(x))
    assert y.shape == x.shape
    # Each pixel attends over its own frames: moving pixels around moves
    # the output alike (GroupNorm's statistics do not change) ...
    flipped = ops.convert_to_numpy(layer(x[:, :, ::-1, ::-1]))
    np.testing.assert_allclose(flipped, y[:, :, ::-1, ::-1], atol=1e-5)
    # ... and a change in one frame reaches the other frames.
    moved = x.copy()
    moved[:, 0, 2, 2] += 3.0
    y2 = ops.convert_to_numpy(layer(moved))
    here = np.abs(y2[:, 2, 2, 2] - y[:, 2, 2, 2]).max()
    elsewhere = np.abs(y2[:, 2, 0, 0] - y[:, 2, 0, 0]).max()  # the statistics alone
    assert here > 1e-4 and here > 2 * elsewhere, (here, elsewhere)
    config = layer.get_config()
    assert config["num_heads"] == 2 and config["groups"] == 2
    model = keras.Sequential([keras.Input((3, 4, 4, 8)), layer])
    model.save(tmp_path / "attention.keras")
    again = keras.saving.load_model(tmp_path / "attention.keras")
    np.testing.assert_allclose(ops.convert_to_numpy(again(x)), y, atol=1e-6)


def test_a_saved_network_gives_the_same_output(tmp_path):
    net = video_unet(SHAPE, filters=(8, 16), num_classes=10, groups=4)
    net.get_layer("out").kernel.assign(np.full(net.get_layer("out").kernel.shape, 0.01,
                                               "float32"))
    net.save(tmp_path / "net.keras")
    loaded = keras.saving.load_model(tmp_path / "net.keras")
    feeds = inputs(net)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(feeds)),
                               ops.convert_to_numpy(net(feeds)), atol=1e-6)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"video_shape \(4, 6, 6, 1\).*divisible by 4"):
        video_unet((4, 6, 6, 1), filters=(8, 16, 32))
    with pytest.raises(ValueError, match=r"temporal_attention_levels=\(2,\)"):
        video_unet(SHAPE, filters=(8, 16), temporal_attention_levels=(2,))
