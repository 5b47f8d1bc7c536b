"""Serving signatures of `kgen.models.VAE`."""

import tensorflow as tf

from kgen.export import common


def vae_signatures(model, max_rows):
    """`generate` (seed -> images, the graph of `model.sample`), `encode`
    (images -> mean, log_var) and `decode` (latents -> images); every input
    has a leading batch axis of 1 to `max_rows` rows."""
    image_shape = list(model.image_shape)
    latent_dim = model.latent_dim

    @tf.function(input_signature=[common.SEED_SPEC])
    def generate(seed):
        with tf.control_dependencies(common.check_rows(seed, max_rows)):
            return {"images": model.sample(common.seed_pairs(seed))}

    # Shapes are checked in the graph (not by the signature), so a wrong
    # shape fails with a message naming the input.
    @tf.function(input_signature=[
        tf.TensorSpec([None] * (len(image_shape) + 1), tf.float32, name="images")
    ])
    def encode(images):
        found = common.check_rows(images, max_rows, name="images")
        found += common.check_images(images, image_shape)
        with tf.control_dependencies(found):
            images = tf.ensure_shape(tf.identity(images), [None, *image_shape])
            mean, log_var = model.encode(images)
        return {"mean": mean, "log_var": log_var}

    @tf.function(input_signature=[
        tf.TensorSpec([None, None], tf.float32, name="latents")
    ])
    def decode(latents):
        found = common.check_rows(latents, max_rows, name="latents")
        found += common.check_shape(latents, [latent_dim], "latents")
        found += common.check_finite(latents, "latents")
        with tf.control_dependencies(found):
            latents = tf.ensure_shape(tf.identity(latents), [None, latent_dim])
            return {"images": model.decode(latents)}

    metadata = {
        "output_kind": "images",
        "image_shape": image_shape,
        "latent_dim": latent_dim,
        "signatures": {
            "generate": "seed int64 [batch] -> images float32 [batch, h, w, c] in [0, 1]",
            "encode": "images float32 [batch, h, w, c] in [0, 1] -> mean, log_var float32 [batch, latent_dim]",
            "decode": "latents float32 [batch, latent_dim] -> images float32 [batch, h, w, c] in [0, 1]",
        },
    }
    return {"generate": generate, "encode": encode, "decode": decode}, metadata
