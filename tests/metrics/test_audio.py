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
from tests.conftest import run_kgen
from tests.conftest import shared

LENGTH = 4000  # half a second: most FSDD takes fit, and steps stay cheap


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
                             num_mel_bins=24, filters=(8, 16), dropout=0.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(audio, labels, batch_size=16, epochs=8, shuffle=False, verbose=0)
    path = tmp_path_factory.mktemp("classifier") / "classifier.keras"
    model.save(path)
    return model, path, history.history["loss"]


def test_the_classifier_trains_with_falling_loss(trained):
    _, _, losses = trained
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.6 * losses[0], losses


def test_it_reloads_and_scores_generated_style_clips(trained, clips):
    model, path, _ = trained
    audio, labels = clips
    reloaded = load_classifier(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(audio[:8])),
        keras.ops.convert_to_numpy(model(audio[:8])), rtol=1e-4, atol=1e-4)
    score = score_audio(path, audio, labels, sample_rate=8000)
    predictions = np.argmax(keras.ops.convert_to_numpy(reloaded(audio)), axis=-1)
    np.testing.assert_array_equal(score["predictions"], predictions)
    assert score["count"] == 48
    assert score["accuracy"] == pytest.approx(float(np.mean(predictions == labels)))
    assert score["accuracy"] > 0.5  # it has fitted the clips it saw (chance: 0.1)
    for k in range(10):
        assert score["per_class"][k] == pytest.approx(
            float(np.mean(predictions[labels == k] == k)))
    # One label for every clip; classes with no clip are None.
    threes = audio[labels == 3]
    one = score_audio(reloaded, threes, 3)
    assert one["per_class"][3] == one["accuracy"]
    assert one["per_class"][0] is None


def test_features_are_each_clips_own(clips):
    # Neither a clip's loudness nor its neighbours change its features.
    audio, _ = clips
    features = LogMelSpectrogram(8000, num_mel_bins=24)
    alone = keras.ops.convert_to_numpy(features(audio[:1]))
    quiet_among_loud = keras.ops.convert_to_numpy(
        features(np.stack([0.01 * audio[0], audio[1] * 1.0])))
    np.testing.assert_allclose(quiet_among_loud[0], alone[0], atol=1e-4)
    assert alone.min() >= 0.0 and alone.max() == pytest.approx(1.0)


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


def test_a_missing_classifier_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.keras: no such classifier file"):
        score_audio(tmp_path / "nope.keras", np.zeros((1, LENGTH)), [0])


def test_kgen_train_keeps_the_classifier_as_keras_and_exports_nothing(tmp_path):
    data = f"data={shared('fsdd', 'recordings')}"
    quick = ["--set", data, "--set", "limit=32", "--set", "epochs=1",
             "--set", "steps_per_epoch=2", "--set", "filters=8"]
    train = run_kgen("train", "digit_classifier_fsdd", *quick, cwd=tmp_path)
    best = tmp_path / "runs" / "digit_classifier_fsdd" / "best.keras"
    assert f"model:       {best.relative_to(tmp_path)}" in train.stdout
    assert "exported" not in train.stdout and "samples:" not in train.stdout
    assert not (tmp_path / "saved_models").exists()
    assert load_classifier(best).input_shape == (None, 8000)
    asked = run_kgen("train", "digit_classifier_fsdd", *quick, "--export", "saved_models/x",
                     "--run-dir", "runs/other", cwd=tmp_path, check=False)
    assert asked.returncode == 2
    assert asked.stderr.strip().splitlines()[-1] == (
        "kgen: error: --export saved_models/x: recipe digit_classifier_fsdd trains a "
        "model that is not exported (no generate signature); it is kept as its "
        ".keras file")
