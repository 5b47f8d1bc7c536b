"""Results a person can look at: image grids as PNG, text.

numpy and Pillow only, so `kgen sample` shows an exported model's output
without importing Keras or any model code. Every file is written to a
temporary sibling and renamed into place, so a failed write leaves the
previous file; a path that cannot be written raises `OutputError` naming it.
"""

import contextlib
import math
import os
import pathlib
import uuid

import numpy as np


class OutputError(ValueError):
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
    """Yield a temporary sibling of `path` to write; rename it into place."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


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
