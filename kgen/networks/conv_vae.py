"""Convolutional encoder and decoder for a VAE on small images."""

import keras
from keras import layers

from kgen.networks.blocks import grid_size
from kgen.networks.blocks import upsampling_block


def conv_encoder(image_shape, latent_dim, filters=(32, 64), hidden_dim=128,
                 name="encoder"):
    """Images -> `(mean, log_var)` of a diagonal Gaussian over the latents.

    Each entry of `filters` is a stride-2 3x3 convolution with ReLU.

    Example:

    ```python
    encoder = conv_encoder((28, 28, 1), latent_dim=16)
    mean, log_var = encoder(images)
    ```
    """
    grid_size(image_shape, filters)
    images = keras.Input(tuple(image_shape), name="images")
    x = images
    for f in filters:
        x = layers.Conv2D(f, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(hidden_dim, activation="relu")(x)
    mean = layers.Dense(latent_dim, name="z_mean")(x)
    log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    return keras.Model(images, [mean, log_var], name=name)


def conv_decoder(latent_dim, image_shape, filters=(64, 32), hidden_dim=128,
                 upsample="resize", name="decoder"):
    """Latents -> per-pixel logits (or means) of shape `image_shape`.

    Mirrors `conv_encoder`: a dense layer to a `1 / 2**len(filters)` size
    grid, then one 2x upsampling with ReLU per entry of `filters`
    (`upsample`: `"resize"` or `"transpose"`, see `kgen.networks.blocks.upsampling_block`).
    """
    h, w = grid_size(image_shape, filters)
    channels = image_shape[-1]
    latents = keras.Input((latent_dim,), name="latents")
    x = layers.Dense(hidden_dim, activation="relu")(latents)
    x = layers.Dense(h * w * filters[0], activation="relu")(x)
    x = layers.Reshape((h, w, filters[0]))(x)
    for f in filters:
        x = upsampling_block(x, f, upsample, activation="relu")
    logits = layers.Conv2D(channels, 3, padding="same", name="logits")(x)
    return keras.Model(latents, logits, name=name)


def conv_vae_networks(image_shape, latent_dim, filters=(32, 64), hidden_dim=128):
    """A matching `(encoder, decoder)` pair; the decoder mirrors the filters."""
    return (
        conv_encoder(image_shape, latent_dim, filters, hidden_dim),
        conv_decoder(latent_dim, image_shape, tuple(reversed(filters)), hidden_dim),
    )
