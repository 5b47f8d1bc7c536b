"""DCGAN on scikit-learn's 8x8 digits: embedded data, no argument needed."""

import keras

from kgen import data, models, networks

CONFIG = dict(
    data="digits",             # embedded in scikit-learn: no download
    latent_dim=32,
    g_filters=(64, 32),        # 2x2 -> 4x4 -> 8x8
    d_filters=(32, 64),
    loss="non_saturating",
    ema_decay=0.99,
    epochs=60,
    steps_per_epoch=None,
    batch_size=32,
    learning_rate=2e-4,
    beta_1=0.5,
    jit_compile=None,          # None: XLA on JAX only, fastest on CPU (bench/gan.py)
    validation_fraction=0.1,
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
