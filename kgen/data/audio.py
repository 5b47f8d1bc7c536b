"""Audio data: folders of WAV files, labelled by file name or by sub-folder.

`load_audio()` reads every WAV file of a folder into one float32 array of
fixed-length clips, and `audio_datasets()` splits, batches and prefetches
them as `tf.data` pipelines, which Keras' `fit()` takes on every backend.
`load_audio_data()` is a recipe's one call.

Two layouts are read:

- labels from the file name, `{label}_{anything}.wav`, as the Free Spoken
  Digit Dataset ships (`recordings/{digit}_{speaker}_{index}.wav`, 8 kHz,
  mono, 16-bit). Its publishers' split holds takes 0-4 of every digit and
  speaker out for testing (`split="fsdd"`).
- labels from sub-folders, one per class, class names sorted, as
  `keras.utils.audio_dataset_from_directory` reads them.

Each clip is decoded with `tf.audio.decode_wav` (core TensorFlow, no
tensorflow-io), resampled to `sample_rate` with a polyphase filter
(`scipy.signal.resample_poly`: its low-pass filter keeps frequencies above
the new Nyquist rate from folding back, which plain interpolation does not),
padded with silence at the end or cropped around its centre to `length`
samples, and divided by its peak so it spans [-1, 1] (a silent clip stays
silent). Everything is held in memory; nothing is cached on disk.

Nothing is trusted: a file that is empty, not a WAV file, corrupt, or not
mono is a `DataError` naming the file, or, with `on_bad_file="skip"`, is
skipped and counted in `info["skipped"]`.
"""

import dataclasses
import math
import os
import pathlib
import re

import numpy as np

from kgen.data.errors import DataError
from kgen.data.images import check_labels

_WAV_SUFFIX = ".wav"
# The FSDD's file names: {digit}_{speaker}_{index}.wav.
_FSDD_NAME = re.compile(r"^(\d+)_([^_]+)_(\d+)\.wav$", re.IGNORECASE)
# Takes 0-4 of each digit and speaker are the FSDD's test split.
FSDD_TEST_TAKES = 5
_LABEL_MODES = ("auto", "filename", "folders", None)
_BAD_FILE_MODES = ("error", "skip")
# How many skipped files `info["skipped_files"]` names.
_NAMED_SKIPS = 5


@dataclasses.dataclass
class AudioData:
    """Train and validation pipelines plus what a model needs to know.

    Attributes:
        train: `tf.data.Dataset` of dict batches `{"audio": float32 (b,
            length)}`, plus `"labels": int32 (b,)` when loaded `with_labels`.
        validation: the same for the held-out split, or `None`.
        num_classes: number of classes (0 when there are no labels).
        sample_rate: samples per second of every clip.
        length: samples per clip.
        train_size: number of training clips.
        validation_size: number of validation clips.
        class_names: the class names, label `i` is `class_names[i]`.
        info: what loading found (`load_audio()`'s `info`, per split).
    """

    train: object
    validation: object
    num_classes: int
    sample_rate: int
    length: int
    train_size: int
    validation_size: int
    class_names: list
    info: dict


class _BadFile(Exception):
    """A file that cannot be used, with the reason (a DataError, or a skip)."""


def _check_settings(sample_rate, length, labels, on_bad_file):
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or sample_rate < 1:
        raise DataError(f"sample_rate={sample_rate!r}: must be a positive whole number of Hz")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise DataError(f"length={length!r}: must be a positive whole number of samples")
    if labels not in _LABEL_MODES:
        raise DataError(
            f"labels={labels!r}: must be one of 'auto', 'filename', 'folders' or None"
        )
    if on_bad_file not in _BAD_FILE_MODES:
        raise DataError(f"on_bad_file={on_bad_file!r}: must be 'error' or 'skip'")


def _visible(path):
    return not path.name.startswith(".")


def _index(source, labels):
    """The folder's files with their labels, before any file is read.

    Returns:
        `(entries, class_names, mode, unusable)`: `entries` a sorted list of
        `(path, label or None)` for the `.wav` files; `unusable` a list of
        `(path, reason)` for other files (not WAV, or outside the class
        folders), which are errors or skips as the caller asks.
    """
    if source is None or source == "":
        raise DataError(
            "no data source given: set data to a folder of WAV files, "
            "e.g. --set data=DIR"
        )
    root = pathlib.Path(os.path.expanduser(str(source)))
    if not root.exists():
        raise DataError(f"{root}: no such folder (expected a folder of WAV files)")
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder of WAV files, found a file")
    children = sorted(p for p in root.iterdir() if _visible(p))
    folders = [p for p in children if p.is_dir()]
    if labels == "auto":
        if folders:
            labels = "folders"
        elif any(_FSDD_NAME.match(p.name) or "_" in p.stem
                 for p in children if p.suffix.lower() == _WAV_SUFFIX):
            labels = "filename"
        else:
            labels = None
    unusable = []
    if labels == "folders":
        if not folders:
            raise DataError(
                f"{root}: labels='folders' needs one sub-folder per class, "
                f"found none"
            )
        class_names = [p.name for p in folders]
        files = []
        for label, folder in enumerate(folders):
            files += [(p, label) for p in sorted(folder.rglob("*"))
                      if p.is_file() and _visible(p)
                      and all(_visible(q) for q in p.relative_to(folder).parents)]
        unusable += [(p, "a file outside the class sub-folders") for p in children
                     if p.is_file()]
    else:
        files = [(p, None) for p in children if p.is_file()]
        # Sub-folders are not read when labels come from the file names.
        class_names = []
    entries = []
    for path, label in files:
        if path.suffix.lower() != _WAV_SUFFIX:
            unusable.append((path, "not a WAV file (expected the suffix .wav)"))
        else:
            entries.append((path, label))
    if not entries:
        found = f"{len(unusable)} other file(s)" if unusable else "no files"
        raise DataError(f"{root}: no WAV files found (expected *.wav; found {found})")
    if labels == "filename":
        entries, class_names = _labels_from_names(entries)
    return entries, class_names, labels, unusable


def _labels_from_names(entries):
    """Label each file by its name's prefix before the first `_`.

    Prefixes that are all whole numbers are the labels themselves (the
    FSDD's digits) and must number the classes 0..K-1; other prefixes are
    class names, sorted, numbered 0..K-1.
    """
    prefixes = []
    for path, _ in entries:
        prefix = path.stem.split("_", 1)[0]
        if "_" not in path.stem or not prefix:
            raise DataError(
                f"{path}: cannot read a label from the file name (expected "
                f"{{label}}_{{anything}}.wav, as the FSDD's "
                f"{{digit}}_{{speaker}}_{{index}}.wav; or use labels='folders' "
                f"or labels=None)"
            )
        prefixes.append(prefix)
    if all(p.isdigit() for p in prefixes):
        values = [int(p) for p in prefixes]
        missing = sorted(set(range(max(values) + 1)) - set(values))
        if missing:
            row = next(i for i, v in enumerate(values) if v > missing[0])
            raise DataError(
                f"{entries[row][0]}: label {values[row]} from its file name "
                f"leaves class {missing[0]} with no file; numeric labels must "
                f"number the classes 0..K-1 (found {sorted(set(values))})"
            )
        class_names = [str(i) for i in range(max(values) + 1)]
    else:
        class_names = sorted(set(prefixes))
        number = {name: i for i, name in enumerate(class_names)}
        values = [number[p] for p in prefixes]
    return [(path, int(v)) for (path, _), v in zip(entries, values)], class_names


def _reason(error):
    """A TensorFlow error's message, one line, without the op's decoration."""
    message = (getattr(error, "message", None) or str(error) or type(error).__name__)
    message = re.sub(r"\{\{[^}]*\}\}\s*", "", message)
    message = re.sub(r"\s*\[Op:[^\]]*\]", "", message)
    message = re.sub(r"\s*name:\s*$", "", message.strip())
    return message.strip().splitlines()[0] if message.strip() else type(error).__name__


def _decode(path):
    """`(samples float32 (n,), sample_rate)` of a mono WAV file, or raises
    `_BadFile` with the reason."""
    import tensorflow as tf

    try:
        size = path.stat().st_size
    except OSError as e:
        raise _BadFile(f"cannot read the file ({e.strerror})") from None
    if size == 0:
        raise _BadFile("an empty file (0 bytes)")
    try:
        contents = tf.io.read_file(str(path))
        audio, rate = tf.audio.decode_wav(contents)
    except tf.errors.OpError as e:
        raise _BadFile(
            f"not a readable WAV file ({_reason(e)}; expected 16-bit PCM WAV)"
        ) from None
    audio, rate = audio.numpy(), int(rate)
    if audio.shape[1] != 1:
        raise _BadFile(
            f"{audio.shape[1]} channels; expected mono (down-mix it first, "
            f"e.g. average the channels)"
        )
    if audio.shape[0] == 0:
        raise _BadFile("no samples (a WAV header with no audio)")
    if rate < 1:
        raise _BadFile(f"sample rate {rate} Hz in its header")
    return audio[:, 0], rate


def resample(audio, from_rate, to_rate):
    """Resample a 1-D clip with a polyphase low-pass filter.

    `scipy.signal.resample_poly` by the reduced ratio `to_rate / from_rate`:
    its anti-aliasing filter removes what lies above the lower of the two
    Nyquist frequencies, so a 16 kHz clip taken to 8 kHz loses its top band
    rather than folding it into the band it keeps.

    Args:
        audio: float32 `(n,)`.
        from_rate: the clip's sample rate in Hz.
        to_rate: the wanted sample rate in Hz.

    Returns:
        float32 `(ceil(n * to_rate / from_rate),)`.
    """
    if from_rate == to_rate:
        return audio
    from scipy.signal import resample_poly

    g = math.gcd(int(from_rate), int(to_rate))
    return resample_poly(audio, int(to_rate) // g, int(from_rate) // g).astype("float32")


def fit_length(audio, length):
    """Pad with silence at the end, or crop around the centre, to `length`.

    Padding at the end keeps every clip starting at its first sample, as
    `keras.utils.audio_dataset_from_directory` pads; cropping around the
    centre keeps the middle of a long recording, where a trimmed word is.
    """
    n = len(audio)
    if n >= length:
        start = (n - length) // 2
        return audio[start:start + length]
    return np.pad(audio, (0, length - n))


def peak_normalize(audio):
    """Divide a clip by its largest absolute value; a silent clip stays zero."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if not np.isfinite(peak):
        raise _BadFile("holds non-finite samples")
    return (audio / peak).astype("float32") if peak > 0 else audio.astype("float32")


def _read_clips(entries, sample_rate, length, on_bad_file):
    """Decode, resample, fit and normalise `entries`; returns the clips,
    labels and files kept, and the files skipped with their reasons."""
    clips = np.zeros((len(entries), length), dtype="float32")
    labels, kept, skipped = [], [], []
    stats = {"resampled": 0, "padded": 0, "cropped": 0, "silent": 0}
    for path, label in entries:
        try:
            audio, rate = _decode(path)
            if rate != sample_rate:
                audio = resample(audio, rate, sample_rate)
                stats["resampled"] += 1
            stats["padded"] += len(audio) < length
            stats["cropped"] += len(audio) > length
            clip = peak_normalize(fit_length(audio, length))
        except _BadFile as e:
            if on_bad_file == "error":
                raise DataError(
                    f"{path}: {e} (set on_bad_file=skip to skip such files)"
                ) from None
            skipped.append((path, str(e)))
            continue
        stats["silent"] += not clip.any()
        clips[len(kept)] = clip
        labels.append(label)
        kept.append(path)
    return clips[:len(kept)], labels, kept, skipped, stats


def _info(root, mode, class_names, kept, skipped, stats, sample_rate, length):
    return {
        "source": str(root),
        "labels": mode,
        "class_names": list(class_names),
        "files": list(kept),
        "skipped": len(skipped),
        "skipped_files": [f"{p}: {reason}" for p, reason in skipped[:_NAMED_SKIPS]],
        "sample_rate": sample_rate,
        "length": length,
        **stats,
    }


def _load(source, sample_rate, length, labels, on_bad_file, select=None):
    """Index, then read the entries `select(entries)` picks (all by default)."""
    _check_settings(sample_rate, length, labels, on_bad_file)
    entries, class_names, mode, unusable = _index(source, labels)
    if unusable and on_bad_file == "error":
        path, reason = unusable[0]
        raise DataError(f"{path}: {reason} (set on_bad_file=skip to skip such files)")
    groups = select(entries) if select else [entries]
    results = []
    for i, group in enumerate(groups):
        clips, clip_labels, kept, skipped, stats = _read_clips(
            group, sample_rate, length, on_bad_file)
        if i == 0:  # files that are not WAV at all are counted once
            skipped = list(unusable) + skipped
        results.append((clips, clip_labels, kept, skipped, stats))
    return pathlib.Path(os.path.expanduser(str(source))), entries, class_names, mode, results


def load_audio(source, sample_rate=8000, length=8000, labels="auto",
               on_bad_file="error"):
    """Load a folder of WAV files as fixed-length, peak-normalised clips.

    Args:
        source: a folder of `.wav` files: labelled by file name
            (`{label}_{anything}.wav`, as the FSDD's `recordings/`) or by
            sub-folder (one per class). Hidden files (`.name`) are ignored.
        sample_rate: the rate, in Hz, every clip is resampled to.
        length: the samples every clip is padded (at the end) or cropped
            (around its centre) to.
        labels: `"filename"`, `"folders"`, `None` (no labels) or `"auto"`:
            folders when the source has sub-folders, else the file names
            when they hold a `_`, else none.
        on_bad_file: `"error"` (a `DataError` naming the first file that is
            empty, not WAV, corrupt or not mono) or `"skip"` (skip such
            files and count them in `info["skipped"]`).

    Returns:
        `(audio, labels, info)`: float32 `(n, length)` in [-1, 1]; int32
        `(n,)` or `None`; and a dict with `class_names`, `files` (the files
        read, row by row), `skipped` (how many), `skipped_files` (the first
        few, with the reason), `labels` (the mode used) and the numbers of
        clips `resampled`, `padded`, `cropped` and `silent`.

    Raises:
        DataError: naming the folder or file and what was expected.

    Example:

    ```python
    audio, labels, info = load_audio("fsdd/recordings", sample_rate=8000)
    audio.shape  # (3000, 8000)
    ```
    """
    root, _, class_names, mode, [(clips, clip_labels, kept, skipped, stats)] = _load(
        source, sample_rate, length, labels, on_bad_file)
    if not kept:
        path, reason = skipped[0]
        raise DataError(
            f"{root}: every file was skipped ({len(skipped)} bad file(s); the "
            f"first, {path.name}: {reason})"
        )
    label_array = np.asarray(clip_labels, dtype="int32") if mode else None
    return clips, label_array, _info(root, mode, class_names, kept, skipped, stats,
                                     sample_rate, length)


def fsdd_test_mask(files):
    """True for the files in the FSDD's test split (takes 0-4).

    Raises:
        DataError: naming a file whose name is not `{digit}_{speaker}_{index}.wav`.
    """
    mask = []
    for path in files:
        match = _FSDD_NAME.match(pathlib.Path(path).name)
        if not match:
            raise DataError(
                f"{path}: split='fsdd' needs FSDD file names "
                f"{{digit}}_{{speaker}}_{{index}}.wav (or set split to a "
                f"validation fraction, e.g. 0.1)"
            )
        mask.append(int(match.group(3)) < FSDD_TEST_TAKES)
    return np.array(mask, dtype=bool)


def _check_split(split):
    if split in ("fsdd", "auto"):
        return split
    if isinstance(split, str):  # `--set split=0.1` arrives as text
        try:
            split = float(split)
        except ValueError:
            raise DataError(
                f"split={split!r}: must be 'fsdd', 'auto' or a validation "
                f"fraction in [0, 1)"
            ) from None
    if isinstance(split, bool) or not isinstance(split, (int, float)) \
            or not 0 <= split < 1:
        raise DataError(
            f"split={split!r}: must be 'fsdd', 'auto' or a validation fraction in [0, 1)"
        )
    return float(split)


def audio_datasets(audio, labels=None, sample_rate=8000, batch_size=64,
                   validation=0.1, with_labels=False, repeat=False, seed=0,
                   limit=None, class_names=None, num_classes=None, info=None):
    """Split clips into shuffled, batched, prefetched `tf.data` pipelines.

    Batches are dicts, the one batch format of every kgen audio family:
    `{"audio": float32 (b, length)}`, plus `"labels": int32 (b,)` when
    `with_labels`.

    Args:
        audio: float32 `(n, length)` in [-1, 1].
        labels: int `(n,)` or `None`.
        sample_rate: the clips' rate in Hz (recorded in the result).
        batch_size: clips per batch.
        validation: a fraction in [0, 1) of the clips to hold out, drawn
            by a seeded permutation (a folder sorted by class would
            otherwise hold out its last classes), or a boolean `(n,)` mask
            of the rows to hold out (the FSDD's split). 0 holds out
            nothing (`validation` is then `None`).
        with_labels: add `"labels"` to each batch.
        repeat: repeat the training pipeline forever (for `steps_per_epoch`).
        seed: seed of the split and of the training shuffle.
        limit: keep at most `limit` clips in each split (quick runs).
        class_names: names of the classes (default `"0"`, `"1"`, ...).
        num_classes: the number of classes (default: counted on `labels`).
        info: what loading found, kept in the result.

    Returns:
        An `AudioData`.

    Example:

    ```python
    audio, labels, info = load_audio("fsdd/recordings")
    ds = audio_datasets(audio, labels, validation=fsdd_test_mask(info["files"]),
                        with_labels=True)
    ```
    """
    audio = np.asarray(audio, dtype="float32")
    if audio.ndim != 2:
        raise DataError(f"audio must be (clips, samples), found shape {audio.shape}")
    _check_count("batch_size", batch_size)
    _check_count("limit", limit, optional=True)
    if with_labels and labels is None:
        raise DataError("this model needs labels, but the data source has none")
    if labels is not None:
        labels = check_labels(labels, "labels")
        if labels.shape != (len(audio),):
            raise DataError(
                f"labels must hold one label per clip ({len(audio)}), found "
                f"shape {labels.shape}"
            )
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels is not None and len(labels) else 0
    rng = np.random.default_rng(seed)
    if isinstance(validation, np.ndarray):
        if validation.shape != (len(audio),) or validation.dtype != bool:
            raise DataError(
                f"validation mask must be bool ({len(audio)},), found "
                f"{validation.dtype} {validation.shape}"
            )
        held = validation
    else:
        fraction = _check_split(validation)
        if fraction in ("fsdd", "auto"):
            raise DataError(
                f"validation={validation!r}: pass the FSDD split as a mask "
                f"(fsdd_test_mask) or use load_audio_data(split='fsdd')"
            )
        n_val = max(1, int(round(len(audio) * fraction))) if fraction else 0
        held = np.zeros(len(audio), dtype=bool)
        held[rng.permutation(len(audio))[:n_val]] = True
    train_rows = np.flatnonzero(~held)[:limit]
    val_rows = np.flatnonzero(held)[:limit]
    if len(train_rows) < 1:
        raise DataError(f"too few clips to split: {len(audio)} clip(s), none left to train")
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    return _pipelines(audio, labels, train_rows, val_rows, sample_rate, batch_size,
                      with_labels, repeat, seed, class_names, num_classes, info)


def load_audio_data(source, sample_rate=8000, length=8000, batch_size=64,
                    split="auto", with_labels=False, repeat=False, seed=0,
                    limit=None, labels="auto", on_bad_file="error"):
    """`load_audio(source)` then `audio_datasets(...)`: a recipe's one call.

    Only the files a split keeps are read, so `limit` makes a quick run
    quick to load too.

    Args:
        source: a folder of WAV files (see `load_audio`).
        sample_rate, length, labels, on_bad_file: as `load_audio`.
        batch_size: clips per batch.
        split: `"fsdd"` (takes 0-4 of the FSDD's `{digit}_{speaker}_{index}
            .wav` validate, the publishers' test split), a validation
            fraction in [0, 1) drawn by a seeded permutation, or `"auto"`:
            `"fsdd"` when every file name has that form, else 0.1.
        with_labels: add `"labels"` to each batch.
        repeat: repeat the training pipeline forever (for `steps_per_epoch`).
        seed: seed of the split, of `limit`'s pick and of the shuffle.
        limit: read at most `limit` clips per split, a seeded pick from each.

    Returns:
        An `AudioData`; its `info` holds `load_audio`'s info for the
        `"train"` and `"validation"` splits, and `skipped` in all.

    Example:

    ```python
    ds = load_audio_data("fsdd/recordings", split="fsdd", with_labels=True)
    ds.train_size, ds.validation_size  # (2700, 300)
    ```
    """
    split = _check_split(split)
    _check_count("batch_size", batch_size)
    _check_count("limit", limit, optional=True)
    rng = np.random.default_rng(seed)
    chosen = {}

    def select(entries):
        names = [path for path, _ in entries]
        mode = split
        if mode == "auto":
            mode = "fsdd" if all(_FSDD_NAME.match(p.name) for p in names) else 0.1
        if mode == "fsdd":
            held = fsdd_test_mask(names)
        else:
            n_val = max(1, int(round(len(entries) * mode))) if mode else 0
            held = np.zeros(len(entries), dtype=bool)
            held[rng.permutation(len(entries))[:n_val]] = True
        chosen["split"] = mode
        groups = []
        for rows in (np.flatnonzero(~held), np.flatnonzero(held)):
            if limit is not None and len(rows) > limit:
                rows = np.sort(rng.permutation(rows)[:limit])
            groups.append([entries[i] for i in rows])
        return groups

    root, entries, class_names, mode, results = _load(
        source, sample_rate, length, labels, on_bad_file, select)
    if with_labels and mode is None:
        raise DataError(
            f"{root}: this model needs labels, but the files carry none "
            f"(name them {{label}}_{{anything}}.wav or put them in one "
            f"sub-folder per class)"
        )
    (train, train_labels, train_kept, train_skipped, train_stats), \
        (val, val_labels, val_kept, val_skipped, val_stats) = results
    if not train_kept:
        first = (f"; the first, {train_skipped[0][0].name}: {train_skipped[0][1]}"
                 if train_skipped else "")
        raise DataError(
            f"{root}: no clip left to train on ({len(train_skipped)} bad file(s) "
            f"skipped{first})"
        )
    audio = np.concatenate([train, val])
    label_array = (np.asarray(train_labels + val_labels, dtype="int32")
                   if mode else None)
    infos = {
        "train": _info(root, mode, class_names, train_kept, train_skipped,
                       train_stats, sample_rate, length),
        "validation": _info(root, mode, class_names, val_kept, val_skipped,
                            val_stats, sample_rate, length),
    }
    skipped = train_skipped + val_skipped
    info = {
        **infos,
        "split": chosen["split"],
        "skipped": len(skipped),
        "skipped_files": [f"{p}: {r}" for p, r in skipped[:_NAMED_SKIPS]],
    }
    num_classes = len(class_names) if mode else 0
    return _pipelines(audio, label_array, np.arange(len(train)),
                      np.arange(len(train), len(audio)), sample_rate, batch_size,
                      with_labels, repeat, seed, class_names, num_classes, info)


def _check_count(name, value, optional=False):
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        extra = ", or None" if optional else ""
        raise DataError(f"{name}={value!r}: must be a whole number of at least 1{extra}")


def _pipelines(audio, labels, train_rows, val_rows, sample_rate, batch_size,
               with_labels, repeat, seed, class_names, num_classes, info):
    """The `AudioData` of `audio`'s rows `train_rows` and `val_rows`."""
    import tensorflow as tf

    def pipeline(rows, training):
        parts = {"audio": audio[rows]}
        if with_labels:
            parts["labels"] = labels[rows].astype("int32")
        ds = tf.data.Dataset.from_tensor_slices(parts)
        if training:
            ds = ds.shuffle(len(rows), seed=seed)
            if repeat:
                ds = ds.repeat()
        ds = ds.batch(batch_size, drop_remainder=training and repeat)
        return ds.prefetch(tf.data.AUTOTUNE)

    return AudioData(
        train=pipeline(train_rows, True),
        validation=pipeline(val_rows, False) if len(val_rows) else None,
        num_classes=num_classes,
        sample_rate=int(sample_rate),
        length=int(audio.shape[1]),
        train_size=len(train_rows),
        validation_size=len(val_rows),
        class_names=list(class_names),
        info=dict(info or {}),
    )
