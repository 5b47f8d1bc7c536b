"""The text export contract, checked the way TF Serving loads a model:
`saved_model_cli` with a string prompt, and `tf.saved_model.load` in a
process that cannot import kgen."""

import json
import re
import textwrap

import keras
import pytest

from kgen.data import load_text
from kgen.data import text_datasets
from kgen.export import export_model
from kgen.export import read_metadata
from kgen.export.autoregressive import MAX_REQUEST_TOKENS
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


INPUTS = "max_new_tokens=[{n}, {n}];temperature=[1.0, 1.0];top_k=[5, 5];top_p=[1.0, 1.0];stop_token=['', '']"


@pytest.mark.tf_only
def test_metadata_lets_kgen_sample_fill_the_inputs(exported):
    meta = read_metadata(exported["dir"])
    assert meta["family"] == "CausalLM" and meta["output_kind"] == "text"
    assert meta["context"] == CONTEXT and meta["tokenizer"] == "char"
    assert set(meta["defaults"]) == {"prompt", "max_new_tokens", "temperature", "top_k",
                                     "top_p", "stop_token"}
    assert meta["max_rows"] == 256 and meta["max_request_tokens"] == MAX_REQUEST_TOKENS


@pytest.mark.tf_only
def test_export_inputs_are_the_python_option_names(exported):
    """The signature's inputs are `generate`'s options of the same names."""
    import inspect

    result = saved_model_cli("show", "--dir", exported["dir"], "--tag_set", "serve",
                             "--signature_def", "generate")
    assert result.returncode == 0, result.stderr
    inputs = set(re.findall(r"inputs\['(\w+)'\]", result.stdout))
    assert inputs == {"prompt", "seed", "max_new_tokens", "temperature", "top_k", "top_p",
                      "stop_token"}
    options = set(inspect.signature(CausalLM.generate).parameters)
    assert inputs <= options


@pytest.mark.tf_only
def test_saved_model_cli_runs_generate_with_a_string_prompt(exported):
    result = saved_model_cli("show", "--dir", exported["dir"], "--all")
    assert result.returncode == 0, result.stderr
    for name in ("generate", "serving_default"):
        assert f"signature_def['{name}']" in result.stdout
    assert "inputs['prompt'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" in result.stdout
    result = saved_model_cli(
        "run", "--dir", exported["dir"], "--tag_set", "serve",
        "--signature_def", "generate", "--input_exprs",
        "prompt=['ROMEO:', 'KING: '];seed=[1, 2];" + INPUTS.format(n=20),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Result for output key text:" in out and "b'ROMEO:" in out and "b'KING: " in out


@pytest.mark.tf_only
def test_saved_model_cli_reports_invalid_argument(exported):
    result = saved_model_cli(
        "run", "--dir", exported["dir"], "--tag_set", "serve",
        "--signature_def", "generate", "--input_exprs",
        "prompt=['', 'a'];seed=[1, 2];" + INPUTS.format(n=5),
    )
    assert result.returncode != 0
    assert "InvalidArgumentError" in result.stderr
    assert "prompt must not be empty" in result.stderr


NO_KGEN = textwrap.dedent("""
    m = tf.saved_model.load(sys.argv[1])
    requests = json.loads(open(sys.argv[2]).read())
    results, errors = {}, {}
    for name, (signature, inputs) in requests.items():
        dtypes = {"seed": tf.int64, "max_new_tokens": tf.int32, "top_k": tf.int32,
                  "temperature": tf.float32, "top_p": tf.float32}
        args = {k: tf.constant(v, dtypes.get(k, tf.string)) if v else
                tf.zeros([0], dtypes.get(k, tf.string)) for k, v in inputs.items()}
        try:
            out = m.signatures[signature](**args)
        except tf.errors.InvalidArgumentError as e:
            errors[name] = e.message
            continue
        results[name] = {k: [t.decode("utf-8") for t in v.numpy()] for k, v in out.items()}
    print(json.dumps({"results": results, "errors": errors}))
""")

SAMPLERS = {  # Python's named samplers as the export's per-row settings
    "greedy": dict(top_k=1, top_p=1.0),
    "temperature": dict(top_k=0, top_p=1.0),
    "top_k": dict(top_k=5, top_p=1.0),
    "top_p": dict(top_k=0, top_p=0.8),
}
PROMPTS = ["ROMEO:", "First Citizen:", "KING: "]


def request(prompts, seeds, n=24, temperature=1.0, top_k=5, top_p=1.0, stop_token="",
            **overrides):
    """A `generate` request: one value per row, or a list of them."""
    def rows(value):
        return value if isinstance(value, list) else [value] * len(prompts)

    inputs = dict(prompt=prompts, seed=seeds, max_new_tokens=rows(n),
                  temperature=rows(temperature), top_k=rows(top_k), top_p=rows(top_p),
                  stop_token=rows(stop_token))
    inputs.update(overrides)
    return ["generate", inputs]


def requests():
    good = {f"sampler_{name}": request(PROMPTS, [5, 6, 7], **settings)
            for name, settings in SAMPLERS.items()}
    good.update({
        "default": ["serving_default", request(PROMPTS, [5, 6, 7])[1]],
        "seed_7": request(["ROMEO:"], [7]),
        "seed_7_plus_2_32": request(["ROMEO:"], [7 + 2**32]),
        "stop": request(["ROMEO:"] * 4, [0, 1, 2, 3], n=60, top_k=0, stop_token="\n"),
        "long": request(["KING: "], [0], n=3 * CONTEXT + 5, top_k=1),
        "per_row": request(["ROMEO:", "KING: "], [1, 2], n=[3, 9],
                           top_k=[1, 0], stop_token=["", " "]),
    })
    bad = {
        "empty": request(["ROMEO:", ""], [1, 2]),
        "too_long": request(["x" * 17], [1]),
        "unknown": request(["ROMEO\u20ac"], [1]),
        "temperature": request(["ROMEO:"], [1], temperature=0.0),
        "max_new_tokens": request(["ROMEO:"], [1], n=0),
        "max_new_tokens_high": request(["ROMEO:"], [1], n=4097),
        "top_k": request(["ROMEO:"], [1], top_k=-1),
        "top_p": request(["ROMEO:"], [1], top_p=1.5),
        "stop_token": request(["ROMEO:"], [1], stop_token="ab"),
        "rows_mismatch": request(["ROMEO:"], [1, 2]),
        "empty_batch": request([], []),
        "max_rows": request(["a"] * 257, list(range(257)), n=1),
        "tokens": request(["ROMEO:"] * 40, list(range(40)), n=4096),
    }
    return {**good, **{f"bad_{k}": v for k, v in bad.items()}}


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    (tmp / "requests.json").write_text(json.dumps(requests()))
    return run_without_kgen(tmp, NO_KGEN, exported["dir"], tmp / "requests.json")


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_export_row_for_seed_s_plus_i_is_python_generate(exported, served, sampler):
    """Row i of the export for seed 5 + i is `generate(1, seed=5 + i)` and
    row i of `generate(3, seed=5)`, for every named sampler."""
    lm = exported["model"]
    text = served["results"][f"sampler_{sampler}"]["text"]
    rows = lm.generate(3, seed=5, prompts=PROMPTS, max_new_tokens=24, sampler=sampler,
                       temperature=1.0, top_k=5, top_p=0.8)
    assert text == rows
    for i, prompt in enumerate(PROMPTS):
        assert text[i] == lm.generate(1, seed=5 + i, prompt=prompt, max_new_tokens=24,
                                      sampler=sampler, top_k=5, top_p=0.8)[0]


def test_served_rows(exported, served):
    results = served["results"]
    assert results["default"] == results["sampler_top_k"], "serving_default is generate"
    text, completion = results["sampler_top_k"]["text"], results["sampler_top_k"]["completion"]
    assert [len(t) for t in text] == [len(p) + 24 for p in PROMPTS]
    assert completion == [t[len(p):] for t, p in zip(text, PROMPTS)]
    assert results["seed_7"]["text"] != results["seed_7_plus_2_32"]["text"], "64-bit seeds"
    assert len(results["long"]["text"][0]) == 6 + 53, "generation slides past the context"
    lm = exported["model"]
    stopped = results["stop"]["text"]
    assert stopped == lm.generate(4, seed=0, prompt="ROMEO:", max_new_tokens=60,
                                  sampler="temperature", stop_token="\n")
    assert all("\n" not in t[6:-1] for t in stopped)
    assert any(len(t) < 66 for t in stopped), "the stop token ended a row"
    per_row = results["per_row"]["text"]
    assert per_row[0] == lm.generate(1, seed=1, prompt="ROMEO:", max_new_tokens=3,
                                     sampler="greedy")[0]
    assert per_row[1] == lm.generate(1, seed=2, prompt="KING: ", max_new_tokens=9,
                                     sampler="temperature", stop_token=" ")[0]


@pytest.mark.parametrize("name, message", [
    ("empty", "prompt must not be empty"),
    ("too_long", "prompt is longer than the context of 16 tokens"),
    ("unknown", "prompt contains characters outside the vocabulary (65 characters)"),
    ("temperature", "temperature must be finite and > 0"),
    ("max_new_tokens", "max_new_tokens must be in [1, 4096]"),
    ("max_new_tokens_high", "max_new_tokens must be in [1, 4096]"),
    ("top_k", "top_k must be >= 0"),
    ("top_p", "top_p must be in (0, 1]"),
    ("stop_token", "stop_token must be one token or empty"),
    ("rows_mismatch", "prompt must have one value per row (as seed)"),
    ("empty_batch", "seed must have at least one row (empty batch)"),
    ("max_rows", "seed has more rows than this export allows (max_rows=256)"),
    ("tokens", "max_new_tokens: rows x (longest prompt + largest max_new_tokens) "
               f"must be at most {MAX_REQUEST_TOKENS} tokens"),
])
def test_bad_requests_are_refused_naming_the_input(served, name, message):
    assert message in served["errors"].get(f"bad_{name}", "(accepted)")


@pytest.mark.tf_only
def test_graph_has_only_core_ops(exported):
    ops = graph_op_types(exported["dir"])
    # The sampling loop, the tokeniser and the detokeniser are in the graph.
    assert {"UnicodeDecode", "UnsortedSegmentJoin", "TensorScatterUpdate"} <= ops, sorted(ops)
    assert ops & {"While", "StatelessWhile"}, sorted(ops)
    assert not ops & FORBIDDEN_OPS
    assert not [op for op in ops if op.startswith("Xla")], "TF Serving's CPU build has no XLA"
    text_ops = [op for op in ops if op.startswith(("Sentencepiece", "WordpieceTokenize",
                                                  "RegexSplitWithOffsets", "Utf8Binarize",
                                                  "FastWordpiece", "Normalize"))]
    assert not text_ops, f"tf-text ops in the graph: {text_ops}"


@pytest.mark.tf_only
def test_kgen_sample_writes_text(exported, tmp_path):
    out = tmp_path / "samples.txt"
    run_kgen("sample", exported["base"], "--n", "3", "--seed", "5", "--out", out, cwd=tmp_path)
    texts = out.read_text(encoding="utf-8").split("\n\n---\n\n")
    assert len(texts) == 3 and all(texts)
