"""The image check of the tests fails on blank grids and passes real digits."""

import numpy as np
import pytest

from kgen import media
from tests.imagecheck import assert_images_look_real
from tests.imagecheck import grid_cells

pytestmark = pytest.mark.backend_agnostic


@pytest.fixture(scope="module")
def digits(mnist_arrays):
    return mnist_arrays[0][:16]


def test_real_digits_pass_from_arrays_and_from_a_png(tmp_path, digits):
    assert_images_look_real(digits, shape=(16, 28, 28, 1))
    path = media.save_image_grid(tmp_path / "grid.png", digits)
    cells = grid_cells(path, 16)
    np.testing.assert_allclose(cells, digits, atol=0.5 / 255 + 1e-6)
    assert_images_look_real(cells, shape=(16, 28, 28, 1))


@pytest.mark.parametrize("value", [0.0, 1.0], ids=["all_black", "all_white"])
def test_blank_grid_fails(tmp_path, value):
    images = np.full((9, 28, 28, 1), value, dtype="float32")
    with pytest.raises(AssertionError, match="all black" if value == 0 else "all white"):
        assert_images_look_real(images)
    path = media.save_image_grid(tmp_path / "blank.png", images)
    cells = grid_cells(path, 9)
    np.testing.assert_array_equal(cells, images)
    with pytest.raises(AssertionError, match="all black" if value == 0 else "all white"):
        assert_images_look_real(cells)


@pytest.mark.parametrize("case, message", [
    ("grey", "flat"),
    ("one_flat", r"images \[2\] are flat"),
    ("all_alike", "all alike"),
    ("nan", "NaN or infinite"),
    ("above_one", r"not \[0, 1\]"),
    ("uint8", "expected float32"),
    ("no_channels", "must be \\(n, h, w, c\\)"),
    ("one_image", "at least 2 images"),
])
def test_broken_batches_fail(digits, case, message):
    images = digits.copy()
    if case == "grey":
        images[:] = 0.5
    elif case == "one_flat":
        images[2] = 0.3
    elif case == "all_alike":
        images[:] = digits[0]
    elif case == "nan":
        images[3, 4, 5] = np.nan
    elif case == "above_one":
        images[0, 0, 0] = 1.5
    elif case == "uint8":
        images = (images * 255).astype("uint8")
    elif case == "no_channels":
        images = images[..., 0]
    elif case == "one_image":
        images = images[:1]
    with pytest.raises(AssertionError, match=message):
        assert_images_look_real(images)


def test_wrong_shape_fails(digits):
    with pytest.raises(AssertionError, match=r"expected \(16, 8, 8, 1\)"):
        assert_images_look_real(digits, shape=(16, 8, 8, 1))


def test_grid_of_the_wrong_layout_fails(tmp_path, digits):
    path = media.save_image_grid(tmp_path / "grid.png", digits[:9])
    with pytest.raises(AssertionError, match="layout|not white"):
        grid_cells(path, 16)
