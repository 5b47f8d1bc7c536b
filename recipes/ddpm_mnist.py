"""Class-conditional DDPM on 28x28 MNIST from IDX files: `--set data=DIR`."""

# The model and its sample grids are ddpm_digits'; only the data and sizes differ.
from kgen.recipes.ddpm_digits import CONFIG as DDPM_CONFIG
from kgen.recipes.ddpm_digits import build  # noqa: F401
from kgen.recipes.ddpm_digits import sample_kwargs  # noqa: F401
from kgen.recipes.ddpm_digits import val_kid_kwargs  # noqa: F401

CONFIG = dict(
    DDPM_CONFIG,
    data=None,                 # a directory holding *-images-idx3-ubyte[.gz]
    filters=(32, 64, 128),     # U-Net levels: 28x28 -> 14x14 -> 7x7 (attention at 7x7)
    ema_decay=0.999,
    epochs=28,                 # MNIST's t10k split: 9,000 train, 1,000 validate
    # "auto": bfloat16 where the device computes it natively (docs/precision.md)
    precision="auto",
    min_snr_gamma=5.0,         # Min-SNR-gamma loss weights: faster to class-typical digits
    guidance_scale=3.0,
)
