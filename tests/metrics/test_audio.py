"""The spoken-digit classifier on real FSDD clips, on the current backend:
it trains with falling loss, saves, reloads and scores."""

import keras
import numpy as np
import pytest

from kgen.data import load_audio_data
from kgen.metrics import LogMelSpectrogram
from kgen.metrics import audio_classifier
from kgen.metrics import load_classifier
from kgen.metrics import score_audio
from tests.conftest import shared

LENGTH = 2000  # the middle quarter second of each take: cheap steps, still a digit


@pytest.fixture(scope="module")
def clips():
    """48 real training takes (all ten digits) as arrays."""
    ds = load_audio_data(shared("fsdd", "recordings"), length=LENGTH, split="fsdd",
                         limit=48, seed=1, with_labels=True, batch_size=48)
    batch = next(ds.train.as_numpy_iterator())
    assert set(batch["labels"].tolist()) == set(range(10))
    return batch["audio"], batch["labels"]


@pytest.fixture(scope="module")
def trained(clips, tmp_path_factory):
    """A tiny classifier fitted to the clips, saved and reloaded."""
    keras.utils.set_random_seed(0)
    audio, labels = clips
    model = audio_classifier(num_classes=10, sample_rate=8000, length=LENGTH,
                             num_mel_bins=16, filters=(8, 16), dropout=0.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(audio, labels, batch_size=16, epochs=16, shuffle=False, verbose=0)
    path = tmp_path_factory.mktemp("classifier") / "classifier.keras"
    model.save(path)
    return model, path, history.history["loss"]


def test_the_classifier_trains_with_falling_loss(trained):
    _, _, losses = trained
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


def test_it_reloads_and_scores_generated_style_clips(trained, clips):
    model, path, _ = trained
    audio, labels = clips
    score = score_audio(path, audio, labels, sample_rate=8000)  # reloaded from .keras
    logits = model.predict(audio, batch_size=64, verbose=0)
    predictions = np.argmax(keras.ops.convert_to_numpy(logits), axis=-1)
    np.testing.assert_array_equal(score["predictions"], predictions)
    assert score["count"] == 48
    assert score["accuracy"] == pytest.approx(float(np.mean(predictions == labels)))
    assert score["accuracy"] > 0.6  # it has fitted the clips it saw (chance: 0.1)
    for k in range(10):
        assert score["per_class"][k] == pytest.approx(
            float(np.mean(predictions[labels == k] == k)))
    # One label for every clip; classes with no clip are None.
    threes = score_audio(model, audio, 3)
    assert threes["accuracy"] == pytest.approx(float(np.mean(predictions == 3)))
    assert threes["per_class"][3] == threes["accuracy"]
    assert threes["per_class"][:3] == [None] * 3


def test_features_are_each_clips_own(clips):
    # Neither a clip's loudness nor its neighbours change its features: a
    # quiet copy among loud clips (and a silent clip) gives the same bins.
    audio, _ = clips
    batch = np.stack([audio[0], 0.01 * audio[0], audio[1], np.zeros(LENGTH)])
    features = keras.ops.convert_to_numpy(LogMelSpectrogram(8000, num_mel_bins=16)(batch))
    np.testing.assert_allclose(features[1], features[0], atol=1e-4)
    assert abs(features[0].mean()) < 1e-4 and features[0].std() == pytest.approx(1.0, abs=1e-2)
    assert np.isfinite(features).all() and not features[3].any()


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(audio=np.zeros((2, 100))), r"audio of shape \(2, 100\)"),
    (dict(labels=[1, 10]), r"label 10: the classifier knows classes 0\.\.9"),
    (dict(labels=[1.5, 2]), r"expected one int or 2 ints"),
    (dict(sample_rate=16000), r"sample_rate=16000: the classifier was trained on 8000 Hz"),
    (dict(audio=np.full((2, LENGTH), np.nan)), r"audio row 0 holds non-finite samples"),
])
def test_bad_scoring_inputs_are_named(trained, kwargs, pattern):
    model, _, _ = trained
    args = {"audio": np.zeros((2, LENGTH)), "labels": [1, 2], **kwargs}
    with pytest.raises(ValueError, match=pattern):
        score_audio(model, **args)


@pytest.mark.backend_agnostic
def test_a_missing_classifier_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.keras: no such classifier file"):
        load_classifier(tmp_path / "nope.keras")
    with pytest.raises(FileNotFoundError, match=r"nope\.keras: no such classifier file"):
        score_audio(tmp_path / "nope.keras", np.zeros((1, LENGTH)), [0])


@pytest.mark.backend_agnostic
def test_the_classifier_recipe_is_kept_as_keras_and_never_exported(tmp_path):
    # `kgen train` exports to saved_models/<recipe> by default, but not a
    # recipe whose model is not served; asking for it is refused at once.
    from kgen import cli
    from kgen import training
    from kgen.config import ConfigError

    assert cli._default_export("digit_classifier_fsdd") is None
    assert str(cli._default_export("vae_digits")) == "saved_models/vae_digits"
    with pytest.raises(ConfigError, match=r"--export saved_models/x: recipe "
                                          r"digit_classifier_fsdd trains a model that is "
                                          r"not exported"):
        training.train("digit_classifier_fsdd", sets={"data": "nowhere"},
                       run_dir=tmp_path / "run", export_to="saved_models/x")
    assert not (tmp_path / "run").exists()
