"""`kgen serve` as a user runs it: a subprocess on 127.0.0.1 over a tree
holding a tiny model of every family, driven with plain HTTP requests shaped
as TF Serving's REST documentation shows (api_rest.md), with KServe's V2
protocol over REST and gRPC, and with TF Serving's own gRPC
PredictionService. Every answer is compared with the SavedModel called
directly in this process.

One server runs for the module (batching on, a short poll so a new model
or version shows within a second): it starts over a tree holding one model
and finds the others as they are exported. It is stopped with SIGTERM in
the fixture's teardown and must exit by itself, with status 0.
"""

import concurrent.futures
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the server runs TensorFlow SavedModels whatever the training backend; "
           "checked once, on tensorflow")
pytestmark = [pytestmark, pytest.mark.tf_only, pytest.mark.slow]

MAX_ROWS = 8
MAX_BODY = 200_000
ATOL = 2e-5  # as tests/test_generate_contract.py: rows of different batch sizes
LM_ROW = {"prompt": "ab", "max_new_tokens": 4, "temperature": 1.0, "top_k": 0,
          "top_p": 1.0, "stop_token": ""}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vae(seed):
    from kgen import models, networks

    vae = models.VAE(*networks.conv_vae_networks((8, 8, 1), 2, (4,), 8), seed=seed)
    vae.compile(optimizer="adam")
    # A few steps, so the decoder's output depends on the latent (an
    # untrained one answers 0.5 everywhere and any seed would "match").
    images = np.random.default_rng(seed).uniform(size=(32, 8, 8, 1)).astype("float32")
    vae.fit(images, batch_size=16, epochs=2, verbose=0)
    return vae


def _tiny(family):
    """The smallest export of each family (tests/export/helpers.py), with a
    VAE trained a few steps so that its answers depend on the seed."""
    from tests.export.helpers import tiny

    return _vae(0) if family == "vae" else tiny(family)


FAMILIES = ("vae", "gan", "diffusion", "lm")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return tmp_path_factory.mktemp("serve") / "saved_models"


@pytest.fixture(scope="module")
def server(tree):
    """The server starts over a tree holding the GAN alone; the other models
    are exported while it starts, and it must find them by itself."""
    from kgen.export import export_model

    export_model(_tiny("gan"), tree / "gan", max_rows=MAX_ROWS)
    port, grpc_port = _free_port(), _free_port()
    log = open(tree.parent / "server.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "kgen", "serve", str(tree), "--port", str(port),
         "--grpc-port", str(grpc_port), "--max-body-bytes", str(MAX_BODY),
         "--batch-wait-ms", "20", "--poll-seconds", "0.3"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    url = f"http://127.0.0.1:{port}"
    try:
        for family in FAMILIES:
            if family != "gan":
                export_model(_tiny(family), tree / family, max_rows=MAX_ROWS)
        _wait_ready(process, url, log)
        yield {"url": url, "grpc": f"127.0.0.1:{grpc_port}", "process": process, "log": log}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError("kgen serve did not stop on SIGTERM:\n" + _tail(log))
        finally:
            log.close()
    assert code == 0, f"kgen serve exited with {code}"


def _tail(log):
    log.flush()
    log.seek(0)
    return log.read()[-4000:]


def _wait_ready(process, url, log):
    import requests

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"kgen serve exited with {process.returncode}:\n{_tail(log)}")
        try:
            if requests.get(url + "/v2/health/ready", timeout=2).ok and all(
                    requests.get(f"{url}/v2/models/{f}/ready", timeout=2).ok for f in FAMILIES):
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError("kgen serve was not ready in 180 s:\n" + _tail(log))


@pytest.fixture(scope="module")
def direct(tree, server):
    """Each family's newest version called in this process, as TF Serving would."""
    import tensorflow as tf

    loaded = {f: tf.saved_model.load(str(tree / f / "1")) for f in FAMILIES}

    def call(family, inputs, signature="serving_default", version=None):
        model = loaded[family] if version is None else tf.saved_model.load(
            str(tree / family / str(version)))
        fn = model.signatures[signature]
        specs = fn.structured_input_signature[1]
        out = fn(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}

    return call


def post(server, path, body=None, raw=None):
    import requests

    data = raw if raw is not None else json.dumps(body)
    return requests.post(server["url"] + path, data=data,
                         headers={"Content-Type": "application/json"}, timeout=60)


def columns(family, seeds):
    """The generate signature's inputs for `seeds`, columnar."""
    n = len(seeds)
    inputs = {"seed": list(seeds)}
    if family in ("gan", "diffusion"):
        inputs["label"] = [s % 10 for s in seeds]
    if family == "diffusion":
        inputs["num_steps"] = [3] * n
        inputs["guidance_scale"] = [2.0] * n
    if family == "lm":
        inputs.update({k: [v] * n for k, v in LM_ROW.items()})
    return inputs


def rows(inputs):
    n = len(inputs["seed"])
    return [{k: v[i] for k, v in inputs.items()} for i in range(n)]


def assert_same(answer, expected):
    expected = np.asarray(expected)
    if expected.dtype == object:
        assert list(answer) == [e.decode("utf-8") for e in expected.ravel()]
    else:
        np.testing.assert_allclose(np.asarray(answer, dtype=expected.dtype), expected, atol=ATOL)


# === Status and metadata ===


def test_status_and_metadata_list_every_signature(server):
    import requests

    status = requests.get(server["url"] + "/v1/models/vae").json()
    assert status == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}}]}
    meta = requests.get(server["url"] + "/v1/models/vae/metadata").json()
    assert meta["model_spec"] == {"name": "vae", "version": "1", "signature_name": ""}
    signatures = meta["metadata"]["signature_def"]["signature_def"]
    assert {"generate", "encode", "decode", "serving_default"} <= set(signatures)
    seed = signatures["generate"]["inputs"]["seed"]
    assert seed["dtype"] == "DT_INT64"
    assert seed["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert signatures["generate"]["outputs"]["images"]["dtype"] == "DT_FLOAT"
    assert signatures["generate"]["method_name"] == "tensorflow/serving/predict"
    lm = requests.get(server["url"] + "/v1/models/lm/versions/1/metadata").json()
    inputs = lm["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert {k: v["dtype"] for k, v in inputs.items()} == {
        "prompt": "DT_STRING", "seed": "DT_INT64", "max_new_tokens": "DT_INT32",
        "temperature": "DT_FLOAT", "top_k": "DT_INT32", "top_p": "DT_FLOAT",
        "stop_token": "DT_STRING"}


# === Predict, as TF Serving's REST documentation shows it ===


@pytest.mark.parametrize("family", FAMILIES)
def test_predict_row_and_columnar_equal_the_saved_model(server, direct, family):
    inputs = columns(family, [3, 4, 5])
    expected = direct(family, inputs)
    # Row format: one object per row (or, with one input, the plain values).
    body = {"instances": inputs["seed"] if family == "vae" else rows(inputs)}
    row = post(server, f"/v1/models/{family}:predict", body)
    assert row.status_code == 200, row.text
    predictions = row.json()["predictions"]
    column = post(server, f"/v1/models/{family}:predict",
                  {"signature_name": "generate", "inputs": inputs})
    assert column.status_code == 200, column.text
    outputs = column.json()["outputs"]
    if family == "lm":  # two outputs: objects per row / an object of columns
        assert set(predictions[0]) == set(outputs) == {"text", "completion"}
        for name in ("text", "completion"):
            assert_same([p[name] for p in predictions], expected[name])
            assert_same(outputs[name], expected[name])
        assert all(t.startswith("ab") for t in outputs["text"])
    else:  # one output: its values, unnamed
        assert_same(predictions, expected["images"])
        assert_same(outputs, expected["images"])
        assert not np.allclose(expected["images"][0], expected["images"][1]), \
            "rows of different seeds match: the comparison would prove nothing"


def test_other_signatures_by_name(server, direct):
    images = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype("float32")
    answer = post(server, "/v1/models/vae/versions/1:predict",
                  {"signature_name": "encode", "inputs": {"images": images.tolist()}})
    assert answer.status_code == 200, answer.text
    expected = direct("vae", {"images": images}, "encode")
    for name in ("mean", "log_var"):
        assert_same(answer.json()["outputs"][name], expected[name])
    latents = [[0.5, -1.0], [2.0, 0.25]]
    answer = post(server, "/v1/models/vae:predict",
                  {"signature_name": "decode", "instances": latents})
    assert answer.status_code == 200, answer.text
    assert_same(answer.json()["predictions"], direct("vae", {"latents": latents}, "decode")["images"])


# === Batching ===


def test_concurrent_requests_are_batched_and_answer_as_alone(server, direct):
    import requests

    def calls():
        text = requests.get(server["url"] + "/metrics").text
        count = _metric(text, "kgen_batch_requests_count", model="vae", signature="serving_default")
        total = _metric(text, "kgen_batch_requests_sum", model="vae", signature="serving_default")
        return count, total

    before = calls()
    clients = 8
    barrier = threading.Barrier(clients)

    def one(i):
        barrier.wait()
        seeds = [100 + 3 * i, 101 + 3 * i]
        return seeds, post(server, "/v1/models/vae:predict", {"instances": seeds})

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, range(clients)))
    for seeds, answer in answers:
        assert answer.status_code == 200, answer.text
        assert_same(answer.json()["predictions"],
                    direct("vae", {"seed": seeds})["images"])
    after = calls()
    graph_calls, requests_answered = after[0] - before[0], after[1] - before[1]
    assert requests_answered == clients
    assert graph_calls < clients, "no two concurrent requests were merged"


def test_requests_with_different_step_counts_are_not_merged(server, direct):
    clients = 4
    barrier = threading.Barrier(clients)

    def one(i):
        inputs = dict(columns("diffusion", [40 + i]), num_steps=[2 + i % 2])
        barrier.wait()
        return inputs, post(server, "/v1/models/diffusion:predict", {"inputs": inputs})

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for inputs, answer in pool.map(one, range(clients)):
            assert answer.status_code == 200, answer.text
            assert_same(answer.json()["outputs"], direct("diffusion", inputs)["images"])


# === Metrics ===


def _metric(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_requests_errors_rows_and_latency(server):
    import requests

    def read():
        text = requests.get(server["url"] + "/metrics").text
        return {
            "ok": _metric(text, "kgen_requests_total", model="gan", signature="serving_default",
                          protocol="v1", code="200"),
            "bad": _metric(text, "kgen_request_errors_total", model="gan",
                           signature="serving_default", code="400"),
            "rows": _metric(text, "kgen_rows_generated_total", model="gan",
                            signature="serving_default"),
            "latency": _metric(text, "kgen_request_latency_seconds_count", model="gan",
                               signature="serving_default"),
        }

    before = read()
    for seeds in ([1], [2, 3], [4, 5, 6]):
        assert post(server, "/v1/models/gan:predict",
                    {"inputs": columns("gan", seeds)}).status_code == 200
    assert post(server, "/v1/models/gan:predict",
                {"inputs": {"seed": [1], "label": [99]}}).status_code == 400
    after = read()
    assert after["ok"] - before["ok"] == 3
    assert after["bad"] - before["bad"] == 1
    assert after["rows"] - before["rows"] == 6
    assert after["latency"] - before["latency"] == 4


# === V2 (Open Inference Protocol) and TF Serving gRPC ===


def test_v2_rest_answers_by_name(server, direct):
    import requests

    body = {"inputs": [
        {"name": "seed", "shape": [2], "datatype": "INT64", "data": [11, 12]},
        {"name": "label", "shape": [2], "datatype": "INT32", "data": [1, 2]}]}
    answer = requests.post(server["url"] + "/v2/models/gan/infer", json=body)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["name"] == "images" and output["shape"] == [2, 8, 8, 1]
    expected = direct("gan", {"seed": [11, 12], "label": [1, 2]})["images"]
    assert_same(np.reshape(output["data"], output["shape"]), expected)
    meta = requests.get(server["url"] + "/v2/models/gan").json()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"seed": "INT64", "label": "INT32"}
    bad = requests.post(server["url"] + "/v2/models/gan/infer", json={"inputs": [
        {"name": "seed", "shape": [1], "datatype": "INT64", "data": [1]},
        {"name": "label", "shape": [1], "datatype": "INT32", "data": [10]}]})
    assert bad.status_code == 400 and "label" in bad.json()["error"]


def test_v2_grpc_answers_by_name(server, direct):
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
    from kserve.protocol.infer_type import InferResponse

    tensor = pb.ModelInferRequest.InferInputTensor
    request = pb.ModelInferRequest(model_name="vae", inputs=[
        tensor(name="latents", datatype="FP32", shape=[1, 2],
               contents=pb.InferTensorContents(fp32_contents=[0.25, -0.5]))],
        parameters={"signature_name": pb.InferParameter(string_param="decode")})
    with grpc.insecure_channel(server["grpc"]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        response = InferResponse.from_grpc(stub.ModelInfer(request, timeout=60))
    (output,) = response.outputs
    assert output.name == "images"
    assert_same(output.as_numpy(), direct("vae", {"latents": [[0.25, -0.5]]}, "decode")["images"])


def test_tf_serving_grpc_predict_and_metadata(server, direct):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    inputs = columns("lm", [21, 22])
    dtypes = {"seed": "int64", "max_new_tokens": "int32", "top_k": "int32",
              "temperature": "float32", "top_p": "float32"}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "lm"
    request.model_spec.signature_name = "generate"
    for name, values in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(
            np.array(values, dtype=dtypes.get(name, object))))
    with grpc.insecure_channel(server["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=60)
        assert response.model_spec.version.value == 1
        expected = direct("lm", inputs)
        for name in ("text", "completion"):
            assert tf.make_ndarray(response.outputs[name]).tolist() == expected[name].tolist()
        request.inputs["max_new_tokens"].CopyFrom(tf.make_tensor_proto(np.array([0, 4], "int32")))
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(request, timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_new_tokens" in refused.value.details()
        meta_request = get_model_metadata_pb2.GetModelMetadataRequest()
        meta_request.model_spec.name = "gan"
        meta_request.metadata_field.append("signature_def")
        meta = stub.GetModelMetadata(meta_request, timeout=60)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def["generate"].inputs) == {"seed", "label"}


# === Bad requests: each refused with TF Serving's status, naming the problem ===

GOOD = ("/v1/models/vae:predict", {"instances": [1, 2]})
BAD = {
    "malformed JSON": ("/v1/models/vae:predict", '{"instances": [1, 2', 400, "JSON Parse error"),
    "both instances and inputs": ("/v1/models/vae:predict",
                                  {"instances": [1], "inputs": [1]}, 400, "both 'instances' and 'inputs'"),
    "neither instances nor inputs": ("/v1/models/vae:predict", {"rows": [1]}, 400, "instances"),
    "unknown model": ("/v1/models/nosuchmodel:predict", {"instances": [1]}, 404, "nosuchmodel"),
    "unknown version": ("/v1/models/vae/versions/99:predict", {"instances": [1]}, 404,
                        "Specific(vae, 99)"),
    # TF Serving answers an unknown signature with INVALID_ARGUMENT (400).
    "unknown signature": ("/v1/models/vae:predict",
                          {"signature_name": "nosuchsig", "instances": [1]}, 400, "nosuchsig"),
    "missing input": ("/v1/models/gan:predict", {"inputs": {"seed": [1]}}, 400, "label"),
    "unknown input": ("/v1/models/vae:predict", {"inputs": {"seed": [1], "sed": [2]}}, 400, "sed"),
    "wrong dtype (float seed)": ("/v1/models/vae:predict", {"instances": [1.5]}, 400, "seed"),
    "wrong dtype (string label)": ("/v1/models/gan:predict",
                                   {"instances": [{"seed": 1, "label": "three"}]}, 400, "label"),
    "wrong shape (seed)": ("/v1/models/vae:predict", {"instances": [[1, 2]]}, 400, "seed"),
    "wrong shape (images)": ("/v1/models/vae:predict",
                             {"signature_name": "encode", "inputs": [[[[0.5]]]]}, 400, "images"),
    "ragged rows": ("/v1/models/vae:predict",
                    {"signature_name": "decode", "inputs": [[0.5, 1.0], [0.5]]}, 400, "latents"),
    "out-of-range label": ("/v1/models/gan:predict",
                           {"instances": [{"seed": 1, "label": 10}]}, 400, "label"),
    "out-of-range step count": ("/v1/models/diffusion:predict",
                                {"inputs": dict(columns("diffusion", [1]), num_steps=[101])},
                                400, "num_steps"),
    "zero steps": ("/v1/models/diffusion:predict",
                   {"inputs": dict(columns("diffusion", [1]), num_steps=[0])}, 400, "num_steps"),
    "token count": ("/v1/models/lm:predict",
                    {"instances": [dict(LM_ROW, seed=1, max_new_tokens=5000)]}, 400,
                    "max_new_tokens"),
    "empty prompt": ("/v1/models/lm:predict", {"instances": [dict(LM_ROW, seed=1, prompt="")]},
                     400, "prompt"),
    "empty batch (row)": ("/v1/models/vae:predict", {"instances": []}, 400, "empty batch"),
    "empty batch (columnar)": ("/v1/models/vae:predict", {"inputs": {"seed": []}}, 400,
                               "empty batch"),
    "too many rows": ("/v1/models/vae:predict", {"instances": list(range(MAX_ROWS + 1))}, 400,
                      f"max_rows={MAX_ROWS}"),
    "oversized body": ("/v1/models/vae:predict", {"instances": [1] * (MAX_BODY // 2)}, 413,
                       "--max-body-bytes"),
    "seed out of 64 bits": ("/v1/models/vae:predict", {"instances": [2 ** 64]}, 400, "seed"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_request_is_refused_and_the_server_keeps_serving(server, case):
    path, body, status, named = BAD[case]
    answer = post(server, path, raw=body) if isinstance(body, str) else post(server, path, body)
    assert answer.status_code == status, (case, answer.status_code, answer.text)
    error = answer.json()["error"]
    assert named in error, (case, error)
    assert "Traceback" not in error and "[[{{node" not in error
    good = post(server, *GOOD)
    assert good.status_code == 200, good.text


def test_status_of_unknown_model_and_version(server):
    import requests

    missing = requests.get(server["url"] + "/v1/models/nosuchmodel")
    assert missing.status_code == 404 and "nosuchmodel" in missing.json()["error"]
    missing = requests.get(server["url"] + "/v1/models/vae/versions/99/metadata")
    assert missing.status_code == 404 and "99" in missing.json()["error"]


def test_a_tree_that_cannot_be_served_is_one_line(server, tree):
    result = subprocess.run(
        [sys.executable, "-m", "kgen", "serve", str(tree / "vae"), "--port", str(_free_port())],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kgen: error: "), result.stderr
    assert "base path" in lines[0] and str(tree) in lines[0]


def test_a_bad_request_merged_with_good_ones_fails_alone(server, direct):
    clients = 4
    barrier = threading.Barrier(clients)

    def one(i):
        inputs = {"seed": [60 + i], "label": [99 if i == 2 else i]}
        barrier.wait()
        return inputs, post(server, "/v1/models/gan:predict", {"inputs": inputs})

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, range(clients)))
    for inputs, answer in answers:
        if inputs["label"] == [99]:
            assert answer.status_code == 400 and "label" in answer.json()["error"]
        else:
            assert answer.status_code == 200, answer.text
            assert_same(answer.json()["outputs"], direct("gan", inputs)["images"])


# === TF Serving's JSON encoding of strings, bytes and non-finite floats ===


def test_json_encoding_of_strings_bytes_and_non_finite_floats():
    import tensorflow as tf

    from kgen.serving import tensors

    outputs = {"text": np.array([b"caf\xc3\xa9", b"\xff"], dtype=object),
               "image_bytes": np.array([b"\x00\x01", b"ab"], dtype=object)}
    body = json.loads(tensors.response_body(outputs, "columnar"))["outputs"]
    assert body["text"] == ["caf\u00e9", {"b64": "/w=="}]  # not UTF-8: kept, as b64
    assert body["image_bytes"] == [{"b64": "AAE="}, {"b64": "YWI="}]
    rows = json.loads(tensors.response_body(
        {"x": np.array([0.1, np.nan, -np.inf], "float32")}, "row"))
    assert rows["predictions"][0] == 0.1 and np.isnan(rows["predictions"][1])
    assert rows["predictions"][2] == -np.inf
    array = tensors.to_array([{"b64": "YWI="}, "c"], tf.string, "prompt")
    assert array.tolist() == [b"ab", b"c"]
    with pytest.raises(tensors.TensorError, match="prompt"):
        tensors.to_array([{"b64": "%%%"}], tf.string, "prompt")
    with pytest.raises(tensors.TensorError, match="guidance_scale"):
        tensors.to_array([2 ** 24 + 1], tf.float32, "guidance_scale")  # not exact in float32


# === Versions (last: it changes the newest VAE) ===


def test_a_new_version_is_served_without_restart(server, direct, tree):
    import requests

    from kgen.export import export_model

    seeds = [7, 8]
    old = direct("vae", {"seed": seeds})["images"]
    errors, answers, stop = [], [], threading.Event()

    def keep_asking():
        while not stop.is_set():
            answer = post(server, "/v1/models/vae:predict", {"instances": seeds})
            if answer.status_code != 200:
                errors.append(answer.text)
            else:
                answers.append(np.asarray(answer.json()["predictions"], "float32"))

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        assert export_model(_vae(1), tree / "vae", max_rows=MAX_ROWS).name == "2"
        new = direct("vae", {"seed": seeds}, version=2)["images"]
        assert not np.allclose(old, new, atol=1e-3)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = requests.get(server["url"] + "/v1/models/vae/versions/2")
            answer = post(server, "/v1/models/vae:predict", {"instances": seeds})
            if status.ok and np.allclose(answer.json()["predictions"], new, atol=ATOL):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("version 2 was not served within 60 s:\n" + _tail(server["log"]))
    finally:
        stop.set()
        asker.join()
    assert not errors, errors[:3]
    assert answers and all(np.allclose(a, old, atol=ATOL) or np.allclose(a, new, atol=ATOL)
                           for a in answers)
    versions = requests.get(server["url"] + "/v1/models/vae").json()["model_version_status"]
    assert [v["version"] for v in versions] == ["2", "1"]
    assert all(v["state"] == "AVAILABLE" for v in versions)
    pinned = post(server, "/v1/models/vae/versions/1:predict", {"instances": seeds})
    assert_same(pinned.json()["predictions"], old)
