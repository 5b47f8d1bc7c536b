"""VAE on MNIST from IDX files: `--set data=DIR` (train or t10k split)."""

import keras

from kgen import data, models, networks

CONFIG = dict(
    data=None,                 # a directory holding *-images-idx3-ubyte[.gz]
    latent_dim=16,
    filters=(32, 64),          # 28x28 -> 14x14 -> 7x7
    hidden_dim=256,
    likelihood="bernoulli",
    beta=1.0,
    epochs=10,
    steps_per_epoch=None,
    batch_size=64,
    learning_rate=1e-3,
    validation_fraction=0.1,   # MNIST's t10k split: 9,000 train, 1,000 validate
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
