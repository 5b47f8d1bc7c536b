import numpy as np
import pytest

from kgen.data import DataError
from kgen.data import load_idx
from kgen.data import load_video_data
from kgen.data import load_video_folder
from kgen.data import mnist_digits
from kgen.data import moving_mnist
from kgen.data.video import bounce
from kgen.data.video import validation_seed
from tests.conftest import write_idx

pytestmark = pytest.mark.backend_agnostic


@pytest.fixture(scope="module")
def train_digits(mnist_dir):
    return mnist_digits(mnist_dir, "train")


def halved(digit):
    """MNIST's 28x28 digit as the 14x14 mean of its 2x2 blocks, in [0, 1]."""
    return (digit.astype("float32") / 255.0).reshape(14, 2, 14, 2).mean(axis=(1, 3))


def pasted(size, digits, corners):
    """The canvas with each digit drawn at its top-left corner (maximum)."""
    canvas = np.zeros((size, size), dtype="float32")
    for digit, (y, x) in zip(digits, corners.astype(int)):
        k = len(digit)
        canvas[y : y + k, x : x + k] = np.maximum(canvas[y : y + k, x : x + k], digit)
    return canvas


def test_clips_have_their_shapes_types_and_range(train_digits):
    clips = moving_mnist(*train_digits, 6, frames=10, size=32)
    assert clips["videos"].shape == (6, 10, 32, 32, 1)
    assert clips["videos"].dtype == np.float32
    assert 0.0 == clips["videos"].min() and 0.5 < clips["videos"].max() <= 1.0
    assert clips["labels"].shape == (6,) and clips["labels"].dtype == np.int32
    assert clips["digit_labels"].shape == (6, 1) and clips["digit_labels"].dtype == np.int32
    assert clips["positions"].shape == (6, 10, 1, 2)
    assert clips["positions"].dtype == np.float32
    assert clips["digit_size"] == 14


def test_clips_are_deterministic_and_clip_i_does_not_depend_on_n(train_digits):
    ten = moving_mnist(*train_digits, 10, seed=3)
    five = moving_mnist(*train_digits, 5, seed=3)
    again = moving_mnist(*train_digits, 10, seed=3)
    other = moving_mnist(*train_digits, 10, seed=4)
    for key in ("videos", "labels", "digit_indices", "positions"):
        np.testing.assert_array_equal(ten[key][:5], five[key])
        np.testing.assert_array_equal(ten[key], again[key])
    assert not np.array_equal(ten["positions"], other["positions"])


def test_each_frame_is_the_halved_digit_pasted_at_its_position(train_digits):
    digits, labels = train_digits
    clips = moving_mnist(digits, labels, 4, frames=8)
    for i in range(4):
        digit = halved(digits[clips["digit_indices"][i, 0]])
        for t in range(8):
            expected = pasted(32, [digit], clips["positions"][i, t])
            np.testing.assert_allclose(clips["videos"][i, t, ..., 0], expected, atol=1e-6)


def test_labels_are_the_source_digits_labels(train_digits):
    digits, labels = train_digits
    clips = moving_mnist(digits, labels, 20, num_digits=2)
    np.testing.assert_array_equal(clips["digit_labels"], labels[clips["digit_indices"]])
    np.testing.assert_array_equal(clips["labels"], clips["digit_labels"][:, 0])


def test_digits_stay_inside_and_bounce_off_the_walls_at_constant_speed(train_digits):
    clips = moving_mnist(*train_digits, 12, frames=40, size=32, digit_size=14)
    positions = clips["positions"][:, :, 0]  # (clips, frames, (y, x))
    limit = 32 - 14
    assert positions.min() == 0 or positions.max() == limit  # some reach a wall
    assert 0 <= positions.min() and positions.max() <= limit
    np.testing.assert_array_equal(positions, np.round(positions))
    bounces = 0
    for clip in positions:
        speeds = []
        for axis in range(2):
            track = clip[:, axis]
            steps = np.diff(track)
            moving = np.flatnonzero(steps)
            at_bounce = np.zeros(len(steps), dtype=bool)
            for a, b in zip(moving[:-1], moving[1:]):
                if np.sign(steps[a]) != np.sign(steps[b]):
                    # The direction turns only at the wall it was heading to.
                    between = track[a + 1 : b + 1]
                    if steps[a] > 0:
                        assert between.max() >= limit - 4, (track, a, b)
                    else:
                        assert between.min() <= 4, (track, a, b)
                    at_bounce[a : b + 1] = True
                    bounces += 1
            # Still steps at either end may be a bounce the clip ends in.
            at_bounce[: moving[0]] = at_bounce[moving[-1] + 1 :] = True
            interior = np.abs(steps[~at_bounce])
            # Rounded positions of a constant velocity v step by floor|v|
            # or ceil|v|, before and after every bounce alike.
            assert interior.max() - interior.min() <= 1, track
            speeds.append(interior.mean())
        assert 1.5 - 0.75 <= np.hypot(*speeds) <= 3.0 + 0.75, clip
    assert bounces >= 6


def test_bounce_folds_a_straight_path_between_the_walls():
    path = np.array([-3.0, 0.0, 2.5, 10.0, 12.0, 21.0, 40.0])
    np.testing.assert_allclose(bounce(path, 10.0), [3.0, 0.0, 2.5, 10.0, 8.0, 1.0, 0.0])


def test_two_digits_on_a_64_canvas_combine_by_their_maximum(train_digits):
    digits, labels = train_digits
    clips = moving_mnist(digits, labels, 3, frames=5, size=64, digit_size=28,
                         num_digits=2, seed=7)
    assert clips["videos"].shape == (3, 5, 64, 64, 1)
    assert clips["positions"].shape == (3, 5, 2, 2)
    assert clips["positions"].max() <= 64 - 28
    for i in range(3):
        pair = [digits[j].astype("float32") / 255.0 for j in clips["digit_indices"][i]]
        for t in range(5):
            expected = pasted(64, pair, clips["positions"][i, t])
            np.testing.assert_allclose(clips["videos"][i, t, ..., 0], expected, atol=1e-6)


def test_other_digit_sizes_resample_by_area(train_digits):
    digits, labels = train_digits
    clips = moving_mnist(digits[:50], labels[:50], 2, frames=3, size=40, digit_size=20,
                         speed=(2.0, 2.0))
    assert clips["videos"].shape == (2, 3, 40, 40, 1) and clips["digit_size"] == 20
    assert 0.5 < clips["videos"].max() <= 1.0
    float_digits = digits[:50, ..., None].astype("float32") / 255.0  # (m, 28, 28, 1) floats
    same = moving_mnist(float_digits, labels[:50], 2, frames=3, size=40, digit_size=20,
                        speed=(2.0, 2.0))
    np.testing.assert_allclose(same["videos"], clips["videos"], atol=1e-6)


@pytest.mark.parametrize("settings, named", [
    ({"size": 14}, "digit_size=14"),
    ({"frames": 1}, "frames=1"),
    ({"num_digits": 0}, "num_digits=0"),
    ({"n": 0}, "n=0"),
    ({"seed": -1}, "seed=-1"),
    ({"speed": (3.0, 1.0)}, "speed=(3.0, 1.0)"),
])
def test_bad_settings_are_refused_by_name(train_digits, settings, named):
    arguments = {"n": 2, **settings}
    with pytest.raises(DataError, match=named.replace("(", r"\(").replace(")", r"\)")):
        moving_mnist(*train_digits, **arguments)


def test_a_single_split_folder_splits_its_digits_disjointly(mnist_dir):
    files = sorted(mnist_dir.glob("t10k-images-idx3-ubyte*"))
    everything = load_idx(files[0])
    train, train_labels = mnist_digits(mnist_dir, "train")
    test, test_labels = mnist_digits(mnist_dir, "test")
    assert len(train) == round(0.9 * len(everything)) and train.dtype == np.uint8
    np.testing.assert_array_equal(np.concatenate([train, test]), everything)
    # Clips of each split draw from their own digits: no source index is shared.
    train_clips = moving_mnist(train, train_labels, 200, seed=0)
    test_clips = moving_mnist(test, test_labels, 200, seed=validation_seed(0))
    train_rows = set(train_clips["digit_indices"].ravel().tolist())
    test_rows = {len(train) + i for i in test_clips["digit_indices"].ravel().tolist()}
    assert train_rows and test_rows and not train_rows & test_rows
    assert max(train_rows) < len(train) <= min(test_rows)


def test_a_folder_with_both_splits_uses_train_for_train_and_t10k_for_test(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (30, 28, 28))
    test = rng.integers(0, 256, (12, 28, 28))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(30) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(12) % 10)
    np.testing.assert_array_equal(mnist_digits(tmp_path, "train")[0], train)
    np.testing.assert_array_equal(mnist_digits(tmp_path, "test")[0], test)
    with pytest.raises(DataError, match="split='validation'"):
        mnist_digits(tmp_path, "validation")


def test_video_data_from_an_mnist_folder_batches_float_clips(mnist_dir):
    data = load_video_data(mnist_dir, batch_size=4, frames=6, size=32, train_clips=10,
                           validation_clips=5, seed=1)
    assert data.video_shape == (6, 32, 32, 1) and data.num_classes == 10
    assert (data.train_size, data.validation_size) == (10, 5)
    assert data.clip_settings == {"frames": 6, "size": 32, "digit_size": 14, "num_digits": 1}
    batches = list(data.train.as_numpy_iterator())
    assert [len(b["videos"]) for b in batches] == [4, 4, 2]
    batch = batches[0]
    assert batch["videos"].dtype == np.float32 and batch["videos"].shape == (4, 6, 32, 32, 1)
    assert batch["labels"].dtype == np.int32 and batch["labels"].shape == (4,)
    assert 0.0 <= batch["videos"].min() and batch["videos"].max() <= 1.0
    # The pipeline holds the clips as uint8: the floats are k / 255.
    np.testing.assert_allclose(batch["videos"] * 255.0, np.round(batch["videos"] * 255.0),
                               atol=1e-3)
    # Validation clips: the test digits' Moving MNIST, in order, held as uint8.
    validation = list(data.validation.as_numpy_iterator())
    test, labels = mnist_digits(mnist_dir, "test")
    expected = moving_mnist(test, labels, 5, frames=6, seed=validation_seed(1))
    np.testing.assert_allclose(np.concatenate([b["videos"] for b in validation]),
                               expected["videos"], atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in validation]),
                                  expected["labels"])


def test_video_data_repeats_full_batches_and_honours_limit(mnist_dir):
    data = load_video_data(mnist_dir, batch_size=3, frames=2, size=20, digit_size=10,
                           num_digits=2, train_clips=50, validation_clips=50, limit=4,
                           repeat=True)
    assert (data.train_size, data.validation_size) == (4, 4)
    batches = data.train.take(5)
    assert [len(b["videos"]) for b in batches.as_numpy_iterator()] == [3] * 5
    assert data.train.element_spec["videos"].shape.as_list() == [3, 2, 20, 20, 1]


def test_video_data_needs_a_source(tmp_path):
    with pytest.raises(DataError, match="no data source"):
        load_video_data(None)
    with pytest.raises(DataError, match="nowhere"):
        load_video_data(tmp_path / "nowhere")
    with pytest.raises(DataError, match="holds no clips"):
        load_video_data(tmp_path)


def write_clip_folder(root, train_digits):
    """Two class folders of GIF clips (and one MP4), from Moving MNIST."""
    from kgen import video

    digits, labels = train_digits
    clips = moving_mnist(digits, labels, 7, frames=5, size=16, digit_size=8)["videos"]
    paths = []
    for i, clip in enumerate(clips):
        name = ("circles", "squares")[i % 2]
        paths.append(video.save_gif(root / name / f"clip{i}.gif", clip[None], padding=0,
                                    scale=1))
    return clips, paths


def test_a_clip_folder_reads_back_with_class_labels(tmp_path, train_digits):
    clips, _ = write_clip_folder(tmp_path, train_digits)
    videos, labels = load_video_folder(tmp_path, frames=4, size=16)
    # Sorted class folders, then sorted files in each.
    order = [0, 2, 4, 6, 1, 3, 5]
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1, 1])
    assert videos.shape == (7, 4, 16, 16, 1) and videos.dtype == np.float32
    # Written as image grids write pixels: floor(x * 255 + 0.5).
    written = np.floor(clips[order, :4] * 255 + 0.5) / 255
    np.testing.assert_allclose(videos, written, atol=1e-6)
    resized, _ = load_video_folder(tmp_path, frames=5, size=(8, 12), channels=3)
    assert resized.shape == (7, 5, 8, 12, 3)


def test_a_flat_clip_folder_has_no_labels_and_is_bounded(tmp_path, train_digits):
    from kgen import video

    clips = moving_mnist(*train_digits, 3, frames=3, size=16, digit_size=8)["videos"]
    for i, clip in enumerate(clips):
        video.save_gif(tmp_path / f"c{i}.gif", clip[None], padding=0, scale=1)
    videos, labels = load_video_folder(tmp_path, frames=3, size=16)
    assert videos.shape == (3, 3, 16, 16, 1) and labels is None
    with pytest.raises(DataError, match="3 clips, over max_clips=2"):
        load_video_folder(tmp_path, frames=3, size=16, max_clips=2)
    with pytest.raises(DataError, match="c0.gif: the clip holds 3 frames, fewer than frames=4"):
        load_video_folder(tmp_path, frames=4, size=16)
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match="both in class sub-folders and beside them"):
        load_video_folder(tmp_path, frames=3, size=16)


def test_video_data_from_a_clip_folder_validates_each_class(tmp_path, train_digits):
    write_clip_folder(tmp_path, train_digits)
    data = load_video_data(tmp_path, batch_size=8, frames=5, size=16)
    assert data.video_shape == (5, 16, 16, 1) and data.num_classes == 2
    assert (data.train_size, data.validation_size) == (5, 2)
    assert data.clip_settings == {"frames": 5, "size": 16}
    validation = next(data.validation.as_numpy_iterator())
    assert sorted(validation["labels"].tolist()) == [0, 1]
    assert validation["videos"].dtype == np.float32


def test_an_empty_folder_names_itself(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}: the folder holds no clips"):
        load_video_folder(tmp_path, frames=2, size=8)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class: the class folder holds no clips"):
        load_video_folder(tmp_path, frames=2, size=8)
