"""DCGAN generator and discriminator (Radford et al., 2016), optionally
class-conditional through a label embedding."""

import keras
from keras import layers

from kgen.networks.blocks import grid_size
from kgen.networks.blocks import upsampling_block


def dcgan_generator(latent_dim, image_shape, filters=(128, 64), num_classes=None,
                    upsample="resize", name="generator"):
    """Latents (and labels) -> images in [-1, 1] (tanh).

    A dense projection to a `1 / 2**len(filters)` size grid, then one 2x
    upsampling with batch norm and LeakyReLU per entry of `filters`
    (`upsample`: `"resize"` or the paper's `"transpose"`; see
    `kgen.networks.blocks.upsampling_block`). With `num_classes` set the model takes `[latents, labels]`
    and concatenates a learned label embedding to the latents.

    Example:

    ```python
    g = dcgan_generator(64, (28, 28, 1), num_classes=10)
    images = g([latents, labels])  # (batch, 28, 28, 1) in [-1, 1]
    ```
    """
    h, w = grid_size(image_shape, filters)
    latents = keras.Input((latent_dim,), name="latents")
    inputs, x = [latents], latents
    if num_classes:
        labels = keras.Input((), dtype="int32", name="labels")
        inputs.append(labels)
        x = layers.Concatenate()([x, layers.Embedding(num_classes, latent_dim)(labels)])
    x = layers.Dense(h * w * filters[0], use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.LeakyReLU(0.2)(x)
    x = layers.Reshape((h, w, filters[0]))(x)
    for f in filters:
        x = upsampling_block(x, f, upsample, use_bias=False)
        x = layers.BatchNormalization()(x)
        x = layers.LeakyReLU(0.2)(x)
    images = layers.Conv2D(image_shape[-1], 3, padding="same", activation="tanh",
                           name="images")(x)
    return keras.Model(inputs if num_classes else latents, images, name=name)


def dcgan_discriminator(image_shape, filters=(64, 128), num_classes=None,
                        conditioning="projection", name="discriminator"):
    """Images in [-1, 1] (and labels) -> one real/fake logit per image.

    One stride-2 convolution with LeakyReLU per entry of `filters`, no batch
    norm (so gradient penalties stay per-sample). With `num_classes` set the
    model takes `[images, labels]`, conditioned by `conditioning`:

    - `"projection"` (Miyato & Koyama, 2018): the logit adds the inner
      product of a learned class embedding with the image's features, so
      the discriminator judges how well an image fits its label. It makes
      a conditional GAN's samples match their labels far more often.
    - `"channel"`: the label as an embedded extra image channel.

    Example:

    ```python
    d = dcgan_discriminator((28, 28, 1), (32, 64), num_classes=10)
    logits = d([images, labels])  # (batch, 1)
    ```
    """
    if conditioning not in ("projection", "channel"):
        raise ValueError(
            f"conditioning={conditioning!r}: expected 'projection' or 'channel'"
        )
    grid_size(image_shape, filters)
    height, width = image_shape[:2]
    images = keras.Input(tuple(image_shape), name="images")
    inputs, x = [images], images
    if num_classes:
        labels = keras.Input((), dtype="int32", name="labels")
        inputs.append(labels)
    if num_classes and conditioning == "channel":
        plane = layers.Embedding(num_classes, height * width)(labels)
        x = layers.Concatenate()([x, layers.Reshape((height, width, 1))(plane)])
    for f in filters:
        x = layers.Conv2D(f, 4, strides=2, padding="same")(x)
        x = layers.LeakyReLU(0.2)(x)
    x = layers.Flatten()(x)
    logits = layers.Dense(1, name="logits")(x)
    if num_classes and conditioning == "projection":
        embedded = layers.Embedding(num_classes, x.shape[-1], name="projection")(labels)
        projected = layers.Dot(axes=-1)([embedded, x])
        logits = layers.Add(name="projected_logits")([logits, projected])
    return keras.Model(inputs if num_classes else images, logits, name=name)
