"""Judging generated Moving MNIST clips: what digit, how it moves, how it goes on.

A clip of the video family is one digit bouncing in a square canvas. It is
judged frame by frame with the MNIST classifier kgen trains (the recipe
`mnist_classifier`) and, as a path, against the physics the data obeys:

- `centre_of_mass()`: the digit's centre of mass in each frame (pixels).
- `digit_crops()`: each frame's digit cut out around its centre of mass
  and resized to the classifier's 28x28, so that it reads like an MNIST
  digit (which MNIST centres by its centre of mass).
- `motion_error()`: how far a clip's path is from the best bounce path
  (constant velocity per axis, reflected at the walls).
- `clip_features()`: a clip's classifier features and their frame-to-frame
  changes, for a Fréchet distance between sets of clips (`frechet()`).
- `evaluate_video()`: the evaluation `kgen evaluate` runs for the video
  family, with the floor measured the same way on real clips.

Everything but `evaluate_video()` is NumPy and builds no Keras model.

Example:

```python
centres = centre_of_mass(videos)                       # (n, F, 2)
motion_error(centres, size=32, digit_size=14).mean()   # pixels
crops = digit_crops(videos, digit_size=14)             # (n * F, 28, 28, 1)
```
"""

import sys
from collections.abc import Mapping

import numpy as np

# Continued frames whose digit position an extension is judged on.
EXTEND_POSITION_FRAMES = 4
# Clips a video evaluation holds in memory at most (four sets of them).
MAX_VIDEO_N = 5_000
# The clip settings a video model records, and what each must be.
CLIP_SETTINGS = ("frames", "size", "digit_size", "num_digits")
# The measures of a report's `samples` and `floor`, in the order a
# terminal shows them (`per_class` aside).
REPORT_METRICS = ("frame_accuracy", "identity", "motion_error_px", "speed_px",
                  "empty_frames", "fd_clips", "extend_identity", "extend_position_error_px",
                  "extend_still_position_error_px", "extend_empty_frames")
# The bounce fit's first grid (pixels, pixels per frame) and its finer
# rounds around the best point (each 5 times finer).
PHASE_STEP, SPEED_STEP, REFINEMENTS = 0.25, 0.05, 2


# === Frame measures ===


def _frames(videos, name="videos"):
    """`videos` as float64 `(n, F, H, W)`: channels averaged."""
    videos = np.asarray(videos, dtype="float64")
    if videos.ndim == 5:
        videos = videos.mean(axis=-1)
    if videos.ndim != 4:
        raise ValueError(
            f"{name} of shape {videos.shape}: expected (clips, frames, height, width, "
            "channels) or (clips, frames, height, width)")
    return videos


def centre_of_mass(videos, threshold=0.1):
    """The ink's centre of mass in each frame, `(y, x)` in pixels.

    Pixels below `threshold` count as background (faint noise of a
    generated frame does not pull the centre); the others weigh their
    value. Coordinates are pixel indices (row 0 at the top).

    Args:
        videos: `(n, F, H, W, C)` or `(n, F, H, W)`, values in [0, 1].
        threshold: the darkest value counted as ink.

    Returns:
        float64 `(n, F, 2)`; NaN for a frame with no ink.
    """
    frames = _frames(videos)
    weights = np.where(frames >= threshold, frames, 0.0)
    mass = weights.sum(axis=(2, 3))
    rows = np.arange(frames.shape[2], dtype="float64")
    cols = np.arange(frames.shape[3], dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        y = weights.sum(axis=3) @ rows / mass
        x = weights.sum(axis=2) @ cols / mass
    centres = np.stack([y, x], axis=-1)
    centres[mass <= 0] = np.nan
    return centres


def _bilinear(frames, ys, xs):
    """`frames (N, H, W)` sampled at rows `ys (N, h)` x columns `xs (N, w)`
    (pixel indices), bilinearly; black outside the frame."""
    padded = np.pad(frames, ((0, 0), (1, 1), (1, 1)))
    height, width = frames.shape[1:]

    def corners(coords, extent):
        coords = np.clip(coords, -1.0, float(extent)) + 1.0   # into the padding
        low = np.clip(np.floor(coords).astype("int64"), 0, extent)
        return low, low + 1, coords - low

    y0, y1, wy = corners(ys, height)
    x0, x1, wx = corners(xs, width)
    rows0 = np.take_along_axis(padded, y0[:, :, None], axis=1)
    rows1 = np.take_along_axis(padded, y1[:, :, None], axis=1)
    rows = rows0 * (1 - wy[:, :, None]) + rows1 * wy[:, :, None]     # (N, h, W + 2)
    cols0 = np.take_along_axis(rows, x0[:, None, :], axis=2)
    cols1 = np.take_along_axis(rows, x1[:, None, :], axis=2)
    return cols0 * (1 - wx[:, None, :]) + cols1 * wx[:, None, :]


def digit_crops(videos, digit_size, out_size=28, threshold=0.1):
    """Each frame's digit, cut out and resized as an MNIST digit.

    The box is `digit_size` pixels square, centred at the frame's centre
    of mass (`centre_of_mass(videos, threshold)`; the frame's centre for a
    frame with no ink), moved inside the frame where it would cross an
    edge, and resampled bilinearly to `out_size` square in one step (no
    rounding of the box to whole pixels). MNIST centres each digit by its
    centre of mass in a 28x28 box, so a Moving MNIST digit (an MNIST digit
    shrunk to `digit_size`) reads here like the digit it was made from.

    Args:
        videos: `(n, F, H, W, C)` or `(n, F, H, W)` in [0, 1] (channels
            are averaged).
        digit_size: the side of the box cut out, in pixels.
        out_size: the side of each crop (the classifier's input).
        threshold: as `centre_of_mass`.

    Returns:
        float32 `(n * F, out_size, out_size, 1)`, frame-major within each
        clip (clip 0's frames first).
    """
    frames = _frames(videos)
    n, count, height, width = frames.shape
    if not 0 < digit_size <= min(height, width):
        raise ValueError(f"digit_size={digit_size}: must be in [1, {min(height, width)}] "
                         f"(the frames are {height}x{width})")
    centres = centre_of_mass(frames, threshold).reshape(-1, 2)
    centres = np.where(np.isnan(centres), [(height - 1) / 2, (width - 1) / 2], centres)
    # The centre of mass lands on pixel (out_size / 2, out_size / 2), as
    # in MNIST (whose digits' centres of mass sit at (14, 14) of 28x28);
    # the sampled points stay within the frame's pixels.
    scale = digit_size / out_size
    low, high = digit_size / 2 - 0.5, digit_size / 2 + 0.5 - scale
    y = np.clip(centres[:, 0], low, height - high)
    x = np.clip(centres[:, 1], low, width - high)
    steps = (np.arange(out_size) - out_size / 2) * scale
    crops = _bilinear(frames.reshape(n * count, height, width),
                      y[:, None] + steps[None, :], x[:, None] + steps[None, :])
    return crops[..., None].astype("float32")


# === Motion ===


def _fold(unfolded, travel):
    """The bounce of an unfolded coordinate: a triangle wave in [0, travel]."""
    return travel - np.abs(np.mod(unfolded, 2 * travel) - travel)


def _squared_errors(observed, mask, paths):
    """Per clip and path, the masked sum of squared residuals after the
    best constant offset. `observed, mask (n, F)`; `paths (n or 1, G, F)`."""
    count = np.maximum(mask.sum(axis=1), 1)[:, None]
    masked = observed * mask
    if paths.shape[0] == 1:     # one grid for every clip: matrix products
        grid = paths[0]
        cross = masked @ grid.T
        path_sum = mask @ grid.T
        path_squares = mask @ (grid * grid).T
    else:
        cross = np.einsum("nf,ngf->ng", masked, paths)
        path_sum = np.einsum("nf,ngf->ng", mask, paths)
        path_squares = np.einsum("nf,ngf->ng", mask, paths * paths)
    residual_sum = masked.sum(axis=1)[:, None] - path_sum
    squares = (masked * observed).sum(axis=1)[:, None] - 2 * cross + path_squares
    return squares - residual_sum ** 2 / count


def _fit_axis(observed, mask, travel, max_speed):
    """The best bounce path of one axis per clip: `(n, F)` positions of
    the box (before the offset)."""
    n, count = observed.shape
    t = np.arange(count, dtype="float64")
    # Phase in [0, 2 travel) and speed >= 0 cover every path: a path of
    # speed -v equals the one of speed v started at the mirrored phase.
    phase_step, speed_step = PHASE_STEP, SPEED_STEP
    phases = np.arange(0.0, 2 * travel, phase_step)
    speeds = np.arange(0.0, max_speed + speed_step / 2, speed_step)
    grid_phase, grid_speed = (a.ravel() for a in np.meshgrid(phases, speeds, indexing="ij"))
    grid = _fold(grid_phase[:, None] + grid_speed[:, None] * t, travel)[None]
    best_phase, best_speed = np.empty(n), np.empty(n)
    chunk = max(1, 2_000_000 // len(grid_phase))     # clips x paths held at once
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        errors = _squared_errors(observed[part], mask[part], grid)
        best = np.argmin(errors, axis=1)
        best_phase[part], best_speed[part] = grid_phase[best], grid_speed[best]
    # Two finer grids around each clip's best (per clip, so no shared grid).
    local = np.linspace(-1.0, 1.0, 11)
    for _ in range(REFINEMENTS):
        dp, ds = (a.ravel() for a in np.meshgrid(local * phase_step, local * speed_step,
                                                  indexing="ij"))
        phase = best_phase[:, None] + dp[None]
        speed = np.maximum(best_speed[:, None] + ds[None], 0.0)
        paths = _fold(phase[..., None] + speed[..., None] * t, travel)
        best = np.argmin(_squared_errors(observed, mask, paths), axis=1)
        rows = np.arange(n)
        best_phase, best_speed = phase[rows, best], speed[rows, best]
        phase_step, speed_step = phase_step / 5, speed_step / 5
    return _fold(best_phase[:, None] + best_speed[:, None] * t, travel)


def motion_error(centres, size, digit_size, max_speed=None):
    """Mean distance, in pixels, of each clip's path from its best bounce path.

    A Moving MNIST digit's box moves at a constant velocity per axis and
    reflects at the walls: along each axis its top-left corner is a
    triangle wave between 0 and `size - digit_size`. The digit's centre of
    mass sits at a fixed offset from the corner, so the fit per axis is a
    start and a speed (a grid search, refined twice around the best) and
    the offset that fits them best (the mean residual). The error is the
    mean over the clip's frames of the distance between the centre of mass
    and the fitted path. Real clips, whose boxes sit at whole pixels, score
    near the floor of that rounding (a few tenths of a pixel); a digit that
    jumps about scores several pixels.

    Args:
        centres: `(n, F, 2)` centres of mass (`centre_of_mass`), NaN for a
            frame with no ink (left out of the fit and the mean).
        size: the side of the square frame.
        digit_size: the side of the digit's box.
        max_speed: the fastest speed per axis searched, in pixels per frame
            (default `digit_size / 2`: faster than that, a digit no longer
            reads as moving).

    Returns:
        float64 `(n,)`; NaN for a clip with fewer than 2 inked frames.
    """
    centres = np.asarray(centres, dtype="float64")
    if centres.ndim != 3 or centres.shape[-1] != 2:
        raise ValueError(f"centres of shape {centres.shape}: expected (clips, frames, 2)")
    travel = float(size) - float(digit_size)
    if travel <= 0:
        raise ValueError(f"size={size}, digit_size={digit_size}: the digit's box must be "
                         "smaller than the frame")
    max_speed = float(digit_size) / 2 if max_speed is None else float(max_speed)
    if not max_speed >= 0:
        raise ValueError(f"max_speed={max_speed}: must be >= 0")
    mask = np.isfinite(centres).all(axis=-1)
    observed = np.where(mask[..., None], centres, 0.0)
    weights = mask.astype("float64")
    count = weights.sum(axis=1)
    residuals = []
    for axis in range(2):
        values = observed[..., axis]
        path = _fit_axis(values, weights, travel, max_speed)
        residual = values - path
        offset = (residual * weights).sum(axis=1) / np.maximum(count, 1)
        residuals.append(residual - offset[:, None])
    distance = np.hypot(*residuals) * weights
    with np.errstate(invalid="ignore", divide="ignore"):
        error = distance.sum(axis=1) / count
    return np.where(count >= 2, error, np.nan)


# === Clip features ===


def clip_features(frame_features):
    """A clip's features: what its frames show and how much they change.

    `concat(mean over t of f_t, mean over t of |f_{t+1} - f_t|)`: the
    classifier's features of its frames, averaged, and their mean absolute
    change between neighbouring frames (a flickering or morphing digit
    changes more than a moving one).

    Args:
        frame_features: `(n, F, d)` features of each frame (F >= 2).

    Returns:
        float32 `(n, 2 d)`.
    """
    f = np.asarray(frame_features, dtype="float64")
    if f.ndim != 3 or f.shape[1] < 2:
        raise ValueError(f"frame_features of shape {f.shape}: expected (clips, frames, "
                         "features) with at least 2 frames")
    change = np.abs(np.diff(f, axis=1)).mean(axis=1)
    return np.concatenate([f.mean(axis=1), change], axis=-1).astype("float32")


def frechet(features_a, features_b):
    """The Fréchet distance of two feature sets (`(n, d)` each), by
    `kgen.metrics.FrechetDistance`."""
    import keras

    from kgen.metrics.distribution import FrechetDistance

    a, b = np.asarray(features_a, "float32"), np.asarray(features_b, "float32")
    metric = FrechetDistance(num_features=a.shape[-1])
    metric.update_state(a, b)
    return float(keras.ops.convert_to_numpy(metric.result()))


# === Evaluation ===


def check_clip_settings(settings, where="the model"):
    """The clip settings a video model records, as ints, checked.

    Args:
        settings: a mapping (or an object with attributes) holding
            `frames`, `size`, `digit_size` and `num_digits` (1 when absent).
        where: what recorded them, for the message.

    Raises:
        kgen.evaluate.EvaluateError: naming a missing or bad value; for
            `num_digits` other than 1, which is not judged (a frame's one
            centre of mass and one crop would mix the digits).
    """
    from kgen.evaluate import EvaluateError

    def read(name):
        if isinstance(settings, Mapping):
            return settings.get(name, 1 if name == "num_digits" else None)
        return getattr(settings, name, 1 if name == "num_digits" else None)

    values = {}
    for name in CLIP_SETTINGS:
        value = read(name)
        try:
            values[name] = int(value)
        except (TypeError, ValueError):
            raise EvaluateError(f"{where}: clip setting {name}={value!r} is not an integer "
                                f"(expected {', '.join(CLIP_SETTINGS)})") from None
    if values["num_digits"] != 1:
        raise EvaluateError(
            f"{where}: num_digits={values['num_digits']}: only clips of one digit are "
            "judged (the centre of mass, the crop read by the classifier and the bounce "
            "path each assume one digit per frame)")
    if values["frames"] < 2:
        raise EvaluateError(f"{where}: frames={values['frames']}: an evaluation needs at "
                            "least 2 (half of them prompt an extension)")
    if not 0 < values["digit_size"] < values["size"]:
        raise EvaluateError(f"{where}: digit_size={values['digit_size']}: must be in "
                            f"[1, size={values['size']})")
    return values


def clip_settings(source):
    """The checked clip settings of a `kgen.evaluate` source: the export's
    `kgen.json` `clip_settings`, or the Keras model's `clip_settings`."""
    from kgen.evaluate import EvaluateError

    name = getattr(source, "name", "the model")
    if source.keras_model is not None:
        recorded = getattr(source.keras_model, "clip_settings", None)
    else:
        recorded = (getattr(source, "metadata", None) or {}).get("clip_settings")
    if recorded is None:
        raise EvaluateError(f"{name}: records no clip_settings ({', '.join(CLIP_SETTINGS)}); "
                            "is it a video model?")
    return check_clip_settings(recorded, where=name)


def _judge(classifier):
    """The classifier and its feature model, loaded as `kgen evaluate`
    loads them for images; refused unless it takes square grey images."""
    from kgen.evaluate import EvaluateError
    from kgen.evaluate import load_classifier

    model, features = load_classifier(classifier)
    shape = tuple(model.input_shape[1:])
    if shape[-1] != 1 or shape[0] != shape[1]:
        raise EvaluateError(f"--classifier {classifier}: it takes images of shape {shape}; "
                            "a video's digits are judged as square grey crops (h, h, 1)")
    return model, features


def _real_clips(data, n, seed, settings):
    """`moving_mnist` clips of the data's test digits."""
    from kgen.data import DataError
    from kgen.data.video import mnist_digits
    from kgen.data.video import moving_mnist
    from kgen.evaluate import EvaluateError

    try:
        digits, labels = mnist_digits(data, "test")
        return moving_mnist(digits, labels, n, frames=settings["frames"],
                            size=settings["size"], digit_size=settings["digit_size"],
                            num_digits=1, seed=seed)
    except DataError as e:
        raise EvaluateError(f"--data {data}: {e}") from None


def _checked_clips(values, settings, what):
    """`values` as float32 clips of the model's clip settings, finite."""
    from kgen.evaluate import EvaluateError

    values = np.asarray(values, "float32")
    expected = (settings["frames"], settings["size"], settings["size"])
    if values.ndim != 5 or tuple(values.shape[1:4]) != expected:
        raise EvaluateError(f"the {what} clips have shape {tuple(values.shape[1:])}, "
                            f"expected {expected + (1,)} (the model's clip_settings)")
    if not np.isfinite(values).all():
        raise EvaluateError(f"the {what} clips hold non-finite values (NaN or inf); the "
                            "model's weights are probably not finite")
    return values


def _generate(source, n, labels, seed, step, settings, bar):
    """`n` clips, row `i` with seed `seed + i` and label `labels[i]`
    (None for an unconditional model)."""
    parts = []
    for start in range(0, n, step):
        count = min(step, n - start)
        part = None if labels is None else labels[start:start + count]
        parts.append(np.asarray(source.generate(seed + start, count, part, settings),
                                "float32"))
        bar.add(count)
    return np.concatenate(parts)


def _extend(source, prompts, seed, step, settings, bar):
    """The model's continuation of each prompt (`(n, k, h, w, c)` known
    frames) as whole clips; row `i` has seed `seed + i`. Only `num_steps`
    of the settings applies. None when an export has no `extend`
    signature."""
    from kgen.evaluate import EvaluateError
    from kgen.evaluate import _setting_value

    settings = dict(settings or {})
    parts = []
    if source.keras_model is not None:
        kwargs = {}
        if "num_steps" in settings:
            kwargs["num_steps"] = _setting_value(source.declaration, "num_steps",
                                                 settings["num_steps"])
        for start in range(0, len(prompts), step):
            part = prompts[start:start + step]
            parts.append(np.asarray(source.keras_model.extend(part, seed=seed + start,
                                                              **kwargs), "float32"))
            bar.add(len(part))
        return np.concatenate(parts)

    from kgen.export.sample import SampleError
    from kgen.export.sample import _run
    from kgen.export.sample import fill_inputs

    signature = source.loaded.signatures.get("extend")
    if signature is None:
        return None
    dtypes = {name: spec.dtype.as_numpy_dtype
              for name, spec in signature.structured_input_signature[1].items()
              if name != "frames"}
    for start in range(0, len(prompts), step):
        part = prompts[start:start + step]
        try:
            inputs = fill_inputs(
                dtypes, source.metadata, len(part), seed + start,
                settings={k: v for k, v in settings.items() if k in dtypes},
                missing=lambda name: f"the extend signature needs input {name!r} "
                                     f"(pass --set {name}=VALUE)")
            inputs["frames"] = part
            outputs = _run(signature, inputs, source.max_rows, source.version_dir)
        except SampleError as e:
            raise EvaluateError(f"extend: {e}") from None
        if "video" not in outputs:
            raise EvaluateError(f"{source.version_dir}: the extend signature has no 'video' "
                                f"output (it returns {', '.join(outputs)})")
        parts.append(outputs["video"])
        bar.add(len(part))
    return np.concatenate(parts)


def _read(model, features, videos, digit_size, batch):
    """The classifier's reading of every frame: `(labels (n, F), clip
    features (n, 2d) or None)` (features only when `features` is given)."""
    from kgen.metrics.features import predict_in_batches

    n, count = videos.shape[:2]
    crops = digit_crops(videos, digit_size, out_size=int(model.input_shape[1]))
    read = np.argmax(predict_in_batches(model, crops, batch), axis=-1).reshape(n, count)
    if features is None:
        return read, None
    f = predict_in_batches(features, crops, batch).reshape(n, count, -1)
    return read, clip_features(f)


def _share(values):
    return float(np.mean(values)) if np.size(values) else None


def _mean(values):
    values = np.asarray(values, "float64")
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def _per_class(read, labels, classes):
    hits = (read == labels[:, None]).mean(axis=1)
    return [_share(hits[labels == c]) for c in range(classes)]


def _steps(centres):
    """How far the centre of mass moves between neighbouring frames,
    `(n, F - 1)` pixels (NaN next to a frame with no ink)."""
    return np.hypot(*np.moveaxis(np.diff(centres, axis=1), -1, 0))


def _clip_scores(read, labels, videos, settings, classes):
    """The measures a set of whole clips gets: label, identity, motion."""
    scores = {}
    if labels is not None:
        scores["frame_accuracy"] = _share(read == labels[:, None])
        scores["per_class"] = _per_class(read, labels, classes)
    scores["identity"] = _share((read == read[:, :1]).all(axis=1))
    centres = centre_of_mass(videos)
    scores["motion_error_px"] = _mean(
        motion_error(centres, settings["size"], settings["digit_size"]))
    scores["speed_px"] = _mean(_steps(centres))
    scores["empty_frames"] = _share(np.isnan(centres[..., 0]))
    return scores


def _position_error(videos, truth):
    """Mean distance of the digits' centres of mass, frame by frame
    (frames where either has no ink are left out)."""
    a, b = centre_of_mass(videos), centre_of_mass(truth)
    return _mean(np.hypot(*np.moveaxis(a - b, -1, 0)))


def evaluate_video(source, *, data, n, classifier, seed, batch, keras_path=None,
                   features=None, inception_weights=None, settings=None, progress=True,
                   **_):
    """The video family's `kgen evaluate`: clips judged against real ones.

    `n` real clips are drawn with `kgen.data.video.moving_mnist` from the
    test digits of `data` (`mnist_digits(data, "test")`, digits the model
    did not train on) with the model's clip settings and `seed`; the model
    makes one clip for each real clip's label (row `i` with seed
    `seed + i`) and continues each real clip from its first `frames // 2`
    frames (row `i` again with seed `seed + i`). Every frame's digit is
    cut out (`digit_crops`) and read by the MNIST classifier. Only clips
    of one digit are judged: for `num_digits > 1` a frame's centre of
    mass, its crop and its path would mix the digits, so the evaluation
    is refused.

    The report's `samples` and `floor` (the same measures on the real
    clips) hold:

    - `frame_accuracy`: the share of frames read as the asked label, and
      `per_class` the same per label;
    - `identity`: the share of clips whose frames all read as one digit;
    - `motion_error_px`: the mean `motion_error` of the clips' paths;
    - `speed_px`: how far the digit moves per frame, on average (a digit
      standing still follows a bounce path of speed 0 exactly, so the
      motion error alone would not tell it from a moving one);
    - `empty_frames`: the share of frames with no ink (left out of the
      paths);
    - `fd_clips`: the Fréchet distance of `clip_features` against the real
      clips; its floor compares them with another draw of real clips
      (seed `seed + n`, same digits, other paths);
    - `extend_identity`: the share of continuations whose continued frames
      all read as the prompt's label (floor: the real continuations);
    - `extend_position_error_px`: the mean distance of the continued
      digit's centre of mass from the real continuation's, over the first
      `EXTEND_POSITION_FRAMES` continued frames (floor 0 by definition);
      the floor's `extend_still_position_error_px` is the same for the
      last prompt frame held still, a reference a model should beat.

    Args:
        source: a `kgen.evaluate` source (`_SavedModelSource` or
            `_KerasSource`) of a video model.
        data: the MNIST IDX directory (`--data`).
        n: clips of each set (at most `MAX_VIDEO_N`).
        classifier: the MNIST classifier `.keras` (`--classifier`).
        seed: seed of the first clip, and of the real clips' draw.
        batch: rows per model call (default 64, at most the export's
            `max_rows`); the classifier reads 256 crops per call.
        keras_path, inception_weights: unused (as `kgen evaluate` passes
            them).
        features: `"classifier"` (or None); InceptionV3 does not judge
            digit crops.
        settings: `{generate input: text}` (`--set`); `num_steps` also
            applies to the extension.
        progress: draw progress bars on stderr.

    Returns:
        A JSON-ready dict: `family`, `n`, `seed`, `features`,
        `clip_settings`, `settings`, `samples`, `floor`, `note`.
    """
    from kgen.evaluate import EvaluateError
    from kgen.evaluate import _Progress

    if data is None:
        raise EvaluateError("--data: needed, the MNIST IDX directory whose test digits make "
                            "the real clips the samples are compared with")
    if classifier is None:
        raise EvaluateError(
            "--classifier: needed for video models (train one with `kgen train "
            "mnist_classifier --set data=DIR`; it is saved as "
            "runs/mnist_classifier/best.keras)")
    if features not in (None, "classifier"):
        raise EvaluateError(f"--features {features}: a video's digits are judged with the "
                            "classifier's features only")
    if n > MAX_VIDEO_N:
        raise EvaluateError(f"--n {n}: a video evaluation judges at most {MAX_VIDEO_N} "
                            "clips (it holds four sets of them in memory); ask for fewer")
    clip = clip_settings(source)
    model, feature_model = _judge(classifier)
    classes = source.num_classes
    if model.output_shape[-1] < max(classes, 10):
        raise EvaluateError(f"--classifier {classifier}: it knows {model.output_shape[-1]} "
                            f"classes, the clips show digits 0-9")
    step = min(batch or 64, source.max_rows or batch or 64)
    known, digit_size = clip["frames"] // 2, clip["digit_size"]

    real = _real_clips(data, n, seed, clip)
    other = _real_clips(data, n, seed + n, clip)
    labels = np.asarray(real["labels"], "int64")
    videos = np.asarray(real["videos"], "float32")

    asked = labels.astype("int32") if classes else None
    samples = _checked_clips(_generate(source, n, asked, seed, step, settings,
                                       _Progress("sampling", n, progress)), clip, "generated")
    extended = _extend(source, videos[:, :known], seed, step, settings,
                       _Progress("extending", n, progress))
    if extended is not None:
        extended = _checked_clips(extended, clip, "extended")

    bar = _Progress("judging", 4 * n, progress)
    real_read, real_features = _read(model, feature_model, videos, digit_size, 256)
    bar.add(n)
    _, other_features = _read(model, feature_model, np.asarray(other["videos"], "float32"),
                              digit_size, 256)
    bar.add(n)
    sample_read, sample_features = _read(model, feature_model, samples, digit_size, 256)
    bar.add(n)
    report_samples = _clip_scores(sample_read, labels if classes else None, samples, clip, 10)
    report_floor = _clip_scores(real_read, labels, videos, clip, 10)
    report_samples["fd_clips"] = frechet(real_features, sample_features)
    report_floor["fd_clips"] = frechet(real_features, other_features)

    shown = min(EXTEND_POSITION_FRAMES, clip["frames"] - known)
    truth = videos[:, known:known + shown]
    report_floor["extend_identity"] = _share(
        (real_read[:, known:] == labels[:, None]).all(axis=1))
    report_floor["extend_position_error_px"] = 0.0
    report_floor["extend_still_position_error_px"] = _position_error(
        np.repeat(videos[:, known - 1:known], shown, axis=1), truth)
    note = (f"real clips: {n} Moving MNIST clips of the test digits (seed {seed}); fd_clips "
            f"floor: those against another draw of real clips (seed {seed + n}); extension: "
            f"the first {known} frames of each real clip prompt the model, the continued "
            f"frames are judged (position over the first {shown}); floor "
            f"extend_position_error_px is 0 by definition, "
            f"extend_still_position_error_px holds the last prompt frame still")
    if extended is not None:
        continued = extended[:, known:]
        ext_read, _ = _read(model, None, continued, digit_size, 256)
        report_samples["extend_identity"] = _share((ext_read == labels[:, None]).all(axis=1))
        report_samples["extend_position_error_px"] = _position_error(continued[:, :shown],
                                                                     truth)
        report_samples["extend_empty_frames"] = _share(
            np.isnan(centre_of_mass(continued)[..., 0]))
    else:
        note += f"; {source.version_dir}: no extend signature, so no extension measured"
    bar.add(n)
    if not classes:
        note += "; an unconditional model: no frame_accuracy"
    return {"family": source.family, "n": n, "seed": seed, "features": str(classifier),
            "clip_settings": clip, "settings": dict(settings or {}),
            "samples": report_samples, "floor": report_floor, "note": note}
