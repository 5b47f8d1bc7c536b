"""Serving signature of `kgen.models.DiffusionModel`: the whole sampling loop
in the graph."""

import tensorflow as tf

from kgen.export import common


def diffusion_signatures(model, max_rows, scheduler=None):
    """`generate`: per-row `seed` (and `label`), `num_steps`, `guidance_scale`
    -> `images`, sampling with the EMA weights and `scheduler` (default the
    model's `sampler`) in one `tf.while_loop`.

    `num_steps` is int32 `[batch]` and every row must hold the same value
    (one loop runs for the whole request); `guidance_scale` is float32
    `[batch]`, one weight per row. Row `i`'s image depends only on its own
    seed, label and guidance.
    """
    scheduler = model.get_scheduler(scheduler)
    image_shape = [int(d) for d in model.image_shape]
    T = scheduler.num_train_timesteps
    conditional = model.num_classes is not None

    def noise_per_row(seed, step):
        # Step `i` of row `r` draws from seed (seed_r, i + 1); x_T uses (seed_r, 0).
        def draw(s):
            return tf.random.stateless_normal(
                image_shape, seed=tf.stack([s, tf.cast(step, tf.int64) + 1])
            )

        return tf.map_fn(draw, seed, fn_output_signature=tf.TensorSpec(image_shape, tf.float32))

    def run(seed, label, num_steps, guidance_scale):
        steps = num_steps[0]
        checks = [
            tf.debugging.assert_positive(
                tf.size(seed), message="seed must have at least one row"),
            tf.debugging.assert_equal(
                tf.size(num_steps), tf.size(seed),
                message="num_steps must have one value per row (as seed)"),
            tf.debugging.assert_equal(
                tf.size(guidance_scale), tf.size(seed),
                message="guidance_scale must have one value per row (as seed)"),
            tf.debugging.assert_greater_equal(
                steps, 1, message=f"num_steps must be between 1 and {T}"),
            tf.debugging.assert_less_equal(
                steps, T, message=f"num_steps must be between 1 and {T}"),
            tf.debugging.assert_equal(
                num_steps, steps,
                message="num_steps must be the same in every row of a request"),
            tf.debugging.assert_all_finite(
                guidance_scale, message="guidance_scale must be finite"),
        ]
        if conditional:
            checks += [
                tf.debugging.assert_equal(
                    tf.size(label), tf.size(seed),
                    message="label must have one value per row (as seed)"),
                tf.debugging.assert_greater_equal(
                    label, 0, message=f"label must be in [0, {model.num_classes})"),
                tf.debugging.assert_less(
                    label, model.num_classes,
                    message=f"label must be in [0, {model.num_classes})"),
            ]
        with tf.control_dependencies(checks):
            x = common.normal_per_row(tf.identity(seed), image_shape)
            images = model.sample_loop(
                x, tf.identity(steps), scheduler,
                labels=label if conditional else None,
                guidance_scale=guidance_scale,
                noise_fn=lambda i: noise_per_row(seed, i),
            )
        return {"images": tf.cast(images, tf.float32)}

    steps_spec = tf.TensorSpec([None], tf.int32, name="num_steps")
    guidance_spec = tf.TensorSpec([None], tf.float32, name="guidance_scale")
    if conditional:
        @tf.function(input_signature=[
            common.SEED_SPEC, tf.TensorSpec([None], tf.int32, name="label"),
            steps_spec, guidance_spec,
        ])
        def generate(seed, label, num_steps, guidance_scale):
            return run(seed, label, num_steps, guidance_scale)
    else:
        @tf.function(input_signature=[common.SEED_SPEC, steps_spec, guidance_spec])
        def generate(seed, num_steps, guidance_scale):
            return run(seed, None, num_steps, guidance_scale)

    inputs = "seed int64 [batch]"
    if conditional:
        inputs += f", label int32 [batch] in [0, {model.num_classes})"
    inputs += (f", num_steps int32 [batch] (same in every row, 1..{T}), "
               "guidance_scale float32 [batch]")
    metadata = {
        "output_kind": "images",
        "image_shape": image_shape,
        "num_classes": model.num_classes or 0,
        "scheduler": type(scheduler).__name__,
        "scheduler_config": scheduler.get_config(),
        "num_train_timesteps": T,
        "defaults": {"num_steps": min(50, T) if not scheduler.stochastic else T,
                     "guidance_scale": 2.0 if conditional else 1.0},
        "signatures": {
            "generate": f"{inputs} -> images float32 [batch, h, w, c] in [0, 1]",
        },
    }
    return {"generate": generate}, metadata
