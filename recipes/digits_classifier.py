"""Digit classifier on scikit-learn's 8x8 digits: the judge of 8x8 samples.

This file holds the image classifier recipes' one `build`; `mnist_classifier`
is settings for it. Trains on the first 90% of the images, validates on the
last 10% (the split `kgen evaluate` holds out as real data), and keeps the
best epoch as `runs/digits_classifier/best.keras`, whose `features` layer
FID and KID compare (`kgen.metrics.load_feature_extractor`).
"""

import dataclasses

import keras

from kgen import data
from kgen.metrics.features import image_classifier

EXPORT = False  # a judge, not a generator: kept as best.keras, never served
CONFIG = dict(
    data="digits",             # embedded in scikit-learn: no download
    filters=(32, 64),          # two 3x3 convs and 2x2 pooling per entry: 8x8 -> 4x4 -> 2x2
    feature_dim=128,           # the penultimate (feature) layer's width
    dropout=0.3,
    epochs=30,
    steps_per_epoch=None,      # None: one pass over the training split
    batch_size=64,
    learning_rate=1e-3,
    validation_fraction=0.1,   # the last 10% validate (and are kgen evaluate's real floor)
    seed=0,
)


def build(config):
    ds = data.load_image_data(
        config["data"],
        batch_size=config["batch_size"],
        validation_fraction=config["validation_fraction"],
        with_labels=True,
        repeat=config["steps_per_epoch"] is not None,  # steps_per_epoch: an endless stream
        seed=config["seed"],
    )
    # Keras' own loss and accuracy take (images, label) pairs.
    pairs = lambda batch: (batch["images"], batch["labels"])  # noqa: E731
    ds = dataclasses.replace(
        ds, train=ds.train.map(pairs),
        validation=ds.validation.map(pairs) if ds.validation is not None else None,
    )
    model = image_classifier(
        ds.image_shape, num_classes=ds.num_classes, filters=config["filters"],
        feature_dim=config["feature_dim"], dropout=config["dropout"],
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config["learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model, ds
