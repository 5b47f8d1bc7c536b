"""Language-model metrics from next-token logits: perplexity, bits/token."""

import math

import keras
from keras import ops

from kgen.api import kgen_export


class _MeanCrossEntropy(keras.metrics.Mean):
    def update_state(self, y_true, y_pred, sample_weight=None):
        nats = keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred, from_logits=True
        )
        return super().update_state(nats, sample_weight=sample_weight)


@kgen_export("kgen.metrics.Perplexity")
class Perplexity(_MeanCrossEntropy):
    """`exp` of the mean next-token cross-entropy (logits in, ids as targets).

    Example:

    ```python
    model.compile(optimizer="adamw", loss=loss, metrics=[Perplexity()])
    ```
    """

    def __init__(self, name="perplexity", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def result(self):
        return ops.exp(super().result())


@kgen_export("kgen.metrics.BitsPerToken")
class BitsPerToken(_MeanCrossEntropy):
    """Mean next-token cross-entropy in bits (bits per character for a char
    model): nats / ln 2.

    Example:

    ```python
    model.compile(optimizer="adamw", loss=loss, metrics=[BitsPerToken()])
    ```
    """

    def __init__(self, name="bits_per_token", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def result(self):
        return super().result() / math.log(2.0)
