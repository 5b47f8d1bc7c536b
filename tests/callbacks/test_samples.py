import pathlib

import keras
import pytest
import tensorflow as tf

from kgen.callbacks import SampleLogger
from kgen.models import VAE
from kgen.networks import conv_vae_networks


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
    vae = VAE(*conv_vae_networks((28, 28, 1), 2, (8, 16), 16), seed=0)
    vae.compile(optimizer="adam")
    logger = SampleLogger(tmp_path / "logs", n=4, seed=5, out_dir=tmp_path / "png")
    vae.fit(images[:64], batch_size=32, epochs=2, verbose=0,
            callbacks=[logger, keras.callbacks.TensorBoard(tmp_path / "logs")])
    assert event_tags(tmp_path / "logs" / "samples")["samples"] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "epoch_001.png", "epoch_002.png"]
    scalars = event_tags(tmp_path / "logs" / "train")
    for tag in ("epoch_loss", "epoch_kl_loss", "epoch_reconstruction_loss",
                "epoch_learning_rate"):
        assert scalars.get(tag) == [0, 1], tag


def test_every_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="every=0"):
        SampleLogger(tmp_path, every=0)
