"""DCGAN on MNIST from IDX files (`--set data=DIR`), non-saturating loss."""

import keras

from kgen import data, models, networks

CONFIG = dict(
    data=None,                 # a directory holding *-images-idx3-ubyte[.gz]
    latent_dim=64,
    g_filters=(64, 32),        # 7x7 -> 14x14 -> 28x28
    d_filters=(32, 64),
    loss="non_saturating",
    ema_decay=0.995,           # sample and export from an EMA of the generator
    epochs=15,
    steps_per_epoch=None,
    batch_size=64,
    learning_rate=2e-4,
    beta_1=0.5,
    jit_compile=None,          # None: XLA on JAX only, fastest on CPU (bench/gan.py)
    validation_fraction=0.1,   # MNIST's t10k split: 9,000 train
    seed=0,
)


def build(config):
    ds = data.load_image_data(
        config["data"],
        batch_size=config["batch_size"],
        validation_fraction=config["validation_fraction"],
        repeat=config["steps_per_epoch"] is not None,
        seed=config["seed"],
    )
    model = models.GAN(
        networks.dcgan_generator(config["latent_dim"], ds.image_shape, config["g_filters"]),
        networks.dcgan_discriminator(ds.image_shape, config["d_filters"]),
        loss=config["loss"],
        ema_decay=config["ema_decay"],
        seed=config["seed"],
    )
    adam = lambda: keras.optimizers.Adam(config["learning_rate"], beta_1=config["beta_1"])  # noqa: E731
    model.compile(g_optimizer=adam(), d_optimizer=adam(), jit_compile=config["jit_compile"])
    return model, ds
