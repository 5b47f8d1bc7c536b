"""Spoken-digit classifier that scores generated audio: FSDD, `--set data=DIR`.

The judge `kgen.metrics.score_audio` loads to hear generated digits.

Trains on takes 5-49 of every digit and speaker, validates on takes 0-4
(the FSDD's own test split), and keeps the best epoch as
`runs/digit_classifier_fsdd/best.keras`.
"""

import dataclasses

import keras

from kgen import data, metrics

EXPORT = False  # a judge, not a generator: kept as best.keras, never served
CONFIG = dict(
    data=None,                 # the FSDD's recordings/ folder (not embedded)
    sample_rate=8000,          # the FSDD's own rate: nothing is resampled
    length=8000,               # one second; the FSDD's takes are 0.1-2.3 s
    split="fsdd",              # takes 0-4 validate; or a fraction, e.g. 0.1
    num_mel_bins=40,
    filters=(16, 32, 64),      # one conv block (and 2x2 pooling) per entry
    dropout=0.25,
    epochs=20,
    steps_per_epoch=None,      # None: one pass over the training split
    batch_size=64,
    learning_rate=2e-3,
    limit=None,                # at most this many clips per split (quick runs)
    on_bad_file="error",       # or "skip": skip and count unreadable files
    seed=0,
)


def build(config):
    ds = data.load_audio_data(
        config["data"],
        sample_rate=config["sample_rate"],
        length=config["length"],
        batch_size=config["batch_size"],
        split=config["split"],
        with_labels=True,
        repeat=config["steps_per_epoch"] is not None,  # steps_per_epoch: an endless stream
        seed=config["seed"],
        limit=config["limit"],
        on_bad_file=config["on_bad_file"],
    )
    # Keras' own loss and accuracy take (audio, label) pairs.
    pairs = lambda batch: (batch["audio"], batch["labels"])  # noqa: E731
    ds = dataclasses.replace(
        ds, train=ds.train.map(pairs),
        validation=ds.validation.map(pairs) if ds.validation is not None else None,
    )
    model = metrics.audio_classifier(
        num_classes=ds.num_classes, sample_rate=ds.sample_rate, length=ds.length,
        num_mel_bins=config["num_mel_bins"], filters=config["filters"],
        dropout=config["dropout"],
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config["learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model, ds
