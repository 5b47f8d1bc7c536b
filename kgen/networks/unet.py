"""A small U-Net denoiser (Ho et al., 2020) for diffusion on small images."""

import math

import keras
from keras import layers
from keras import ops

from kgen.api import kgen_export


@kgen_export("kgen.networks.SinusoidalEmbedding")
class SinusoidalEmbedding(layers.Layer):
    """Integer timesteps `[batch]` -> sinusoidal features `[batch, dim]`.

    Args:
        dim: even feature size.
        max_period: longest wavelength.

    Example:

    ```python
    features = SinusoidalEmbedding(32)(timesteps)  # (batch, 32)
    ```
    """

    def __init__(self, dim, max_period=10_000.0, **kwargs):
        super().__init__(**kwargs)
        if dim % 2:
            raise ValueError(f"dim={dim}: must be even")
        self.dim = int(dim)
        self.max_period = float(max_period)

    def call(self, timesteps):
        half = self.dim // 2
        freqs = ops.exp(
            -math.log(self.max_period) * ops.arange(half, dtype="float32") / half
        )
        args = ops.cast(ops.reshape(timesteps, (-1, 1)), "float32") * freqs[None, :]
        return ops.concatenate([ops.sin(args), ops.cos(args)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim,
                "max_period": self.max_period}


def _groups(channels, groups):
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


def _res_block(x, emb, width, groups, name):
    skip = x
    if x.shape[-1] != width:
        skip = layers.Conv2D(width, 1, name=f"{name}_skip")(x)
    h = layers.GroupNormalization(_groups(x.shape[-1], groups), name=f"{name}_norm1")(x)
    h = layers.Activation("swish")(h)
    h = layers.Conv2D(width, 3, padding="same", name=f"{name}_conv1")(h)
    e = layers.Activation("swish")(emb)
    e = layers.Dense(width, name=f"{name}_emb")(e)
    h = layers.Add()([h, layers.Reshape((1, 1, width))(e)])
    h = layers.GroupNormalization(_groups(width, groups), name=f"{name}_norm2")(h)
    h = layers.Activation("swish")(h)
    h = layers.Conv2D(width, 3, padding="same", name=f"{name}_conv2")(h)
    return layers.Add(name=f"{name}_out")([skip, h])


def _attention_block(x, groups, num_heads, name):
    height, width, channels = x.shape[1:]
    h = layers.GroupNormalization(_groups(channels, groups), name=f"{name}_norm")(x)
    h = layers.Reshape((height * width, channels))(h)
    h = layers.MultiHeadAttention(
        num_heads, max(channels // num_heads, 1), name=f"{name}_mha"
    )(h, h)
    h = layers.Reshape((height, width, channels))(h)
    return layers.Add(name=f"{name}_out")([x, h])


def conditioning(features, embedding_dim, num_classes=None):
    """A denoiser's `timesteps` (and `labels`) inputs and their embedding.

    Timesteps get sinusoidal features and a two-layer MLP; a conditional
    network adds a learned embedding of its label (`num_classes` + 1
    entries: label `num_classes` is the "no label" class).

    Returns:
        `([timesteps] or [timesteps, labels], embedding (b, embedding_dim))`.
    """
    timesteps = keras.Input((), dtype="int32", name="timesteps")
    inputs = [timesteps]
    emb = SinusoidalEmbedding(features, name="time_features")(timesteps)
    emb = layers.Dense(embedding_dim, activation="swish", name="time_mlp1")(emb)
    emb = layers.Dense(embedding_dim, name="time_mlp2")(emb)
    if num_classes is not None:
        labels = keras.Input((), dtype="int32", name="labels")
        inputs.append(labels)
        label_emb = layers.Embedding(num_classes + 1, embedding_dim,
                                     name="label_embedding")(labels)
        emb = layers.Add(name="conditioning")([emb, label_emb])
    return inputs, emb


def unet(image_shape, filters=(32, 64), blocks_per_level=1, num_classes=None,
         attention=True, embedding_dim=None, groups=8, num_heads=1,
         name="unet"):
    """A U-Net predicting noise (or v, or x0) from `[images, timesteps(, labels)]`.

    One resolution level per entry of `filters` (halving the size between
    levels), `blocks_per_level` residual blocks (GroupNorm, swish, conv, plus
    the time embedding) per level on the way down and up, and a middle of
    residual block, self-attention, residual block at the lowest resolution
    (also attention after the lowest level's blocks when `attention`).

    Args:
        image_shape: `(height, width, channels)`; height and width divisible
            by `2 ** (len(filters) - 1)`.
        filters: channels per level.
        blocks_per_level: residual blocks per level.
        num_classes: number of classes for a class-conditional U-Net, else
            `None`. Label `num_classes` is the "no label" class that
            classifier-free guidance trains with label dropout.
        attention: self-attention at the lowest resolution.
        embedding_dim: size of the time (and label) embedding; default
            `4 * filters[0]`.
        groups: GroupNorm groups (reduced to divide the channels).
        num_heads: attention heads.

    Returns:
        A functional `keras.Model` with inputs `images` float `[b, h, w, c]`,
        `timesteps` int32 `[b]` and, when conditional, `labels` int32 `[b]`;
        output shaped like `images`.

    Example:

    ```python
    denoiser = unet((16, 16, 1), filters=(32, 64), num_classes=10)
    eps = denoiser([noisy_images, timesteps, labels])
    ```
    """
    levels = len(filters)
    factor = 2 ** (levels - 1)
    height, width_px, channels = image_shape
    if height % factor or width_px % factor:
        raise ValueError(
            f"image_shape {tuple(image_shape)}: height and width must be divisible "
            f"by {factor} (2 ** (len(filters) - 1), filters={tuple(filters)})"
        )
    embedding_dim = embedding_dim or 4 * filters[0]

    images = keras.Input(tuple(image_shape), name="images")
    conditions, emb = conditioning(filters[0], embedding_dim, num_classes)
    inputs = [images, *conditions]

    x = layers.Conv2D(filters[0], 3, padding="same", name="stem")(images)
    skips = []
    for level, w in enumerate(filters):
        for b in range(blocks_per_level):
            x = _res_block(x, emb, w, groups, f"down{level}_{b}")
            if attention and level == levels - 1:
                x = _attention_block(x, groups, num_heads, f"down{level}_{b}_attn")
            skips.append(x)
        if level < levels - 1:
            x = layers.Conv2D(w, 3, strides=2, padding="same",
                              name=f"down{level}_pool")(x)

    x = _res_block(x, emb, filters[-1], groups, "mid1")
    if attention:
        x = _attention_block(x, groups, num_heads, "mid_attn")
    x = _res_block(x, emb, filters[-1], groups, "mid2")

    for level in reversed(range(levels)):
        w = filters[level]
        for b in range(blocks_per_level):
            x = layers.Concatenate()([x, skips.pop()])
            x = _res_block(x, emb, w, groups, f"up{level}_{b}")
            if attention and level == levels - 1:
                x = _attention_block(x, groups, num_heads, f"up{level}_{b}_attn")
        if level > 0:
            x = layers.UpSampling2D(2, name=f"up{level}_upsample")(x)
            x = layers.Conv2D(filters[level - 1], 3, padding="same",
                              name=f"up{level}_conv")(x)

    x = layers.GroupNormalization(_groups(filters[0], groups), name="out_norm")(x)
    x = layers.Activation("swish")(x)
    outputs = layers.Conv2D(channels, 3, padding="same", kernel_initializer="zeros",
                            name="out")(x)
    return keras.Model(inputs, outputs, name=name)
