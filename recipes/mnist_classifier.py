"""Digit classifier on 28x28 MNIST from IDX files (`--set data=DIR`): the
judge of MNIST samples (`kgen evaluate --classifier runs/mnist_classifier/best.keras`)."""

from kgen.recipes.digits_classifier import CONFIG as DIGITS_CLASSIFIER
from kgen.recipes.digits_classifier import EXPORT  # noqa: F401
from kgen.recipes.digits_classifier import build  # noqa: F401  (the classifiers' one build)

CONFIG = dict(
    DIGITS_CLASSIFIER,
    data=None,                 # a directory holding *-images-idx3-ubyte[.gz]
    filters=(32, 64),          # 28x28 -> 14x14 -> 7x7
    epochs=12,                 # MNIST's t10k split: 9,000 train, 1,000 validate
)
