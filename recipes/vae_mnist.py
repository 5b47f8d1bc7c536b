"""VAE on MNIST from IDX files: `--set data=DIR` (train or t10k split)."""

from kgen.recipes.vae_digits import CONFIG as VAE_CONFIG
from kgen.recipes.vae_digits import build  # noqa: F401  (the VAE recipes' one build)

CONFIG = dict(
    VAE_CONFIG,
    data=None,                 # a directory holding *-images-idx3-ubyte[.gz]
    latent_dim=16,
    filters=(32, 64),          # 28x28 -> 14x14 -> 7x7
    epochs=10,
    batch_size=64,             # MNIST's t10k split: 9,000 train, 1,000 validate
)
