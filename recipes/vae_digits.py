"""VAE on scikit-learn's 8x8 digits: embedded data, no argument needed.

This file holds the VAE recipes' one `build`; `vae_mnist` is settings for it.
"""

import keras

from kgen import data, models, networks

CONFIG = dict(
    data="digits",             # embedded in scikit-learn: no download
    latent_dim=8,
    filters=(32, 64),          # one stride-2 conv per entry: 8x8 -> 4x4 -> 2x2
    hidden_dim=256,
    likelihood="bernoulli",
    beta=1.0,
    epochs=120,
    steps_per_epoch=None,      # None: one pass over the training split
    batch_size=32,
    learning_rate=1e-3,
    validation_fraction=0.1,
    val_kid=None,              # a classifier .keras (e.g. runs/digits_classifier/best.keras):
                               # log val_kid each epoch and keep the epoch it ranks best
    val_kid_n=100,             # samples (and real images) per val_kid
    seed=0,
)


def build(config):
    ds = data.load_image_data(
        config["data"],
        batch_size=config["batch_size"],
        validation_fraction=config["validation_fraction"],
        repeat=config["steps_per_epoch"] is not None,  # steps_per_epoch: an endless stream
        seed=config["seed"],
    )
    encoder, decoder = networks.conv_vae_networks(
        ds.image_shape, config["latent_dim"], config["filters"], config["hidden_dim"]
    )
    model = models.VAE(
        encoder, decoder,
        likelihood=config["likelihood"], beta=config["beta"], seed=config["seed"],
    )
    model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]))
    return model, ds
