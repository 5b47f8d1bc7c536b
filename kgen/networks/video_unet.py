"""A space-time U-Net denoiser for short video clips: factorised (2+1)D
residual blocks (a spatial convolution per frame, then a temporal one
across frames) and temporal self-attention at the lowest resolution."""

import keras
from keras import layers
from keras import ops

from kgen.api import kgen_export
from kgen.networks.unet import conditioning
from kgen.networks.unet import _groups


@kgen_export("kgen.networks.TemporalAttention")
class TemporalAttention(layers.Layer):
    """Self-attention across frames at each pixel, with a residual.

    `(batch, frames, h, w, channels)` is normalised (GroupNorm), given a
    learned embedding of each frame's position, reshaped to
    `(batch * h * w, frames, channels)` so that every pixel attends over its
    own frames, and added back to the input.

    Args:
        num_heads: attention heads.
        groups: GroupNorm groups (reduced to divide the channels).

    Example:

    ```python
    y = TemporalAttention(num_heads=4)(x)  # x, y: (b, frames, h, w, c)
    ```
    """

    def __init__(self, num_heads=4, groups=8, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.groups = int(groups)

    def build(self, input_shape):
        frames, channels = int(input_shape[1]), int(input_shape[-1])
        self.norm = layers.GroupNormalization(_groups(channels, self.groups),
                                              dtype=self.dtype_policy, name="norm")
        self.norm.build(input_shape)
        self.position = self.add_weight(
            shape=(frames, channels), name="position",
            initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.attention = layers.MultiHeadAttention(
            self.num_heads, max(channels // self.num_heads, 1),
            dtype=self.dtype_policy, name="mha")
        self.attention.build((None, frames, channels), (None, frames, channels))

    def call(self, x):
        _, frames, height, width, channels = x.shape
        h = self.norm(x)
        # (b, F, h, w, C) -> (b, h, w, F, C) -> (b*h*w, F, C)
        h = ops.reshape(ops.transpose(h, (0, 2, 3, 1, 4)), (-1, frames, channels))
        h = h + ops.cast(self.position, h.dtype)[None]
        h = self.attention(h, h)
        h = ops.transpose(ops.reshape(h, (-1, height, width, frames, channels)),
                          (0, 3, 1, 2, 4))
        return x + ops.cast(h, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads,
                "groups": self.groups}


def _conv21(x, width, name):
    """A spatial (1, 3, 3) convolution per frame, then a temporal (3, 1, 1)
    one across frames."""
    x = layers.Conv3D(width, (1, 3, 3), padding="same", name=f"{name}_space")(x)
    return layers.Conv3D(width, (3, 1, 1), padding="same", name=f"{name}_time")(x)


def _res_block(x, emb, width, groups, name):
    skip = x
    if x.shape[-1] != width:
        skip = layers.Conv3D(width, 1, name=f"{name}_skip")(x)
    h = layers.GroupNormalization(_groups(x.shape[-1], groups), name=f"{name}_norm1")(x)
    h = layers.Activation("swish")(h)
    h = _conv21(h, width, f"{name}_conv1")
    e = layers.Activation("swish")(emb)
    e = layers.Dense(width, name=f"{name}_emb")(e)
    h = layers.Add()([h, layers.Reshape((1, 1, 1, width))(e)])
    h = layers.GroupNormalization(_groups(width, groups), name=f"{name}_norm2")(h)
    h = layers.Activation("swish")(h)
    h = _conv21(h, width, f"{name}_conv2")
    return layers.Add(name=f"{name}_out")([skip, h])


def video_unet(video_shape, filters=(32, 64), blocks_per_level=1, num_classes=None,
               context=True, temporal_attention_levels=(-1,), num_heads=4, groups=8,
               embedding_dim=None, name="video_unet"):
    """A space-time U-Net predicting noise (or v, or x0) for a clip from
    `[clips, timesteps(, labels)]`.

    One resolution level per entry of `filters` (halving height and width
    between levels; frames are never pooled), `blocks_per_level`
    factorised (2+1)D residual blocks per level on the way down and up
    (GroupNorm, swish, a per-frame (1, 3, 3) convolution and a (3, 1, 1)
    convolution across frames, plus the time and label embedding), a middle
    of two such blocks, and temporal self-attention (`TemporalAttention`)
    after the blocks of the levels in `temporal_attention_levels` and in the
    middle when the lowest level is among them.

    Args:
        video_shape: `(frames, height, width, channels)` of the clips the
            network predicts; height and width divisible by
            `2 ** (len(filters) - 1)`.
        filters: channels per level.
        blocks_per_level: residual blocks per level.
        num_classes: number of classes for a class-conditional network, else
            `None`. Label `num_classes` is the "no label" class.
        context: the input carries the known frames beside the noisy clip
            (`kgen.models.VideoDiffusionModel`): `2 * channels + 1` input
            channels (noisy clip, known frames times the mask, the mask).
        temporal_attention_levels: indices (negative from the end) into
            `filters` of the levels with temporal attention.
        num_heads: attention heads.
        groups: GroupNorm groups (reduced to divide the channels).
        embedding_dim: size of the time (and label) embedding; default
            `4 * filters[0]`.

    Returns:
        A functional `keras.Model` with inputs `clips` float `[b, frames, h,
        w, c_in]`, `timesteps` int32 `[b]` and, when conditional, `labels`
        int32 `[b]`; output float32 `[b, frames, h, w, channels]`.

    Example:

    ```python
    denoiser = video_unet((10, 32, 32, 1), filters=(32, 64), num_classes=10)
    eps = denoiser([model_inputs, timesteps, labels])
    ```
    """
    levels = len(filters)
    factor = 2 ** (levels - 1)
    frames, height, width_px, channels = (int(d) for d in video_shape)
    if height % factor or width_px % factor:
        raise ValueError(
            f"video_shape {tuple(video_shape)}: height and width must be divisible "
            f"by {factor} (2 ** (len(filters) - 1), filters={tuple(filters)})")
    attention_levels = set()
    for level in temporal_attention_levels:
        if not -levels <= int(level) < levels:
            raise ValueError(
                f"temporal_attention_levels={tuple(temporal_attention_levels)}: "
                f"level {level} is not one of the {levels} levels of filters")
        attention_levels.add(int(level) % levels)
    embedding_dim = embedding_dim or 4 * filters[0]
    c_in = 2 * channels + 1 if context else channels

    clips = keras.Input((frames, height, width_px, c_in), name="clips")
    conditions, emb = conditioning(filters[0], embedding_dim, num_classes)
    inputs = [clips, *conditions]

    def attend(x, level, block_name):
        if level in attention_levels:
            x = TemporalAttention(num_heads, groups, name=f"{block_name}_tattn")(x)
        return x

    x = layers.Conv3D(filters[0], (1, 3, 3), padding="same", name="stem")(clips)
    skips = []
    for level, w in enumerate(filters):
        for b in range(blocks_per_level):
            x = _res_block(x, emb, w, groups, f"down{level}_{b}")
            x = attend(x, level, f"down{level}_{b}")
            skips.append(x)
        if level < levels - 1:
            x = layers.Conv3D(w, (1, 3, 3), strides=(1, 2, 2), padding="same",
                              name=f"down{level}_pool")(x)

    x = _res_block(x, emb, filters[-1], groups, "mid1")
    x = attend(x, levels - 1, "mid")
    x = _res_block(x, emb, filters[-1], groups, "mid2")

    for level in reversed(range(levels)):
        w = filters[level]
        for b in range(blocks_per_level):
            x = layers.Concatenate()([x, skips.pop()])
            x = _res_block(x, emb, w, groups, f"up{level}_{b}")
            x = attend(x, level, f"up{level}_{b}")
        if level > 0:
            x = layers.UpSampling3D((1, 2, 2), name=f"up{level}_upsample")(x)
            x = layers.Conv3D(filters[level - 1], (1, 3, 3), padding="same",
                              name=f"up{level}_conv")(x)

    x = layers.GroupNormalization(_groups(filters[0], groups), name="out_norm")(x)
    x = layers.Activation("swish")(x)
    x = layers.Conv3D(channels, (1, 3, 3), padding="same", kernel_initializer="zeros",
                      name="out")(x)
    outputs = layers.Activation("linear", dtype="float32", name="prediction")(x)
    return keras.Model(inputs, outputs, name=name)
