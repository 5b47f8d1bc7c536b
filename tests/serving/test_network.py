"""`kgen serve` facing a network: the API key, the repository API switch,
the body's declared length and read deadline, the request deadline, client
mistakes answered 400 without Python's words, every error counted in
`/metrics`, and TLS.

Two servers run for the module, started together over one tree (a VAE, a
character LM and a copy of the VAE to unload):

- `open`: no key, `--allow-repository-api`, `--read-timeout 1` and a
  short `--request-timeout`, for the probes a hostile client sends;
- `keyed`: `--api-key` and TLS with a self-signed certificate made here.

The front door's answer to an exception no route expected is checked in
this process, on `_Guard` around a small ASGI app.
"""

import asyncio
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tests.serving.test_server import LM_ROW
from tests.serving.test_server import _free_port
from tests.serving.test_server import _metric
from tests.serving.test_server import _tail

pytestmark = [pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the server runs TensorFlow SavedModels whatever the training backend; "
           "checked once, on tensorflow"), pytest.mark.tf_only]

KEY = "test-key-0123456789abcdef"
MAX_BODY = 200_000
MAX_ROWS = 8
READ_TIMEOUT = 1.0
REQUEST_TIMEOUT = 0.3
EXCEPTION_NAMES = ("Error", "Exception", "Traceback", "RecursionError", "UnicodeEncodeError")


# === Fixtures ===


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from kgen.export import export_model
    from tests.export.helpers import tiny

    root = tmp_path_factory.mktemp("network") / "saved_models"
    for family in ("vae", "lm"):
        export_model(tiny(family), root / family, max_rows=MAX_ROWS)
    shutil.copytree(root / "vae", root / "spare")
    return root


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return {"cert": str(cert_path), "key": str(key_path)}


def _start(tree, name, flags, env=None):
    port, grpc_port = _free_port(), _free_port()
    log = open(tree.parent / f"{name}.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "kgen", "serve", str(tree), "--port", str(port),
         "--grpc-port", str(grpc_port), "--max-body-bytes", str(MAX_BODY), *flags],
        stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, KERAS_BACKEND="tensorflow", **(env or {})))
    return {"port": port, "grpc_port": grpc_port, "process": process, "log": log}


def _wait_ready(server, url, verify=True):
    import requests

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server["process"].poll() is not None:
            raise AssertionError(f"kgen serve exited with {server['process'].returncode}:\n"
                                 f"{_tail(server['log'])}")
        try:
            # Readiness is open without the key.
            if requests.get(url + "/v2/health/ready", timeout=2, verify=verify).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError("kgen serve was not ready in 180 s:\n" + _tail(server["log"]))


def _stop(server):
    server["process"].send_signal(signal.SIGTERM)
    try:
        code = server["process"].wait(timeout=30)
    except subprocess.TimeoutExpired:
        server["process"].kill()
        server["process"].wait()
        raise AssertionError("kgen serve did not stop on SIGTERM:\n" + _tail(server["log"]))
    finally:
        server["log"].close()
    assert code == 0, f"kgen serve exited with {code}"


@pytest.fixture(scope="module")
def servers(tree, cert):
    started = {
        "open": _start(tree, "open", ["--allow-repository-api",
                                      "--read-timeout", str(READ_TIMEOUT),
                                      "--request-timeout", str(REQUEST_TIMEOUT)]),
        # The key from the environment, as a deployment passes it.
        "keyed": _start(tree, "keyed", ["--tls-cert", cert["cert"], "--tls-key", cert["key"]],
                        env={"KGEN_API_KEY": KEY}),
    }
    started["open"]["url"] = f"http://127.0.0.1:{started['open']['port']}"
    started["keyed"]["url"] = f"https://127.0.0.1:{started['keyed']['port']}"
    try:
        _wait_ready(started["open"], started["open"]["url"])
        _wait_ready(started["keyed"], started["keyed"]["url"], verify=cert["cert"])
        yield started
    finally:
        for server in started.values():
            _stop(server)


@pytest.fixture(scope="module")
def open_server(servers):
    return servers["open"]


@pytest.fixture(scope="module")
def keyed(servers, cert):
    return dict(servers["keyed"], ca=cert["cert"])


def _post(server, path, data, headers=None, **kwargs):
    import requests

    return requests.post(server["url"] + path, data=data, timeout=60,
                         headers={"Content-Type": "application/json", **(headers or {})},
                         verify=server.get("ca", True), **kwargs)


def _errors(server, **labels):
    import requests

    headers = {"Authorization": f"Bearer {KEY}"} if "ca" in server else {}
    text = requests.get(server["url"] + "/metrics", headers=headers, timeout=30,
                        verify=server.get("ca", True)).text
    return _metric(text, "kgen_request_errors_total", **labels)


def _error_lines(server):
    import requests

    headers = {"Authorization": f"Bearer {KEY}"} if "ca" in server else {}
    text = requests.get(server["url"] + "/metrics", headers=headers, timeout=30,
                        verify=server.get("ca", True)).text
    return "\n".join(line for line in text.splitlines()
                     if line.startswith("kgen_request_errors_total"))


def _no_python_words(message):
    for word in EXCEPTION_NAMES + ("/tmp", "site-packages", ".py"):
        assert word not in message, message


# === The body: declared length and read deadline ===


def _raw(port, head, body=b""):
    """Sends `head` and `body` on a raw socket; the answer's status line,
    body and the seconds until the connection was closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        start = time.monotonic()
        s.sendall(head + body)
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        seconds = time.monotonic() - start
    status = answer.split(b"\r\n", 1)[0].decode()
    return status, answer.split(b"\r\n\r\n", 1)[-1], seconds


@pytest.mark.slow
def test_a_declared_oversized_body_is_answered_413_at_once(open_server):
    before = _errors(open_server, model="vae", code="413")
    head = (b"POST /v1/models/vae:predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/json\r\nContent-Length: 999999999999\r\n\r\n")
    status, body, seconds = _raw(open_server["port"], head, b"{}")
    assert status.startswith("HTTP/1.1 413"), status
    assert seconds < 1.0, f"answered in {seconds:.2f} s"
    assert b"999999999999" in body and b"--max-body-bytes" in body
    assert _errors(open_server, model="vae", code="413") - before == 1


@pytest.mark.slow
def test_a_stalled_body_is_answered_408_after_the_read_deadline(open_server):
    before = _errors(open_server, code="408")
    head = (b"POST /v1/models/vae:predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/json\r\nContent-Length: 100\r\n\r\n")
    status, body, seconds = _raw(open_server["port"], head, b'{"inst')
    assert status.startswith("HTTP/1.1 408"), status
    assert READ_TIMEOUT <= seconds < READ_TIMEOUT + 2.0, seconds
    assert b"--read-timeout" in body
    assert _errors(open_server, code="408") - before == 1


# === The repository API ===


@pytest.mark.slow
def test_unload_is_refused_without_the_flag(keyed):
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    for _ in range(3):
        answer = _post(keyed, "/v2/repository/models/vae/unload", b"",
                       headers={"Authorization": f"Bearer {KEY}"})
        assert answer.status_code == 403, answer.text
        assert "--allow-repository-api" in answer.json()["error"]
    credentials = grpc.ssl_channel_credentials(open(keyed["ca"], "rb").read())
    with grpc.secure_channel(f"127.0.0.1:{keyed['grpc_port']}", credentials) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="vae"),
                                       metadata=[("authorization", f"Bearer {KEY}")],
                                       timeout=30)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    predict = _post(keyed, "/v1/models/vae:predict", json.dumps({"instances": [1]}),
                    headers={"Authorization": f"Bearer {KEY}"})
    assert predict.status_code == 200, predict.text


@pytest.mark.slow
def test_unload_is_answered_with_the_flag(open_server):
    answer = _post(open_server, "/v2/repository/models/spare/unload", b"")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"name": "spare", "unload": True}


# === The API key ===


@pytest.mark.slow
def test_rest_needs_the_key_but_health_does_not(keyed):
    import requests

    body = json.dumps({"instances": [1, 2]})
    before = _errors(keyed, code="401")
    missing = _post(keyed, "/v1/models/vae:predict", body)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in missing.json()["error"]
    wrong = _post(keyed, "/v1/models/vae:predict", body,
                  headers={"Authorization": "Bearer " + KEY[:-1] + "x"})
    assert wrong.status_code == 401 and "not this server's" in wrong.json()["error"]
    right = _post(keyed, "/v1/models/vae:predict", body,
                  headers={"Authorization": f"Bearer {KEY}"})
    assert right.status_code == 200 and len(right.json()["predictions"]) == 2
    for path in ("/v1/models/vae", "/v1/models/vae/metadata", "/v2/models/vae", "/metrics"):
        answer = requests.get(keyed["url"] + path, verify=keyed["ca"], timeout=30)
        assert answer.status_code == 401, (path, answer.text)
    for path in ("/", "/v2/health/live", "/v2/health/ready"):
        answer = requests.get(keyed["url"] + path, verify=keyed["ca"], timeout=30)
        assert answer.status_code == 200, (path, answer.text)
    assert _errors(keyed, code="401") - before == 6


@pytest.mark.slow
def test_grpc_needs_the_key_but_health_does_not(keyed):
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    from kgen.serving.client import Client
    from kgen.serving.client import ServerError

    url = f"grpc://127.0.0.1:{keyed['grpc_port']}"
    with Client(url, ca_cert=keyed["ca"], api_key=KEY) as client:
        images = client.predict("vae", {"seed": [3]}, signature="generate")["images"]
        assert images.shape == (1, 8, 8, 1)
    for key in (None, KEY + "x"):
        with Client(url, ca_cert=keyed["ca"], api_key=key) as client:
            with pytest.raises(ServerError) as refused:
                client.predict("vae", {"seed": np.asarray([3])}, signature="generate")
            assert refused.value.status == "UNAUTHENTICATED", refused.value
    credentials = grpc.ssl_channel_credentials(open(keyed["ca"], "rb").read())
    with grpc.secure_channel(f"127.0.0.1:{keyed['grpc_port']}", credentials) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="vae"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.slow
def test_tls_round_trip_with_the_clients_ca_cert(keyed, tmp_path):
    import requests

    from kgen.serving.client import Client
    from kgen.serving.client import ServerError

    with Client(keyed["url"], api_key=KEY, ca_cert=keyed["ca"]) as client:
        rest = client.predict("vae", {"seed": [5, 6]}, signature="generate")["images"]
    with Client(f"grpcs://127.0.0.1:{keyed['grpc_port']}", api_key=KEY,
                ca_cert=keyed["ca"]) as client:
        over_grpc = client.predict("vae", {"seed": [5, 6]}, signature="generate")["images"]
    np.testing.assert_allclose(rest, over_grpc, atol=1e-6)
    # Without the certificate the system's authorities do not know it.
    with Client(keyed["url"], api_key=KEY) as client:
        with pytest.raises(ServerError, match="TLS"):
            client.status("vae")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{keyed['port']}/v2/health/live", timeout=10)


# === Client mistakes, deadlines, and their counts ===


LM_INPUTS = {"prompt": ["\ud800"], "seed": [1], "max_new_tokens": [4], "temperature": [1.0],
             "top_k": [0], "top_p": [1.0], "stop_token": [""]}
V2_TYPES = {"prompt": "BYTES", "seed": "INT64", "max_new_tokens": "INT32",
            "temperature": "FP32", "top_k": "INT32", "top_p": "FP32", "stop_token": "BYTES"}


@pytest.mark.slow
def test_deep_json_and_a_lone_surrogate_are_400_and_counted(open_server):
    before = {m: _errors(open_server, model=m, code="400") for m in ("vae", "lm")}
    deep = '{"instances": ' + "[" * 5000 + "]" * 5000 + "}"
    answers = {
        "deep v1": ("vae", _post(open_server, "/v1/models/vae:predict", deep)),
        "deep v2": ("vae", _post(open_server, "/v2/models/vae/infer",
                                 '{"inputs": ' + "[" * 5000 + "]" * 5000 + "}")),
        "surrogate v1": ("lm", _post(open_server, "/v1/models/lm:predict", json.dumps(
            {"instances": [dict(LM_ROW, seed=1, prompt="\ud800")]}))),
        "surrogate columnar": ("lm", _post(open_server, "/v1/models/lm:predict",
                                           json.dumps({"inputs": LM_INPUTS}))),
        "surrogate v2": ("lm", _post(open_server, "/v2/models/lm/infer", json.dumps(
            {"inputs": [{"name": k, "datatype": V2_TYPES[k], "shape": [1], "data": v}
                        for k, v in LM_INPUTS.items()]}))),
    }
    for case, (model, answer) in answers.items():
        assert answer.status_code == 400, (case, answer.status_code, answer.text)
        doc = answer.json()
        message = doc.get("error") or json.dumps(doc.get("detail"))
        _no_python_words(message)
    assert "prompt" in answers["surrogate v1"][1].json()["error"]
    assert "1024" in answers["deep v1"][1].json()["error"]
    counted = {m: _errors(open_server, model=m, code="400") - before[m] for m in before}
    assert counted == {"vae": 2, "lm": 3}, counted
    log = _tail(open_server["log"])
    assert "Traceback" not in log and "UnicodeEncodeError" not in log, log


@pytest.mark.slow
def test_a_request_over_the_deadline_is_504_and_counted(open_server):
    before = _errors(open_server, model="lm", code="504")
    n = MAX_ROWS
    inputs = {k: v * n for k, v in LM_INPUTS.items()}
    inputs.update(prompt=["ab"] * n, seed=list(range(n)), max_new_tokens=[4096] * n)
    start = time.monotonic()
    answer = _post(open_server, "/v1/models/lm:predict", json.dumps({"inputs": inputs}))
    seconds = time.monotonic() - start
    assert answer.status_code == 504, answer.text[:300]
    assert "--request-timeout" in answer.json()["error"]
    assert seconds < REQUEST_TIMEOUT + 2.0, seconds
    assert _errors(open_server, model="lm", code="504") - before == 1


# === The front door in this process ===


def _call(app, path="/v1/models/x:predict", body=b"{}", headers=()):
    """One request through an ASGI app: `(status, headers, body)`."""
    sent = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(b"content-length", str(len(body)).encode()), *headers]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


class _NoModels:
    def get_model(self, name):
        return None


def _guard(app, **options):
    from kgen.serving.options import network_options
    from kgen.serving.server import _Guard

    return _Guard(app, network_options(**options), limit=1000, repository=_NoModels())


def test_an_unexpected_error_is_500_without_its_details(caplog):
    async def broken(scope, receive, send):
        await receive()
        raise KeyError("/srv/secret/saved_models/x/1/variables")

    status, _, body = _call(_guard(broken, environ={}))
    assert status == 500
    message = json.loads(body)["error"]
    assert "server's log" in message
    _no_python_words(message)
    assert "secret" not in message and "KeyError" not in message
    assert "secret" in caplog.text  # the details are in the server's log


def test_the_key_is_compared_whole_and_health_is_open():
    async def ok(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = _guard(ok, api_key=KEY, environ={})
    for given in (None, b"Bearer", b"Bearer " + KEY[:-1].encode(), b"Basic " + KEY.encode(),
                  b"Bearer " + KEY.encode() + b"x"):
        headers = [] if given is None else [(b"authorization", given)]
        status, sent_headers, _ = _call(guard, headers=headers)
        assert status == 401, given
        assert sent_headers[b"www-authenticate"].startswith(b"Bearer")
    assert _call(guard, headers=[(b"authorization", b"bearer " + KEY.encode())])[0] == 200
    assert _call(guard, path="/v2/health/ready")[0] == 200


@pytest.mark.parametrize("options, named", [
    ({"api_key": ""}, "--api-key"),
    ({"api_key": "short"}, "16"),
    ({"api_key": "has a space in the key"}, "spaces"),
    ({"environ": {"KGEN_API_KEY": "short"}}, "KGEN_API_KEY"),
    ({"read_timeout": 0}, "--read-timeout"),
    ({"request_timeout": -1}, "--request-timeout"),
    ({"tls_cert": "cert.pem"}, "--tls-key"),
    ({"tls_cert": "/nonexistent/cert.pem", "tls_key": "/nonexistent/key.pem"}, "no such file"),
])
def test_wrong_network_options_are_named(options, named):
    from kgen.serving.options import network_options
    from kgen.serving.tree import ServeError

    options.setdefault("environ", {})
    with pytest.raises(ServeError, match=named):
        network_options(**options)


def test_a_certificate_that_is_not_one_is_named(tmp_path):
    from kgen.serving.options import network_options
    from kgen.serving.tree import ServeError

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    with pytest.raises(ServeError, match="--tls-cert .*cert.pem"):
        network_options(tls_cert=cert, tls_key=key, environ={})


@pytest.mark.slow
def test_a_grpc_request_over_the_deadline_is_deadline_exceeded(open_server):
    from kgen.serving.client import Client
    from kgen.serving.client import ServerError

    before = _errors(open_server, model="lm", protocol="tfs_grpc", code="504")
    n = MAX_ROWS
    inputs = {k: v * n for k, v in LM_INPUTS.items()}
    inputs.update(prompt=[b"ab"] * n, seed=list(range(n)), max_new_tokens=[4096] * n,
                  stop_token=[b""] * n)
    # Typed arrays: the client sends the Predict call alone, no metadata call.
    dtypes = {"prompt": object, "stop_token": object, "seed": np.int64,
              "max_new_tokens": np.int32, "top_k": np.int32, "temperature": np.float32,
              "top_p": np.float32}
    inputs = {k: np.asarray(v, dtype=dtypes[k]) for k, v in inputs.items()}
    with Client(f"grpc://127.0.0.1:{open_server['grpc_port']}") as client:
        with pytest.raises(ServerError) as late:
            client.predict("lm", inputs, signature="generate")
    assert late.value.status == "DEADLINE_EXCEEDED", late.value
    assert "--request-timeout" in late.value.message
    counted = _errors(open_server, model="lm", protocol="tfs_grpc", code="504") - before
    assert counted == 1, _error_lines(open_server)


@pytest.mark.slow
def test_kgen_sample_url_sends_the_key(keyed, tmp_path, monkeypatch):
    from tests.conftest import kgen_main

    url = f"https://127.0.0.1:{keyed['port']}/v1/models/vae"
    monkeypatch.delenv("KGEN_API_KEY", raising=False)
    code, _, err = kgen_main("sample", "--url", url, "--ca-cert", keyed["ca"], "--n", "2",
                             "--out", tmp_path / "none.png", check=False)
    assert code == 2 and "401" in err and "Authorization: Bearer" in err, err
    code, out, err = kgen_main("sample", "--url", url, "--ca-cert", keyed["ca"], "--n", "2",
                               "--api-key", KEY, "--out", tmp_path / "grid.png")
    assert code == 0 and (tmp_path / "grid.png").is_file(), err
    monkeypatch.setenv("KGEN_API_KEY", KEY)
    code, out, err = kgen_main("sample", "--url", url, "--ca-cert", keyed["ca"], "--n", "2",
                               "--out", tmp_path / "env.png")
    assert code == 0 and (tmp_path / "env.png").is_file(), err
