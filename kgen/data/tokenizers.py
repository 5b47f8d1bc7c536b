"""Character and byte tokenizers: Keras preprocessing layers over core
`tf.strings` ops, saved with the model (vocabulary included).

One implementation serves the text datasets, in-process generation and the
exported graph: `tokenize()` (the layer's `call`) maps strings to ragged
int32 ids and `detokenize()` maps ids back, both with core TensorFlow ops
(`UnicodeDecode`, a sorted-table `searchsorted` lookup, `StringSplit`/
`DecodeRaw`, `UnsortedSegmentJoin`), so TF Serving needs no tf-text kernels.
(keras-hub's `UnicodeCodepointTokenizer` and `ByteTokenizer` are built on
tf-text, which TF Serving does not register.)

Keras converts a layer's inputs to the backend's tensors when it is called,
which strings are not on JAX and PyTorch, so kgen calls `tokenize()` and
`detokenize()` directly: the same on every backend, in eager code, in
`tf.data` and in an exported `tf.function`.
"""

import numpy as np

import keras

from kgen.api import kgen_export

# Marks bytes that are not UTF-8 when decoding: a surrogate code point,
# which valid UTF-8 never encodes.
_INVALID = 0xD800


class Tokenizer(keras.layers.Layer):
    """What every kgen tokenizer provides.

    `tokenize(strings)` -> ragged int32 ids `(batch, None)` (a 1-D tensor for
    a scalar string), `detokenize(ids, lengths)` -> strings,
    `vocabulary_size`, and in Python `encode(text)` / `decode(ids)` /
    `token_id(token)`. Bad input fails with InvalidArgumentError in the graph
    and ValueError in Python, naming the input (`name=`).
    """

    kind = None

    def __init__(self, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.built = True  # no weights

    @property
    def vocabulary_size(self):
        raise NotImplementedError

    def call(self, inputs):
        return self.tokenize(inputs)

    def tokenize(self, strings, name="text"):
        raise NotImplementedError

    def pieces(self):
        """The string of each token id, as a `tf.string` constant."""
        raise NotImplementedError

    def detokenize(self, ids, lengths=None):
        """Ids `(batch, n)` (valid up to `lengths`) or ragged -> strings `(batch,)`."""
        import tensorflow as tf

        if lengths is not None:
            ids = tf.RaggedTensor.from_tensor(ids, lengths=lengths)
        return tf.strings.reduce_join(tf.gather(self.pieces(), ids), axis=-1)

    # --- Python conveniences (eager) ---------------------------------------

    def check(self, text, name="text"):
        """A ValueError naming `name` if `text` cannot be tokenized."""

    def encode(self, text, name="text"):
        """One string -> int32 NumPy ids."""
        self.check(text, name)
        return self.tokenize(text, name=name).numpy().astype("int32")

    def decode(self, ids):
        """Int ids -> one string."""
        import tensorflow as tf

        ids = tf.constant(np.asarray(ids, "int32").reshape(1, -1))
        return self.detokenize(ids)[0].numpy().decode("utf-8", "replace")

    def token_id(self, token, name="stop_token"):
        """The id of a one-token string (e.g. a stop token `"\\n"`)."""
        ids = self.encode(token, name=name)
        if len(ids) != 1:
            raise ValueError(f"{name}={token!r} is {len(ids)} tokens, expected exactly one")
        return int(ids[0])

    def compute_output_spec(self, inputs):
        return keras.KerasTensor((None,), dtype="int32")


@kgen_export("kgen.data.CharTokenizer")
class CharTokenizer(Tokenizer):
    """One token per Unicode code point, over a fixed vocabulary.

    The vocabulary is kept sorted by code point, so token id = rank of the
    code point, and `tokenize()` maps text with a sorted-table search.

    Args:
        vocabulary: a string (or iterable) of the distinct characters.

    Example:

    ```python
    tokenizer = CharTokenizer.from_text(open("input.txt").read())
    ids = tokenizer.encode("ROMEO:")
    assert tokenizer.decode(ids) == "ROMEO:"
    ```
    """

    kind = "char"

    def __init__(self, vocabulary, **kwargs):
        super().__init__(**kwargs)
        chars = sorted(set(vocabulary))
        if not chars:
            raise ValueError("vocabulary: must hold at least one character")
        self.vocabulary = "".join(chars)

    @classmethod
    def from_text(cls, text):
        """A tokenizer over the distinct characters of `text`."""
        return cls(set(text))

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    def tokenize(self, strings, name="text"):
        """Strings -> ids; InvalidArgumentError naming `name` for text that
        is not UTF-8 or holds characters outside the vocabulary."""
        import tensorflow as tf

        code_points = tf.strings.unicode_decode(
            strings, "UTF-8", errors="replace", replacement_char=_INVALID)
        flat = code_points.flat_values if isinstance(code_points, tf.RaggedTensor) \
            else code_points
        table = tf.constant([ord(c) for c in self.vocabulary], tf.int32)
        ids = tf.minimum(tf.searchsorted(table, flat), tf.size(table) - 1)
        checks = [
            tf.debugging.assert_equal(
                tf.reduce_any(tf.equal(flat, _INVALID)), False,
                message=f"{name} is not valid UTF-8"),
            tf.debugging.assert_equal(
                tf.reduce_all(tf.equal(tf.gather(table, ids), flat)), True,
                message=f"{name} contains characters outside the vocabulary "
                        f"({self.vocabulary_size} characters)"),
        ]
        with tf.control_dependencies(checks):
            ids = tf.identity(ids)
        if isinstance(code_points, tf.RaggedTensor):
            return code_points.with_flat_values(ids)
        return ids

    def pieces(self):
        import tensorflow as tf

        return tf.constant([c.encode("utf-8") for c in self.vocabulary])

    def check(self, text, name="text"):
        unknown = sorted(set(text) - set(self.vocabulary))
        if unknown:
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise ValueError(
                f"{name}={shown!r} contains {''.join(unknown)[:20]!r}, not in the "
                f"tokenizer's {self.vocabulary_size}-character vocabulary"
            )

    def get_config(self):
        return {**super().get_config(), "vocabulary": self.vocabulary}


@kgen_export("kgen.data.ByteTokenizer")
class ByteTokenizer(Tokenizer):
    """One token per byte (of UTF-8 text): 256 ids, any text, no vocabulary.

    Example:

    ```python
    tokenizer = ByteTokenizer()
    tokenizer.encode("é")  # array([195, 169], dtype=int32)
    ```
    """

    kind = "byte"

    @property
    def vocabulary_size(self):
        return 256

    def tokenize(self, strings, name="text"):
        import tensorflow as tf

        pieces = tf.strings.bytes_split(strings)
        flat = pieces.flat_values if isinstance(pieces, tf.RaggedTensor) else pieces
        ids = tf.cast(tf.reshape(tf.io.decode_raw(flat, tf.uint8), [-1]), tf.int32)
        if isinstance(pieces, tf.RaggedTensor):
            return pieces.with_flat_values(ids)
        return ids

    def pieces(self):
        import tensorflow as tf

        return tf.constant([bytes([i]) for i in range(256)])


TOKENIZERS = {"char": CharTokenizer, "byte": ByteTokenizer}


def make_tokenizer(kind, text=None):
    """`"char"` (vocabulary from `text`) or `"byte"`."""
    if kind not in TOKENIZERS:
        raise ValueError(f"tokenizer={kind!r}: expected one of {tuple(TOKENIZERS)}")
    if kind == "char":
        if text is None:
            raise ValueError("a char tokenizer needs the text to take its vocabulary from")
        return CharTokenizer.from_text(text)
    return ByteTokenizer()
