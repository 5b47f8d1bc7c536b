"""A spoken-digit classifier on log-mel features, and scoring with it.

Generated speech is judged the way a listener would: does it say the digit
it was asked for? `audio_classifier()` builds a small convolutional network
over log-mel spectrograms; the recipe `digit_classifier_fsdd` trains it on
the Free Spoken Digit Dataset's training takes and saves it as a `.keras`
file; `score_audio()` loads that file and reports how often it hears the
asked-for label in generated clips (its accuracy on the FSDD's held-out
takes is the floor a generator is measured against).

The features are each clip's own: `LogMelSpectrogram` standardises each
clip's decibels over the clip, so a clip's score depends neither on its
loudness nor on the other clips of its batch (Keras' `MelSpectrogram` with
`power_to_db=True` clips at the batch's maximum).
"""

import pathlib

import keras
import numpy as np
from keras import ops

from kgen.api import kgen_export


@kgen_export("kgen.metrics.LogMelSpectrogram")
class LogMelSpectrogram(keras.layers.Layer):
    """Log-mel features of each clip, standardised over the clip itself.

    Keras' `MelSpectrogram` (power, no decibels), then `10 * log10(power)`
    clipped at `top_db` below the clip's loudest bin, then shifted and
    scaled to mean 0 and standard deviation 1 over the clip's bins (a
    silent clip gives zeros). Nothing depends on the clip's loudness or on
    the other clips of the batch, and the network after it trains fast
    (with the features in [0, 1] instead, a small CNN sat at chance for
    its first few hundred steps).

    Args:
        sample_rate: the clips' rate in Hz.
        fft_length: samples per STFT frame.
        sequence_stride: samples between frames.
        num_mel_bins: mel bands.
        top_db: the dynamic range kept, in decibels.

    Example:

    ```python
    features = LogMelSpectrogram(8000)(audio)  # (batch, 40, frames)
    ```
    """

    def __init__(self, sample_rate, fft_length=256, sequence_stride=128,
                 num_mel_bins=40, top_db=80.0, **kwargs):
        super().__init__(**kwargs)
        # === Config ===
        self.sample_rate = int(sample_rate)
        self.fft_length = int(fft_length)
        self.sequence_stride = int(sequence_stride)
        self.num_mel_bins = int(num_mel_bins)
        self.top_db = float(top_db)
        # === Layers ===
        self.mel = keras.layers.MelSpectrogram(
            fft_length=self.fft_length, sequence_stride=self.sequence_stride,
            sampling_rate=self.sample_rate, num_mel_bins=self.num_mel_bins,
            max_freq=self.sample_rate / 2, power_to_db=False, dtype="float32",
        )

    def build(self, input_shape):
        self.mel.build(input_shape)

    def call(self, audio):
        power = self.mel(ops.cast(audio, "float32"))  # (batch, mels, frames)
        db = 10.0 * ops.log10(ops.maximum(power, 1e-10))
        db = ops.maximum(db, ops.max(db, axis=(1, 2), keepdims=True) - self.top_db)
        mean = ops.mean(db, axis=(1, 2), keepdims=True)
        std = ops.std(db, axis=(1, 2), keepdims=True)
        return (db - mean) / (std + 1e-3)

    def compute_output_shape(self, input_shape):
        return self.mel.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "sample_rate": self.sample_rate,
            "fft_length": self.fft_length,
            "sequence_stride": self.sequence_stride,
            "num_mel_bins": self.num_mel_bins,
            "top_db": self.top_db,
        }


def audio_classifier(num_classes=10, sample_rate=8000, length=8000,
                     num_mel_bins=40, filters=(16, 32, 64), dropout=0.25,
                     name="audio_classifier"):
    """A small CNN over log-mel spectrograms: clips in, class logits out.

    Per block: a 3x3 convolution with ReLU and 2x2 max pooling; then an
    average over time (each mel band's channels kept apart), dropout and one
    dense layer. No batch normalisation: with it, training accuracy rose
    but inference-mode accuracy on the FSDD's held-out takes stayed near
    chance, and without it held-out accuracy followed training accuracy.

    Args:
        num_classes: how many classes (10 digits).
        sample_rate: the clips' rate in Hz (the FSDD's is 8000).
        length: samples per clip.
        num_mel_bins: mel bands of the features.
        filters: channels of each convolutional block.
        dropout: dropout rate before the last layer.
        name: the model's name.

    Returns:
        A functional `keras.Model` from float32 `(batch, length)` to
        `(batch, num_classes)` logits.

    Example:

    ```python
    model = audio_classifier(num_classes=10, sample_rate=8000, length=8000)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ```
    """
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: a classifier needs at least 2")
    if not filters:
        raise ValueError(f"filters={filters!r}: need at least one block")
    inputs = keras.Input((int(length),), name="audio")
    x = LogMelSpectrogram(sample_rate, num_mel_bins=num_mel_bins, name="log_mel")(inputs)
    x = keras.layers.Reshape((*x.shape[1:], 1))(x)  # (mels, frames, 1)
    for i, f in enumerate(filters):
        x = keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, padding="same")(x)
    # Average over time only: where a band lies tells digits apart, where
    # in the clip the word starts does not.
    x = keras.layers.Permute((2, 1, 3))(x)  # (frames, mels, channels)
    x = keras.layers.Reshape((x.shape[1], x.shape[2] * x.shape[3]))(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dropout(dropout)(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def load_classifier(path):
    """Load a classifier `.keras` file (as the recipe saves it).

    Raises:
        FileNotFoundError: naming the path when there is no such file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such classifier file (train one with "
            f"`kgen train digit_classifier_fsdd --set data=DIR`; it is saved "
            f"as runs/digit_classifier_fsdd/best.keras)"
        )
    return keras.saving.load_model(path)


def classifier_rate(model):
    """The sample rate, in Hz, the classifier's features were built for."""
    for layer in model.layers:
        if isinstance(layer, LogMelSpectrogram):
            return layer.sample_rate
    return None


def score_audio(classifier, audio, labels, sample_rate=None, batch_size=64):
    """How often the classifier hears the asked-for label in each clip.

    Args:
        classifier: a classifier model or the path of its `.keras` file.
        audio: float `(n, length)` clips, `length` the classifier's.
        labels: int `(n,)` (or one int for every clip): the class each
            clip should be.
        sample_rate: the clips' rate in Hz; checked against the
            classifier's when given.
        batch_size: clips per forward pass.

    Returns:
        A dict: `accuracy` (share of clips whose predicted class is their
        label), `per_class` (the accuracy of each class, `None` for a class
        with no clip), `count` (clips scored) and `predictions` (int32
        `(n,)`).

    Raises:
        ValueError: naming the audio's shape, a non-finite sample, a label
            or a sample rate that does not fit the classifier.

    Example:

    ```python
    clips = model.generate(50, seed=0, labels=3)
    score_audio("runs/digit_classifier_fsdd/best.keras", clips, 3)["accuracy"]
    ```
    """
    model = classifier if isinstance(classifier, keras.Model) else load_classifier(classifier)
    length = model.input_shape[-1]
    num_classes = model.output_shape[-1]
    audio = np.asarray(keras.ops.convert_to_numpy(audio), dtype="float32")
    if audio.ndim != 2 or audio.shape[1] != length or not len(audio):
        raise ValueError(
            f"audio of shape {audio.shape}: the classifier takes (clips, {length}) "
            f"with at least one clip"
        )
    if not np.isfinite(audio).all():
        row = int(np.argmin(np.isfinite(audio).all(axis=1)))
        raise ValueError(f"audio row {row} holds non-finite samples")
    rate = classifier_rate(model)
    if sample_rate is not None and rate is not None and int(sample_rate) != rate:
        raise ValueError(
            f"sample_rate={sample_rate}: the classifier was trained on {rate} Hz clips"
        )
    labels = np.asarray(labels)
    if labels.ndim == 0:
        labels = np.full(len(audio), labels)
    if labels.shape != (len(audio),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels of shape {labels.shape} and dtype {labels.dtype}: expected "
            f"one int or {len(audio)} ints (one per clip)"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise ValueError(f"label {bad}: the classifier knows classes 0..{num_classes - 1}")
    logits = model.predict(audio, batch_size=batch_size, verbose=0)
    predictions = np.argmax(keras.ops.convert_to_numpy(logits), axis=-1).astype("int32")
    correct = predictions == labels
    per_class = [float(correct[labels == k].mean()) if (labels == k).any() else None
                 for k in range(num_classes)]
    return {
        "accuracy": float(correct.mean()),
        "per_class": per_class,
        "count": len(audio),
        "predictions": predictions,
    }
