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


def text_bits_per_token(model, text, batch_size=16, context=None):
    """Test bits per token of a `kgen.models.CausalLM` over a whole text
    (bits per character with a `CharTokenizer`, per byte with a
    `ByteTokenizer`).

    The text is tokenized with the model's tokenizer and cut into
    consecutive windows of `context + 1` tokens that overlap by one, so every
    token after the first is predicted exactly once, from the tokens before
    it in its window (at most `context`). Windows run through the model in
    batches; the last, shorter window is padded and its padding weighted 0.

    Args:
        model: a `kgen.models.CausalLM` (or any model with `.tokenizer`,
            `.context` and `call(ids) -> logits`).
        text: the held-out text (a str).
        batch_size: windows per forward pass.
        context: tokens of context per window (default: the model's).

    Returns:
        `{"bits_per_token": float, "tokens": int}` (the number of tokens
        predicted).

    Example:

    ```python
    text_bits_per_token(lm, open("test.txt").read())["bits_per_token"]
    ```
    """
    import numpy as np

    if not isinstance(text, str):
        raise ValueError(f"text: expected a str, got {type(text).__name__}")
    context = int(model.context if context is None else context)
    if not 1 <= context <= model.context:
        raise ValueError(f"context={context}: must be in [1, {model.context}] "
                         "(the model's context)")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be an int >= 1")
    ids = model.tokenizer.encode(text)
    if len(ids) < 2:
        raise ValueError(f"text has {len(ids)} token(s); at least 2 are needed to "
                         "predict one")
    starts = range(0, len(ids) - 1, context)
    windows = np.zeros((len(starts), context + 1), "int32")
    weights = np.zeros((len(starts), context), "float32")
    for row, start in enumerate(starts):
        piece = ids[start:start + context + 1]
        windows[row, :len(piece)] = piece
        weights[row, :len(piece) - 1] = 1.0
    metric = BitsPerToken()
    for i in range(0, len(windows), batch_size):
        x = windows[i:i + batch_size]
        w = weights[i:i + batch_size]
        if len(x) < batch_size:  # one input shape: pad the last batch
            pad = batch_size - len(x)
            x = np.concatenate([x, np.zeros((pad, context + 1), "int32")])
            w = np.concatenate([w, np.zeros((pad, context), "float32")])
        logits = model.predict_on_batch(x[:, :-1])  # compiled once per backend
        metric.update_state(x[:, 1:], logits, sample_weight=w)
    return {"bits_per_token": float(metric.result()), "tokens": int(weights.sum())}
