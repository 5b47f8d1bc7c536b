"""Serving signatures of `kgen.models.VideoDiffusionModel`: `generate` (a
clip per seed and label) and `extend` (the rest of a clip from its first
frames), each the model's own `sample()` traced with its whole loop in the
graph, behind the diffusion export's request bounds
(`kgen/export/diffusion.py`).

`generate` inputs (one row = one clip; the names are `generate()`'s):

- `seed` int64 `[batch]`: row `r` equals `model.generate(1,
  seed=seed[r], labels=label[r], ...)`.
- `label` int32 `[batch]` (conditional models): a class in
  `[0, num_classes)`, or `num_classes` for the "no label" class.
- `num_steps` int32 `[batch]`: the same in every row, in `[1, T]`.
- `guidance_scale` float32 `[batch]`: one finite weight per row.

`extend` inputs (one row = one clip to continue; unguided, "no label"):

- `seed` int64 `[batch]`.
- `frames` float32 `[batch, k, h, w, c]` in [0, 1]: each row's first `k`
  frames, `k` in `[1, frames - 1]` (one `k` per request).
- `num_steps` int32 `[batch]`: the same in every row, in `[1, T]`.

Row `r` equals `model.extend(frames[r:r + 1], seed=seed[r],
num_steps=...)`: both pad the known frames with zeros to `frames - 1` and
run the same traced loop. Outputs: `video` float32 `[batch, frames, h, w,
c]` in [0, 1], whose first `k` frames (extend) are the given ones.

Bounds, each refused with INVALID_ARGUMENT naming the input: 1 to
`max_rows` rows, one value per row in every input, `num_steps` uniform and
in range, `rows x num_steps <= max_row_steps`, labels in range, `k`
in range, frames of the clip's height, width and channels, finite and in
[0, 1].
"""

import tensorflow as tf

from kgen.export import common
from kgen.export.diffusion import diffusion_signatures
from kgen.export.diffusion import request_bounds
from kgen.export.diffusion import step_checks


def video_signatures(model, max_rows, scheduler=None, max_row_steps=None):
    """The `generate` and `extend` endpoints and their metadata.

    Args:
        model: a `kgen.models.VideoDiffusionModel`.
        max_rows: the most rows one request may ask for.
        scheduler: the sampling scheduler (name or instance; default the
            model's `sampler`).
        max_row_steps: the most `rows x num_steps` of one request (default
            as the image diffusion export).

    Returns:
        `({"generate": tf.function, "extend": tf.function}, metadata dict)`.
    """
    scheduler = model.get_scheduler(scheduler)
    bounds = request_bounds(scheduler, max_rows, max_row_steps)
    # The image export's `generate`, whose output is named by the model's
    # output kind ("video").
    endpoints, metadata = diffusion_signatures(model, max_rows, scheduler,
                                               bounds["max_row_steps"])
    F = model.frames
    frame_shape = [int(d) for d in model.video_shape[1:]]
    shape = ", ".join(str(d) for d in frame_shape)

    @tf.function(input_signature=[
        common.SEED_SPEC,
        tf.TensorSpec([None, None, *frame_shape], tf.float32, name="frames"),
        tf.TensorSpec([None], tf.int32, name="num_steps"),
    ])
    def extend(seed, frames, num_steps):
        k = tf.shape(frames)[1]
        message = f"frames must hold 1 to {F - 1} known frames (clips have {F})"
        checks = common.check_rows(seed, bounds["max_rows"])
        checks += common.check_same_rows(seed, frames=frames, num_steps=num_steps)
        checks += [
            tf.debugging.assert_equal(
                tf.shape(frames)[2:], tf.constant(frame_shape, tf.int32),
                message=f"frames must have shape [batch, k, {shape}]"),
            tf.debugging.assert_greater_equal(k, 1, message=message),
            tf.debugging.assert_less_equal(k, F - 1, message=message),
        ]
        checks += common.check_finite(frames, "frames")
        with tf.control_dependencies(checks):  # NaN is named before the range
            checks = common.check_unit_range(frames, "frames")
        with tf.control_dependencies(checks):
            steps = tf.reduce_max(num_steps)
            # As `model.extend`: zeros past the known frames, k per row.
            known = tf.pad(frames, [[0, 0], [0, F - 1 - k], [0, 0], [0, 0], [0, 0]])
            known = tf.ensure_shape(known, [None, F - 1, *frame_shape])
            num_known = tf.fill(tf.shape(seed), k)
        with tf.control_dependencies(step_checks(seed, num_steps, steps, bounds)):
            videos = model.sample(common.seed_pairs(seed), None, 1.0, tf.identity(steps),
                                  scheduler, known=known, num_known=num_known)
        return {"video": tf.cast(videos, tf.float32)}

    endpoints["extend"] = extend
    video_shape = metadata.pop("image_shape")
    head, _, bound = metadata["signatures"]["generate"].partition(" -> ")
    bound = bound.split("; ", 1)[1]
    T = bounds["num_train_timesteps"]
    metadata.update({
        "output_kind": "video",
        "video_shape": video_shape,
        "clip_settings": dict(model.clip_settings),
        "extend": {"min_known": 1, "max_known": F - 1},
        "signatures": {
            "generate": (f"{head} -> video float32 [batch, frames, h, w, c] in [0, 1]; "
                         f"{bound}"),
            "extend": (f"seed int64 [batch], frames float32 [batch, k, {shape}] in "
                       f"[0, 1] (each row's first k frames, k in 1..{F - 1}), num_steps "
                       f"int32 [batch] (same in every row, 1..{T}) -> video float32 "
                       f"[batch, frames, h, w, c] in [0, 1] (unguided; its first k "
                       f"frames are the given ones); {bound}"),
        },
    })
    # The warm-up request of `extend` (kgen.export.warmup): one mid-grey
    # known frame per row.
    metadata["warmup"] = {"frames": {"shape": [1, *frame_shape], "fill": 0.5}}
    return endpoints, metadata
