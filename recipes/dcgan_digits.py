"""DCGAN on scikit-learn's 8x8 digits: embedded data, no argument needed.

This file holds the GAN recipes' one `build`: `dcgan_mnist`, `wgan_gp_mnist`
and `cgan_mnist` are settings for it (their CONFIG) and nothing else.
"""

import keras

from kgen import data, models, networks

CONFIG = dict(
    data="digits",             # embedded in scikit-learn: no download
    conditional=False,         # True: class-conditional (ask for a digit)
    conditioning="projection", # how D sees the label: "projection" or "channel"
    latent_dim=32,
    filters=(64, 32),          # generator, one upsampling per entry: 2x2 -> 4x4 -> 8x8
    d_filters=(32, 64),        # discriminator, one stride-2 conv per entry
    loss="non_saturating",     # the GAN loss: non_saturating, hinge or wasserstein
    gradient_penalty_weight=0.0,
    d_steps=1,                 # discriminator updates per generator update
    ema_decay=0.99,            # sample and export from an EMA of the generator
    epochs=60,
    steps_per_epoch=None,      # None: one pass over the data
    batch_size=32,
    learning_rate=2e-4,
    beta_1=0.5,
    beta_2=0.999,
    jit_compile=None,          # None: XLA on JAX only, fastest on CPU (bench/gan.py)
    val_kid=None,              # a classifier .keras (e.g. runs/digits_classifier/best.keras):
                               # log val_kid each epoch and keep the epoch it ranks best
    val_kid_n=100,             # samples (and real images) per val_kid
    seed=0,
)


def build(config):
    # GAN losses do not rank epochs, so nothing is held out for validation.
    ds = data.load_image_data(
        config["data"],
        batch_size=config["batch_size"],
        validation_fraction=0.0,
        with_labels=config["conditional"],
        repeat=config["steps_per_epoch"] is not None,
        seed=config["seed"],
    )
    num_classes = ds.num_classes if config["conditional"] else None
    model = models.GAN(
        networks.dcgan_generator(config["latent_dim"], ds.image_shape, config["filters"],
                                 num_classes=num_classes),
        networks.dcgan_discriminator(ds.image_shape, config["d_filters"],
                                     num_classes=num_classes,
                                     conditioning=config["conditioning"]),
        num_classes=num_classes,
        loss=config["loss"],
        gradient_penalty_weight=config["gradient_penalty_weight"],
        d_steps=config["d_steps"],
        ema_decay=config["ema_decay"],
        seed=config["seed"],
    )
    adam = lambda: keras.optimizers.Adam(  # noqa: E731
        config["learning_rate"], beta_1=config["beta_1"], beta_2=config["beta_2"])
    model.compile(g_optimizer=adam(), d_optimizer=adam(), jit_compile=config["jit_compile"])
    return model, ds
