"""Class-conditional DDPM on 28x28 MNIST from IDX files: `--set data=DIR`."""

# The model and its sample grids are ddpm_digits'; only the data and sizes differ.
from kgen.recipes.ddpm_digits import build  # noqa: F401
from kgen.recipes.ddpm_digits import sample_kwargs  # noqa: F401

CONFIG = dict(
    data=None,                 # a directory holding *-images-idx3-ubyte[.gz]
    widths=(32, 64, 128),      # U-Net levels: 28x28 -> 14x14 -> 7x7 (attention at 7x7)
    blocks_per_level=1,
    num_train_timesteps=1000,
    beta_schedule="cosine",
    prediction_type="epsilon",
    label_dropout=0.1,         # classifier-free guidance trains the "no label" class
    ema_decay=0.999,
    sampler="dpm_solver",      # generate() and the export's default
    sample_steps=20,           # per-epoch sample grids
    guidance_scale=2.0,
    epochs=20,
    steps_per_epoch=None,      # None: one pass over the training split
    batch_size=64,
    learning_rate=1e-3,
    validation_fraction=0.1,   # MNIST's t10k split: 9,000 train, 1,000 validate
    seed=0,
)

