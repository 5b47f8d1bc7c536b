"""WGAN-GP on MNIST from IDX files (`--set data=DIR`): Wasserstein critic
with gradient penalty, 5 critic steps per generator step."""

from kgen.recipes.dcgan_mnist import CONFIG as DCGAN_MNIST
from kgen.recipes.dcgan_digits import build  # noqa: F401  (the GAN recipes' one build)

CONFIG = dict(
    DCGAN_MNIST,
    loss="wasserstein",
    gradient_penalty_weight=10.0,
    d_steps=5,                 # critic updates per generator update
    epochs=10,
    learning_rate=1e-4,
    beta_2=0.9,
)
