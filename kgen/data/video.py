"""Video data: Moving MNIST built from MNIST digits, and folders of clips.

Moving MNIST (Srivastava, Mansimov and Salakhutdinov, 2015, "Unsupervised
Learning of Video Representations using LSTMs") is drawn here from the
digits of an MNIST IDX folder (`moving_mnist`): each clip moves one or more
digits at constant velocity across a small black canvas, bouncing off its
walls. The clip's class is its first digit's label, so a class-conditional
model learns "draw a moving 7". Training and validation clips are drawn
from disjoint source digits (`mnist_digits`).

A folder of GIF or MP4 clips (one sub-folder per class, or flat) is read
by `load_video_folder` (`kgen.video.read_clip` per file).

`load_video_data` is a recipe's one call: it builds or reads the clips,
keeps them in memory as uint8 (10,000 clips of 10 frames of 32x32 take
100 MB), and returns `tf.data` pipelines of dict batches
`{"videos": float32 (b, frames, h, w, c) in [0, 1], "labels": int32 (b,)}`,
converted to float in the pipeline.

Example:

```python
from kgen.data import load_video_data

data = load_video_data("data/mnist", batch_size=16, frames=10, size=32)
batch = next(iter(data.train))     # batch["videos"]: (16, 10, 32, 32, 1)
```
"""

import dataclasses
import math
import os
import pathlib

import numpy as np

from kgen.data.errors import DataError
from kgen.data.images import MAX_DATA_BYTES
from kgen.data.images import check_labels
from kgen.data.images import load_idx
from kgen.data.images import to_unit_range

# The share of an MNIST split's digits (and of a clip folder's clips)
# held out for validation when the data has no separate test split.
VALIDATION_FRACTION = 0.1
CLIP_SUFFIXES = (".gif", ".mp4")


@dataclasses.dataclass
class VideoData:
    """Train and validation pipelines plus what a model needs to know.

    Attributes:
        train: `tf.data.Dataset` of batches `{"videos": float32 (b, frames,
            h, w, c) in [0, 1], "labels": int32 (b,)}`.
        validation: the same for the held-out clips.
        video_shape: `(frames, height, width, channels)`.
        num_classes: number of classes the labels number.
        train_size: number of training clips.
        validation_size: number of validation clips.
        clip_settings: how the clips were made: `frames`, `size`,
            `digit_size` and `num_digits` for Moving MNIST; `frames` and
            `size` for a clip folder.
    """

    train: object
    validation: object
    video_shape: tuple
    num_classes: int
    train_size: int
    validation_size: int
    clip_settings: dict


def moving_mnist(digits, labels, n, *, frames=10, size=32, digit_size=14, num_digits=1,
                 speed=(1.5, 3.0), seed=0):
    """Moving MNIST clips drawn from `digits`, as Srivastava et al. (2015).

    Each clip draws `num_digits` source digits at random from `digits`,
    resizes them to `digit_size`, and places each at a random start inside
    the `size x size` canvas. Each digit moves at constant velocity (a
    random direction, a speed drawn uniformly from `speed`, in pixels per
    frame) and bounces off the walls: the velocity component across the
    wall is reflected, and the digit stays fully inside the canvas.
    Positions are floats; a digit is drawn at its rounded position, and
    overlapping digits combine by their maximum.

    Clip `i` draws from its own generator, seeded by `(seed, i)`, so it
    does not depend on `n`: the first 5 clips of `n=10` are the clips of
    `n=5`.

    Args:
        digits: MNIST images, uint8 in [0, 255] or float in [0, 1],
            `(m, s, s)` or `(m, s, s, 1)` (s = 28 for MNIST).
        labels: int `(m,)`, the digits' labels.
        n: number of clips.
        frames: frames per clip (at least 2).
        size: the canvas's height and width in pixels.
        digit_size: the digits' height and width once resized (a 2x2
            mean from 28 to 14; area resampling otherwise), less than
            `size`.
        num_digits: digits per clip.
        speed: `(low, high)`, the range of speeds in pixels per frame.
        seed: an integer >= 0.

    Returns:
        A dict: `"videos"` float32 `(n, frames, size, size, 1)` in [0, 1];
        `"labels"` int32 `(n,)`, each clip's first digit's label (the
        clip's class); `"digit_labels"` int32 `(n, num_digits)`;
        `"digit_indices"` int32 `(n, num_digits)`, the rows of `digits`
        drawn; `"positions"` float32 `(n, frames, num_digits, 2)`, the
        drawn (rounded) top-left `(y, x)` of each digit per frame;
        `"digit_size"` int.
    """
    maker = _MovingMnist(digits, labels, n, frames, size, digit_size, num_digits, speed, seed)
    videos = np.zeros((maker.n, frames, size, size, 1), dtype="float32")
    for i in range(maker.n):
        videos[i] = maker.clip(i)
    return maker.result(videos)


class _MovingMnist:
    """Checked settings and the clip-by-clip drawing of `moving_mnist`."""

    def __init__(self, digits, labels, n, frames, size, digit_size, num_digits, speed, seed):
        self.n = _count(n, "n")
        self.frames = _count(frames, "frames", low=2)
        self.size = _count(size, "size")
        self.digit_size = _count(digit_size, "digit_size")
        self.num_digits = _count(num_digits, "num_digits")
        self.seed = _count(seed, "seed", low=0)
        if self.digit_size >= self.size:
            raise DataError(f"digit_size={digit_size}: must be less than size={size}, "
                            f"so that the digits can move")
        try:
            low, high = (float(s) for s in speed)
        except (TypeError, ValueError):
            raise DataError(f"speed={speed!r}: expected (low, high) in pixels per frame") \
                from None
        if not (0 <= low <= high and math.isfinite(high)):
            raise DataError(f"speed={speed!r}: expected 0 <= low <= high, finite")
        self.speed = (low, high)
        self.digits = resize_digits(digits, self.digit_size)
        labels = np.asarray(labels)
        if labels.shape != (len(self.digits),):
            raise DataError(f"labels: expected one label per digit ({len(self.digits)}), "
                            f"found shape {labels.shape}")
        # Any whole labels >= 0: clips of a few classes (only sevens) are fine.
        if len(labels) and not (np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0):
            raise DataError(f"labels: expected whole numbers >= 0, found {labels.dtype} "
                            f"values from {labels.min()!r} to {labels.max()!r}")
        self.labels = labels.astype("int32")
        if not len(self.digits):
            raise DataError("digits: no digits to draw clips from")
        self.indices = np.zeros((self.n, self.num_digits), dtype="int32")
        self.positions = np.zeros((self.n, self.frames, self.num_digits, 2), dtype="float32")

    def clip(self, i):
        """Clip `i`, float32 `(frames, size, size, 1)`; records its digits
        and positions."""
        rng = np.random.default_rng([self.seed, i])
        limit = self.size - self.digit_size
        video = np.zeros((self.frames, self.size, self.size, 1), dtype="float32")
        t = np.arange(self.frames, dtype="float64")[:, None]
        for d in range(self.num_digits):
            index = int(rng.integers(len(self.digits)))
            start = rng.uniform(0.0, limit, size=2)
            angle = rng.uniform(0.0, 2.0 * math.pi)
            speed = rng.uniform(*self.speed)
            velocity = speed * np.array([math.sin(angle), math.cos(angle)])
            drawn = np.round(bounce(start + t * velocity, limit))
            self.indices[i, d] = index
            self.positions[i, :, d] = drawn
            digit = self.digits[index]
            for f, (y, x) in enumerate(drawn.astype("int64")):
                box = video[f, y : y + self.digit_size, x : x + self.digit_size, 0]
                np.maximum(box, digit, out=box)
        return video

    def result(self, videos):
        return {
            "videos": videos,
            "labels": self.labels[self.indices[:, 0]].astype("int32"),
            "digit_labels": self.labels[self.indices].astype("int32"),
            "digit_indices": self.indices.copy(),
            "positions": self.positions.copy(),
            "digit_size": self.digit_size,
        }


def bounce(position, limit):
    """Where a point moving freely to `position` lies when it bounces
    (mirror reflection) between the walls 0 and `limit`.

    A straight path folded back at each wall: the position a moving digit
    reaches when its velocity component is reflected at every wall it hits.
    """
    period = 2.0 * limit
    folded = np.mod(position, period)
    return np.where(folded > limit, period - folded, folded)


def resize_digits(digits, digit_size):
    """Digit images as float32 `(m, digit_size, digit_size)` in [0, 1].

    From 28 to 14 (any `2k` to `k`) the exact mean of each 2x2 block;
    otherwise Pillow's area (box) resampling.
    """
    digits = np.asarray(digits)
    if digits.ndim == 4 and digits.shape[-1] == 1:
        digits = digits[..., 0]
    if digits.ndim != 3 or digits.shape[1] != digits.shape[2]:
        raise DataError(f"digits: expected square images (m, s, s) or (m, s, s, 1), "
                        f"found shape {digits.shape}")
    digits = to_unit_range(digits, "digits")
    side = digits.shape[1]
    if side == digit_size:
        return digits
    if side == 2 * digit_size:
        return digits.reshape(-1, digit_size, 2, digit_size, 2).mean(axis=(2, 4))
    from PIL import Image

    return np.stack([
        np.asarray(Image.fromarray(d, mode="F").resize((digit_size, digit_size), Image.BOX))
        for d in digits]).clip(0.0, 1.0).astype("float32")


def mnist_digits(source, split):
    """MNIST digits of one split, for clips that share no digit across splits.

    When `source` holds both MNIST splits (`train-*` and `t10k-*` IDX
    files), `split="train"` takes the train files and `"test"` the t10k
    files. When it holds one split only (e.g. the 10,000 t10k digits), the
    first 90% of its digits are `"train"` and the last 10% `"test"`.
    Either way no source digit is in both splits.

    Args:
        source: an MNIST IDX folder.
        split: `"train"` or `"test"`.

    Returns:
        `(digits, labels)`: uint8 `(m, 28, 28)` and int32 `(m,)`.
    """
    if split not in ("train", "test"):
        raise DataError(f"split={split!r}: expected 'train' or 'test'")
    directory = pathlib.Path(os.path.expanduser(str(source)))
    if not directory.is_dir():
        raise DataError(f"{directory}: not a folder of MNIST IDX files")
    present = [p for p in ("train", "t10k") if _idx(directory, f"{p}-images-idx3-ubyte")]
    if not present:
        raise DataError(f"{directory}: no MNIST IDX images (expected train-images-idx3-ubyte"
                        f"[.gz] or t10k-images-idx3-ubyte[.gz])")
    if len(present) == 2:
        return _mnist_split(directory, "train" if split == "train" else "t10k")
    digits, labels = _mnist_split(directory, present[0])
    cut = len(digits) - max(1, int(round(len(digits) * VALIDATION_FRACTION)))
    if cut < 1:
        raise DataError(f"{directory}: {len(digits)} digit(s) are too few to split into "
                        f"train and test")
    return (digits[:cut], labels[:cut]) if split == "train" else (digits[cut:], labels[cut:])


def _idx(directory, stem):
    return sorted(p for p in directory.glob(f"{stem}*") if p.is_file())


def _mnist_split(directory, prefix):
    images = _idx(directory, f"{prefix}-images-idx3-ubyte")
    labels = _idx(directory, f"{prefix}-labels-idx1-ubyte")
    if not labels:
        raise DataError(f"{directory}: {images[0].name} has no labels file "
                        f"(expected {prefix}-labels-idx1-ubyte[.gz])")
    digits, targets = load_idx(images[0]), load_idx(labels[0])
    if digits.ndim != 3 or digits.dtype != np.uint8:
        raise DataError(f"{images[0]}: expected uint8 images (count, rows, cols), found "
                        f"{digits.dtype} {digits.shape}")
    if targets.shape != (len(digits),):
        raise DataError(f"{labels[0]}: expected {len(digits)} labels to match "
                        f"{images[0].name}, found shape {targets.shape}")
    return digits, check_labels(targets, labels[0])


def load_video_folder(directory, frames, size, channels=1, max_clips=100_000):
    """Every `.gif` and `.mp4` clip of a folder, with labels from its sub-folders.

    Clips in class sub-folders are labelled by the sorted sub-folder names
    (the first is class 0), as `keras.utils.image_dataset_from_directory`
    labels images; clips that sit flat in the folder have no labels.
    Names starting with a dot are skipped.

    Args:
        directory: the folder.
        frames: frames per clip: the first `frames` of each (a shorter clip
            is refused).
        size: `(height, width)` (or one int for both) to resize frames to.
        channels: 1 (grayscale) or 3 (RGB).
        max_clips: the most clips the folder may hold.

    Returns:
        `(videos, labels)`: float32 `(n, frames, h, w, channels)` in [0, 1]
        and int32 `(n,)`, or None for a flat folder.
    """
    videos, labels = _read_folder(directory, frames, size, channels, max_clips)
    return videos.astype("float32") / 255.0, labels


def _read_folder(directory, frames, size, channels, max_clips):
    """`load_video_folder` with the clips as uint8."""
    from kgen import video

    directory = pathlib.Path(os.path.expanduser(str(directory)))
    frames = _count(frames, "frames")
    max_clips = _count(max_clips, "max_clips")
    size = video._size(size, DataError)
    if channels not in (1, 3):
        raise DataError(f"channels={channels!r}: must be 1 (grayscale) or 3 (RGB)")
    files, labels = _clip_files(directory)
    if len(files) > max_clips:
        raise DataError(f"{directory}: holds {len(files):,} clips, over max_clips="
                        f"{max_clips:,}")
    shape = (len(files), frames, *size, channels)
    if math.prod(shape) * 4 > MAX_DATA_BYTES:
        raise DataError(f"{directory}: {len(files):,} clips of {frames} frames of "
                        f"{size[0]}x{size[1]} would take over {MAX_DATA_BYTES:,} bytes as "
                        f"float32 (use fewer clips, frames or pixels)")
    videos = np.zeros(shape, dtype="uint8")
    for i, path in enumerate(files):
        clip = video.read_clip(path, frames=frames, size=size, channels=channels)
        videos[i] = np.round(clip * 255.0).astype("uint8")
    return videos, labels


def _clip_files(directory):
    """The folder's clip files, sorted, and their labels (None when flat)."""
    if not directory.is_dir():
        raise DataError(f"{directory}: no such folder of clips")

    def clips(folder):
        return sorted(p for p in folder.rglob("*") if p.suffix.lower() in CLIP_SUFFIXES
                      and p.is_file() and not any(part.startswith(".")
                                                  for part in p.relative_to(folder).parts))

    entries = [p for p in directory.iterdir() if not p.name.startswith(".")]
    classes = sorted(p.name for p in entries if p.is_dir())
    flat = sorted(p for p in entries if p.is_file() and p.suffix.lower() in CLIP_SUFFIXES)
    if not classes:
        if not flat:
            raise DataError(f"{directory}: the folder holds no clips (looked for files "
                            f"ending in {', '.join(CLIP_SUFFIXES)})")
        return flat, None
    if flat:
        raise DataError(f"{directory}: holds clips both in class sub-folders and beside "
                        f"them ({flat[0].name}); put every clip in its class's folder, "
                        f"or none in a sub-folder")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = clips(directory / name)
        if not found:
            raise DataError(f"{directory / name}: the class folder holds no clips "
                            f"(looked for files ending in {', '.join(CLIP_SUFFIXES)})")
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype="int32")


def load_video_data(source, *, batch_size=16, frames=10, size=32, digit_size=14,
                    num_digits=1, train_clips=10000, validation_clips=500, seed=0,
                    repeat=False, limit=None, channels=1):
    """Clips from `source` as train and validation `tf.data` pipelines.

    An MNIST IDX folder gives Moving MNIST (`moving_mnist`): `train_clips`
    clips drawn from the train digits with `seed`, and `validation_clips`
    clips from the test digits (`mnist_digits`: no digit in both) with a
    seed derived from `seed` (`validation_seed`). A folder of GIF/MP4
    clips is read by `load_video_folder` (`frames`, `size`, `channels`);
    the last 10% of each class's clips (of all clips, when the folder is
    flat) validate, so that every class of two clips or more is validated.
    A flat folder's clips are all class 0.

    The clips are held in memory as uint8 and converted to float32 in
    [0, 1] in the pipeline. Batches are dicts `{"videos": float32 (b,
    frames, h, w, c), "labels": int32 (b,)}`; the training pipeline is
    shuffled with `seed`.

    Args:
        source: an MNIST IDX folder or a folder of clips.
        batch_size: clips per batch.
        frames: frames per clip.
        size: the frames' height and width (one int, or `(h, w)` for a
            clip folder).
        digit_size: Moving MNIST's digit size.
        num_digits: Moving MNIST's digits per clip.
        train_clips: Moving MNIST's number of training clips.
        validation_clips: Moving MNIST's number of validation clips.
        seed: seed of the clips and of the training shuffle.
        repeat: repeat the training pipeline forever (for
            `steps_per_epoch`), its batches all full.
        limit: at most `limit` training clips and `limit` validation clips
            (quick runs).
        channels: a clip folder's channels, 1 (grayscale) or 3 (RGB).

    Returns:
        A `VideoData`.
    """
    if source is None or source == "":
        raise DataError("no data source given: set data to a path, e.g. --set data=DIR "
                        "(an MNIST IDX folder or a folder of GIF/MP4 clips)")
    batch_size = _count(batch_size, "batch_size")
    if limit is not None:
        limit = _count(limit, "limit")
    path = pathlib.Path(os.path.expanduser(str(source)))
    if not path.is_dir():
        raise DataError(f"{path}: no such folder (expected an MNIST IDX folder or a "
                        f"folder of GIF/MP4 clips)")
    if list(path.glob("*-images-idx3-ubyte*")):
        train_clips = _count(train_clips, "train_clips")
        validation_clips = _count(validation_clips, "validation_clips")
        if limit is not None:
            train_clips, validation_clips = min(train_clips, limit), min(validation_clips, limit)
        settings = {"frames": frames, "size": size, "digit_size": digit_size,
                    "num_digits": num_digits}
        train_digits, test_digits = mnist_digits(path, "train"), mnist_digits(path, "test")
        train = _moving_mnist_uint8(*train_digits, train_clips, seed=seed, **settings)
        validation = _moving_mnist_uint8(*test_digits, validation_clips,
                                         seed=validation_seed(seed), **settings)
        # The classes of the digits, whichever the clips happen to draw.
        num_classes = max(int(train_digits[1].max()), int(test_digits[1].max())) + 1
    else:
        videos, labels = _read_folder(path, frames, size, channels, 100_000)
        if labels is None:
            labels = np.zeros(len(videos), dtype="int32")
        held = _held_out(labels)
        if not held.any():
            raise DataError(f"{path}: {len(videos)} clip(s) are too few to split into "
                            f"train and validation")
        train, validation = (videos[~held], labels[~held]), (videos[held], labels[held])
        if limit is not None:
            train = tuple(a[:limit] for a in train)
            validation = tuple(a[:limit] for a in validation)
        num_classes = int(labels.max()) + 1
        settings = {"frames": frames, "size": size}
    return VideoData(
        train=_pipeline(*train, batch_size, training=True, repeat=repeat, seed=seed),
        validation=_pipeline(*validation, batch_size, training=False),
        video_shape=tuple(int(d) for d in train[0].shape[1:]),
        num_classes=num_classes,
        train_size=len(train[0]),
        validation_size=len(validation[0]),
        clip_settings=settings,
    )


def validation_seed(seed):
    """The seed of the Moving MNIST validation clips of `load_video_data(...,
    seed=seed)`: derived from `seed`, so it differs from every clip seed
    the training clips use."""
    return int(np.random.SeedSequence([_count(seed, "seed", low=0), 1]).generate_state(1)[0])


def _moving_mnist_uint8(digits, labels, n, *, frames, size, digit_size, num_digits, seed):
    """`moving_mnist`'s videos as uint8 (rounded), and its labels."""
    maker = _MovingMnist(digits, labels, n, frames, size, digit_size, num_digits,
                         (1.5, 3.0), seed)
    videos = np.zeros((maker.n, maker.frames, maker.size, maker.size, 1), dtype="uint8")
    for i in range(maker.n):
        videos[i] = np.round(maker.clip(i) * 255.0).astype("uint8")
    return videos, maker.result(None)["labels"]


def _held_out(labels):
    """A mask of the last `VALIDATION_FRACTION` of each class's clips: at
    least one of a class of two or more, none of a class of one."""
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) > 1:
            count = max(1, int(round(len(rows) * VALIDATION_FRACTION)))
            held[rows[len(rows) - count:]] = True
    return held


def _pipeline(videos, labels, batch_size, training, repeat=False, seed=0):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices({"videos": videos,
                                             "labels": labels.astype("int32")})
    if training:
        ds = ds.shuffle(min(len(videos), 10_000), seed=seed)
        if repeat:
            ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=training and repeat)
    ds = ds.map(lambda batch: {"videos": tf.cast(batch["videos"], tf.float32) / 255.0,
                               "labels": batch["labels"]},
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _count(value, name, low=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise DataError(f"{name}={value!r}: must be an integer >= {low}")
    return int(value)
