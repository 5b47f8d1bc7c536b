import gzip

import numpy as np
import pytest

from kgen.data import DataError
from kgen.data import image_datasets
from kgen.data import load_digits
from kgen.data import load_idx
from kgen.data import load_image_folder
from kgen.data import load_images
from kgen.data import load_npz


def write_idx(path, array, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    raw = header + array.astype("uint8").tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def test_mnist_from_shared_data(mnist_arrays):
    images, labels = mnist_arrays
    assert images.shape == (10000, 28, 28, 1)
    assert images.dtype == np.float32
    assert 0.0 == images.min() and images.max() == 1.0
    assert set(np.unique(labels)) == set(range(10))


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_idx_round_trip(tmp_path, compress):
    array = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    path = write_idx(tmp_path / "x-images-idx3-ubyte", array, compress)
    np.testing.assert_array_equal(load_idx(path), array)


def test_truncated_idx_names_the_file(tmp_path):
    path = write_idx(tmp_path / "bad-images-idx3-ubyte", np.zeros((5, 4, 4)))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"bad-images-idx3-ubyte.*truncated.*\(5, 4, 4\)"):
        load_idx(path)


def test_truncated_gzip_names_the_file(tmp_path):
    path = write_idx(tmp_path / "t.gz", np.zeros((5, 4, 4)), compress=True)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match=r"t\.gz: gzip data is truncated"):
        load_idx(path)


def test_wrong_file_is_not_idx(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello world")
    with pytest.raises(DataError, match=r"notes\.txt: not an IDX file"):
        load_idx(path)


def test_missing_source_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: no such file or directory"):
        load_images(tmp_path / "nowhere")


def test_directory_without_labels_file(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 4, 4)))
    with pytest.raises(DataError, match=r"no t10k IDX labels file"):
        load_images(tmp_path)


def test_npz_integer_images_are_scaled(tmp_path):
    x = np.array([[[0, 255], [51, 102]]] * 3, dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2]))
    images, labels = load_npz(tmp_path / "d.npz")
    assert images.shape == (3, 2, 2, 1)
    np.testing.assert_allclose(images[0, :, :, 0], [[0, 1], [0.2, 0.4]])
    np.testing.assert_array_equal(labels, [0, 1, 2])


def test_npz_float_images_out_of_range(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.full((2, 4, 4), 3.0))
    with pytest.raises(DataError, match=r"d\.npz: float images in 'images' must lie in \[0, 1\]"):
        load_npz(tmp_path / "d.npz")


def test_npz_without_images(tmp_path):
    np.savez(tmp_path / "d.npz", other=np.zeros(3))
    with pytest.raises(DataError, match=r"no images array.*\['other'\]"):
        load_npz(tmp_path / "d.npz")


def test_image_folder_with_classes(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            pixels = np.full((10, 12), 40 * i + (100 if label == "dog" else 0), np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    images, labels = load_image_folder(tmp_path, image_size=(8, 8))
    assert images.shape == (6, 8, 8, 1)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_empty_image_folder(tmp_path):
    with pytest.raises(DataError, match=r"no images found"):
        load_image_folder(tmp_path, image_size=(8, 8))


def test_digits_embedded_default():
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8, 1)
    assert images.min() == 0.0 and images.max() == 1.0
    assert labels.shape == (1797,)


def test_split_batches_and_labels(mnist_arrays):
    images, labels = mnist_arrays
    data = image_datasets(images, labels, batch_size=100, with_labels=True)
    assert (data.train_size, data.validation_size) == (9000, 1000)
    assert data.image_shape == (28, 28, 1) and data.num_classes == 10
    batch = next(iter(data.validation))
    x, y = batch["images"], batch["labels"]
    assert x.shape == (100, 28, 28, 1) and y.shape == (100,) and y.dtype == "int32"
    # The validation split is the last 1,000 images, in order.
    np.testing.assert_array_equal(y.numpy(), labels[9000:9100])


def test_repeat_gives_full_batches_forever():
    images = np.zeros((10, 4, 4, 1), "float32")
    data = image_datasets(images, batch_size=4, repeat=True, validation_fraction=0.2)
    shapes = [b["images"].shape[0] for b in data.train.take(5)]
    assert shapes == [4] * 5


def test_no_validation_split_when_the_fraction_is_zero():
    data = image_datasets(np.zeros((10, 4, 4, 1), "float32"), validation_fraction=0.0)
    assert data.validation is None and data.train_size == 10
    with pytest.raises(DataError, match="validation_fraction=1.0: must be in \\[0, 1\\)"):
        image_datasets(np.zeros((10, 4, 4, 1), "float32"), validation_fraction=1.0)


def test_labels_required_but_missing():
    with pytest.raises(DataError, match="needs labels"):
        image_datasets(np.zeros((10, 4, 4, 1), "float32"), with_labels=True)


def test_unset_data_source_says_how_to_set_it():
    with pytest.raises(DataError, match=r"no data source given: set data to a path, e.g. --set data=DIR"):
        load_images(None)
