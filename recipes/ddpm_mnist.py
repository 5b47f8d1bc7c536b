"""Class-conditional DDPM on 28x28 MNIST from IDX files: `--set data=DIR`."""

import keras

from kgen import data, models, networks, schedulers

CONFIG = dict(
    data=None,                 # a directory holding *-images-idx3-ubyte[.gz]
    widths=(32, 64),           # U-Net levels: 28x28 -> 14x14 (attention at 14x14)
    blocks_per_level=1,
    num_train_timesteps=1000,
    beta_schedule="cosine",
    prediction_type="epsilon",
    label_dropout=0.1,         # classifier-free guidance trains the "no label" class
    ema_momentum=0.999,
    sampler="dpm_solver",      # generate() and the export's default
    sample_steps=20,           # per-epoch sample grids
    guidance_scale=2.0,
    epochs=20,
    steps_per_epoch=None,      # None: one pass over the training split
    batch_size=64,
    learning_rate=5e-4,
    validation_fraction=0.1,   # MNIST's t10k split: 9,000 train, 1,000 validate
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
    ds.train, ds.validation = (
        d.map(lambda x, y: {"images": x, "labels": y}) for d in (ds.train, ds.validation)
    )
    scheduler = schedulers.DDPMScheduler(
        config["num_train_timesteps"], config["beta_schedule"],
        prediction_type=config["prediction_type"],
    )
    model = models.DiffusionModel(
        networks.unet(ds.image_shape, config["widths"], config["blocks_per_level"],
                      num_classes=ds.num_classes),
        scheduler, num_classes=ds.num_classes, label_dropout=config["label_dropout"],
        ema_momentum=config["ema_momentum"], sampler=config["sampler"],
        seed=config["seed"],
    )
    model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]))
    return model, ds


def sample_kwargs(config):
    """Per-epoch grids: classes 0..9 in turn, guided, a few solver steps."""
    n = config.get("sample_count", 16)
    return dict(label=[i % 10 for i in range(n)], num_steps=config["sample_steps"],
                guidance_scale=config["guidance_scale"])
