"""`val_kid`: a cheap KID of fixed samples, logged and used to rank epochs."""

import csv
import json
import math

import numpy as np
import pytest

from kgen import callbacks
from kgen import training
from kgen.config import ConfigError
from kgen.data import load_digits

# A GAN at a size a test affords: GAN losses rank no epoch, val_kid does.
GAN = {"epochs": "2", "steps_per_epoch": "2", "batch_size": "16", "filters": "16,8",
       "d_filters": "8,16", "latent_dim": "8", "conditional": "true", "val_kid_n": "16"}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("classifier") / "run"
    sets = {"epochs": "1", "steps_per_epoch": "4", "filters": "8,16", "feature_dim": "16"}
    return training.train("digits_classifier", sets=sets, run_dir=run_dir, verbose=0)["best"]


@pytest.fixture(scope="module")
def gan_run(classifier, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gan") / "run"
    result = training.train("dcgan_digits", sets={**GAN, "val_kid": str(classifier)},
                            run_dir=run_dir, verbose=0)
    return run_dir, result


def test_val_kid_is_logged_each_epoch_and_ranks_the_checkpoint(gan_run):
    run_dir, result = gan_run
    with open(run_dir / "history.csv") as f:
        values = [float(row["val_kid"]) for row in csv.DictReader(f)]
    assert len(values) == 2 and all(math.isfinite(v) for v in values), values
    # A GAN keeps last.keras without val_kid; with it, the epoch val_kid ranks best.
    assert result["best"].name == "best.keras"
    state = json.loads((run_dir / "state.json").read_text())
    assert state["best"] == pytest.approx(min(values))
    assert "val_kid" in result["logs"]
    # A conditional model's samples are also labelled by the classifier.
    with open(run_dir / "history.csv") as f:
        accuracy = [float(row["val_label_accuracy"]) for row in csv.DictReader(f)]
    assert len(accuracy) == 2 and all(0 <= a <= 1 for a in accuracy), accuracy


def test_val_kid_is_the_same_for_the_same_model(gan_run, classifier):
    import keras

    model = keras.saving.load_model(gan_run[0] / "best.keras")
    real = load_digits()[0][-16:]
    kid = callbacks.ValidationKID(classifier, real, n=16, seed=3)
    first, std = kid.measure(model)
    assert math.isfinite(first) and math.isfinite(std)
    assert kid.measure(model)[0] == first
    # The label accuracy is the classifier's verdict on those very samples.
    clf = keras.saving.load_model(classifier)
    samples = np.asarray(model.generate(16, seed=3, labels=(3 + np.arange(16)) % 10))
    expected = np.mean(np.argmax(clf.predict(samples, verbose=0), -1) == (3 + np.arange(16)) % 10)
    assert kid.last_accuracy == pytest.approx(expected)
    other = callbacks.ValidationKID(classifier, real, n=16, seed=3)
    assert other.measure(model)[0] == first
    # Real images against themselves: zero distance in expectation, far
    # below an early GAN's samples.
    same = callbacks.ValidationKID(classifier, real, n=16)
    same._real_features = None
    assert abs(_kid_of(same, real)) < first


def _kid_of(callback, images):
    from kgen.metrics import KernelInceptionDistance
    from kgen.metrics.features import predict_in_batches

    f = predict_in_batches(callback.features, images)
    metric = KernelInceptionDistance(num_features=f.shape[-1], max_samples=len(f),
                                     subsets=20, subset_size=len(f) // 2)
    metric.update_state(f[::2], f[1::2])
    return callbacks.validation_kid.kid_value(metric)[0]


def test_bad_val_kid_settings_are_named(classifier, tmp_path):
    with pytest.raises(ConfigError, match="val_kid=.*nope.keras: no such classifier file"):
        training.train("dcgan_digits", sets={**GAN, "val_kid": str(tmp_path / "nope.keras")},
                       run_dir=tmp_path / "a", verbose=0)
    with pytest.raises(ConfigError, match="val_kid=.*n=1"):
        training.train("dcgan_digits", sets={**GAN, "val_kid": str(classifier),
                                             "val_kid_n": "1"},
                       run_dir=tmp_path / "b", verbose=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match=r"shape \(28, 28, 1\): the feature extractor "
                                         r"takes \(8, 8, 1\)"):
        callbacks.ValidationKID(classifier, np.zeros((20, 28, 28, 1), "float32"), n=16)
    with pytest.raises(ValueError, match="real images of shape .*: expected at least n=32"):
        callbacks.ValidationKID(classifier, np.zeros((20, 8, 8, 1), "float32"), n=32)
