"""Serving signatures of `kgen.models.GAN`."""

import tensorflow as tf

from kgen.export import common


def gan_signatures(model, max_rows):
    """`generate`: per-row `seed` (and `label` for a conditional GAN) ->
    `images` in [0, 1], from the EMA generator when there is one."""
    image_shape = list(model.image_shape)
    net = model.ema_generator or model.generator
    latent_dim = model.latent_dim
    num_classes = model.num_classes

    def images_from(latents, labels=None):
        raw = net([latents, labels] if num_classes else latents, training=False)
        return {"images": tf.clip_by_value((raw + 1.0) / 2.0, 0.0, 1.0)}

    if num_classes:
        @tf.function(input_signature=[
            common.SEED_SPEC, tf.TensorSpec([None], tf.int32, name="label"),
        ])
        def generate(seed, label):
            checks = [
                tf.debugging.assert_equal(
                    tf.shape(seed), tf.shape(label),
                    message="seed and label must have the same batch size"),
                tf.debugging.assert_greater_equal(
                    label, 0, message=f"label must be in [0, {num_classes})"),
                tf.debugging.assert_less(
                    label, num_classes, message=f"label must be in [0, {num_classes})"),
            ]
            with tf.control_dependencies(checks):
                return images_from(common.normal_per_row(seed, [latent_dim]),
                                   tf.identity(label))
        inputs = "seed int64 [batch], label int32 [batch] in [0, num_classes)"
    else:
        @tf.function(input_signature=[common.SEED_SPEC])
        def generate(seed):
            return images_from(common.normal_per_row(seed, [latent_dim]))
        inputs = "seed int64 [batch]"

    metadata = {
        "output_kind": "images",
        "image_shape": image_shape,
        "latent_dim": latent_dim,
        "num_classes": num_classes,
        "uses_ema_generator": model.ema_generator is not None,
        "signatures": {
            "generate": f"{inputs} -> images float32 [batch, h, w, c] in [0, 1]",
        },
    }
    return {"generate": generate}, metadata
