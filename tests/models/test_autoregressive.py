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
PROMPTS = ["ROMEO:", "First Citizen:", "KING: "]


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
def test_cached_and_uncached_greedy_give_the_same_text(trained, new_tokens):
    lm = trained["lm"]
    kwargs = dict(prompts=["ROMEO:", "KING: "], max_new_tokens=new_tokens, sampler="greedy")
    cached = lm.generate(2, **kwargs)
    assert cached == lm.generate(2, use_cache=False, **kwargs)
    assert [len(t) for t in cached] == [6 + new_tokens] * 2
    assert [t[:6] for t in cached] == ["ROMEO:", "KING: "]


@pytest.mark.parametrize("sampler", ["greedy", "temperature", "top_k", "top_p"])
def test_row_i_is_generate_1_with_seed_s_plus_i(trained, sampler):
    lm = trained["lm"]
    kwargs = dict(max_new_tokens=20, sampler=sampler, temperature=1.0, top_k=5, top_p=0.8)
    rows = lm.generate(3, seed=5, prompts=PROMPTS, **kwargs)
    assert rows == lm.generate(3, seed=5, prompts=PROMPTS, **kwargs)
    for i, prompt in enumerate(PROMPTS):
        assert rows[i] == lm.generate(1, seed=5 + i, prompt=prompt, **kwargs)[0]
        assert rows[i].startswith(prompt) and len(rows[i]) == len(prompt) + 20
    same = lm.generate(3, seed=5, prompt="ROMEO:", **kwargs)
    assert same[1] == lm.generate(1, seed=6, prompt="ROMEO:", **kwargs)[0]
    if sampler != "greedy":
        assert len(set(same)) > 1, "rows with the same prompt get their own seeds"
        assert rows != lm.generate(3, seed=8, prompts=PROMPTS, **kwargs)


def test_seeds_use_64_bits(trained):
    lm = trained["lm"]
    a = lm.generate(1, seed=7, prompt="ROMEO:", max_new_tokens=30)[0]
    b = lm.generate(1, seed=7 + 2**32, prompt="ROMEO:", max_new_tokens=30)[0]
    assert a != b
    top = lm.generate(2, seed=2**63 - 2, prompt="ROMEO:", max_new_tokens=4)
    assert top[1] == lm.generate(1, seed=2**63 - 1, prompt="ROMEO:", max_new_tokens=4)[0]
    with pytest.raises(ValueError, match="seed=9223372036854775807: with 2 row"):
        lm.generate(2, seed=2**63 - 1, max_new_tokens=4)


def test_samplers_top_k_1_and_tiny_top_p_are_greedy(trained):
    lm = trained["lm"]
    kwargs = dict(prompts=PROMPTS, max_new_tokens=24)
    greedy = lm.generate(3, seed=0, sampler="greedy", **kwargs)
    assert lm.generate(3, seed=11, sampler="top_k", top_k=1, temperature=2.0,
                       **kwargs) == greedy
    assert lm.generate(3, seed=12, sampler="top_p", top_p=1e-6, **kwargs) == greedy
    assert lm.generate(3, seed=12, sampler="top_p", top_p=0.9, **kwargs) != greedy


def test_stop_token_ends_a_row(trained):
    lm = trained["lm"]
    stopped = lm.generate(6, seed=0, prompt="ROMEO:", max_new_tokens=60,
                          sampler="temperature", stop_token="\n")
    free = lm.generate(6, seed=0, prompt="ROMEO:", max_new_tokens=60, sampler="temperature")
    for text, full in zip(stopped, free):
        continuation = text[len("ROMEO:"):]
        assert "\n" not in continuation[:-1]
        assert continuation.endswith("\n") or len(continuation) == 60
        assert full.startswith(text), "the same tokens up to the stop"
    assert any(len(t) < len("ROMEO:") + 60 for t in stopped)


def test_default_prompt_and_drawn_seed(trained):
    lm = trained["lm"]
    texts = lm.generate(2, max_new_tokens=4)
    assert len(texts) == 2 and all(t.startswith(lm.default_prompt) for t in texts)


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
    kwargs = dict(seed=3, prompt="ROMEO:", max_new_tokens=12)
    assert loaded.generate(2, **kwargs) == lm.generate(2, **kwargs)
    loaded.fit(trained["data"].train, steps_per_epoch=2, epochs=1, verbose=0)


def test_untied_and_dropout_train():
    tokenizer = CharTokenizer("abcdefgh \n")
    lm = compile_lm(tiny_lm(tokenizer, tie_weights=False, dropout=0.1))
    ids = np.random.default_rng(0).integers(0, 10, (8, CONTEXT + 1)).astype("int32")
    history = lm.fit(ids[:, :-1], ids[:, 1:], batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert len(lm.generate(1, seed=0, prompt="ab", max_new_tokens=4)[0]) == 6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": ""}, "prompt='': must not be empty"),
        ({"prompt": "a" * (CONTEXT + 1)}, "prompt is 17 tokens, longer than the context of 16"),
        ({"prompt": "aZ"}, r"prompt='aZ' contains 'Z', not in the tokenizer's 10-character"),
        ({"prompt": None, "prompts": ["ab", "aZ"]}, r"prompts\[1\]='aZ' contains 'Z'"),
        ({"prompt": None, "prompts": ["ab"]}, r"prompts: expected a list of n=2 strings"),
        ({"prompts": ["ab", "ab"]}, "prompt and prompts: give one of them"),
        ({"temperature": 0.0}, r"temperature=0.0: must be a finite number > 0"),
        ({"top_k": -1}, r"top_k=-1: must be an int >= 0"),
        ({"sampler": "top_p", "top_p": 0.0}, r"top_p=0.0: must be in \(0, 1\]"),
        ({"max_new_tokens": 0}, r"max_new_tokens=0: must be an int in \[1, 4096\]"),
        ({"max_new_tokens": 4097}, r"max_new_tokens=4097: must be an int in \[1, 4096\]"),
        ({"sampler": "beam"}, r"sampler='beam': expected one of"),
        ({"stop_token": "ab"}, "stop_token='ab' is 2 tokens"),
        ({"stop_token": "Z"}, "stop_token='Z' contains 'Z'"),
        ({"labels": [0, 1]}, r"labels=\[0, 1\]: CausalLM is unconditional"),
        ({"n": 0}, "n=0: must be an int >= 1"),
    ],
)
def test_bad_generate_arguments_are_named(kwargs, message):
    lm = tiny_lm(CharTokenizer("abcdefgh \n"))
    kwargs = {"n": 2, "seed": 0, "prompt": "ab", "max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        lm.generate(kwargs.pop("n"), **kwargs)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's thread pool")
def test_torch_generation_restores_the_thread_count(trained):
    import torch

    before = torch.get_num_threads()
    trained["lm"].generate(1, seed=0, prompt="ROMEO:", max_new_tokens=4, sampler="greedy")
    assert torch.get_num_threads() == before


def test_network_without_kgen_decoder_blocks_is_refused():
    import keras_hub

    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(10, 8)(tokens)
    x = x + keras_hub.layers.PositionEmbedding(CONTEXT, name="position_embedding")(x)
    x = keras_hub.layers.TransformerDecoder(16, 2, name="decoder_0")(x)
    network = keras.Model(tokens, keras.layers.Dense(10)(x))
    with pytest.raises(ValueError, match="network: decoder_0 is a TransformerDecoder"):
        CausalLM(network, CharTokenizer("abcdefgh \n"))


def test_prefer_xla_trains_with_xla_and_saves_a_portable_compile_config(
        trained, tmp_path):
    from kgen.trainers import prefer_xla

    data = trained["data"]
    lm = compile_lm(tiny_lm(data.tokenizer))
    saved_setting = lm.get_compile_config()["jit_compile"]  # Keras' resolved "auto"
    backend = keras.backend.backend()
    assert prefer_xla(lm) is (backend in ("tensorflow", "jax"))
    history = lm.fit(data.train, epochs=1, steps_per_epoch=3, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    lm.save(tmp_path / "lm.keras")
    # the file keeps what compile() chose: prefer_xla changes this run only
    assert lm.get_compile_config()["jit_compile"] == saved_setting
    loaded = keras.saving.load_model(tmp_path / "lm.keras")
    assert loaded.jit_compile == saved_setting
