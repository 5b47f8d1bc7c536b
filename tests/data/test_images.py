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

pytestmark = pytest.mark.backend_agnostic


def write_idx(path, array, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    raw = header + array.astype("uint8").tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def test_mnist_loads_as_unit_range_images(mnist_arrays):
    images, labels = mnist_arrays
    assert images.shape[1:] == (28, 28, 1) and len(images) == len(labels) > 1000
    assert images.dtype == np.float32
    assert 0.0 == images.min() and images.max() == 1.0
    assert set(np.unique(labels)) == set(range(10))


def test_the_published_mnist_test_split():
    from kgen.data import load_mnist
    from tests.conftest import real_data

    images, labels = load_mnist(real_data("mnist"))
    assert images.shape == (10000, 28, 28, 1)
    assert np.bincount(labels).tolist()[:2] == [980, 1135]


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
    with pytest.raises(DataError, match=r"d\.npz: 'images': pixel value 3\.0 at index \(0, 0, 0, 0\) is out of "
                                        r"range \(float pixels must lie in \[0, 1\]"):
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
    n_val = round(len(images) * 0.1)
    assert (data.train_size, data.validation_size) == (len(images) - n_val, n_val)
    assert data.image_shape == (28, 28, 1) and data.num_classes == 10
    batch = next(iter(data.validation))
    x, y = batch["images"], batch["labels"]
    assert x.shape == (100, 28, 28, 1) and y.shape == (100,) and y.dtype == "int32"
    # The validation split is the last 1,000 images, in order.
    np.testing.assert_array_equal(y.numpy(), labels[len(images) - n_val:][:100])


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


# === Caps and range checks: hostile files are refused, naming the file ===


def write_gzip_bomb(path, header, expanded_bytes, chunk=1 << 20):
    """`header`, then `expanded_bytes` of zeros, gzipped: each 1 MiB chunk of
    zeros goes through gzip as its own member (RFC 1952 allows a file of many
    members), so a 4 GiB bomb is written in milliseconds at about 1 KB per
    MiB."""
    zeros = gzip.compress(bytes(chunk), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(header))
        for _ in range(expanded_bytes // chunk):
            f.write(zeros)
    return path


def idx_header(shape, type_code=0x08):
    return bytes([0, 0, type_code, len(shape)]) + b"".join(
        int(d).to_bytes(4, "big") for d in shape
    )


def _refused_quickly(path, match):
    import time
    import tracemalloc

    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError, match=match):
            load_idx(path)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - start < 2.0
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MiB: the file was read whole"


def test_gzip_bomb_announced_by_its_header_is_refused_unread(tmp_path):
    shape = (1 << 22, 32, 32)  # 4 GiB of uint8, over the 2 GiB cap
    path = write_gzip_bomb(tmp_path / "bomb-images-idx3-ubyte.gz", idx_header(shape), 4 << 30)
    assert path.stat().st_size < 8 << 20
    _refused_quickly(path, r"bomb-images-idx3-ubyte\.gz: IDX header says shape "
                           r"\(4194304, 32, 32\), 4,294,967,296 bytes of data, over the limit")


def test_gzip_bomb_behind_a_small_header_is_refused_after_the_header(tmp_path):
    path = write_gzip_bomb(tmp_path / "padded-images-idx3-ubyte.gz",
                           idx_header((10, 28, 28)) + bytes(10 * 28 * 28), 4 << 30)
    _refused_quickly(path, r"padded-images-idx3-ubyte\.gz: padded IDX data: header says "
                           r"shape \(10, 28, 28\)")


def test_cap_is_settable(tmp_path):
    path = write_idx(tmp_path / "x-images-idx3-ubyte.gz", np.zeros((4, 8, 8)), compress=True)
    assert load_idx(path, max_bytes=256).shape == (4, 8, 8)
    with pytest.raises(DataError, match=r"256 bytes of data, over the limit of 255 bytes"):
        load_idx(path, max_bytes=255)


def test_header_sizes_that_overflow_64_bits_are_refused(tmp_path):
    # 2**32-1 cubed times 8 bytes: wraps a 64-bit product, never a Python int.
    path = tmp_path / "huge-images-idx3-ubyte"
    path.write_bytes(idx_header((2**32 - 1,) * 3, type_code=0x0E) + bytes(64))
    with pytest.raises(DataError, match=r"huge-images-idx3-ubyte: IDX header says shape "
                                        r"\(4294967295, 4294967295, 4294967295\)"):
        load_idx(path)


def test_header_checked_against_the_file_size_before_reading(tmp_path):
    path = tmp_path / "short-images-idx3-ubyte"
    path.write_bytes(idx_header((1000, 28, 28)) + bytes(100))
    with pytest.raises(DataError, match=r"short-images-idx3-ubyte: truncated or padded IDX "
                                        r"data: header says shape \(1000, 28, 28\) "
                                        r"\(784000 bytes of data\), file holds 100"):
        load_idx(path)


def test_truncated_idx_header(tmp_path):
    path = tmp_path / "t-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match=r"t-images-idx3-ubyte: truncated IDX header \(6 of 16 bytes\)"):
        load_idx(path)


def _mnist_dir(tmp_path, images, labels):
    d = tmp_path / "mnist"
    d.mkdir()
    write_idx(d / "t10k-images-idx3-ubyte", images)
    labels_path = d / "t10k-labels-idx1-ubyte"
    labels_path.write_bytes(idx_header(labels.shape) + labels.astype("uint8").tobytes())
    return d


def test_label_255_in_a_ten_class_set_names_the_file_and_value(tmp_path):
    labels = np.arange(30) % 10
    labels[17] = 255
    d = _mnist_dir(tmp_path, np.zeros((30, 4, 4)), labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: label 255 \(row 17\) is out of "
                                        r"range: classes 0\.\.9 are present, so labels must "
                                        r"lie in \[0, 10\)"):
        load_images(d)


def test_classes_are_counted_from_the_data(tmp_path):
    d = _mnist_dir(tmp_path, np.zeros((12, 4, 4)), np.arange(12) % 3)
    images, labels = load_images(d)
    data = image_datasets(images, labels, batch_size=4, with_labels=True, limit=4)
    assert data.num_classes == 3  # from the whole set, before the limit


@pytest.mark.parametrize(
    "labels, match",
    [
        ([0, 1, -1, 2], r"labels: label -1 \(row 2\) is negative"),
        ([1, 2, 3], r"labels: label 1 \(row 0\) is out of range: no label is 0"),
        ([0, 1, 3, 3], r"labels: label 3 \(row 2\) is out of range: classes 0\.\.1 are present"),
        ([0.0, 1.5], r"labels: label 1\.5 \(row 1\) is not a whole number"),
    ],
)
def test_labels_must_number_the_classes(labels, match):
    with pytest.raises(DataError, match=match):
        image_datasets(np.zeros((len(labels), 2, 2, 1), "float32"), np.array(labels))


def test_pixels_out_of_range_name_the_file_and_value(tmp_path):
    # IDX of signed bytes holding a -3: an integer pixel below 0.
    pixels = np.zeros((2, 3, 3), np.int8)
    pixels[1, 2, 0] = -3
    path = tmp_path / "signed-images-idx3-ubyte"
    path.write_bytes(idx_header(pixels.shape, type_code=0x09) + pixels.tobytes())
    with pytest.raises(DataError, match=r"signed-images-idx3-ubyte: pixel value -3 at index "
                                        r"\(1, 2, 0, 0\) is out of range \(integer pixels must "
                                        r"lie in \[0, 255\]"):
        load_images(path)
    np.savez(tmp_path / "wide.npz", x=np.full((2, 4, 4), 300, np.int16))
    with pytest.raises(DataError, match=r"wide\.npz: 'x': pixel value 300 at index \(0, 0, 0, 0\)"):
        load_npz(tmp_path / "wide.npz")
    nan = np.zeros((2, 4, 4), np.float32)
    nan[0, 1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=nan)
    with pytest.raises(DataError, match=r"nan\.npz: 'x': pixel value nan at index \(0, 1, 1, 0\)"):
        load_npz(tmp_path / "nan.npz")


def test_bad_image_in_a_folder_names_the_file(tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.fromarray(np.full((6, 6), 50 * i, np.uint8)).save(tmp_path / label / f"{i}.png")
    good = (tmp_path / "b" / "1.png").read_bytes()
    (tmp_path / "b" / "1.png").write_bytes(good[: len(good) // 2])  # cut mid-stream
    with pytest.raises(DataError, match=r"b/1\.png: not a readable image"):
        load_image_folder(tmp_path, image_size=(4, 4))


def test_npz_array_over_the_cap_is_refused_unread(tmp_path, monkeypatch):
    from kgen.data import images as image_module

    np.savez_compressed(tmp_path / "big.npz", x=np.zeros((4, 8, 8), np.uint8))
    assert load_npz(tmp_path / "big.npz")[0].shape == (4, 8, 8, 1)
    monkeypatch.setattr(image_module, "MAX_DATA_BYTES", 255)
    with pytest.raises(DataError, match=r"big\.npz: 'x' holds 384 bytes once decompressed, "
                                        r"over the limit of 255 bytes"):
        load_npz(tmp_path / "big.npz")


def test_npy_file_is_not_an_npz_archive(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"one\.npy: not a \.npz archive"):
        load_npz(tmp_path / "one.npy")
