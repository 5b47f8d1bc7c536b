import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from kgen.callbacks import SampleLogger
from kgen.models import VAE
from kgen.networks import conv_vae_networks
from tests.imagecheck import assert_images_look_real
from tests.imagecheck import grid_cells


def event_tags(log_dir):
    """`{tag: [steps]}` over every event file below `log_dir`."""
    tags = {}
    for path in sorted(pathlib.Path(log_dir).rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_sample_grids_every_epoch_from_fixed_seeds(tmp_path, mnist_arrays):
    images, _ = mnist_arrays
    keras.utils.set_random_seed(0)
    vae = VAE(*conv_vae_networks((28, 28, 1), 2, (8, 16), 16), seed=0)
    vae.compile(optimizer="adam")
    logger = SampleLogger(tmp_path / "logs", n=4, seed=5, out_dir=tmp_path / "png")
    vae.fit(images[:512], batch_size=32, epochs=2, verbose=0,
            callbacks=[logger, keras.callbacks.TensorBoard(tmp_path / "logs")])
    assert event_tags(tmp_path / "logs" / "samples")["samples"] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "epoch_001.png", "epoch_002.png"]
    grids = [grid_cells(tmp_path / "png" / f"epoch_00{e}.png", 4) for e in (1, 2)]
    # After 32 steps the samples are blurry digits, not a flat grey (the
    # first grid, after 16 steps, may still be one).
    assert_images_look_real(grids[1], shape=(4, 28, 28, 1))
    # The last grid is the trained model's samples for the logger's seeds;
    # the first, from the same seeds, was drawn before the second epoch.
    np.testing.assert_allclose(grids[1], np.asarray(vae.generate(4, seed=5)),
                               atol=0.5 / 255 + 1e-6)
    assert np.abs(grids[0] - grids[1]).max() > 0
    scalars = event_tags(tmp_path / "logs" / "train")
    for tag in ("epoch_loss", "epoch_kl_loss", "epoch_reconstruction_loss",
                "epoch_learning_rate"):
        assert scalars.get(tag) == [0, 1], tag


def test_a_kind_it_cannot_log_is_named(tmp_path, mnist_arrays):
    vae = VAE(*conv_vae_networks((28, 28, 1), 2, (8, 16), 16), seed=0)
    vae.compile(optimizer="adam")
    vae.output_kind = "video"
    with pytest.raises(ValueError, match=r"VAE.output_kind='video'.*images, text, audio"):
        vae.fit(mnist_arrays[0][:32], batch_size=32, epochs=1, verbose=0,
                callbacks=[SampleLogger(tmp_path / "logs", n=2)])


@pytest.mark.backend_agnostic
def test_every_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="every=0"):
        SampleLogger(tmp_path, every=0)
