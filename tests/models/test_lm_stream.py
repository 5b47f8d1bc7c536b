"""`CausalLM.stream()`: the pieces of each row, joined, are `generate()`'s
continuation for the same seed and options, on every backend (the loop
`generate()` runs in one compiled function, run one compiled step at a
time)."""

import keras
import pytest

from kgen.data import ByteTokenizer
from kgen.data import CharTokenizer
from kgen.models import CausalLM
from kgen.models.autoregressive import _TextPieces
from kgen.networks import transformer_lm

CONTEXT = 16
PROMPTS = ["abc", "h", "a b c d ef"]  # three prompt lengths


@pytest.fixture(scope="module")
def lm():
    keras.utils.set_random_seed(3)
    tokenizer = CharTokenizer.from_text("abcdefgh \n")
    network = transformer_lm(tokenizer.vocabulary_size, CONTEXT, num_layers=2,
                             num_heads=2, hidden_dim=16)
    return CausalLM(network, tokenizer, seed=1)


@pytest.fixture(scope="module")
def byte_lm():
    keras.utils.set_random_seed(4)
    network = transformer_lm(256, CONTEXT, num_layers=1, num_heads=1, hidden_dim=8)
    return CausalLM(network, ByteTokenizer(), seed=1)


def streamed(lm, n, **options):
    """Each row's pieces joined, and the pieces."""
    texts, pieces = [""] * n, []
    for row, text in lm.stream(n, **options):
        assert isinstance(row, int) and 0 <= row < n and text
        texts[row] += text
        pieces.append((row, text))
    return texts, pieces


def continuations(lm, n, prompts=None, prompt=None, **options):
    prompts = prompts or [prompt or lm.default_prompt] * n
    rows = lm.generate(n, prompts=prompts, **options)
    assert all(row.startswith(p) for row, p in zip(rows, prompts))
    return [row[len(p):] for row, p in zip(rows, prompts)]


@pytest.mark.parametrize("sampler", ["greedy", "temperature", "top_k", "top_p"])
def test_stream_is_generate(lm, sampler):
    """Rows of three prompt lengths, one sliding past the context."""
    options = dict(seed=7, prompts=PROMPTS, max_new_tokens=2 * CONTEXT + 3,
                   sampler=sampler, temperature=1.2, top_k=4, top_p=0.8)
    texts, pieces = streamed(lm, 3, **options)
    assert texts == continuations(lm, 3, **options)
    assert [len(t) for t in texts] == [2 * CONTEXT + 3] * 3
    # Pieces come as they are made: one character (token) each.
    assert len(pieces) == 3 * (2 * CONTEXT + 3)
    assert all(len(text) == 1 for _, text in pieces)
    assert pieces[0][0] == 1, "the shortest prompt's row starts first"


def test_stream_stops_at_the_stop_token(lm):
    options = dict(seed=0, prompt="ab", max_new_tokens=40, sampler="temperature",
                   stop_token="\n")
    texts, _ = streamed(lm, 4, **options)
    assert texts == continuations(lm, 4, **options)
    stopped = [t for t in texts if len(t) < 40]
    assert stopped, "no row sampled the stop token: the test would not see it"
    assert all(t.endswith("\n") and "\n" not in t[:-1] for t in stopped)


def test_stream_one_row_and_uncached(lm):
    options = dict(seed=2**40 + 5, prompt="h", max_new_tokens=CONTEXT + 4,
                   sampler="top_k", top_k=3, use_cache=False)
    texts, _ = streamed(lm, 1, **options)
    assert texts == continuations(lm, 1, **options)
    assert texts[0] == streamed(lm, 1, **{**options, "use_cache": True})[0][0]


def test_stream_row_i_is_seed_s_plus_i(lm):
    options = dict(prompt="a", max_new_tokens=10, sampler="temperature")
    rows, _ = streamed(lm, 3, seed=11, **options)
    assert rows[2] == streamed(lm, 1, seed=13, **options)[0][0]


def test_byte_stream_yields_whole_characters(byte_lm):
    """Multi-byte prompts and byte-level sampling (which makes both whole and
    broken UTF-8): the joined pieces are `generate()`'s text, U+FFFD
    included where the bytes are not UTF-8."""
    prompts = ["é", "日本", "x"]
    options = dict(seed=1, prompts=prompts, max_new_tokens=24, sampler="temperature")
    texts, _ = streamed(byte_lm, 3, **options)
    assert texts == continuations(byte_lm, 3, **options)


def test_text_pieces_hold_incomplete_characters():
    text = _TextPieces(2)
    data = "é日😀".encode("utf-8")  # 2 + 3 + 4 bytes
    out = [text.add(0, data[i:i + 1]) for i in range(len(data))]
    assert out == ["", "é", "", "", "日", "", "", "", "😀"]
    assert text.add(1, b"a\xe6") == "a"  # the first byte of a 3-byte character
    assert text.flush(0) == ""
    assert text.flush(1) == "\ufffd"  # cut short: as decoding the whole text
    assert b"a\xe6".decode("utf-8", "replace") == "a\ufffd"


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0), "max_new_tokens=0"),
    (dict(prompt=""), "prompt='': must not be empty"),
    (dict(stop_token="ab"), "stop_token='ab' is 2 tokens"),
    (dict(prompt="xyz"), "not in the tokenizer"),
    (dict(n=0), "n=0: must be an int >= 1"),
])
def test_bad_arguments_fail_before_the_first_piece(lm, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        lm.stream(**kwargs)  # raises here, not at the first next()
