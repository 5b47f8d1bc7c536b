"""kgen.data.audio on real FSDD clips and on tiny WAV folders written here."""

import shutil
import wave

import numpy as np
import pytest

from kgen.data import DataError
from kgen.data import audio_datasets
from kgen.data import fsdd_test_mask
from kgen.data import load_audio
from kgen.data import load_audio_data
from tests.conftest import shared

pytestmark = pytest.mark.backend_agnostic

# A few real FSDD takes: digits 0-2, two speakers, train and test takes.
SOME_TAKES = [f"{d}_{s}_{i}.wav" for d in (0, 1, 2) for s in ("george", "jackson")
              for i in (0, 7)]


@pytest.fixture(scope="module")
def recordings():
    return shared("fsdd", "recordings")


@pytest.fixture(scope="module")
def fsdd(recordings):
    """The whole FSDD, the publishers' split, labelled batches."""
    return load_audio_data(recordings, sample_rate=8000, length=8000, batch_size=32,
                           split="fsdd", with_labels=True)


@pytest.fixture
def few(recordings, tmp_path):
    """A folder holding copies of SOME_TAKES."""
    folder = tmp_path / "few"
    folder.mkdir()
    for name in SOME_TAKES:
        shutil.copy(recordings / name, folder / name)
    return folder


def read_wav(path):
    """A 16-bit mono WAV file's samples in [-1, 1), read with the stdlib."""
    with wave.open(str(path)) as f:
        assert f.getsampwidth() == 2 and f.getnchannels() == 1
        raw = f.readframes(f.getnframes())
    return np.frombuffer(raw, "<i2").astype("float64") / 32768.0


def write_wav(path, samples, rate):
    """Write float samples `(n,)` or `(n, channels)` with tf.audio.encode_wav."""
    import tensorflow as tf

    samples = np.asarray(samples, "float32")
    if samples.ndim == 1:
        samples = samples[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.audio.encode_wav(samples, rate).numpy())
    return path


def tone(freq, rate, seconds=0.5, amplitude=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def peak_frequency(clip, rate):
    spectrum = np.abs(np.fft.rfft(clip * np.hanning(len(clip))))
    return np.fft.rfftfreq(len(clip), 1 / rate)[np.argmax(spectrum)]


# === The real FSDD ===

def test_fsdd_loads_with_its_published_split(fsdd):
    assert (fsdd.train_size, fsdd.validation_size) == (2700, 300)
    assert fsdd.num_classes == 10 and fsdd.class_names == [str(d) for d in range(10)]
    assert (fsdd.sample_rate, fsdd.length) == (8000, 8000)
    assert fsdd.info["split"] == "fsdd" and fsdd.info["skipped"] == 0
    batch = next(iter(fsdd.train))
    assert set(batch) == {"audio", "labels"}
    assert batch["audio"].shape == (32, 8000) and batch["audio"].dtype.name == "float32"
    assert batch["labels"].shape == (32,) and batch["labels"].dtype.name == "int32"
    # Takes 0-4 validate, 5-49 train; every digit is in both.
    for split, takes in (("train", range(5, 50)), ("validation", range(5))):
        files = fsdd.info[split]["files"]
        assert {int(p.stem.split("_")[2]) for p in files} == set(takes)
        assert {p.name[0] for p in files} == set("0123456789")
    labels = np.concatenate([b["labels"] for b in fsdd.validation.as_numpy_iterator()])
    assert np.bincount(labels).tolist() == [30] * 10
    audio = np.concatenate([b["audio"] for b in fsdd.validation.as_numpy_iterator()])
    np.testing.assert_allclose(np.abs(audio).max(axis=1), 1.0, rtol=1e-6)


def test_clips_are_the_files_samples_padded_and_peak_normalised(few):
    audio, labels, info = load_audio(few, sample_rate=8000, length=8000)
    assert audio.shape == (len(SOME_TAKES), 8000) and audio.dtype == np.float32
    assert info["labels"] == "filename" and info["skipped"] == 0
    assert [p.name for p in info["files"]] == sorted(SOME_TAKES)
    assert labels.dtype == np.int32
    assert labels.tolist() == [int(p.name[0]) for p in info["files"]]
    for row, path in zip(audio, info["files"]):
        samples = read_wav(path)
        assert len(samples) < 8000  # these takes are all shorter than a second
        expected = samples / np.abs(samples).max()
        np.testing.assert_allclose(row[:len(samples)], expected, atol=1e-6)
        assert not row[len(samples):].any()  # padded with silence at the end
    assert info["padded"] == len(SOME_TAKES) and info["cropped"] == 0


def test_fsdd_test_mask_is_takes_0_to_4(few):
    files = sorted(few.iterdir())
    assert fsdd_test_mask(files).tolist() == [p.stem.endswith("_0") for p in files]
    with pytest.raises(DataError, match=r"notes\.wav: split='fsdd' needs FSDD file names"):
        fsdd_test_mask([few / "notes.wav"])


def test_limit_reads_a_seeded_pick_per_split(recordings):
    a = load_audio_data(recordings, length=1000, limit=7, seed=3, with_labels=True)
    b = load_audio_data(recordings, length=1000, limit=7, seed=3, with_labels=True)
    assert (a.train_size, a.validation_size) == (7, 7)
    assert a.info["train"]["files"] == b.info["train"]["files"]
    assert all(int(p.stem.split("_")[2]) < 5 for p in a.info["validation"]["files"])
    assert a.num_classes == 10  # counted on the whole folder


# === Labels from sub-folders, resampling, length ===

def test_labels_from_sub_folders_sorted_like_keras(tmp_path):
    root = tmp_path / "words"
    for name, freq in (("yes", 300), ("no", 500), ("maybe", 700)):
        for take in range(2):
            write_wav(root / name / f"take{take}.wav", tone(freq, 8000, 0.25), 8000)
    audio, labels, info = load_audio(root, length=2000)
    assert info["labels"] == "folders"
    assert info["class_names"] == ["maybe", "no", "yes"]
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    for row, label in zip(audio, labels):
        assert abs(peak_frequency(row, 8000) - (700, 500, 300)[label]) <= 8
    ds = load_audio_data(root, length=2000, split=0.5, with_labels=True, batch_size=2)
    assert (ds.train_size, ds.validation_size, ds.num_classes) == (3, 3, 3)
    assert ds.info["split"] == 0.5


def test_resampling_keeps_frequencies_and_removes_aliases(tmp_path):
    # 440 Hz at 16 kHz -> 8 kHz stays at 440 Hz. A 6 kHz tone lies above the
    # new Nyquist frequency (4 kHz): taking every other sample would fold it
    # to 2 kHz at full strength; the polyphase filter removes it.
    write_wav(tmp_path / "a_low.wav", tone(440, 16000), 16000)
    write_wav(tmp_path / "b_high.wav", tone(6000, 16000) + tone(440, 16000, amplitude=0.05),
              16000)
    audio, _, info = load_audio(tmp_path, sample_rate=8000, length=4000, labels=None)
    assert info["resampled"] == 2 and info["padded"] == info["cropped"] == 0
    assert abs(peak_frequency(audio[0], 8000) - 440) <= 2
    assert abs(peak_frequency(audio[1], 8000) - 440) <= 2  # no 2 kHz alias
    # Upsampling 8 kHz -> 16 kHz doubles the samples and keeps the tone.
    up, _, _ = load_audio(tmp_path, sample_rate=32000, length=16000, labels=None)
    assert abs(peak_frequency(up[0], 32000) - 440) <= 2


def test_long_clips_are_cropped_around_their_centre(tmp_path):
    ramp = np.linspace(-0.5, 0.5, 1000)
    write_wav(tmp_path / "ramp.wav", ramp, 8000)
    audio, labels, info = load_audio(tmp_path, length=400)
    assert labels is None and info["cropped"] == 1
    written = read_wav(tmp_path / "ramp.wav")[300:700]
    np.testing.assert_allclose(audio[0], written / np.abs(written).max(), atol=1e-6)


def test_silent_and_quiet_clips(tmp_path):
    write_wav(tmp_path / "a_silent.wav", np.zeros(500), 8000)
    write_wav(tmp_path / "b_quiet.wav", tone(200, 8000, 0.1, amplitude=0.01), 8000)
    audio, labels, info = load_audio(tmp_path, length=800)
    assert info["silent"] == 1 and labels.tolist() == [0, 1]
    assert not audio[0].any() and np.isfinite(audio).all()
    assert np.abs(audio[1]).max() == pytest.approx(1.0)


# === Bad files ===

def empty_file(path):
    path.write_bytes(b"")


def no_samples(path):
    write_wav(path, np.zeros((0, 1)), 8000)


def corrupt(path):
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 6)


def stereo(path):
    write_wav(path, np.stack([tone(300, 8000, 0.1)] * 2, axis=1), 8000)


def pcm24(path):
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(3)
        f.setframerate(8000)
        f.writeframes(bytes(300))


def not_wav(path):
    path.with_suffix(".txt").write_text("notes about the takes\n")


BAD_FILES = {
    "empty": (empty_file, r"an empty file \(0 bytes\)"),
    "no_samples": (no_samples, r"no samples"),
    "corrupt": (corrupt, r"not a readable WAV file"),
    "stereo": (stereo, r"2 channels; expected mono"),
    "pcm24": (pcm24, r"not a readable WAV file \(Can only read 16-bit WAV files, "
                     r"but received 24; expected 16-bit PCM WAV\)"),
    "not_wav": (not_wav, r"not a WAV file"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_file_is_named_or_skipped_and_counted(few, kind):
    make, reason = BAD_FILES[kind]
    make(few / "2_bad_1.wav")
    name = "2_bad_1.txt" if kind == "not_wav" else "2_bad_1.wav"
    with pytest.raises(DataError, match=rf"{name}: {reason}.*on_bad_file=skip"):
        load_audio(few)
    audio, labels, info = load_audio(few, on_bad_file="skip")
    assert info["skipped"] == 1 and len(audio) == len(SOME_TAKES)
    assert name in info["skipped_files"][0]
    assert set(labels.tolist()) == {0, 1, 2}
    ds = load_audio_data(few, split="fsdd", with_labels=True, on_bad_file="skip")
    assert ds.info["skipped"] == 1 and ds.train_size + ds.validation_size == len(SOME_TAKES)


def test_skipped_files_are_counted_and_the_first_few_named(few):
    for i in range(7):
        empty_file(few / f"0_empty_{i}.wav")
    audio, _, info = load_audio(few, on_bad_file="skip")
    assert info["skipped"] == 7 and len(info["skipped_files"]) == 5
    assert len(audio) == len(SOME_TAKES)


def test_a_folder_of_nothing_usable_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nothing: no such folder"):
        load_audio(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no WAV files found.*found no files"):
        load_audio(empty)
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"empty: no WAV files found.*1 other file"):
        load_audio(empty, on_bad_file="skip")
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    empty_file(only_bad / "0_a_0.wav")
    with pytest.raises(DataError, match=r"only_bad: every file was skipped \(1 bad file\(s\); the first, "
                                        r"0_a_0\.wav: an empty file \(0 bytes\)\)"):
        load_audio(only_bad, on_bad_file="skip")


def test_a_file_beside_the_class_folders_is_named(tmp_path):
    write_wav(tmp_path / "yes" / "a.wav", tone(300, 8000, 0.1), 8000)
    write_wav(tmp_path / "stray.wav", tone(300, 8000, 0.1), 8000)
    with pytest.raises(DataError, match=r"stray\.wav: a file outside the class sub-folders"):
        load_audio(tmp_path)
    _, labels, info = load_audio(tmp_path, on_bad_file="skip")
    assert labels.tolist() == [0] and info["skipped"] == 1


def test_numeric_labels_with_a_gap_are_named(few):
    shutil.copy(few / "0_george_7.wav", few / "5_george_7.wav")
    with pytest.raises(DataError, match=r"5_george_7\.wav: label 5 from its file name "
                                        r"leaves class 3 with no file"):
        load_audio(few)


def test_unlabelled_names_are_named(tmp_path):
    write_wav(tmp_path / "0_a_0.wav", tone(300, 8000, 0.1), 8000)
    write_wav(tmp_path / "hello.wav", tone(300, 8000, 0.1), 8000)
    with pytest.raises(DataError, match=r"hello\.wav: cannot read a label from the file name"):
        load_audio(tmp_path)
    audio, labels, _ = load_audio(tmp_path, labels=None)
    assert len(audio) == 2 and labels is None
    with pytest.raises(DataError, match=r"hello\.wav: split='fsdd' needs FSDD file names"):
        load_audio_data(tmp_path, labels=None, split="fsdd")
    with pytest.raises(DataError, match=r"needs labels, but the files carry none"):
        load_audio_data(tmp_path, labels=None, with_labels=True)


@pytest.mark.parametrize("setting, pattern", [
    (dict(on_bad_file="ignore"), r"on_bad_file='ignore'"),
    (dict(labels="names"), r"labels='names'"),
    (dict(sample_rate=0), r"sample_rate=0"),
    (dict(length=2.5), r"length=2\.5"),
    (dict(split=1.5), r"split=1\.5"),
    (dict(batch_size=0), r"batch_size=0"),
    (dict(limit=-1), r"limit=-1"),
])
def test_bad_settings_are_named(few, setting, pattern):
    with pytest.raises(DataError, match=pattern):
        load_audio_data(few, **setting)


def test_audio_datasets_from_arrays():
    audio = np.random.default_rng(0).uniform(-1, 1, (20, 16)).astype("float32")
    labels = np.arange(20) % 4
    ds = audio_datasets(audio, labels, sample_rate=4000, batch_size=4,
                        validation=0.25, with_labels=True, repeat=True)
    assert (ds.train_size, ds.validation_size, ds.num_classes) == (15, 5, 4)
    batch = next(iter(ds.train))
    assert batch["audio"].shape == (4, 16) and batch["labels"].shape == (4,)
    mask = np.arange(20) < 3
    held = audio_datasets(audio, labels, validation=mask, with_labels=True)
    val = next(iter(held.validation))
    np.testing.assert_array_equal(val["audio"], audio[:3])
    with pytest.raises(DataError, match=r"labels must hold one label per clip \(20\)"):
        audio_datasets(audio, labels[:5])
