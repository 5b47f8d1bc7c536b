"""Image data: IDX (MNIST), `.npz`, image folders and scikit-learn's digits.

Every loader returns images as float32 in [0, 1], NHWC, and integer labels,
then `image_datasets()` splits, batches and prefetches them as `tf.data`
pipelines, which Keras' `fit()` takes on every backend.

Nothing is trusted: a file is streamed and its header checked against its
size and against `MAX_DATA_BYTES` before the data is read (a small gzip
that would expand to gigabytes is refused at once), pixels outside [0, 255]
(or [0, 1] for floats) and labels that do not number the classes 0..K-1
are refused, and an image that cannot be decoded is named. Every error is a
`DataError` naming the file and what was expected, so a user with a
truncated download or the wrong file sees what to fix.
"""

import dataclasses
import gzip
import math
import os
import pathlib
import zlib

import numpy as np

from kgen.data.errors import DataError

# IDX element types, from the format's published description.
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# The most bytes one data file may hold once decompressed (MNIST's largest
# file holds 47 MB); `load_idx(..., max_bytes=N)` raises or lowers it.
MAX_DATA_BYTES = 2**31
_CHUNK = 1 << 20


@dataclasses.dataclass
class ImageData:
    """Train and validation pipelines plus what a model needs to know.

    Attributes:
        train: `tf.data.Dataset` of image batches, or `(images, labels)`
            batches when loaded `with_labels`.
        validation: the same for the held-out split.
        image_shape: `(height, width, channels)`.
        num_classes: number of distinct labels (0 when there are none).
        train_size: number of training examples.
        validation_size: number of validation examples.
    """

    train: object
    validation: object
    image_shape: tuple
    num_classes: int
    train_size: int
    validation_size: int


def _open_data(path):
    """The file's bytes as a stream (gunzipped on the fly when gzipped) and
    its size on disk; nothing is read into memory yet."""
    path = pathlib.Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: expected a file, found a directory")
    try:
        raw = path.open("rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror})") from None
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb"), None
    raw.seek(0)
    return raw, path.stat().st_size


def _read(stream, size, path):
    """Up to `size` bytes from `stream` in 1 MiB chunks (gzip errors named)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    try:
        while filled < size:
            got = stream.readinto(view[filled : filled + _CHUNK])
            if not got:
                break
            filled += got
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: gzip data is truncated or corrupt ({e})") from None
    return buffer[:filled] if filled < size else buffer


def load_idx(path, max_bytes=None):
    """Read an IDX file (as MNIST ships), gzipped or not, into a numpy array.

    The file is streamed: the header is checked against the file's size and
    against `max_bytes` before any data is read, and a gzipped file is
    decompressed only as far as its header says it reaches, so a small file
    that would expand to gigabytes is refused at once.

    Args:
        path: the file, e.g. `t10k-images-idx3-ubyte.gz`.
        max_bytes: the most data bytes the header may announce (default
            `MAX_DATA_BYTES`, 2 GiB).

    Returns:
        A numpy array with the file's element type and shape.

    Raises:
        DataError: naming the file when it is missing, not IDX, larger than
            `max_bytes`, or shorter or longer than its header says.
    """
    max_bytes = MAX_DATA_BYTES if max_bytes is None else int(max_bytes)
    stream, file_size = _open_data(path)
    with stream:
        magic = bytes(_read(stream, 4, path))
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
            raise DataError(
                f"{path}: not an IDX file (expected the magic bytes 00 00 <type> "
                f"<ndim>, found {magic.hex(' ') or 'an empty file'})"
            )
        type_code, ndim = magic[2], magic[3]
        if type_code not in _IDX_DTYPES:
            raise DataError(
                f"{path}: unknown IDX element type 0x{type_code:02x} (expected "
                f"one of {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})"
            )
        dims = bytes(_read(stream, 4 * ndim, path))
        header = 4 + 4 * ndim
        if len(dims) < 4 * ndim:
            raise DataError(
                f"{path}: truncated IDX header ({4 + len(dims)} of {header} bytes)"
            )
        # Python ints: a product of four 32-bit sizes cannot overflow here.
        shape = tuple(
            int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim)
        )
        dtype = np.dtype(_IDX_DTYPES[type_code])
        expected = math.prod(shape) * dtype.itemsize
        if expected > max_bytes:
            raise DataError(
                f"{path}: IDX header says shape {shape}, {expected:,} bytes of "
                f"data, over the limit of {max_bytes:,} bytes for one data file"
            )
        if file_size is not None and file_size - header != expected:
            raise DataError(
                f"{path}: truncated or padded IDX data: header says shape "
                f"{shape} ({expected} bytes of data), file holds "
                f"{file_size - header}"
            )
        data = _read(stream, expected, path)
        if len(data) < expected:
            raise DataError(
                f"{path}: truncated IDX data: header says shape {shape} "
                f"({expected} bytes of data), file holds {len(data)}"
            )
        if _read(stream, 1, path):
            raise DataError(
                f"{path}: padded IDX data: header says shape {shape} "
                f"({expected} bytes of data), file holds more"
            )
    return np.frombuffer(data, dtype).reshape(shape)


def _find_one(directory, patterns, what):
    matches = sorted(
        p for pattern in patterns for p in directory.glob(pattern) if p.is_file()
    )
    if not matches:
        raise DataError(
            f"{directory}: no {what} file found (expected one of "
            f"{', '.join(patterns)})"
        )
    return matches[0]


def load_mnist(directory):
    """Load MNIST-style IDX images and labels from a directory.

    Takes the training split (`train-images-idx3-ubyte[.gz]`) when present,
    else the test split (`t10k-images-idx3-ubyte[.gz]`).

    Returns:
        `(images, labels)`: float32 `(n, 28, 28, 1)` in [0, 1] and int32 `(n,)`.
    """
    directory = pathlib.Path(directory)
    prefix = "train" if list(directory.glob("train-images-idx3-ubyte*")) else "t10k"
    images_path = _find_one(
        directory, [f"{prefix}-images-idx3-ubyte*"], f"{prefix} IDX images"
    )
    labels_path = _find_one(
        directory, [f"{prefix}-labels-idx1-ubyte*"], f"{prefix} IDX labels"
    )
    images = load_idx(images_path)
    labels = load_idx(labels_path)
    if images.ndim != 3:
        raise DataError(
            f"{images_path}: expected 3 dimensions (count, rows, cols), "
            f"found shape {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{labels_path}: expected {len(images)} labels to match "
            f"{images_path.name}, found shape {labels.shape}"
        )
    return (to_unit_range(images[..., None], images_path),
            check_labels(labels, labels_path))


def load_npz(path, images_key=None, labels_key=None):
    """Load images (and labels, when present) from a `.npz` archive.

    The images key defaults to the first of `x`, `images`, `x_train`; labels
    to `y`, `labels`, `y_train`. Integer images are scaled by 255, floats must
    already be in [0, 1]. A 3-D array gains a channel axis. An array whose
    decompressed size is over `MAX_DATA_BYTES` is refused before it is read.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # zipfile, pickle and value errors alike
        raise DataError(f"{path}: not a readable .npz archive ({e})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not a .npz archive (found a single .npy array)")
    with archive:
        keys = list(archive.keys())
        images_key = images_key or _first_present(keys, ("x", "images", "x_train"))
        if images_key not in keys:
            raise DataError(
                f"{path}: no images array (looked for "
                f"{images_key or 'x, images, x_train'}; found {keys})"
            )
        images = _npz_array(archive, images_key, path)
        labels_key = labels_key or _first_present(keys, ("y", "labels", "y_train"))
        labels = _npz_array(archive, labels_key, path) if labels_key in keys else None
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataError(
            f"{path}: '{images_key}' must be (n, h, w) or (n, h, w, c), "
            f"found shape {images.shape}"
        )
    images = to_unit_range(images, f"{path}: '{images_key}'")
    if labels is not None:
        if labels.shape != (len(images),):
            raise DataError(
                f"{path}: '{labels_key}' must hold one label per image "
                f"({len(images)}), found shape {labels.shape}"
            )
        labels = check_labels(labels, f"{path}: '{labels_key}'")
    return images, labels


def _npz_array(archive, key, path):
    size = archive.zip.getinfo(f"{key}.npy").file_size
    if size > MAX_DATA_BYTES:
        raise DataError(
            f"{path}: '{key}' holds {size:,} bytes once decompressed, over the "
            f"limit of {MAX_DATA_BYTES:,} bytes for one data file"
        )
    try:
        return archive[key]
    except Exception as e:  # zipfile, zlib and format errors alike
        raise DataError(f"{path}: '{key}' cannot be read ({e})") from None


def to_unit_range(images, source):
    """Pixels as float32 in [0, 1], refusing values outside the range.

    Integer pixels must lie in [0, 255] and are divided by 255; float pixels
    must already lie in [0, 1].

    Args:
        images: a numpy array of pixels.
        source: what to name in an error (the file, and the array's key).

    Raises:
        DataError: naming `source`, the offending value and its position.
    """
    if not (np.issubdtype(images.dtype, np.integer)
            or np.issubdtype(images.dtype, np.floating)):
        raise DataError(f"{source}: pixels must be numbers, found dtype {images.dtype}")
    integer = np.issubdtype(images.dtype, np.integer)
    low, high = (0, 255) if integer else (0.0, 1.0)
    if images.dtype == np.uint8 or not images.size:
        return _scale(images, 255.0)
    smallest, largest = images.min(), images.max()  # NaN when any is NaN
    if not (low <= smallest and largest <= high):
        bad = (images < low) | (images > high)
        if not integer:
            bad |= np.isnan(images)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            kind = "integer pixels" if integer else "float pixels"
            raise DataError(
                f"{source}: pixel value {images[index].item()!r} at index {index} is out of "
                f"range ({kind} must lie in [0, {high:g}]; {int(bad.sum())} "
                f"value(s) outside it)"
            )
    return _scale(images, 255.0) if integer else images.astype("float32")


def check_labels(labels, source):
    """Labels as int32, refusing values that do not number classes 0..K-1.

    The number of classes K is read from the data: the labels must be whole
    numbers from 0 with no class left empty, so a stray value (a 255 among
    the digits 0..9) is refused rather than silently adding 246 classes.

    Args:
        labels: a 1-D numpy array.
        source: what to name in an error (the file, and the array's key).

    Raises:
        DataError: naming `source`, the bad value and its row.
    """
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.floating):
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if not whole.all():
            row = int(np.argmin(whole))
            raise DataError(
                f"{source}: label {labels[row].item()!r} (row {row}) is not a whole number"
            )
    elif not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers, found dtype {labels.dtype}")
    if not labels.size:
        return labels.astype("int32")
    if labels.min() < 0:
        row = int(np.argmin(labels))
        raise DataError(
            f"{source}: label {labels[row].item():.0f} (row {row}) is negative; labels "
            f"number the classes 0, 1, 2, ..."
        )
    present = np.unique(labels).astype("int64")
    # The classes 0..k-1 present without a gap; anything above is refused.
    k = int(np.searchsorted(present - np.arange(len(present)), 1))
    if k < len(present):
        value = int(present[k])
        row = int(np.argmax(labels == value))
        held = f"classes 0..{k - 1} are present" if k else "no label is 0"
        raise DataError(
            f"{source}: label {value} (row {row}) is out of range: {held}, "
            f"so labels must lie in [0, {k}) with every class present; "
            f"{int((labels >= k).sum())} label(s) fall outside"
        )
    return labels.astype("int32")


def load_digits(image_size=None):
    """scikit-learn's 8x8 handwritten digits (1,797 images, embedded).

    Args:
        image_size: optional `(height, width)` to resize to (bilinear).
    """
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    if image_size is not None:
        images = _resize(images, image_size)
    return images, digits.target.astype("int32")


def load_image_folder(directory, image_size, color_mode="grayscale"):
    """Load a folder of images (one sub-folder per class, or flat).

    Uses `keras.utils.image_dataset_from_directory`, then gathers the images
    into memory: fine for the small data sets recipes train on. A file that
    cannot be read or decoded is named in the error.
    """
    import keras
    import tensorflow as tf

    directory = pathlib.Path(directory)
    files = _image_files(directory)
    if not files:
        raise DataError(
            f"{directory}: no images found (expected files ending in "
            f"{', '.join(_IMAGE_SUFFIXES)})"
        )
    has_classes = any(p.is_dir() for p in directory.iterdir())
    ds = keras.utils.image_dataset_from_directory(
        directory,
        labels="inferred" if has_classes else None,
        image_size=tuple(image_size),
        color_mode=color_mode,
        batch_size=256,
        shuffle=False,
        verbose=False,
    )
    images, labels = [], []
    try:
        for batch in ds.as_numpy_iterator():
            if has_classes:
                batch, y = batch
                labels.append(y)
            images.append(batch)
    except tf.errors.OpError as e:
        # tf.data does not say which file failed: find it.
        raise _unreadable_image(files, e) from None
    images = np.concatenate(images).astype("float32") / 255.0
    labels = np.concatenate(labels).astype("int32") if labels else None
    return images, labels


def _image_files(directory):
    return sorted(
        p for p in directory.rglob("*")
        if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()
    )


def _unreadable_image(files, error):
    """The DataError naming the first of `files` that TensorFlow cannot
    read or decode (as `image_dataset_from_directory` does)."""
    import tensorflow as tf

    for path in files:
        try:
            tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False)
        except tf.errors.OpError as e:
            reason = (e.message or type(e).__name__).strip().splitlines()[0]
            return DataError(f"{path}: not a readable image ({reason})")
    reason = (error.message or type(error).__name__).strip().splitlines()[0]
    return DataError(f"{files[0].parent}: reading the images failed ({reason})")


def load_images(source, image_size=None):
    """Load images from any supported source.

    Args:
        source: `"digits"` (embedded), a directory of MNIST IDX files, a
            single IDX images file, a `.npz` file, or a folder of images.
        image_size: `(height, width)`; required for image folders, optional
            resize for the others.

    Returns:
        `(images, labels)`; labels may be `None`.
    """
    if source is None or source == "":
        raise DataError(
            "no data source given: set data to a path, e.g. --set data=DIR "
            "(an MNIST IDX directory, an IDX file, a .npz file or an image folder)"
        )
    if source == "digits":
        return load_digits(image_size)
    path = pathlib.Path(os.path.expanduser(str(source)))
    if not path.exists():
        raise DataError(
            f"{path}: no such file or directory (expected 'digits', an MNIST "
            f"IDX directory, an IDX file, a .npz file or an image folder)"
        )
    if path.is_dir():
        if list(path.glob("*-images-idx3-ubyte*")):
            images, labels = load_mnist(path)
        else:
            if not _image_files(path):
                raise DataError(
                    f"{path}: the folder holds no images (looked for files ending in "
                    f"{', '.join(_IMAGE_SUFFIXES)}, in it and its sub-folders, and for "
                    "MNIST IDX files named *-images-idx3-ubyte)"
                )
            if image_size is None:
                raise DataError(
                    f"{path}: an image folder needs image_size=(height, width)"
                )
            return load_image_folder(path, image_size)
    elif path.suffix == ".npz":
        images, labels = load_npz(path)
    else:
        raw = load_idx(path)
        if raw.ndim != 3:
            raise DataError(
                f"{path}: expected IDX images of shape (count, rows, cols), "
                f"found {raw.shape}"
            )
        images, labels = to_unit_range(raw[..., None], path), None
    if image_size is not None and tuple(images.shape[1:3]) != tuple(image_size):
        images = _resize(images, image_size)
    return images, labels


def image_datasets(
    images,
    labels=None,
    batch_size=64,
    validation_fraction=0.1,
    with_labels=False,
    repeat=False,
    shuffle_seed=0,
    limit=None,
):
    """Split arrays into shuffled, batched, prefetched `tf.data` pipelines.

    Batches are dicts, the one batch format of every kgen image family:
    `{"images": float32 (b, h, w, c)}`, plus `"labels": int32 (b,)` when
    `with_labels`.

    The split is by position (the last `validation_fraction` validates), as
    the data sets' publishers define their splits.

    Args:
        images: float32 `(n, h, w, c)` in [0, 1].
        labels: int `(n,)` or `None`.
        batch_size: examples per batch.
        validation_fraction: share of examples held out, in [0, 1); 0
            holds out nothing (`validation` is then `None`: GANs use no
            validation data).
        with_labels: add `"labels"` to each batch.
        repeat: repeat the training pipeline forever (for `steps_per_epoch`).
        shuffle_seed: seed of the training shuffle.
        limit: keep only the first `limit` examples (quick runs).

    Returns:
        An `ImageData`.
    """
    import tensorflow as tf

    if not 0 <= validation_fraction < 1:
        raise DataError(
            f"validation_fraction={validation_fraction}: must be in [0, 1)"
        )
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if with_labels and labels is None:
        raise DataError("this model needs labels, but the data source has none")
    if labels is not None:
        labels = check_labels(labels, "labels")
    # Classes are counted on the whole data set, before any `limit`.
    num_classes = int(labels.max()) + 1 if labels is not None and len(labels) else 0
    if limit is not None:
        images = images[:limit]
        labels = labels[:limit] if labels is not None else None
    n_val = max(1, int(round(len(images) * validation_fraction))) if validation_fraction else 0
    n_train = len(images) - n_val
    if n_train < 1:
        raise DataError(f"too few images to split: {len(images)}")

    def pipeline(start, stop, training):
        parts = {"images": images[start:stop]}
        if with_labels:
            parts["labels"] = labels[start:stop].astype("int32")
        ds = tf.data.Dataset.from_tensor_slices(parts)
        if training:
            ds = ds.shuffle(min(stop - start, 10_000), seed=shuffle_seed)
            if repeat:
                ds = ds.repeat()
        ds = ds.batch(batch_size, drop_remainder=training and repeat)
        return ds.prefetch(tf.data.AUTOTUNE)

    return ImageData(
        train=pipeline(0, n_train, True),
        validation=pipeline(n_train, len(images), False) if n_val else None,
        image_shape=tuple(int(d) for d in images.shape[1:]),
        num_classes=num_classes,
        train_size=n_train,
        validation_size=n_val,
    )


def _first_present(keys, candidates):
    return next((k for k in candidates if k in keys), None)


def _scale(images, maximum):
    return images.astype("float32") / maximum


def _resize(images, image_size):
    import tensorflow as tf

    return tf.image.resize(images, tuple(image_size)).numpy().clip(0, 1)


def load_image_data(source, batch_size=64, validation_fraction=0.1,
                    with_labels=False, repeat=False, seed=0, image_size=None,
                    limit=None):
    """`load_images(source)` then `image_datasets(...)`: a recipe's one call.

    Returns:
        An `ImageData` with train and validation pipelines.
    """
    images, labels = load_images(source, image_size)
    return image_datasets(
        images, labels, batch_size=batch_size,
        validation_fraction=validation_fraction, with_labels=with_labels,
        repeat=repeat, shuffle_seed=seed, limit=limit,
    )
