"""The image classifiers kgen trains as judges, and their feature layers."""

import csv

import keras
import numpy as np
import pytest

from kgen import training
from kgen.data import load_digits
from kgen.metrics.features import INCEPTION_ENV
from kgen.metrics.features import INCEPTION_WEIGHTS
from kgen.metrics.features import inception_feature_extractor
from kgen.metrics.features import load_feature_extractor

TINY = {"epochs": "3", "steps_per_epoch": "6", "filters": "8,16", "feature_dim": "32"}


def test_digits_classifier_trains_saves_and_its_features_load(tmp_path):
    result = training.train("digits_classifier", sets=TINY, run_dir=tmp_path / "run",
                            verbose=0)
    with open(tmp_path / "run" / "history.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert result["best"].name == "best.keras" and not (tmp_path / "run" / "samples").exists()

    classifier, features = load_feature_extractor(result["best"])
    images = load_digits()[0][:5]
    f = keras.ops.convert_to_numpy(features(images))
    assert f.shape == (5, 32) and np.isfinite(f).all()
    # The feature model is the classifier up to its penultimate layer: the
    # logits layer applied to the features gives the classifier's output.
    logits = keras.ops.convert_to_numpy(classifier.get_layer("logits")(f))
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(classifier(images)),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.backend_agnostic
def test_a_missing_classifier_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.keras: no such classifier file"):
        load_feature_extractor(tmp_path / "nope.keras")


def test_an_unreadable_classifier_file_is_named(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.keras: cannot be read"):
        load_feature_extractor(bad)


@pytest.mark.backend_agnostic
def test_inception_without_its_weights_says_so_and_downloads_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=f"{INCEPTION_WEIGHTS}: InceptionV3 "
                                                "weights are absent and are not downloaded"):
        inception_feature_extractor((28, 28, 1))
    assert not (tmp_path / "keras_home").exists()
    with pytest.raises(FileNotFoundError, match="missing.h5: no such InceptionV3 weights"):
        inception_feature_extractor((28, 28, 1), weights=tmp_path / "missing.h5")
