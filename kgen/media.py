"""Results a person can look at: image grids as PNG, text, WAV audio.

numpy, Pillow and the standard library's `wave` only, so `kgen sample` shows an exported model's output
without importing Keras or any model code. Every file is written by
`kgen.io.atomic_path` (a temporary sibling renamed into place), so a failed
write leaves the previous file; a path that cannot be written raises `OutputError` naming it.
"""

import contextlib
import math
import os
import pathlib

import numpy as np

from kgen import io as kgen_io
from kgen.errors import UserError


class OutputError(UserError, ValueError):
    """An output path cannot be written; the message names it and why."""


def image_format(path):
    """The Pillow format that writes `path`'s suffix (`.png` -> `PNG`).

    Raises:
        OutputError: naming the path when no image format has that suffix.
    """
    from PIL import Image

    Image.init()
    suffix = pathlib.Path(path).suffix.lower()
    formats = {ext: fmt for ext, fmt in Image.registered_extensions().items()
               if fmt in Image.SAVE}
    if suffix not in formats:
        known = ", ".join(s for s in (".png", ".jpg", ".bmp", ".gif", ".tiff", ".webp")
                          if s in formats)
        raise OutputError(
            f"{path}: cannot write images as {suffix or 'a file without a suffix'!r} "
            f"(use one of {known})"
        )
    return formats[suffix]


def check_writable(path, directory=False):
    """Raise `OutputError` unless `path` (a file, or a folder when
    `directory`) can be created or replaced: nothing is written."""
    path = pathlib.Path(path)
    if path.is_dir() and not directory:
        raise OutputError(f"{path}: is a directory; expected a file name")
    if path.exists() and directory and not path.is_dir():
        raise OutputError(f"{path}: is a file; expected a directory")
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputError(f"{path}: {parent} is a file, not a directory")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: {parent} is not writable")
    return path


@contextlib.contextmanager
def _atomic(path):
    """`kgen.io.atomic_path`, with a failed write raised as `OutputError`."""
    try:
        with kgen_io.atomic_path(path) as tmp:
            yield tmp
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None


def image_grid(images, columns=None, padding=1):
    """Tile `(n, h, w, c)` floats in [0, 1] into one uint8 `(H, W, c)` image."""
    images = np.asarray(images, dtype="float32")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"images must be (n, h, w, c) with c in 1, 3, 4; got {images.shape}"
        )
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.ones(
        (rows * (h + padding) + padding, columns * (w + padding) + padding, c),
        dtype="float32",
    )
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = image
    return (np.clip(grid, 0.0, 1.0) * 255.0 + 0.5).astype("uint8")


def save_image_grid(path, images, columns=None, scale=None):
    """Write a PNG grid of `images`; small images are enlarged to be seen."""
    from PIL import Image

    image_format(path)  # an unknown suffix fails before any work
    grid = image_grid(images, columns)
    if scale is None:
        scale = max(1, 256 // max(grid.shape[:2]))
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        picture = picture.resize(
            (picture.width * scale, picture.height * scale), Image.NEAREST
        )
    path = pathlib.Path(path)
    with _atomic(path) as tmp:
        picture.save(tmp, format=image_format(path))
    return path


def save_text(path, text):
    """Write `text` as UTF-8."""
    path = pathlib.Path(path)
    with _atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def save_array(path, array):
    """Write `array` as a `.npy` file (the exact float32 values behind a
    grid, for comparing samples)."""
    path = pathlib.Path(path)
    with _atomic(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array))
    return path


@contextlib.contextmanager
def array_stream(path, shape, dtype="float32"):
    """Write a `.npy` file of `shape` block by block, in row order.

    Yields `write(rows)`, which appends `rows` (`(k, *shape[1:])`); memory
    holds one block at a time. The file is renamed into place only when
    the block ends with all `shape[0]` rows written; otherwise nothing is.
    """
    import numpy.lib.format as npy

    path = pathlib.Path(path)
    dtype = np.dtype(dtype)
    shape = tuple(int(d) for d in shape)
    written = 0
    with _atomic(path) as tmp:
        with open(tmp, "wb") as f:
            npy.write_array_header_2_0(f, {"descr": npy.dtype_to_descr(dtype),
                                           "fortran_order": False, "shape": shape})

            def write(rows):
                nonlocal written
                rows = np.ascontiguousarray(rows, dtype=dtype)
                if rows.shape[1:] != shape[1:] or written + len(rows) > shape[0]:
                    raise ValueError(f"rows of shape {rows.shape} do not fit {shape} "
                                     f"after {written} rows")
                f.write(rows.tobytes())
                written += len(rows)

            yield write
            if written != shape[0]:
                raise ValueError(f"{path}: {written} of {shape[0]} rows written")
    return path


@contextlib.contextmanager
def text_stream(path, separator):
    """Write UTF-8 texts one block at a time, `separator` between two texts.

    Yields `write(texts)`; the file is renamed into place when the block
    ends normally, and nothing is written otherwise.
    """
    path = pathlib.Path(path)
    first = True
    with _atomic(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:

            def write(texts):
                nonlocal first
                for text in texts:
                    f.write(text if first else separator + text)
                    first = False

            yield write


def wav_samples(audio):
    """float `(samples,)` in [-1, 1] -> int16 PCM (clipped, rounded)."""
    audio = np.asarray(audio, dtype="float64")
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"audio must be one non-empty clip (samples,); got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise ValueError("audio holds non-finite values (NaN or inf)")
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")


def save_wav(path, audio, sample_rate):
    """Write one mono clip, float `(samples,)` in [-1, 1], as a 16-bit PCM
    WAV file at `sample_rate` Hz."""
    import wave

    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or sample_rate < 1:
        raise ValueError(f"sample_rate={sample_rate!r}: must be an int >= 1")
    pcm = wav_samples(audio)
    path = pathlib.Path(path)
    with _atomic(path) as tmp:
        with wave.open(str(tmp), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(int(sample_rate))
            f.writeframes(pcm.tobytes())
    return path


def save_wavs(directory, clips, sample_rate, names):
    """Write each clip of `clips` `(n, samples)` as `directory/<name>.wav`;
    returns the paths."""
    directory = pathlib.Path(directory)
    clips = np.asarray(clips)
    if clips.ndim != 2 or len(clips) != len(names):
        raise ValueError(
            f"clips must be (n, samples) with one name per clip; got shape "
            f"{clips.shape} and {len(names)} names")
    return [save_wav(directory / f"{name}.wav", clip, sample_rate)
            for name, clip in zip(names, clips)]
