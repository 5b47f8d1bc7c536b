import numpy as np
import pytest

from kgen.data import ByteTokenizer
from kgen.data import CharTokenizer
from kgen.data import DataError
from kgen.data import load_text
from kgen.data import text_datasets
from kgen.data.text import split_text
from tests.conftest import shared

pytestmark = pytest.mark.backend_agnostic

NON_ASCII = "Grüße, naïve café — 東京 😀\nλόγος"


@pytest.mark.parametrize("tokenizer", [CharTokenizer.from_text(NON_ASCII), ByteTokenizer()],
                         ids=["char", "byte"])
def test_tokenizer_round_trips_non_ascii(tokenizer):
    ids = tokenizer.encode(NON_ASCII)
    assert ids.dtype == np.int32
    assert ids.min() >= 0 and ids.max() < tokenizer.vocabulary_size
    assert tokenizer.decode(ids) == NON_ASCII
    clone = type(tokenizer).from_config(tokenizer.get_config())
    np.testing.assert_array_equal(clone.encode(NON_ASCII), ids)


def test_char_vocabulary_is_sorted_by_code_point_and_byte_is_utf8():
    tokenizer = CharTokenizer("cab€")
    assert tokenizer.vocabulary == "abc€" and tokenizer.vocabulary_size == 4
    assert ByteTokenizer().encode("é").tolist() == [195, 169]
    assert len(CharTokenizer.from_text(NON_ASCII).encode(NON_ASCII)) == len(NON_ASCII)


def test_unknown_character_is_named():
    with pytest.raises(ValueError, match="text='abz' contains 'z', not in the tokenizer's 3"):
        CharTokenizer("abc").encode("abz")


@pytest.mark.parametrize("tokenizer", [CharTokenizer.from_text(NON_ASCII), ByteTokenizer()],
                         ids=["char", "byte"])
def test_tokenizer_is_a_keras_layer_of_core_string_ops(tokenizer):
    import keras
    import tensorflow as tf

    assert isinstance(tokenizer, keras.layers.Layer)
    assert keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(tokenizer)).get_config() == tokenizer.get_config()
    texts = tf.constant(["Grüße", "東京 λόγος"])
    ids = tokenizer.tokenize(texts)
    assert ids.shape[0] == 2 and ids.dtype == tf.int32
    np.testing.assert_array_equal(ids[0].numpy(), tokenizer.encode("Grüße"))
    assert [t.decode() for t in tokenizer.detokenize(ids).numpy()] == ["Grüße", "東京 λόγος"]
    # The same layer in a tf.data pipeline and traced as a graph.
    ds = tf.data.Dataset.from_tensor_slices(texts).map(tokenizer.tokenize)
    np.testing.assert_array_equal(next(iter(ds)).numpy(), ids[0].numpy())
    graph = tf.function(tokenizer.tokenize).get_concrete_function(
        tf.TensorSpec([None], tf.string)).graph
    op_types = {op.type for op in graph.get_operations()}
    assert not any(t.startswith(("Xla", "PyFunc", "EagerPyFunc")) for t in op_types)


def test_tokenize_names_its_input_in_the_graph():
    import tensorflow as tf

    tokenizer = CharTokenizer("abc")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"prompt contains characters outside the vocabulary \(3 characters\)"):
        tokenizer.tokenize(tf.constant(["ab", "abz"]), name="prompt")
    with pytest.raises(tf.errors.InvalidArgumentError, match="prompt is not valid UTF-8"):
        tokenizer.tokenize(tf.constant([b"ab\xff"]), name="prompt")


def test_text_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "binary.txt"
    path.write_bytes(b"hello \xff\xfe world")
    with pytest.raises(DataError, match=r"binary.txt: not UTF-8 text \(byte 6"):
        load_text(path)


def test_the_published_tiny_shakespeare():
    from tests.conftest import real_data

    text = load_text(real_data("tinyshakespeare", "input.txt"))
    assert len(text) == 1115394 and len(set(text)) == 65


def test_shakespeare_split_and_windows():
    text = load_text(shared("tinyshakespeare", "input.txt"))
    train, val = split_text(text, 0.1)
    assert len(train) == int(len(text) * 0.9) and train + val == text
    data = text_datasets(text, "char", context=32, batch_size=4, validation_batches=3)
    assert data.tokenizer.vocabulary_size == len(set(text))
    x, y = next(iter(data.train))
    assert x.shape == (4, 32) and y.shape == (4, 32)
    np.testing.assert_array_equal(x.numpy()[:, 1:], y.numpy()[:, :-1])
    # Validation windows come from the held-out tail, the same every pass.
    first = [b[0].numpy() for b in data.validation]
    again = [b[0].numpy() for b in data.validation]
    assert len(first) == 3
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    val_ids = data.tokenizer.encode(val)
    window = first[0][0]
    assert any((val_ids[i:i + 32] == window).all() for i in range(len(val_ids) - 32))


def test_pydoc_is_embedded():
    text = load_text("pydoc")
    assert len(text) > 100_000 and "Truth Value Testing" in text


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.txt: no such text file"):
        load_text(tmp_path / "nope.txt")
