"""WGAN-GP on MNIST from IDX files (`--set data=DIR`): Wasserstein critic
with gradient penalty, 5 critic steps per generator step."""

import keras

from kgen import data, models, networks

CONFIG = dict(
    data=None,                 # a directory holding *-images-idx3-ubyte[.gz]
    latent_dim=64,
    g_filters=(64, 32),        # 7x7 -> 14x14 -> 28x28
    d_filters=(32, 64),
    gradient_penalty_weight=10.0,
    d_steps=5,                 # critic updates per generator update
    ema_decay=0.995,
    epochs=10,
    steps_per_epoch=None,
    batch_size=64,
    learning_rate=1e-4,
    beta_1=0.5,
    beta_2=0.9,
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
        loss="wasserstein",
        gradient_penalty_weight=config["gradient_penalty_weight"],
        d_steps=config["d_steps"],
        ema_decay=config["ema_decay"],
        seed=config["seed"],
    )
    adam = lambda: keras.optimizers.Adam(  # noqa: E731
        config["learning_rate"], beta_1=config["beta_1"], beta_2=config["beta_2"])
    model.compile(g_optimizer=adam(), d_optimizer=adam(), jit_compile=config["jit_compile"])
    return model, ds
