"""Checks that generated images are pictures, not a blank or broken grid.

`assert_images_look_real(images)` fails on what a broken sampler produces:
the wrong shape or dtype, NaN or infinity, values outside [0, 1], an
all-black or all-white batch, samples that are each one flat colour, or a
batch whose samples are all the same picture. `grid_cells(path, n)` reads
the samples back out of a PNG grid written by `kgen.media.save_image_grid`,
so the grids a run writes can be checked the same way.
"""

import math

import numpy as np

# Defaults loose enough for a model after a few training steps, tight enough
# that a constant or near-constant batch fails. Real digits: about 0.3 within
# a sample and 0.2 across samples.
MIN_STD_WITHIN = 0.01
MIN_STD_ACROSS = 0.005
MIN_MEAN, MAX_MEAN = 0.005, 0.995


def assert_images_look_real(images, shape=None, min_std_within=MIN_STD_WITHIN,
                            min_std_across=MIN_STD_ACROSS):
    """Assert `images` look like a batch of real, distinct images.

    Args:
        images: `(n, height, width, channels)` float32 in [0, 1], n >= 2.
        shape: optional expected `(n, height, width, channels)`.
        min_std_within: least standard deviation of every single image.
        min_std_across: least standard deviation across the batch, averaged
            over pixels (samples that differ from one another).

    Raises:
        AssertionError: saying which check failed and by how much.

    Example:

    ```python
    assert_images_look_real(vae.generate(4, seed=0), shape=(4, 28, 28, 1))
    ```
    """
    images = np.asarray(images)
    assert images.ndim == 4 and images.shape[-1] in (1, 3, 4), (
        f"images must be (n, h, w, c) with c in 1, 3, 4; got shape {images.shape}")
    if shape is not None:
        assert images.shape == tuple(shape), (
            f"images have shape {images.shape}, expected {tuple(shape)}")
    assert images.shape[0] >= 2, (
        f"need at least 2 images to compare samples, got {images.shape[0]}")
    assert images.dtype == np.float32, f"images are {images.dtype}, expected float32"
    assert np.isfinite(images).all(), (
        f"{np.size(images) - np.isfinite(images).sum()} values are NaN or infinite")
    low, high = float(images.min()), float(images.max())
    assert 0.0 <= low and high <= 1.0, f"values span [{low:.4g}, {high:.4g}], not [0, 1]"
    mean = float(images.mean())
    assert mean > MIN_MEAN, f"the images are all black (mean {mean:.4g})"
    assert mean < MAX_MEAN, f"the images are all white (mean {mean:.4g})"
    within = images.reshape(len(images), -1).std(axis=1)
    flat = np.flatnonzero(within < min_std_within)
    assert not flat.size, (
        f"images {flat.tolist()} are flat: standard deviation "
        f"{within[flat].round(5).tolist()} < {min_std_within}")
    across = float(images.std(axis=0).mean())
    assert across >= min_std_across, (
        f"the samples are all alike: standard deviation across the batch "
        f"{across:.4g} < {min_std_across}")


def grid_cells(grid, n, padding=1, columns=None):
    """The `n` images of a grid from `kgen.media.image_grid` or a PNG of one.

    The grid's layout is `kgen.media`'s: `columns` (default ceil(sqrt(n)))
    images a row, `padding` white pixels around each, and a PNG enlarged by
    the whole factor `save_image_grid` picks (`256 // longest side`). The
    padding must be white, which checks the layout read.

    Args:
        grid: a path to a PNG, or a uint8 `(H, W)` / `(H, W, c)` array.
        n: the number of images in the grid.

    Returns:
        float32 `(n, h, w, c)` in [0, 1].
    """
    if not isinstance(grid, np.ndarray):
        from PIL import Image

        with Image.open(grid) as picture:
            grid = np.asarray(picture)
    assert grid.dtype == np.uint8, f"a grid is uint8, got {grid.dtype}"
    if grid.ndim == 2:
        grid = grid[..., None]
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    height, width = grid.shape[:2]
    layouts = []
    for scale in range(1, min(height, width) + 1):
        if height % scale or width % scale:
            continue
        h, w = height // scale, width // scale
        if (h - padding) % rows or (w - padding) % columns:
            continue
        if scale == max(1, 256 // max(h, w)):
            layouts.append(scale)
    assert len(layouts) == 1, (
        f"a {height}x{width} grid has no single layout of {n} images "
        f"in {columns} columns (scales that fit: {layouts})")
    grid = grid[::layouts[0], ::layouts[0]]
    cell_h = (grid.shape[0] - padding) // rows - padding
    cell_w = (grid.shape[1] - padding) // columns - padding
    cells, mask = [], np.ones(grid.shape[:2], dtype=bool)
    for i in range(rows * columns):
        r, c = divmod(i, columns)
        y, x = padding + r * (cell_h + padding), padding + c * (cell_w + padding)
        if i < n:
            cells.append(grid[y:y + cell_h, x:x + cell_w])
        mask[y:y + cell_h, x:x + cell_w] = False
    assert (grid[mask] == 255).all(), (
        f"the padding of a {n}-image grid of {cell_h}x{cell_w} cells is not "
        f"white: not a grid of that layout")
    return np.stack(cells).astype("float32") / 255.0
