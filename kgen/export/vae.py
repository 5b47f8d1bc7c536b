"""Serving signatures of `kgen.models.VAE`."""

import tensorflow as tf

from kgen.export import common


def vae_signatures(model, max_rows):
    """`generate` (seed -> images), `encode` (images -> mean, log_var) and
    `decode` (latents -> images); every input has a leading batch axis."""
    image_shape = list(model.image_shape)
    latent_dim = model.latent_dim

    @tf.function(input_signature=[common.SEED_SPEC])
    def generate(seed):
        latents = common.normal_per_row(seed, [latent_dim])
        return {"images": model.decode(latents)}

    @tf.function(input_signature=[
        tf.TensorSpec([None, *image_shape], tf.float32, name="images")
    ])
    def encode(images):
        with tf.control_dependencies(common.check_images(images, image_shape)):
            mean, log_var = model.encode(tf.identity(images))
        return {"mean": mean, "log_var": log_var}

    @tf.function(input_signature=[
        tf.TensorSpec([None, latent_dim], tf.float32, name="latents")
    ])
    def decode(latents):
        with tf.control_dependencies(common.check_finite(latents, "latents")):
            return {"images": model.decode(tf.identity(latents))}

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
