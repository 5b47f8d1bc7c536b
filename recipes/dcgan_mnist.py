"""DCGAN on MNIST from IDX files (`--set data=DIR`), non-saturating loss."""

from kgen.recipes.dcgan_digits import CONFIG as GAN_CONFIG
from kgen.recipes.dcgan_digits import build  # noqa: F401  (the GAN recipes' one build)

CONFIG = dict(
    GAN_CONFIG,
    data=None,                 # a directory holding *-images-idx3-ubyte[.gz]
    latent_dim=64,
    filters=(64, 32),          # 7x7 -> 14x14 -> 28x28
    ema_decay=0.995,
    epochs=15,
    batch_size=64,
)
