"""How `kgen serve` follows its tree while it runs: a deleted version stops
answering at once and is unloaded at the next poll, a version folder
replaced by another of the same number is loaded again, a model left with
no version is unregistered, a folder whose name a URL cannot hold is
skipped with a warning, a damaged version is logged once (again only when
its files change), and what a client is told about a failed version names
no path of the server.

One server runs for the module over copies of one tiny VAE export, polling
every `POLL` seconds; the tests that change the tree run last, in order.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import pytest

# The server's tests (and the in-process one sharing their export); the tree's
# rules (names, stamps, paths) run once, fast.
SERVER = [pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the server runs TensorFlow SavedModels whatever the training backend; "
           "checked once, on tensorflow"), pytest.mark.tf_only, pytest.mark.slow]

POLL = 0.3
SKIPPED = ("a:b", "has space")


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """One tiny VAE version, copied below into every model of the tree."""
    from kgen.export import export_model
    from tests.export.helpers import tiny

    return export_model(tiny("vae"), tmp_path_factory.mktemp("export") / "vae", max_rows=8)


@pytest.fixture(scope="module")
def tree(tmp_path_factory, export):
    """keep/1..3 (good), vae/1 (good) and vae/2 (no variables), broken/1 (a
    damaged only version), and good versions in folders named `a:b` and
    `has space`."""
    root = tmp_path_factory.mktemp("tree") / "saved_models"
    for number in (1, 2, 3):
        shutil.copytree(export, root / "keep" / str(number))
    shutil.copytree(export, root / "vae" / "1")
    shutil.copytree(export, root / "vae" / "2")
    shutil.rmtree(root / "vae" / "2" / "variables")
    shutil.copytree(export, root / "broken" / "1")
    (root / "broken" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    for name in SKIPPED:
        shutil.copytree(export, root / name / "1")
    return root


@pytest.fixture(scope="module")
def server(tree):
    import requests

    port, grpc_port = _free_port(), _free_port()
    log = open(tree.parent / "server.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "kgen", "serve", str(tree), "--port", str(port),
         "--grpc-port", str(grpc_port), "--poll-seconds", str(POLL)],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise AssertionError(f"kgen serve exited with {process.returncode}:\n"
                                     + _text(log))
            try:
                if all(requests.get(f"{url}/v2/models/{name}/ready", timeout=2).ok
                       for name in ("keep", "vae")):
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("kgen serve was not ready in 120 s:\n" + _text(log))
            time.sleep(0.2)
        yield {"url": url, "grpc": f"127.0.0.1:{grpc_port}", "log": log}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _text(log):
    log.flush()
    log.seek(0)
    return log.read()


def predict(server, path, seeds=(1,)):
    import requests

    return requests.post(f"{server['url']}/v1/models/{path}:predict",
                         data=json.dumps({"instances": list(seeds)}), timeout=60)


def grpc_predict(server, version=None, v2=False):
    """(status code name, version answering) of a TF Serving gRPC Predict,
    or of a V2 gRPC ModelInfer, of model `keep`."""
    import grpc
    import numpy as np
    import tensorflow as tf

    with grpc.insecure_channel(server["grpc"]) as channel:
        try:
            if v2:
                from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
                from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

                request = pb.ModelInferRequest(
                    model_name="keep", model_version="" if version is None else str(version),
                    inputs=[pb.ModelInferRequest.InferInputTensor(
                        name="seed", datatype="INT64", shape=[1],
                        contents=pb.InferTensorContents(int64_contents=[1]))])
                answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request,
                                                                              timeout=60)
                return "OK", int(answer.model_version)
            from tensorflow_serving.apis import predict_pb2
            from tensorflow_serving.apis import prediction_service_pb2_grpc

            request = predict_pb2.PredictRequest()
            request.model_spec.name = "keep"
            if version is not None:
                request.model_spec.version.value = version
            request.inputs["seed"].CopyFrom(tf.make_tensor_proto(np.array([1], "int64")))
            answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                request, timeout=60)
            return "OK", answer.model_spec.version.value
        except grpc.RpcError as error:
            return error.code().name, error.details()


def wait_for(check, seconds, what, server):
    """Polls `check()` until it is truthy; returns (its value, seconds taken)."""
    start = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > seconds:
            raise AssertionError(f"{what} not seen in {seconds} s:\n"
                                 + _text(server["log"])[-3000:])
        time.sleep(0.02)


def status_versions(server, name):
    import requests

    answer = requests.get(f"{server['url']}/v1/models/{name}", timeout=10)
    if answer.status_code == 404:
        return None
    return [v["version"] for v in answer.json()["model_version_status"]]


def tf_slow(test):
    for mark in SERVER:
        test = mark(test)
    return test


# === The tree's rules ===


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("name, served", [
    ("vae_digits", True), ("lm-2.1", True), ("V", True), ("_x", True), ("7", True),
    ("a:b", False), ("has space", False), ("-x", False), (".x", False), ("caf\u00e9", False),
    ("a%2Fb", False), ("a?b", False), ("a#b", False), ("a\\b", False), ("", False)])
def test_which_names_a_url_can_hold(name, served):
    from kgen.serving.tree import addressable

    assert addressable(name) is served


@pytest.mark.backend_agnostic
def test_a_tree_of_unaddressable_folders_alone_is_refused(tmp_path):
    from kgen.serving.tree import ServeError
    from kgen.serving.tree import check_tree

    for name in SKIPPED:
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ServeError, match=r"no model folder whose name can be served "
                                         r"\(skipped 'a:b', 'has space'"):
        check_tree(tmp_path)
    (tmp_path / "ok" / "1").mkdir(parents=True)
    (tmp_path / "ok" / "1" / "saved_model.pb").write_bytes(b"")
    assert check_tree(tmp_path) == ["ok"]


@pytest.mark.backend_agnostic
def test_server_paths_are_stripped_from_client_messages(tmp_path, monkeypatch):
    from kgen.serving.tree import without_paths

    root = tmp_path / "saved_models"
    root.mkdir()
    link = tmp_path / "link"
    link.symlink_to(root)
    text = (f"Cannot parse file b'{root}/vae/2/saved_model.pb'; files for "
            f"{root.resolve()}/vae/2/variables/variables; /other{root}/x")
    assert without_paths(text, link) == (
        "Cannot parse file b'vae/2/saved_model.pb'; files for vae/2/variables/variables; "
        f"/other{root}/x")
    monkeypatch.chdir(tmp_path)
    assert without_paths("at saved_models/vae/1 and my_saved_models/vae",
                         "saved_models") == "at vae/1 and my_saved_models/vae"


@pytest.mark.backend_agnostic
def test_a_version_stamp_changes_with_its_files(tmp_path):
    from kgen.serving.tree import version_stamp

    version = tmp_path / "vae" / "1"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"graph")
    first = version_stamp(version)
    assert version_stamp(version) == first
    (version / "variables" / "variables.index").write_bytes(b"index")
    second = version_stamp(version)
    assert second != first
    copy = tmp_path / "copy"
    os.rename(version, copy)
    shutil.copytree(copy, version)  # the same files in a new folder
    assert version_stamp(version) != second
    shutil.rmtree(version)
    assert version_stamp(version) is None


@tf_slow
def test_an_unloaded_version_is_freed(export, tmp_path):
    """In process: once a poll unloads a deleted version, nothing holds it."""
    import weakref

    from kgen.serving.models import Repository
    from kgen.serving.models import Settings

    root = tmp_path / "saved_models"
    for number in (1, 2):
        shutil.copytree(export, root / "m" / str(number))
    repository = Repository(root, Settings(batching=False))
    repository.load_models()
    model = repository.get_model("m")
    old, newest = weakref.ref(model.get(1)), weakref.ref(model.get())
    shutil.rmtree(root / "m" / "1")
    repository.poll()
    assert old() is None and newest() is not None
    shutil.rmtree(root / "m" / "2")
    repository.poll()
    assert newest() is None and repository.get_model("m") is None


# === Start-up: what is skipped and what is logged ===


@tf_slow
def test_unaddressable_folders_are_skipped_with_a_warning(server):
    import requests

    time.sleep(3 * POLL)  # a few polls: each folder is warned about once
    log = _text(server["log"])
    for name in SKIPPED:
        assert log.count(f"model folder {name!r} is not served: its name cannot be used") == 1, log
    listed = requests.get(server["url"] + "/v2/models", timeout=10).json()["models"]
    assert sorted(listed) == ["keep", "vae"]
    assert predict(server, "vae").status_code == 200
    assert predict(server, "keep").status_code == 200


@tf_slow
def test_a_damaged_only_version_is_logged_once_until_its_files_change(server, tree):
    line = "model broken: version 1 cannot be loaded"
    time.sleep(5 * POLL)
    assert _text(server["log"]).count(line) == 1
    assert predict(server, "broken").status_code == 404
    (tree / "broken" / "1" / "saved_model.pb").write_bytes(b"still not a SavedModel")
    wait_for(lambda: _text(server["log"]).count(line) == 2, 10 * POLL + 5,
             "a second failure after the files changed", server)
    time.sleep(3 * POLL)
    assert _text(server["log"]).count(line) == 2


@tf_slow
def test_a_failed_version_is_told_without_server_paths(server, tree):
    import grpc
    import requests
    from tensorflow_serving.apis import get_model_status_pb2
    from tensorflow_serving.apis import model_service_pb2_grpc

    hidden = [str(tree), str(tree.parent), str(tree.resolve())]
    status = requests.get(server["url"] + "/v1/models/vae", timeout=10).json()
    failed, served = status["model_version_status"]
    assert (failed["version"], failed["state"]) == ("2", "END")
    assert (served["version"], served["state"]) == ("1", "AVAILABLE")
    message = failed["status"]["error_message"]
    assert "vae/2/variables" in message and not any(h in message for h in hidden), message
    answer = predict(server, "vae/versions/2")
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert "cannot be loaded" in error and not any(h in error for h in hidden), error
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "vae"
    with grpc.insecure_channel(server["grpc"]) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            request, timeout=10)
    (grpc_failed,) = [v for v in response.model_version_status if v.version == 2]
    assert grpc_failed.status.error_message == message
    v2 = requests.get(server["url"] + "/v2/models/vae", timeout=10)
    assert v2.status_code == 200 and not any(h in v2.text for h in hidden)
    # The server's own log keeps the full detail.
    assert f"{tree}/vae/2/variables" in _text(server["log"])


# === Changes to the tree (in order: each test starts where the last ended) ===


@tf_slow
def test_a_deleted_version_answers_404_within_one_poll(server, tree):
    assert predict(server, "keep/versions/1").status_code == 200  # loaded, kept
    assert grpc_predict(server, 1) == ("OK", 1)
    assert grpc_predict(server, 1, v2=True) == ("OK", 1)
    shutil.rmtree(tree / "keep" / "1")
    _, took = wait_for(lambda: predict(server, "keep/versions/1").status_code == 404,
                       POLL + 2, "404 for the deleted version", server)
    print(f"deleted version: V1 404 after {took:.3f} s (poll every {POLL} s)")
    assert took < POLL + 1.0  # refused at once, before the poll unloads it
    code, details = grpc_predict(server, 1)
    assert code == "NOT_FOUND" and "Specific(keep, 1)" in details
    assert grpc_predict(server, 1, v2=True)[0] == "NOT_FOUND"
    # Unloaded at the next poll; the versions left still answer.
    wait_for(lambda: "model keep: version 1 is gone from disk; unloaded" in
             _text(server["log"]), 2 * POLL + 2, "the unload", server)
    assert status_versions(server, "keep") == ["3", "2"]
    assert predict(server, "keep/versions/2").status_code == 200
    assert grpc_predict(server) == ("OK", 3)


@tf_slow
def test_a_deleted_newest_version_hands_over_to_the_one_below(server, tree):
    shutil.rmtree(tree / "keep" / "3")
    assert predict(server, "keep/versions/3").status_code == 404
    _, took = wait_for(lambda: grpc_predict(server) == ("OK", 2), POLL + 5,
                       "version 2 answering unversioned requests", server)
    print(f"deleted newest version: version 2 answers after {took:.3f} s")
    assert grpc_predict(server, v2=True) == ("OK", 2)
    assert status_versions(server, "keep") == ["2"]


@tf_slow
def test_a_replaced_version_is_loaded_again(server, tree, export):
    assert predict(server, "keep", seeds=range(3)).status_code == 200
    # The same number, a new folder whose export allows 2 rows per request.
    replacement = tree.parent / "replacement"
    shutil.copytree(export, replacement)
    meta = replacement / "assets.extra" / "kgen.json"
    meta.write_text(json.dumps(dict(json.loads(meta.read_text()), max_rows=2)))
    shutil.rmtree(tree / "keep" / "2")
    os.rename(replacement, tree / "keep" / "2")
    _, took = wait_for(lambda: predict(server, "keep", seeds=range(3)).status_code == 400,
                       POLL + 10, "the replaced version", server)
    print(f"replaced version: its new max_rows in force after {took:.3f} s")
    assert "max_rows=2" in predict(server, "keep", seeds=range(3)).json()["error"]
    assert "model keep: version 2 was replaced on disk" in _text(server["log"])


@tf_slow
def test_a_model_left_without_versions_is_unloaded(server, tree):
    import requests

    shutil.rmtree(tree / "keep" / "2")
    assert predict(server, "keep/versions/2").status_code == 404
    wait_for(lambda: requests.get(server["url"] + "/v2/models/keep/ready",
                                  timeout=10).status_code == 404,
             POLL + 2, "a model with no version unregistered", server)
    assert predict(server, "keep").status_code == 404
    assert status_versions(server, "keep") is None
    assert "model keep: no loadable version left on disk; unloaded" in _text(server["log"])
    assert predict(server, "vae").status_code == 200
