"""The audio diffusion model and its signal ops on real FSDD clips, on the
current backend: log-mel images, Griffin-Lim, training, the generate
contract, `.keras` files, and per-epoch audio samples."""

import pathlib
import wave

import keras
import numpy as np
import pytest
import tensorflow as tf

from kgen import random as kgen_random
from kgen.audio import LogMel
from kgen.callbacks import SampleLogger
from kgen.data import load_audio_data
from kgen.models import AudioDiffusionModel
from kgen.networks import unet
from kgen.schedulers import DDPMScheduler
from tests.conftest import shared

RATE = 8000


def tiny_codec(**kwargs):
    return LogMel(RATE, RATE, fft_length=256, hop_length=128, num_mels=16,
                  **{"griffin_lim_iters": 4, **kwargs})


def tiny_model(codec, seed=0):
    return AudioDiffusionModel(
        unet(codec.image_shape, (8, 16), num_classes=10, groups=4), codec,
        # v-prediction: a barely trained denoiser still gives spectrograms
        # that depend on its inputs (see tests/export/test_diffusion_export.py)
        DDPMScheduler(100, "cosine", prediction_type="v"), num_classes=10,
        sampler="ddim", seed=seed)


@pytest.fixture(scope="module")
def fsdd():
    """32 training and 16 validation clips of the FSDD (its own split)."""
    return load_audio_data(shared("fsdd", "recordings"), batch_size=16, split="fsdd",
                           with_labels=True, limit=32, seed=0)


@pytest.fixture(scope="module")
def trained(fsdd):
    keras.utils.set_random_seed(0)
    model = tiny_model(tiny_codec())
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    history = model.fit(fsdd.train, epochs=4, verbose=0)
    return model, history.history["loss"]


def real_clips(fsdd, n=8):
    batch = next(iter(fsdd.train))
    return batch["audio"].numpy()[:n], batch["labels"].numpy()[:n]


# --- signal ops -----------------------------------------------------------


def test_log_mel_images_of_real_clips(fsdd):
    codec = tiny_codec()
    audio, _ = real_clips(fsdd)
    images = keras.ops.convert_to_numpy(codec.encode(audio))
    assert codec.image_shape == (16, 64, 1) and images.shape == (8, 16, 64, 1)
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Speech reaches well above the floor; the padded silence sits on it.
    assert images.max(axis=(1, 2, 3)).min() > 0.5
    silence = keras.ops.convert_to_numpy(codec.encode(np.zeros((1, RATE), "float32")))
    assert silence.max() == 0.0


def test_griffin_lim_reconstructs_a_sine(fsdd):
    """A 440 Hz tone comes back at 440 Hz from its STFT magnitude alone, and
    near 440 Hz through the 16-band log-mel image."""
    codec = tiny_codec(griffin_lim_iters=16)
    t = np.arange(RATE) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype("float32")[None]
    pairs = kgen_random.seed_pairs([3])
    magnitude = codec.magnitude(tone)
    rebuilt = keras.ops.convert_to_numpy(codec.griffin_lim(magnitude, pairs))
    assert rebuilt.shape == (1, RATE)
    # within half an STFT bin (31 Hz)
    assert abs(np.argmax(np.abs(np.fft.rfft(rebuilt[0]))) - 440) <= 15
    error = keras.ops.convert_to_numpy(codec.magnitude(rebuilt)) \
        - keras.ops.convert_to_numpy(magnitude)
    assert np.linalg.norm(error) / np.linalg.norm(keras.ops.convert_to_numpy(magnitude)) < 0.2
    decoded = keras.ops.convert_to_numpy(codec.decode(codec.encode(tone), pairs))
    assert abs(np.argmax(np.abs(np.fft.rfft(decoded[0]))) - 440) <= 100
    assert np.abs(decoded).max() <= 1.0 and np.abs(decoded).max() > 0.05


def test_griffin_lim_phase_comes_from_the_seed():
    codec = tiny_codec()
    t = np.arange(RATE) / RATE
    images = codec.encode((0.5 * np.sin(2 * np.pi * 300.0 * t)).astype("float32")[None])
    images = keras.ops.concatenate([images, images], axis=0)

    def decode(seeds):
        return keras.ops.convert_to_numpy(codec.decode(images, kgen_random.seed_pairs(seeds)))

    a, b = decode([1, 2]), decode([1, 2])
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[0] - a[1]).max() > 1e-3  # same image, other seed: other phase


def test_codec_settings_are_checked():
    with pytest.raises(ValueError, match="hop_length=512"):
        LogMel(hop_length=512, fft_length=256)
    with pytest.raises(ValueError, match="floor=1.0, ceiling=0.5"):
        LogMel(floor=1.0, ceiling=0.5)
    with pytest.raises(ValueError, match="griffin_lim_iters=-1"):
        LogMel(griffin_lim_iters=-1)


# --- the model ------------------------------------------------------------


def test_training_on_fsdd_lowers_the_loss(trained):
    model, losses = trained
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_same_seed_same_clip_and_rows_stand_alone(trained):
    model, _ = trained
    options = dict(num_steps=3, guidance_scale=2.0)
    clips = model.generate(3, seed=5, labels=[1, 2, 3], **options)
    assert clips.shape == (3, RATE) and clips.dtype == np.float32
    assert np.abs(clips).max() <= 1.0 and np.abs(clips).max() > 0.0
    np.testing.assert_allclose(clips, model.generate(3, seed=5, labels=[1, 2, 3], **options),
                               atol=1e-6)
    np.testing.assert_allclose(clips[1], model.generate(1, seed=6, labels=2, **options)[0],
                               atol=1e-5)
    assert np.abs(clips[0] - clips[1]).max() > 1e-3


def test_keras_file_round_trip(trained, tmp_path):
    model, _ = trained
    model.save(tmp_path / "audio.keras")
    again = keras.saving.load_model(tmp_path / "audio.keras")
    assert isinstance(again, AudioDiffusionModel)
    assert again.spectrogram.get_config() == model.spectrogram.get_config()
    assert again.sample_rate == RATE and again.length == RATE
    # The options of test_same_seed_same_clip_...: the trained model's
    # compiled loop is reused.
    options = dict(seed=5, labels=[1, 2, 3], num_steps=3, guidance_scale=2.0)
    np.testing.assert_allclose(again.generate(3, **options), model.generate(3, **options),
                               atol=1e-5)


def test_bad_batches_and_shapes_are_named(trained):
    model, _ = trained
    with pytest.raises(ValueError, match=r"batch has keys \['images', 'labels'\]"):
        model({"images": np.zeros((1, RATE), "float32"), "labels": np.zeros((1,), "int32")})
    codec = tiny_codec()
    with pytest.raises(ValueError, match=r"denoiser takes images \(8, 8, 1\).*\(16, 64, 1\)"):
        AudioDiffusionModel(unet((8, 8, 1), (8, 16), num_classes=10, groups=4), codec,
                            num_classes=10)
    with pytest.raises(ValueError, match="labels=\\[12\\]: must be in \\[0, 10\\)"):
        model.generate(1, seed=0, labels=[12], num_steps=2)


def test_sample_logger_writes_one_clip_per_digit(trained, fsdd, tmp_path):
    model, _ = trained
    logger = SampleLogger(tmp_path / "logs", n=3, seed=0, out_dir=tmp_path / "samples",
                          generate_kwargs={"num_steps": 2, "guidance_scale": 2.0})
    model.fit(fsdd.train.take(1), epochs=1, verbose=0, callbacks=[logger])
    files = sorted(p.name for p in (tmp_path / "samples" / "epoch_001").iterdir())
    assert files == ["row_00_label_0.wav", "row_01_label_1.wav", "row_02_label_2.wav"]
    with wave.open(str(tmp_path / "samples" / "epoch_001" / files[1])) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) \
            == (1, 2, RATE, RATE)
    events = list(pathlib.Path(tmp_path / "logs" / "samples").glob("events.out.tfevents.*"))
    audio = [value for path in events
             for event in tf.compat.v1.train.summary_iterator(str(path))
             for value in event.summary.value if value.tag.startswith("samples")]
    assert audio, "no audio summary"
    clips = tf.audio.decode_wav(tf.make_tensor_proto(audio[0].tensor).string_val[0]
                                if audio[0].HasField("tensor")
                                else audio[0].audio.encoded_audio_string)
    assert int(clips.sample_rate) == RATE and clips.audio.shape == (RATE, 1)
