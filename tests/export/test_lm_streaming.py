"""The language model's streaming signatures, `prefill` and `decode_step`,
as a TF Serving client uses them: the SavedModel loaded with
`tf.saved_model.load`, `prefill` once, `decode_step` until every row is
finished; each row's pieces joined are the `generate` signature's
`completion` for the same inputs, bit for bit, and Python's `generate()`."""

import keras
import numpy as np
import pytest

from kgen.data import CharTokenizer
from kgen.export import export_model
from kgen.export import read_metadata
from kgen.export.autoregressive import STATE
from kgen.models import CausalLM
from kgen.networks import transformer_lm
from tests.export.helpers import saved_model_cli

CONTEXT = 16
MAX_ROWS = 4
SETTINGS = ("seed", "temperature", "top_k", "top_p")


def tiny_lm(seed=3):
    keras.utils.set_random_seed(seed)
    tokenizer = CharTokenizer.from_text("abcdefgh \n")
    network = transformer_lm(tokenizer.vocabulary_size, CONTEXT, num_layers=2,
                             num_heads=2, hidden_dim=16)
    return CausalLM(network, tokenizer, seed=1)


def request(prompts, seeds, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
            stop_token=""):
    """A `generate` / `prefill` request: one value per row, or a list."""
    import tensorflow as tf

    def rows(value):
        return value if isinstance(value, list) else [value] * len(prompts)

    return dict(prompt=tf.constant(prompts, tf.string), seed=tf.constant(seeds, tf.int64),
                max_new_tokens=tf.constant(rows(max_new_tokens), tf.int32),
                temperature=tf.constant(rows(temperature), tf.float32),
                top_k=tf.constant(rows(top_k), tf.int32),
                top_p=tf.constant(rows(top_p), tf.float32),
                stop_token=tf.constant(rows(stop_token), tf.string))


# Rows of three prompt lengths, 64-bit and negative seeds, per-row settings,
# a stop token, and a row that slides past the 16-token context.
MIXED = dict(prompts=["abc", "h", "a b c d ef"], seeds=[5, 2**40 + 1, -3],
             max_new_tokens=[2 * CONTEXT + 5, 6, 24], temperature=[1.0, 0.7, 1.3],
             top_k=[0, 3, 0], top_p=[1.0, 1.0, 0.8], stop_token=["", "", "\n"])
GREEDY = dict(prompts=["ab", "ab"], seeds=[0, 1], max_new_tokens=3 * CONTEXT, top_k=1)
STOPS = dict(prompts=["a", "b", "c", "d"], seeds=[0, 1, 2, 3], max_new_tokens=40,
             stop_token="\n")


def stream(loaded, inputs, max_steps=1000):
    """A client's loop: each row's pieces joined (bytes), and the steps."""
    state = loaded.signatures["prefill"](**inputs)
    assert set(state) == set(STATE)
    rows = int(inputs["seed"].shape[0])
    texts, tokens, steps = [b""] * rows, [[] for _ in range(rows)], 0
    finished = np.zeros(rows, bool)
    while not finished.all():
        out = loaded.signatures["decode_step"](
            **state, **{name: inputs[name] for name in SETTINGS})
        assert set(out) == set(STATE) | {"token", "emitted", "piece", "finished"}
        emitted, piece = out["emitted"].numpy(), out["piece"].numpy()
        assert not (emitted & finished).any(), "a finished row emitted a piece"
        assert (out["finished"].numpy() >= finished).all(), "finished is final"
        for r in range(rows):
            assert (piece[r] != b"") == emitted[r]
            if emitted[r]:
                tokens[r].append(int(out["token"][r]))
            texts[r] += piece[r]
        finished = out["finished"].numpy()
        state = {name: out[name] for name in STATE}
        steps += 1
        assert steps <= max_steps
    return texts, tokens, steps


def python_rows(lm, inputs):
    """Each row from Python's `generate(1, seed=...)` with the row's own
    settings (`kgen.samplers`: top-k with `top_p=1`, top-p with `top_k=0`)."""
    out = []
    for r in range(int(inputs["seed"].shape[0])):
        prompt = inputs["prompt"][r].numpy().decode()
        sampler = "top_k" if float(inputs["top_p"][r]) == 1.0 else "top_p"
        assert sampler == "top_k" or int(inputs["top_k"][r]) == 0
        text = lm.generate(
            1, seed=int(inputs["seed"][r]), prompt=prompt,
            max_new_tokens=int(inputs["max_new_tokens"][r]), sampler=sampler,
            temperature=float(inputs["temperature"][r]),
            top_k=int(inputs["top_k"][r]), top_p=float(inputs["top_p"][r]),
            stop_token=inputs["stop_token"][r].numpy().decode() or None)[0]
        out.append(text[len(prompt):])
    return out


def check_stream(loaded, lm, case):
    inputs = request(**case)
    texts, tokens, steps = stream(loaded, inputs)
    completion = list(loaded.signatures["generate"](**inputs)["completion"].numpy())
    assert texts == completion
    assert [t.decode() for t in texts] == python_rows(lm, inputs)
    assert [lm.tokenizer.decode(ids).encode() for ids in tokens] == texts
    return texts, steps


# --- the TensorFlow graph: one export, many requests ---------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import tensorflow as tf

    lm = tiny_lm()
    version_dir = export_model(lm, tmp_path_factory.mktemp("stream") / "lm",
                               max_rows=MAX_ROWS)
    return {"lm": lm, "dir": version_dir, "loaded": tf.saved_model.load(str(version_dir))}


@pytest.mark.tf_only
def test_streamed_pieces_are_generate_completion(exported):
    texts, steps = check_stream(exported["loaded"], exported["lm"], MIXED)
    assert [len(t) for t in texts][:2] == [2 * CONTEXT + 5, 6], "the window slid"
    # From the shortest prompt (1 token) to the longest row's end (3 + 37).
    assert steps == 3 + 2 * CONTEXT + 5 - 1


@pytest.mark.tf_only
def test_greedy_rows_and_stop_tokens(exported):
    texts, _ = check_stream(exported["loaded"], exported["lm"], GREEDY)
    assert texts[0] == texts[1], "greedy does not depend on the seed"
    texts, _ = check_stream(exported["loaded"], exported["lm"], STOPS)
    stopped = [t for t in texts if len(t) < 40]
    assert stopped, "no row sampled the stop token: the test would not see it"
    assert all(t.endswith(b"\n") and b"\n" not in t[:-1] for t in stopped)


@pytest.mark.tf_only
def test_metadata_and_signature_defs(exported):
    meta = read_metadata(exported["dir"])
    assert meta["streaming"] == {"prefill": "prefill", "decode_step": "decode_step"}
    assert {"generate", "prefill", "decode_step"} <= set(meta["signatures"])
    result = saved_model_cli("show", "--dir", exported["dir"], "--all")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    step = out[out.index("signature_def['decode_step']"):]
    step = step[:step.index("Method name")]
    for name, dtype, shape in [
        ("tokens", "DT_INT32", "(-1, -1)"), ("cache", "DT_FLOAT", "(-1, 2, 2, 16, 2, 8)"),
        ("logits", "DT_FLOAT", "(-1, 10)"), ("position", "DT_INT32", "(-1)"),
        ("done", "DT_BOOL", "(-1)"), ("stop_id", "DT_INT32", "(-1)"),
        ("seed", "DT_INT64", "(-1)"), ("piece", "DT_STRING", "(-1)"),
        ("emitted", "DT_BOOL", "(-1)"), ("finished", "DT_BOOL", "(-1)"),
        ("token", "DT_INT32", "(-1)"),
    ]:
        assert f"['{name}'] tensor_info:\n        dtype: {dtype}\n        shape: {shape}" \
            in step, name


def _bad_states(exported):
    import tensorflow as tf

    inputs = request(["abc", "h"], [1, 2], 5)
    state = dict(exported["loaded"].signatures["prefill"](**inputs))
    settings = {name: inputs[name] for name in SETTINGS}
    width = int(state["tokens"].shape[1])

    def edit(**changes):
        return {**state, **settings, **changes}

    five = {name: tf.concat([x, x, x[:1]], axis=0) for name, x in {**state, **settings}.items()}
    return {
        "done has one row less": (edit(done=state["done"][:1]),
                                  "done must have one value per row (as seed)"),
        "seed has one row more": (edit(seed=tf.constant([1, 2, 3], tf.int64)),
                                  "tokens must have one value per row (as seed)"),
        "more rows than max_rows": (five, "seed has more rows than this export allows "
                                          f"(max_rows={MAX_ROWS})"),
        "position past the buffer": (edit(position=tf.fill([2], width)),
                                     "position must be in [1, width of tokens - context]"),
        "positions differ": (edit(position=tf.constant([1, 2])),
                             "position must be the same in every row"),
        "window_start after position": (edit(window_start=tf.fill([2], 3)),
                                        "window_start must be the same in every row"),
        "token out of vocabulary": (edit(tokens=state["tokens"] + 100),
                                    "tokens must be token ids in [0, 10)"),
        "ends past the buffer": (edit(ends=state["ends"] + width),
                                 "ends must be in [prompt_lengths + 1"),
        "stop_id out of vocabulary": (edit(stop_id=tf.constant([10, -1])),
                                      "stop_id must be -1 (none) or a token id"),
        "logits not finite": (edit(logits=state["logits"] * np.inf),
                              "logits must be finite"),
        "temperature 0": (edit(temperature=tf.constant([1.0, 0.0])),
                          "temperature must be finite and > 0"),
        "top_p 2": (edit(top_p=tf.constant([1.0, 2.0])), "top_p must be in (0, 1]"),
    }


@pytest.mark.tf_only
def test_bad_states_are_refused_naming_the_input(exported):
    import tensorflow as tf

    step = exported["loaded"].signatures["decode_step"]
    for what, (inputs, message) in _bad_states(exported).items():
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            step(**inputs)
        assert message in error.value.message, what


@pytest.mark.tf_only
def test_prefill_refuses_what_generate_refuses(exported):
    import tensorflow as tf

    prefill = exported["loaded"].signatures["prefill"]
    for inputs, message in [
        (request(["abc", ""], [1, 2], 5), "prompt must not be empty"),
        (request(["abc"], [1], 0), "max_new_tokens must be in [1, 4096]"),
        (request(["a"] * 5, list(range(5)), 1), "seed has more rows than this export"),
        (request(["abc"], [1], 5, stop_token="ab"), "stop_token must be one token"),
    ]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message.replace("[", r"\[")):
            prefill(**inputs)


# --- every backend: its own model, exported, streamed = its Python generate ------


@pytest.mark.slow
def test_exported_stream_is_this_backends_generate(tmp_path):
    """A tiny LM trained a few steps on the current backend, exported (from
    JAX / PyTorch through the TensorFlow-backend export worker): the
    exported stream is this backend's `generate()`."""
    import tensorflow as tf

    lm = tiny_lm(seed=5)
    lm.compile(optimizer=keras.optimizers.AdamW(1e-2),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    text = "abc abd abe\nfgh fga\n" * 8
    ids = np.array(lm.tokenizer.encode(text))
    x = np.stack([ids[i:i + CONTEXT] for i in range(0, len(ids) - CONTEXT - 1, 3)])
    y = np.stack([ids[i + 1:i + CONTEXT + 1] for i in range(0, len(ids) - CONTEXT - 1, 3)])
    lm.fit(x, y, batch_size=8, epochs=2, verbose=0)
    loaded = tf.saved_model.load(str(export_model(lm, tmp_path / "lm", max_rows=MAX_ROWS)))
    check_stream(loaded, lm, MIXED)
    check_stream(loaded, lm, STOPS)
