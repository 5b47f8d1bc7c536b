"""TF Serving's warm-up file, written by every export: it parses back with
TF Serving's own protos, holds one request per signature, and each request,
replayed against the SavedModel by TensorFlow alone (a process that cannot
import kgen, as TF Serving replays it at load time), succeeds."""

import textwrap

import keras
import pytest

from kgen.export import export_model
from kgen.export.warmup import MAX_RECORDS
from kgen.export.warmup import WARMUP_FILE
from kgen.export.warmup import WarmupError
from kgen.export.warmup import read_warmup_file
from kgen.export.warmup import warmup_inputs
from tests.export.helpers import run_without_kgen
from tests.export.helpers import tiny

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the warm-up file is written by the TensorFlow-backend export, whatever "
           "the training backend; checked once, on TensorFlow")
pytestmark = [pytestmark, pytest.mark.tf_only]

FAMILIES = ("vae", "gan", "diffusion", "lm")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warmup")
    return {family: export_model(tiny(family), tmp / "saved_models" / family,
                                 max_rows=4)
            for family in FAMILIES}


def signature_names(version_dir):
    """The serving signatures a SavedModel's graph declares."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    return {name for graph in proto.meta_graphs for name in graph.signature_def
            if not name.startswith("__")}


def test_one_record_per_signature_parsed_with_the_official_protos(exports):
    import tensorflow as tf

    for family, version_dir in exports.items():
        logs = read_warmup_file(version_dir / WARMUP_FILE)
        assert 1 <= len(logs) <= MAX_RECORDS
        signatures = signature_names(version_dir)
        assert "generate" in signatures and "serving_default" in signatures
        named = [log.predict_log.request.model_spec.signature_name for log in logs]
        assert sorted(named) == sorted(signatures), family
        for log in logs:
            assert log.WhichOneof("log_type") == "predict_log"
            request = log.predict_log.request
            assert request.model_spec.name == family
            rows = {tf.make_ndarray(t).shape[0] for t in request.inputs.values()}
            assert rows == {2}, (family, rows)
    vae = read_warmup_file(exports["vae"] / WARMUP_FILE)
    assert [log.predict_log.request.model_spec.signature_name for log in vae] == [
        "generate", "serving_default", "encode", "decode"]


REPLAY = textwrap.dedent("""
    from tensorflow_serving.apis import prediction_log_pb2

    answers = {}
    for version_dir in sys.argv[1:]:
        loaded = tf.saved_model.load(version_dir)
        path = version_dir + "/assets.extra/tf_serving_warmup_requests"
        for record in tf.data.TFRecordDataset(path):
            request = prediction_log_pb2.PredictionLog.FromString(
                record.numpy()).predict_log.request
            signature = loaded.signatures[request.model_spec.signature_name]
            outputs = signature(**{name: tf.constant(tf.make_ndarray(proto))
                                   for name, proto in request.inputs.items()})
            answers[request.model_spec.name + "/" + request.model_spec.signature_name] = {
                name: [list(value.shape), bool(np.all(np.isfinite(value.numpy())))
                       if value.dtype.is_floating else True]
                for name, value in outputs.items()}
    print(json.dumps(answers))
""")


def test_each_record_replayed_against_the_saved_model_succeeds(exports, tmp_path):
    answers = run_without_kgen(tmp_path, REPLAY, *exports.values())
    assert set(answers) == {
        "vae/generate", "vae/serving_default", "vae/encode", "vae/decode",
        "gan/generate", "gan/serving_default", "diffusion/generate",
        "diffusion/serving_default", "lm/generate", "lm/serving_default", "lm/prefill",
        "lm/decode_step"}
    assert answers["vae/generate"] == {"images": [[2, 8, 8, 1], True]}
    assert answers["vae/encode"] == {"mean": [[2, 2], True], "log_var": [[2, 2], True]}
    assert answers["vae/decode"] == {"images": [[2, 8, 8, 1], True]}
    assert answers["diffusion/generate"] == {"images": [[2, 8, 8, 1], True]}
    assert answers["gan/serving_default"] == {"images": [[2, 8, 8, 1], True]}
    assert answers["lm/generate"] == {"text": [[2], True], "completion": [[2], True]}
    # tiny("lm"): a 16-token context, one block of one 8-wide head, 10 tokens.
    state = {"cache": [[2, 1, 2, 16, 1, 8], True], "logits": [[2, 10], True],
             **{name: [[2], True] for name in (
                 "position", "window_start", "done", "lengths", "prompt_lengths", "ends",
                 "stop_id")}}
    prefill = answers["lm/prefill"]
    assert prefill.pop("tokens")[0][0] == 2
    assert prefill == state
    step = answers["lm/decode_step"]
    assert step.pop("tokens") == [[2, 19], True]  # 1 + 2 + 16: the warm-up's buffer
    assert step == {**state, **{name: [[2], True] for name in (
        "token", "emitted", "piece", "finished")}}


def test_one_row_export_gets_one_row_requests(tmp_path):
    version_dir = export_model(tiny("vae"), tmp_path / "vae", max_rows=1)
    import tensorflow as tf

    for log in read_warmup_file(version_dir / WARMUP_FILE):
        shapes = {tf.make_ndarray(t).shape[0] for t in log.predict_log.request.inputs.values()}
        assert shapes == {1}


def test_an_input_without_a_warmup_value_is_named():
    import tensorflow as tf

    specs = {"seed": tf.TensorSpec([None], tf.int64, name="seed"),
             "waveform": tf.TensorSpec([None, None], tf.float32, name="waveform")}
    with pytest.raises(WarmupError, match="signature 'decode'.*input 'waveform'"):
        warmup_inputs("decode", specs, {"max_rows": 4})


def test_a_familys_own_input_takes_the_value_its_kgen_json_records():
    import tensorflow as tf

    specs = {"seed": tf.TensorSpec([None], tf.int64, name="seed"),
             "waveform": tf.TensorSpec([None, None], tf.float32, name="waveform")}
    metadata = {"max_rows": 4, "warmup": {"waveform": {"shape": [3], "fill": 0.25}}}
    inputs = warmup_inputs("decode", specs, metadata)
    assert inputs["waveform"].shape == (2, 3) and (inputs["waveform"] == 0.25).all()
    assert inputs["waveform"].dtype == "float32"


def test_a_request_that_does_not_fit_its_signature_is_refused():
    import numpy as np
    import tensorflow as tf

    from kgen.export.warmup import check_requests

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="num_steps")])
    def fn(num_steps):
        return {"x": num_steps}

    good = {"generate": {"num_steps": np.ones(2, "int32")}}
    check_requests({"generate": fn}, good, max_rows=2)
    with pytest.raises(WarmupError, match="'generate': warm-up input 'num_steps' is int64"):
        check_requests({"generate": fn}, {"generate": {"num_steps": np.ones(2, "int64")}}, 2)
    with pytest.raises(WarmupError, match="has 2 rows, not 1..1"):
        check_requests({"generate": fn}, good, max_rows=1)
    with pytest.raises(WarmupError, match="has shape \\(2, 1\\)"):
        check_requests({"generate": fn}, {"generate": {"num_steps": np.ones((2, 1), "int32")}}, 2)
