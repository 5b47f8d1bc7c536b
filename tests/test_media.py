import numpy as np

from kgen import media


def test_image_grid_tiles_with_padding():
    images = np.stack([np.full((4, 5, 1), i / 5) for i in range(5)])
    grid = media.image_grid(images, columns=3, padding=1)
    assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 1) and grid.dtype == np.uint8
    assert grid[1, 1, 0] == 0 and grid[1, 7, 0] == round(0.2 * 255)
    assert grid[0, 0, 0] == 255  # padding is white


def test_png_grid_is_enlarged_for_small_images(tmp_path):
    from PIL import Image

    path = media.save_image_grid(tmp_path / "g.png", np.zeros((4, 8, 8, 1)))
    with Image.open(path) as picture:
        assert picture.size[0] >= 128

