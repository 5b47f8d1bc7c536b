"""The measures that judge generated Moving MNIST clips, on clips built here.

The clips are made in this file: real MNIST digits shrunk to 14x14 (2x2
means) pasted at whole pixels along bouncing paths in a 32x32 canvas, as
Moving MNIST is. `evaluate_video` end to end needs a trained video model
and is tested where the family is wired in; here only its refusals that
come before any model is read.
"""

import numpy as np
import pytest

from kgen.data import load_mnist
from kgen.evaluate import EvaluateError
from kgen.metrics.video import centre_of_mass
from kgen.metrics.video import check_clip_settings
from kgen.metrics.video import clip_features
from kgen.metrics.video import digit_crops
from kgen.metrics.video import evaluate_video
from kgen.metrics.video import frechet
from kgen.metrics.video import motion_error
from tests.conftest import shared

pytestmark = pytest.mark.backend_agnostic

SIZE, DIGIT, FRAMES = 32, 14, 10


def mnist_digits(count):
    """`count` MNIST digits: `(28x28 originals, 14x14 shrunk)`."""
    images = load_mnist(shared("mnist"))[0][:count, :, :, 0]
    return images, images.reshape(count, 14, 2, 14, 2).mean(axis=(2, 4))


def bouncing_clips(digits, n, seed=0, jumps=False):
    """`n` clips of one digit each, moving at a constant velocity (speed 1.5
    to 3 pixels per frame) and reflected at the walls, pasted at the nearest
    whole pixel; with `jumps`, at a random place in every frame instead."""
    rng = np.random.default_rng(seed)
    travel = SIZE - DIGIT
    clips = np.zeros((n, FRAMES, SIZE, SIZE, 1), "float32")
    for i in range(n):
        position = rng.uniform(0, travel, 2)
        angle = rng.uniform(0, 2 * np.pi)
        velocity = rng.uniform(1.5, 3.0) * np.array([np.sin(angle), np.cos(angle)])
        for t in range(FRAMES):
            y, x = (rng.integers(0, travel + 1, 2) if jumps
                    else np.rint(position).astype(int))
            clips[i, t, y:y + DIGIT, x:x + DIGIT, 0] = digits[i % len(digits)]
            position = position + velocity
            for axis in range(2):
                if position[axis] < 0:
                    position[axis], velocity[axis] = -position[axis], -velocity[axis]
                if position[axis] > travel:
                    position[axis] = 2 * travel - position[axis]
                    velocity[axis] = -velocity[axis]
    return clips


def pasted(digit, places):
    """One clip: `digit` pasted with its top-left corner at each of `places`."""
    clip = np.zeros((1, len(places), SIZE, SIZE, 1), "float32")
    for t, (y, x) in enumerate(places):
        clip[0, t, y:y + len(digit), x:x + len(digit), 0] = digit
    return clip


# === Centre of mass ===


def test_the_centre_of_mass_moves_exactly_with_the_digit():
    _, small = mnist_digits(3)
    places = [(0, 0), (3, 11), (18, 18), (9, 2)]
    for digit in small:
        centres = centre_of_mass(pasted(digit, places))[0]
        np.testing.assert_allclose(centres - centres[0], np.subtract(places, places[0]),
                                   atol=1e-9)
        assert np.all((centres >= 0) & (centres < SIZE))


def test_a_frame_with_no_ink_has_no_centre_of_mass():
    _, small = mnist_digits(1)
    clip = pasted(small[0], [(4, 4), (6, 6)])
    clip[0, 1] = 0.05          # below the threshold: background
    centres = centre_of_mass(clip)
    assert np.isfinite(centres[0, 0]).all() and np.isnan(centres[0, 1]).all()
    # Channels are averaged; (n, F, H, W) works too.
    np.testing.assert_allclose(centre_of_mass(clip[..., 0])[0, 0], centres[0, 0])


# === Motion ===


def test_bouncing_real_digits_follow_a_bounce_path_and_jumping_ones_do_not():
    _, small = mnist_digits(40)
    bounce = motion_error(centre_of_mass(bouncing_clips(small, 40, seed=1)), SIZE, DIGIT)
    jumps = motion_error(centre_of_mass(bouncing_clips(small, 40, seed=2, jumps=True)),
                         SIZE, DIGIT)
    assert bounce.shape == (40,) and jumps.shape == (40,)
    # Whole-pixel pasting is the only error left on a true bounce.
    assert bounce.mean() < 0.6 and bounce.max() < 0.6, bounce
    assert jumps.mean() > 3.0 and jumps.mean() > 8 * bounce.mean(), jumps


def test_an_exact_bounce_path_with_an_offset_fits_to_nothing():
    travel = SIZE - DIGIT
    t = np.arange(FRAMES)
    starts = np.array([[0.0, 17.0], [5.3, 11.1], [17.9, 0.4]])
    velocities = np.array([[2.9, -1.7], [-2.2, 0.0], [1.55, 2.61]])   # each hits a wall
    unfolded = starts[:, None, :] + velocities[:, None, :] * t[None, :, None]
    path = travel - np.abs(np.mod(unfolded, 2 * travel) - travel)
    centres = path + np.array([6.2, 7.4])          # the centre of mass off the corner
    assert motion_error(centres, SIZE, DIGIT).max() < 0.05


def test_frames_with_no_ink_are_left_out_of_the_path():
    _, small = mnist_digits(4)
    centres = centre_of_mass(bouncing_clips(small, 4, seed=3))
    whole = motion_error(centres, SIZE, DIGIT)
    centres[0, 3] = np.nan
    centres[1, 1:] = np.nan                         # a single inked frame
    gapped = motion_error(centres, SIZE, DIGIT)
    assert gapped[0] < 0.6 and np.isnan(gapped[1])
    np.testing.assert_allclose(gapped[2:], whole[2:])
    with pytest.raises(ValueError, match="digit_size=32"):
        motion_error(centres, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"centres of shape \(4, 10\)"):
        motion_error(centres[..., 0], SIZE, DIGIT)


# === Crops ===


def test_crops_of_a_digit_are_the_same_wherever_it_is_and_read_like_mnist():
    big, small = mnist_digits(20)
    inside = [(4, 9), (9, 14), (11, 11), (14, 4)]    # the box never meets a wall
    walls = [(0, 0), (18, 18), (0, 18)]
    clips = np.concatenate([pasted(digit, inside + walls) for digit in small])
    crops = digit_crops(clips, DIGIT)
    assert crops.shape == (20 * 7, 28, 28, 1) and crops.dtype == np.float32
    crops = crops.reshape(20, 7, 28, 28)
    np.testing.assert_allclose(crops[:, :4], np.repeat(crops[:, :1], 4, axis=1), atol=1e-4)

    def correlation(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    # At a wall the box stays inside the frame, so the digit may sit a
    # little off centre.
    assert min(correlation(crops[i, 0], crops[i, t]) for i in range(20)
               for t in range(4, 7)) > 0.8
    # The crop reads like the 28x28 digit the clip was made from (MNIST's
    # own centring puts it within a pixel; the stand-in data's is coarser).
    def best(a, b):
        return max(correlation(a, np.roll(b, (dy, dx), axis=(0, 1)))
                   for dy in range(-2, 3) for dx in range(-2, 3))

    source = np.array([best(crops[i, 0], big[i]) for i in range(20)])
    assert source.mean() > 0.85 and source.min() > 0.75, source
    other = np.array([best(crops[i, 0], big[(i + 1) % 20]) for i in range(20)])
    assert other.mean() < source.mean() - 0.2, other


def test_a_blank_frame_gives_a_blank_crop_and_bad_sizes_are_named():
    blank = np.zeros((2, 3, SIZE, SIZE, 1), "float32")
    assert (digit_crops(blank, DIGIT, out_size=16) == 0).all()
    assert digit_crops(blank, DIGIT, out_size=16).shape == (6, 16, 16, 1)
    with pytest.raises(ValueError, match="digit_size=40"):
        digit_crops(blank, 40)
    with pytest.raises(ValueError, match=r"videos of shape \(2, 3, 32\)"):
        digit_crops(blank[..., 0, 0], DIGIT)


# === Clip features and their distance ===


def test_clip_features_are_the_mean_and_the_mean_change():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(5, FRAMES, 7))
    features = clip_features(f)
    assert features.shape == (5, 14) and features.dtype == np.float32
    np.testing.assert_allclose(features[:, :7], f.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features[:, 7:], np.abs(np.diff(f, axis=1)).mean(axis=1),
                               rtol=1e-5, atol=1e-6)
    still = clip_features(np.repeat(f[:, :1], FRAMES, axis=1))
    assert (still[:, 7:] == 0).all()
    with pytest.raises(ValueError, match=r"frame_features of shape \(5, 1, 7\)"):
        clip_features(f[:, :1])


def test_the_frechet_distance_of_a_set_with_itself_is_nothing():
    rng = np.random.default_rng(0)
    features = clip_features(rng.normal(size=(300, FRAMES, 8)))
    assert abs(frechet(features, features)) < 1e-3
    # A shift of 1 in each of the 16 features costs 16.
    assert frechet(features, features + 1.0) == pytest.approx(16.0, abs=1e-2)


# === The evaluation's refusals (before any model is read) ===


def test_evaluate_video_needs_the_data_and_the_classifier():
    common = {"n": 10, "seed": 0, "batch": None, "progress": False}
    with pytest.raises(EvaluateError, match="^--data: needed"):
        evaluate_video(None, data=None, classifier="c.keras", **common)
    with pytest.raises(EvaluateError, match="^--classifier: needed"):
        evaluate_video(None, data="mnist", classifier=None, **common)
    with pytest.raises(EvaluateError, match="^--features inception"):
        evaluate_video(None, data="mnist", classifier="c.keras", features="inception",
                       **common)


def test_only_clips_of_one_digit_are_judged():
    settings = {"frames": 10, "size": 32, "digit_size": 14}
    assert check_clip_settings(settings) == {**settings, "num_digits": 1}
    with pytest.raises(EvaluateError, match="num_digits=2: only clips of one digit"):
        check_clip_settings({**settings, "num_digits": 2}, where="saved_models/video")
    with pytest.raises(EvaluateError, match="clip setting size=None"):
        check_clip_settings({"frames": 10, "digit_size": 14})
    with pytest.raises(EvaluateError, match="digit_size=32"):
        check_clip_settings({**settings, "digit_size": 32})
    with pytest.raises(EvaluateError, match="frames=1"):
        check_clip_settings({**settings, "frames": 1})
