"""Character and byte tokenizers whose vocabulary lives in the model config.

Both map text to int ids in plain Python/NumPy for training and in-process
generation; the exported graph re-implements the same mapping with core
`tf.strings` ops (`kgen/export/autoregressive.py`), so TF Serving needs no
tf-text kernels. (keras-hub's `UnicodeCodepointTokenizer` and
`ByteTokenizer` are built on tf-text, which TF Serving does not register.)
"""

import numpy as np

from kgen.api import kgen_export


class Tokenizer:
    """What every kgen tokenizer provides.

    `encode(text)` -> int32 ids, `decode(ids)` -> text, `vocabulary_size`,
    and `get_config()` so the tokenizer (with its vocabulary) is saved inside
    the model's `.keras` file.
    """

    kind = None

    @property
    def vocabulary_size(self):
        raise NotImplementedError

    def encode(self, text):
        raise NotImplementedError

    def decode(self, ids):
        raise NotImplementedError

    def token_id(self, token):
        """The id of a one-token string (e.g. a stop token `"\\n"`)."""
        ids = self.encode(token)
        if len(ids) != 1:
            raise ValueError(f"{token!r} is {len(ids)} tokens, expected exactly one")
        return int(ids[0])

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@kgen_export("kgen.data.CharTokenizer")
class CharTokenizer(Tokenizer):
    """One token per Unicode code point, over a fixed vocabulary.

    The vocabulary is kept sorted by code point, so token id = rank of the
    code point; the exported graph maps a prompt with a sorted-table search.

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

    def __init__(self, vocabulary):
        chars = sorted(set(vocabulary))
        if not chars:
            raise ValueError("vocabulary: must hold at least one character")
        self.vocabulary = "".join(chars)
        self._index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text):
        """A tokenizer over the distinct characters of `text`."""
        return cls(set(text))

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    def encode(self, text):
        try:
            return np.fromiter((self._index[c] for c in text), dtype="int32",
                               count=len(text))
        except KeyError as e:
            raise ValueError(
                f"text contains {e.args[0]!r}, which is not in the tokenizer's "
                f"{self.vocabulary_size}-character vocabulary"
            ) from None

    def decode(self, ids):
        return "".join(self.vocabulary[int(i)] for i in np.asarray(ids).reshape(-1))

    def get_config(self):
        return {"vocabulary": self.vocabulary}


@kgen_export("kgen.data.ByteTokenizer")
class ByteTokenizer(Tokenizer):
    """One token per UTF-8 byte: 256 ids, any text, no vocabulary to learn.

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

    def encode(self, text):
        return np.frombuffer(text.encode("utf-8"), dtype="uint8").astype("int32")

    def decode(self, ids):
        data = bytes(int(i) for i in np.asarray(ids).reshape(-1))
        return data.decode("utf-8", "replace")


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
