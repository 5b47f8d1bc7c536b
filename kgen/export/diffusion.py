"""Serving signature of `kgen.models.DiffusionModel`: the whole sampling loop
in the graph, traced from the model's own `sample()` (the loop
`generate()` runs), behind checks that bound each request.

Inputs (one row = one image; the names are `generate()`'s options):

- `seed` int64 `[batch]`: row `r`'s image depends on its own seed (and
  label and guidance) alone, and equals `model.generate(1, seed=seed[r],
  labels=label[r], ...)`.
- `label` int32 `[batch]` (conditional models only): a class in
  `[0, num_classes)`, or `num_classes` for the "no label" class (the
  unguided sample of `generate(..., labels=None)`).
- `num_steps` int32 `[batch]`: the same value in every row (one loop runs
  for the whole request), in `[1, num_train_timesteps]`.
- `guidance_scale` float32 `[batch]`: one finite weight per row.

Bounds, each refused with INVALID_ARGUMENT naming the input: 1 to
`max_rows` rows, every input with one value per row, and
`rows x num_steps <= max_row_steps` (the denoiser passes a request may
cost), recorded in `kgen.json`.
"""

import tensorflow as tf

from kgen.export import common


def diffusion_signatures(model, max_rows, scheduler=None, max_row_steps=None):
    """The `generate` endpoint and its metadata.

    Args:
        model: a `kgen.models.DiffusionModel`.
        max_rows: the most rows one request may ask for.
        scheduler: the sampling scheduler (name or instance; default the
            model's `sampler`).
        max_row_steps: the most `rows x num_steps` of one request; default
            `max_rows` times the default step count (at least
            `num_train_timesteps`, so one row may take every step).

    Returns:
        `({"generate": tf.function}, metadata dict)`.
    """
    scheduler = model.get_scheduler(scheduler)
    bounds = request_bounds(scheduler, max_rows, max_row_steps)

    def run(seed, label, num_steps, guidance_scale):
        with tf.control_dependencies(row_checks(model, seed, label, num_steps,
                                                guidance_scale, bounds)):
            steps = tf.reduce_max(num_steps)
        with tf.control_dependencies(step_checks(seed, num_steps, steps, bounds)):
            samples = model.sample(
                common.seed_pairs(seed), label, tf.identity(guidance_scale),
                tf.identity(steps), scheduler)
        # "images", or "audio" for `AudioDiffusionModel` (kgen/export/audio.py),
        # which also returns each row's sample rate: TF Serving serves no
        # kgen.json, so a client writes WAV files from the answer alone.
        outputs = {model.output_kind: tf.cast(samples, tf.float32)}
        if model.output_kind == "audio":
            outputs["sample_rate"] = tf.fill(
                tf.shape(seed), tf.constant(model.spectrogram.sample_rate, tf.int32))
        return outputs

    return {"generate": signature(model, run)}, metadata(model, scheduler, bounds)


def default_num_steps(scheduler):
    """Steps `kgen sample` asks for: every timestep for DDPM, else up to 50."""
    T = scheduler.num_train_timesteps
    return T if scheduler.stochastic else min(50, T)


def default_guidance_scale(conditional, model=None):
    """Guidance `kgen sample` uses: a conditional model's own
    `guidance_scale` (2 for an export that does not say), else 1 (off)."""
    if not conditional:
        return 1.0
    return float(getattr(model, "guidance_scale", 2.0))


def served_defaults(input_names):
    """The defaults of a served `generate` (no `kgen.json`): the guidance
    of an export that does not say (`default_guidance_scale`); the step
    count is the export's own, which a server does not publish."""
    if "guidance_scale" not in input_names:
        return {}
    return {"guidance_scale": default_guidance_scale("label" in input_names)}


def request_bounds(scheduler, max_rows, max_row_steps=None):
    """`{"max_rows", "num_train_timesteps", "max_row_steps"}` of the export."""
    T = scheduler.num_train_timesteps
    if max_row_steps is None:
        max_row_steps = max(max_rows * default_num_steps(scheduler), T)
    if isinstance(max_row_steps, bool) or not isinstance(max_row_steps, int) \
            or max_row_steps < 1:
        raise ValueError(f"max_row_steps={max_row_steps!r}: must be an int >= 1")
    return {"max_rows": int(max_rows), "num_train_timesteps": T,
            "max_row_steps": int(max_row_steps)}


def row_checks(model, seed, label, num_steps, guidance_scale, bounds):
    """Row count (1..max_rows), one value per row in every input, labels in
    range, finite guidance."""
    inputs = {"num_steps": num_steps, "guidance_scale": guidance_scale}
    if label is not None:
        inputs["label"] = label
    checks = common.check_rows(seed, bounds["max_rows"])
    checks += common.check_same_rows(seed, **inputs)
    checks += common.check_finite(guidance_scale, "guidance_scale")
    if label is not None:
        k = model.num_classes
        message = f"label must be in [0, {k}] ({k}: no label)"
        checks += [tf.debugging.assert_greater_equal(label, 0, message=message),
                   tf.debugging.assert_less_equal(label, k, message=message)]
    return checks


def step_checks(seed, num_steps, steps, bounds):
    """`num_steps` the same in every row, in [1, T], and rows x steps
    within `max_row_steps`."""
    T, limit = bounds["num_train_timesteps"], bounds["max_row_steps"]
    rows = tf.cast(tf.size(seed), tf.int64)
    return [
        tf.debugging.assert_equal(
            num_steps, steps, message="num_steps must be the same in every row of a request"),
        tf.debugging.assert_greater_equal(
            steps, 1, message=f"num_steps must be between 1 and {T}"),
        tf.debugging.assert_less_equal(
            steps, T, message=f"num_steps must be between 1 and {T}"),
        tf.debugging.assert_less_equal(
            rows * tf.cast(steps, tf.int64), tf.constant(limit, tf.int64),
            message=f"rows (seed) x num_steps must be at most {limit} "
                    "(max_row_steps of this export)"),
    ]


def signature(model, run):
    """`run` as a `tf.function` whose input names are `generate()`'s."""
    steps_spec = tf.TensorSpec([None], tf.int32, name="num_steps")
    guidance_spec = tf.TensorSpec([None], tf.float32, name="guidance_scale")
    if model.num_classes is None:
        @tf.function(input_signature=[common.SEED_SPEC, steps_spec, guidance_spec])
        def generate(seed, num_steps, guidance_scale):
            return run(seed, None, num_steps, guidance_scale)
        return generate

    label_spec = tf.TensorSpec([None], tf.int32, name="label")

    @tf.function(input_signature=[common.SEED_SPEC, label_spec, steps_spec, guidance_spec])
    def generate(seed, label, num_steps, guidance_scale):
        return run(seed, label, num_steps, guidance_scale)
    return generate


def metadata(model, scheduler, bounds):
    """What `kgen.json` records: shapes, scheduler, defaults, bounds."""
    T = bounds["num_train_timesteps"]
    conditional = model.num_classes is not None
    inputs = "seed int64 [batch]"
    if conditional:
        inputs += (f", label int32 [batch] in [0, {model.num_classes}] "
                   f"({model.num_classes}: no label)")
    inputs += (f", num_steps int32 [batch] (same in every row, 1..{T}), "
               "guidance_scale float32 [batch]")
    distilled = getattr(model, "distilled", None)
    num_steps = distilled["steps"] if distilled else default_num_steps(scheduler)
    record = {}
    if distilled:  # a few-step student of `kgen distill`
        record["distilled"] = dict(distilled)
        record["distilled"]["guidance"] = (
            "in the weights: the guidance_scale input is ignored"
            if conditional else "none (unconditional)")
    return {
        **record,
        "output_kind": "images",
        "image_shape": [int(d) for d in model.image_shape],
        "num_classes": model.num_classes or 0,
        "scheduler": type(scheduler).__name__,
        "scheduler_config": scheduler.get_config(),
        "num_train_timesteps": T,
        "max_row_steps": bounds["max_row_steps"],
        "uses_ema_weights": model.ema_denoiser is not None,
        "defaults": {"num_steps": num_steps,
                     "guidance_scale": default_guidance_scale(conditional, model)},
        "signatures": {
            "generate": (f"{inputs} -> images float32 [batch, h, w, c] in [0, 1]; "
                         f"rows x num_steps <= {bounds['max_row_steps']}"),
        },
    }
