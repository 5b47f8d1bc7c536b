"""Text data: a file (or an embedded corpus) -> token ids -> random windows.

nanoGPT's way of feeding a character model: the text is split by character
position (first `1 - validation_fraction` for training, the rest for
validation), and every step draws `batch_size` random windows of
`context + 1` tokens; inputs are the first `context` tokens, targets the
last `context` (the next token at every position).
"""

import pathlib
from dataclasses import dataclass

import numpy as np

from kgen.data.errors import DataError
from kgen.data.tokenizers import make_tokenizer

EMBEDDED = ("pydoc",)


def load_pydoc_text():
    """CPython's own help texts (`pydoc_data.topics.topics`), about 0.5 MB."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n"


def load_text(source):
    """A corpus by name (`"pydoc"`) or from a UTF-8 text file path."""
    if source == "pydoc":
        return load_pydoc_text()
    path = pathlib.Path(source)
    if not path.is_file():
        raise DataError(
            f"{path}: no such text file (or an embedded corpus: {', '.join(EMBEDDED)})"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 4]!r})"
        ) from None
    if not text:
        raise DataError(f"{path}: the file is empty")
    return text


@dataclass
class TextData:
    """The pipelines and what a model needs to know about them."""

    train: object
    validation: object
    tokenizer: object
    context: int
    train_tokens: int
    validation_tokens: int


def split_text(text, validation_fraction=0.1):
    """First part for training, last part for validation, by character."""
    n_train = int(len(text) * (1.0 - validation_fraction))
    return text[:n_train], text[n_train:]


def random_windows(ids, context, batch_size, seed, take=None):
    """An endless (or `take`-batch) tf.data of `(inputs, targets)` windows.

    Batch `step` is drawn with the stateless seed `(seed, step)`, so the
    stream is the same on every run and every backend.
    """
    import tensorflow as tf

    ids = np.asarray(ids, dtype="int32")
    if len(ids) < context + 2:
        raise DataError(
            f"the text has {len(ids)} tokens, too few for windows of "
            f"context={context} (+1 target)"
        )
    table = tf.constant(ids)
    max_start = len(ids) - context - 1
    offsets = tf.range(context + 1)

    def window(step):
        starts = tf.random.stateless_uniform(
            [batch_size], seed=tf.stack([tf.cast(seed, tf.int64), step]),
            minval=0, maxval=max_start + 1, dtype=tf.int64,
        )
        rows = tf.gather(table, tf.cast(starts[:, None], tf.int32) + offsets[None, :])
        return rows[:, :-1], rows[:, 1:]

    ds = tf.data.Dataset.counter()
    if take is not None:
        ds = ds.take(take)
    return ds.map(window, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def text_datasets(text, tokenizer="char", context=64, batch_size=12,
                  validation_fraction=0.1, validation_batches=50, seed=0):
    """Train and validation pipelines of random token windows.

    Args:
        text: the whole corpus as a string.
        tokenizer: `"char"`, `"byte"` or a tokenizer object. A char
            vocabulary is taken from the whole text (train and validation).
        context: tokens per window (the model's sequence length).
        batch_size: windows per batch.
        validation_fraction: the last part of the text held out.
        validation_batches: fixed batches (the same every epoch) that
            `fit()` evaluates; `0` for no validation.
        seed: seed of the window positions.

    Returns:
        `TextData`; `train` is endless, so `fit()` needs `steps_per_epoch`.

    Example:

    ```python
    data = text_datasets(load_text("input.txt"), context=64, batch_size=12)
    model.fit(data.train, validation_data=data.validation, steps_per_epoch=200)
    ```
    """
    for name, value in (("context", context), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{name}={value!r}: must be an int >= 1")
    if isinstance(tokenizer, str):
        tokenizer = make_tokenizer(tokenizer, text)
    train_text, val_text = split_text(text, validation_fraction)
    train_ids = tokenizer.encode(train_text, name="the training text")
    train = random_windows(train_ids, context, batch_size, seed)
    validation, n_val = None, 0
    if validation_batches:
        val_ids = tokenizer.encode(val_text, name="the validation text")
        n_val = len(val_ids)
        validation = random_windows(
            val_ids, context, batch_size, seed + 1, take=validation_batches
        ).cache()
    return TextData(train, validation, tokenizer, context, len(train_ids), n_val)
