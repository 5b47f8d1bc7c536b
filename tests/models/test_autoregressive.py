import keras
import numpy as np
import pytest

from kgen.data import CharTokenizer
from kgen.data import load_text
from kgen.data import text_datasets
from kgen.metrics import BitsPerToken
from kgen.metrics import Perplexity
from kgen.models import CausalLM
from kgen.networks import transformer_lm
from tests.conftest import shared

CONTEXT = 16


@pytest.fixture(scope="module")
def shakespeare():
    return load_text(shared("tinyshakespeare", "input.txt"))


def tiny_lm(tokenizer, **kwargs):
    network = transformer_lm(tokenizer.vocabulary_size, CONTEXT, num_layers=2,
                             num_heads=2, hidden_dim=32, **kwargs)
    return CausalLM(network, tokenizer, seed=1)


def compile_lm(lm, learning_rate=3e-3):
    lm.compile(
        optimizer=keras.optimizers.AdamW(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[Perplexity(), BitsPerToken()],
    )
    return lm


@pytest.fixture(scope="module")
def trained(shakespeare):
    """A tiny model after a few steps of real text (so logits are not flat)."""
    keras.utils.set_random_seed(0)
    data = text_datasets(shakespeare, "char", context=CONTEXT, batch_size=16,
                         validation_batches=4)
    lm = compile_lm(tiny_lm(data.tokenizer))
    before = lm.evaluate(data.validation, return_dict=True, verbose=0)
    history = lm.fit(data.train, epochs=2, steps_per_epoch=25,
                     validation_data=data.validation, verbose=0)
    return {"lm": lm, "data": data, "before": before, "history": history.history}


def test_loss_falls_on_shakespeare(trained):
    before, after = trained["before"], trained["history"]
    assert before["loss"] > 3.5  # about ln(65) = 4.17 untrained
    assert after["val_loss"][-1] < before["loss"] - 0.6
    assert after["loss"][-1] < after["loss"][0]
    np.testing.assert_allclose(after["val_perplexity"][-1],
                               np.exp(after["val_loss"][-1]), rtol=1e-3)
    np.testing.assert_allclose(after["val_bits_per_token"][-1],
                               after["val_loss"][-1] / np.log(2), rtol=1e-3)


@pytest.mark.parametrize("new_tokens", [5, 3 * CONTEXT], ids=["in_context", "sliding"])
def test_cached_and_uncached_greedy_give_the_same_tokens(trained, new_tokens):
    lm = trained["lm"]
    prompt = np.stack([lm.tokenizer.encode("ROMEO:"), lm.tokenizer.encode("KING: ")])
    cached, n1 = lm.generate_ids(prompt, new_tokens, sampler="greedy")
    uncached, n2 = lm.generate_ids(prompt, new_tokens, sampler="greedy", use_cache=False)
    assert cached.shape == (2, 6 + new_tokens)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(n1, [6 + new_tokens] * 2)
    np.testing.assert_array_equal(cached[:, :6], prompt)


@pytest.mark.parametrize("sampler", ["temperature", "top_k", "top_p"])
def test_same_seed_same_sample(trained, sampler):
    lm = trained["lm"]
    prompts = ["ROMEO:", "First Citizen:", "ROMEO:"]
    a = lm.generate(prompts, max_new_tokens=20, sampler=sampler, seed=7)
    b = lm.generate(prompts, max_new_tokens=20, sampler=sampler, seed=7)
    c = lm.generate(prompts, max_new_tokens=20, sampler=sampler, seed=8)
    assert a == b and a != c
    assert [t[:len(p)] for t, p in zip(a, prompts)] == prompts
    assert all(len(t) == len(p) + 20 for t, p in zip(a, prompts))
    assert a[0] != a[2], "rows with the same prompt get their own seeds"
    # A row depends on its seed alone, not on the rest of the batch.
    assert lm.generate("ROMEO:", max_new_tokens=20, sampler=sampler, seed=9) == a[2]


def test_generate_n_cycles_prompts_and_stops(trained):
    lm = trained["lm"]
    texts = lm.generate(4, max_new_tokens=30, seed=0, prompts=["ROMEO:", "JULIET:"])
    assert len(texts) == 4 and texts[1].startswith("JULIET:") and texts[2].startswith("ROMEO:")
    stopped = lm.generate(["ROMEO:"] * 6, max_new_tokens=60, seed=0,
                          sampler="temperature", stop_token="\n")
    for text in stopped:
        continuation = text[len("ROMEO:"):]
        assert "\n" not in continuation[:-1]
        assert continuation.endswith("\n") or len(continuation) == 60
    assert any(len(t) < len("ROMEO:") + 60 for t in stopped)
    # No seed: one is drawn from the model's seed generator.
    assert lm.generate("ROMEO:", max_new_tokens=4).startswith("ROMEO:")


def test_keras_file_round_trip(trained, tmp_path):
    lm = trained["lm"]
    lm.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras")
    assert isinstance(loaded, CausalLM)
    assert loaded.tokenizer.vocabulary == lm.tokenizer.vocabulary
    assert loaded.context == CONTEXT
    x, _ = next(iter(trained["data"].validation))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x.numpy())),
                               keras.ops.convert_to_numpy(lm(x.numpy())), atol=1e-5)
    assert (loaded.generate("ROMEO:", max_new_tokens=12, sampler="greedy")
            == lm.generate("ROMEO:", max_new_tokens=12, sampler="greedy"))
    loaded.fit(trained["data"].train, steps_per_epoch=2, epochs=1, verbose=0)


def test_untied_and_dropout_train():
    tokenizer = CharTokenizer("abcdefgh \n")
    lm = compile_lm(tiny_lm(tokenizer, tie_weights=False, dropout=0.1))
    ids = np.random.default_rng(0).integers(0, 10, (8, CONTEXT + 1)).astype("int32")
    history = lm.fit(ids[:, :-1], ids[:, 1:], batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert len(lm.generate("ab", max_new_tokens=4, seed=0)) == 6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": ""}, "prompt must not be empty"),
        ({"prompt": "a" * (CONTEXT + 1)}, "longer than the context of 16 tokens"),
        ({"temperature": 0.0}, r"temperature=0.0: must be > 0"),
        ({"max_new_tokens": 0}, r"max_new_tokens=0: must be in \[1, 4096\]"),
        ({"sampler": "beam"}, r"sampler='beam': expected one of"),
        ({"prompt": "aZ"}, "'Z'.*not in the tokenizer's"),
        ({"stop_token": "ab"}, "'ab' is 2 tokens"),
    ],
)
def test_bad_generate_arguments_are_named(kwargs, message):
    lm = tiny_lm(CharTokenizer("abcdefgh \n"))
    kwargs = {"prompt": "ab", "max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        lm.generate(**kwargs)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the core-op KV-cache update is the TensorFlow export path")
@pytest.mark.parametrize("shape, start, update_shape", [
    ((3, 2, 8, 4, 5), (0, 0, 5, 0, 0), (3, 2, 1, 4, 5)),   # one position, keras-hub's cache
    ((2, 8, 4, 5), (0, 3, 0, 0), (2, 4, 4, 5)),            # several positions
    ((4, 6), (1, 2), (2, 3)),                              # a block in the middle
    ((4, 6), (0, 0), (4, 6)),                              # the whole array
])
def test_core_slice_update_matches_numpy_with_core_ops_only(shape, start, update_shape):
    import tensorflow as tf

    from kgen.trainers.tensorflow import core_slice_update

    rng = np.random.default_rng(0)
    inputs = rng.normal(size=shape).astype("float32")
    updates = rng.normal(size=update_shape).astype("float32")
    expected = inputs.copy()
    expected[tuple(slice(s, s + n) for s, n in zip(start, update_shape))] = updates

    @tf.function
    def dynamic_start(inputs, updates, start):
        return core_slice_update(inputs, tf.unstack(start), updates)

    dynamic = dynamic_start(inputs, updates, tf.constant(start))
    np.testing.assert_array_equal(dynamic.numpy(), expected)
    static = core_slice_update(inputs, list(start), updates)
    np.testing.assert_array_equal(static.numpy(), expected)
    graph = dynamic_start.get_concrete_function(inputs, updates, tf.constant(start)).graph
    op_types = {op.type for op in graph.get_operations()}
    assert not any(t.startswith("Xla") for t in op_types), op_types


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's thread pool")
def test_torch_generation_restores_the_thread_count(trained):
    import torch

    before = torch.get_num_threads()
    trained["lm"].generate("ROMEO:", max_new_tokens=4, sampler="greedy")
    assert torch.get_num_threads() == before
