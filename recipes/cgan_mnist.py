"""Class-conditional DCGAN on MNIST from IDX files (`--set data=DIR`):
ask for a digit, get that digit."""

from kgen.recipes.dcgan_mnist import CONFIG as DCGAN_MNIST
from kgen.recipes.dcgan_digits import build  # noqa: F401  (the GAN recipes' one build)

CONFIG = dict(DCGAN_MNIST, conditional=True)
