"""The text export contract, checked the way TF Serving loads a model:
`saved_model_cli` with a string prompt, and `tf.saved_model.load` in a
process that cannot import kgen."""

import textwrap

import keras
import pytest

from kgen.data import load_text
from kgen.data import text_datasets
from kgen.export import export_model
from kgen.export import read_metadata
from kgen.models import CausalLM
from kgen.networks import transformer_lm
from tests.conftest import run_kgen
from tests.conftest import shared
from tests.export.helpers import FORBIDDEN_OPS
from tests.export.helpers import graph_op_types
from tests.export.helpers import run_without_kgen
from tests.export.helpers import saved_model_cli

CONTEXT = 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny LM trained a few steps on the current backend, then exported
    (from JAX / torch through a TensorFlow-backend subprocess)."""
    tmp = tmp_path_factory.mktemp("export_lm")
    keras.utils.set_random_seed(0)
    data = text_datasets(load_text(shared("tinyshakespeare", "input.txt")), "char",
                         context=CONTEXT, batch_size=16, validation_batches=0)
    network = transformer_lm(data.tokenizer.vocabulary_size, CONTEXT, num_layers=2,
                             num_heads=2, hidden_dim=32)
    lm = CausalLM(network, data.tokenizer, seed=0)
    lm.compile(optimizer=keras.optimizers.AdamW(3e-3),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    lm.fit(data.train, steps_per_epoch=20, epochs=1, verbose=0)
    lm.save(tmp / "lm.keras")
    version_dir = export_model(tmp / "lm.keras", tmp / "saved_models" / "lm")
    return {"dir": version_dir, "base": tmp / "saved_models" / "lm", "model": lm,
            "tmp": tmp}


def test_metadata_lets_kgen_sample_fill_the_inputs(exported):
    meta = read_metadata(exported["dir"])
    assert meta["family"] == "CausalLM" and meta["output_kind"] == "text"
    assert meta["context"] == CONTEXT and meta["tokenizer"] == "char"
    assert set(meta["defaults"]) == {"prompt", "max_new_tokens", "temperature", "top_k"}


def test_saved_model_cli_runs_generate_with_a_string_prompt(exported):
    result = saved_model_cli("show", "--dir", exported["dir"], "--all")
    assert result.returncode == 0, result.stderr
    for name in ("generate", "serving_default"):
        assert f"signature_def['{name}']" in result.stdout
    assert "inputs['prompt'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" in result.stdout
    result = saved_model_cli(
        "run", "--dir", exported["dir"], "--tag_set", "serve",
        "--signature_def", "generate", "--input_exprs",
        "prompt=['ROMEO:', 'KING: '];seed=[1, 2];max_new_tokens=[20, 40];"
        "temperature=[1.0, 0.5];top_k=[5, 0]",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Result for output key text:" in out and "b'ROMEO:" in out and "b'KING: " in out


def test_saved_model_cli_reports_invalid_argument(exported):
    result = saved_model_cli(
        "run", "--dir", exported["dir"], "--tag_set", "serve",
        "--signature_def", "generate", "--input_exprs",
        "prompt=[''];seed=[1];max_new_tokens=[5];temperature=[1.0];top_k=[5]",
    )
    assert result.returncode != 0
    assert "InvalidArgumentError" in result.stderr
    assert "prompt must not be empty" in result.stderr


NO_KGEN = textwrap.dedent("""
    import json, sys
    sys.modules["kgen"] = None  # any `import kgen` now fails
    try:
        import kgen
    except ImportError:
        pass
    else:
        raise SystemExit("kgen was importable")
    import tensorflow as tf

    m = tf.saved_model.load(sys.argv[1])
    gen = m.signatures["generate"]

    def run(prompt, seed, n=24, temperature=1.0, top_k=5, fn=gen):
        rows = len(prompt)
        out = fn(prompt=tf.constant(prompt), seed=tf.constant(seed, tf.int64),
                 max_new_tokens=tf.constant([n] * rows, tf.int32),
                 temperature=tf.constant([temperature] * rows, tf.float32),
                 top_k=tf.constant([top_k] * rows, tf.int32))
        return [t.decode("utf-8") for t in out["text"].numpy()], \\
               [t.decode("utf-8") for t in out["completion"].numpy()]

    a, completions = run(["ROMEO:", "First Citizen:", "ROMEO:"], [1, 2, 3])
    b, _ = run(["ROMEO:"], [3])
    default, _ = run(["ROMEO:"], [1], fn=m.signatures["serving_default"])
    greedy, _ = run(["KING: "], [0], n=40, top_k=1)
    long, _ = run(["KING: "], [0], n=3 * 16 + 5, top_k=1)
    errors = {}
    for name, args in {
        "empty": (["ROMEO:", ""], [1, 2]),
        "too_long": (["x" * 17], [1]),
        "unknown": (["ROMEO\\u20ac"], [1]),
        "temperature": (["ROMEO:"], [1], 24, 0.0),
        "max_new_tokens": (["ROMEO:"], [1], 0),
        "top_k": (["ROMEO:"], [1], 24, 1.0, -1),
        "seed": (["ROMEO:"], [1, 2]),
    }.items():
        try:
            run(*args)
        except tf.errors.InvalidArgumentError as e:
            errors[name] = e.message
    print(json.dumps({"a": a, "b": b, "completions": completions,
                      "default": default, "greedy": greedy, "long": long,
                      "errors": errors}))
""")


def test_loads_and_runs_without_kgen(exported, tmp_path):
    out = run_without_kgen(tmp_path, NO_KGEN, exported["dir"])
    a = out["a"]
    assert [t.split(":")[0] for t in a] == ["ROMEO", "First Citizen", "ROMEO"]
    assert [len(t) for t in a] == [6 + 24, 14 + 24, 6 + 24]
    assert out["completions"][0] == a[0][6:]
    assert out["b"][0] == a[2], "a row's sample must depend on its seed alone"
    assert out["default"][0] == a[0], "serving_default must be generate"
    assert a[0] != a[2]
    assert len(out["long"][0]) == 6 + 53, "generation slides past the context"
    errors = out["errors"]
    assert "prompt must not be empty" in errors["empty"]
    assert "prompt is longer than the context of 16 tokens" in errors["too_long"]
    assert "prompt contains characters outside the vocabulary" in errors["unknown"]
    assert "temperature must be finite and > 0" in errors["temperature"]
    assert "max_new_tokens must be in [1, 4096]" in errors["max_new_tokens"]
    assert "top_k must be >= 0" in errors["top_k"]
    assert "seed must have one value per prompt" in errors["seed"]
    # The graph samples greedily (top_k=1) exactly what the model does.
    local = exported["model"].generate("KING: ", max_new_tokens=40, sampler="greedy")
    if keras.backend.backend() == "tensorflow":
        assert out["greedy"][0] == local
    else:  # float32 differences between backends may flip a near tie late
        assert out["greedy"][0][:12] == local[:12]


def test_graph_has_only_core_ops(exported):
    ops = graph_op_types(exported["dir"])
    # The sampling loop, the tokeniser and the detokeniser are in the graph.
    assert {"UnicodeDecode", "UnsortedSegmentJoin"} <= ops, sorted(ops)
    assert ops & {"While", "StatelessWhile"}, sorted(ops)
    assert not ops & FORBIDDEN_OPS
    assert not [op for op in ops if op.startswith("Xla")], "TF Serving's CPU build has no XLA"
    text_ops = [op for op in ops if op.startswith(("Sentencepiece", "WordpieceTokenize",
                                                  "RegexSplitWithOffsets", "Utf8Binarize",
                                                  "FastWordpiece", "Normalize"))]
    assert not text_ops, f"tf-text ops in the graph: {text_ops}"


def test_kgen_sample_writes_text(exported, tmp_path):
    out = tmp_path / "samples.txt"
    run_kgen("sample", exported["base"], "--n", "3", "--seed", "5", "--out", out, cwd=tmp_path)
    texts = out.read_text(encoding="utf-8").split("\n\n---\n\n")
    assert len(texts) == 3 and all(texts)
