"""Class-conditional DDPM on scikit-learn's 8x8 digits: embedded data, no argument needed.

This file holds the diffusion recipes' one `build`; `ddpm_mnist` is settings for it.
"""

import keras

from kgen import data, models, networks, schedulers

CONFIG = dict(
    data="digits",             # embedded in scikit-learn: no download
    filters=(32, 64),          # U-Net levels: 8x8 -> 4x4 (attention at 4x4)
    blocks_per_level=1,
    num_train_timesteps=1000,
    beta_schedule="cosine",
    prediction_type="epsilon",
    min_snr_gamma=None,        # None: every timestep alike; 5: Min-SNR-gamma loss weights
    label_dropout=0.1,         # classifier-free guidance trains the "no label" class
    ema_decay=0.995,           # sample, export and validate with an EMA of the denoiser
    sampler="dpm_solver",      # generate() and the export's default
    sample_steps=20,           # per-epoch sample grids
    guidance_scale=2.0,        # the samples' guidance: per-epoch grids, val_kid, generate() and the export default
    epochs=100,
    steps_per_epoch=None,      # None: one pass over the training split
    batch_size=64,
    learning_rate=1e-3,
    validation_fraction=0.1,
    val_kid=None,              # a classifier .keras (e.g. runs/digits_classifier/best.keras):
                               # log val_kid each epoch and keep the epoch it ranks best
    val_kid_n=100,             # samples (and real images) per val_kid
    val_kid_steps=10,          # solver steps of val_kid's samples (cheap, guided)
    seed=0,
)


def build(config):
    ds = data.load_image_data(
        config["data"],
        batch_size=config["batch_size"],
        validation_fraction=config["validation_fraction"],
        with_labels=True,
        repeat=config["steps_per_epoch"] is not None,  # steps_per_epoch: an endless stream
        seed=config["seed"],
    )
    scheduler = schedulers.DDPMScheduler(
        config["num_train_timesteps"], config["beta_schedule"],
        prediction_type=config["prediction_type"],
    )
    model = models.DiffusionModel(
        networks.unet(ds.image_shape, config["filters"], config["blocks_per_level"],
                      num_classes=ds.num_classes),
        scheduler, num_classes=ds.num_classes, label_dropout=config["label_dropout"],
        ema_decay=config["ema_decay"], sampler=config["sampler"],
        guidance_scale=config["guidance_scale"], min_snr_gamma=config["min_snr_gamma"],
        seed=config["seed"],
    )
    model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]))
    return model, ds


def sample_kwargs(config):
    """Per-epoch grids: guided, a few solver steps (SampleLogger asks for
    the classes in turn)."""
    return dict(num_steps=config["sample_steps"],
                guidance_scale=config["guidance_scale"])


def val_kid_kwargs(config):
    """What ValidationKID passes to `model.generate()`: few solver steps."""
    return dict(num_steps=config["val_kid_steps"],
                guidance_scale=config["guidance_scale"])
