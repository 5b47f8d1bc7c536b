"""Results a person can look at: image grids as PNG, audio as WAV, text.

numpy and Pillow only, so `kgen sample` shows an exported model's output
without importing Keras or any model code.
"""

import math
import pathlib
import wave

import numpy as np


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

    grid = image_grid(images, columns)
    if scale is None:
        scale = max(1, 256 // max(grid.shape[:2]))
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        picture = picture.resize(
            (picture.width * scale, picture.height * scale), Image.NEAREST
        )
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def save_wav(path, audio, sample_rate):
    """Write float audio in [-1, 1], shape `(samples,)` or `(samples, ch)`,
    as 16-bit PCM WAV."""
    audio = np.asarray(audio, dtype="float32")
    if audio.ndim == 1:
        audio = audio[:, None]
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(pcm.shape[1])
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())
    return path
