"""`kgen.serving.Client` and `kgen sample --url` against a running `kgen
serve` (a subprocess on 127.0.0.1): REST and gRPC answers equal the
SavedModel's own, `kgen sample --url` writes the same file as `kgen sample`
on the export, errors name the model and the server's message, and
`kgen deploy`'s health check command passes against TF Serving's REST
status route."""

import contextlib
import io
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from kgen.cli import main
from kgen.export import export_model
from kgen.serving import Client
from kgen.serving import ServerError
from kgen.serving import deploy
from tests.conftest import kgen_env
from tests.export.helpers import tiny

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="serving is checked once, on the TensorFlow backend (exports are "
           "TensorFlow graphs whatever the training backend)")
pytestmark = [pytestmark, pytest.mark.tf_only, pytest.mark.slow]

LM_INPUTS = {"prompt": ["abc", "ba"], "seed": [3, 4], "max_new_tokens": [4, 2],
             "temperature": [1.0, 0.5], "top_k": [0, 3], "top_p": [1.0, 0.9],
             "stop_token": ["", ""]}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`kgen serve` over a VAE (max_rows 4), a conditional GAN and an LM."""
    root = tmp_path_factory.mktemp("client") / "saved_models"
    export_model(tiny("vae"), root / "vae", max_rows=4)
    export_model(tiny("gan"), root / "gan")
    export_model(tiny("lm"), root / "lm")
    export_model(tiny("audio"), root / "audio", max_rows=4)
    port, grpc_port = free_port(), free_port()
    log = open(root.parent / "serve.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "kgen", "serve", str(root), "--port", str(port),
         "--grpc-port", str(grpc_port)],
        stdout=log, stderr=subprocess.STDOUT, env=kgen_env(), cwd=root.parent)
    rest = Client(f"http://127.0.0.1:{port}", timeout=10)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (root.parent / "serve.log").read_text()[-3000:]
            try:
                if all(rest.status(name)[0]["state"] == "AVAILABLE"
                       for name in ("vae", "gan", "lm")):
                    break
            except ServerError:
                pass
            assert time.monotonic() < deadline, "kgen serve did not load the models"
            time.sleep(0.5)
        yield {"root": root, "port": port, "grpc_port": grpc_port, "rest": rest,
               "grpc": Client(f"grpc://127.0.0.1:{grpc_port}")}
    finally:
        rest.close()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def local(server):
    """The SavedModels themselves, loaded by TensorFlow in this process."""
    import tensorflow as tf

    return {name: tf.saved_model.load(str(server["root"] / name / "1"))
            for name in ("vae", "gan", "lm")}


def call(loaded, signature, inputs):
    import tensorflow as tf

    specs = loaded.signatures[signature].structured_input_signature[1]
    outputs = loaded.signatures[signature](**{
        k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def assert_same(served, expected):
    assert set(served) == set(expected)
    for name, value in expected.items():
        assert served[name].dtype == value.dtype, name
        if value.dtype == object:
            assert served[name].tolist() == value.tolist(), name
        else:
            np.testing.assert_array_equal(served[name], value, err_msg=name)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_predict_equals_the_saved_model(server, local, protocol):
    client = server[protocol]
    images = call(local["vae"], "generate", {"seed": [5, 6, 7]})
    assert_same(client.predict("vae", {"seed": [5, 6, 7]}, signature="generate"), images)
    # serving_default, row form, a named version
    assert_same(client.predict("vae", instances=[5, 6, 7], version=1), images)
    latents = np.array([[0.5, -1.0], [2.0, 0.25]], "float32")
    assert_same(client.predict("vae", {"latents": latents}, signature="decode"),
                call(local["vae"], "decode", {"latents": latents}))
    encoded = client.predict("vae", instances=[{"images": images["images"][0]}],
                             signature="encode")
    assert_same(encoded, call(local["vae"], "encode", {"images": images["images"][:1]}))
    assert_same(client.predict("lm", LM_INPUTS, signature="generate"),
                call(local["lm"], "generate", LM_INPUTS))
    rows = [dict(zip(LM_INPUTS, values)) for values in zip(*LM_INPUTS.values())]
    assert_same(client.predict("lm", instances=rows), call(local["lm"], "generate", LM_INPUTS))


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_metadata_and_status(server, protocol):
    client = server[protocol]
    meta = client.metadata("vae")
    assert meta["name"] == "vae" and meta["version"] == 1
    assert {"generate", "serving_default", "encode", "decode"} <= set(meta["signatures"])
    generate = meta["signatures"]["generate"]
    assert generate["inputs"] == {"seed": {"dtype": "DT_INT64", "shape": [-1]}}
    assert generate["outputs"] == {"images": {"dtype": "DT_FLOAT", "shape": [-1, 8, 8, 1]}}
    lm = client.metadata("lm", version=1)["signatures"]["generate"]
    assert lm["inputs"]["prompt"]["dtype"] == "DT_STRING"
    assert set(lm["outputs"]) == {"text", "completion"}
    assert client.status("lm") == [{"version": 1, "state": "AVAILABLE",
                                    "error_code": "OK", "error_message": ""}]


@pytest.mark.parametrize("protocol,missing,refused", [
    ("rest", 404, 400), ("grpc", "NOT_FOUND", "INVALID_ARGUMENT")])
def test_server_errors_name_the_model_and_the_servers_message(server, protocol, missing,
                                                              refused):
    client = server[protocol]
    with pytest.raises(ServerError, match="model 'nope'.*nope") as error:
        client.predict("nope", {"seed": [1]})
    assert error.value.status == missing and error.value.model == "nope"
    with pytest.raises(ServerError, match="model 'vae'.*version 9|model 'vae'.*9") as error:
        client.status("vae", version=9)
    assert error.value.status == missing
    with pytest.raises(ServerError, match="model 'gan'.*label must be in \\[0, 10\\)") as error:
        client.predict("gan", {"seed": np.array([1], "int64"),
                               "label": np.array([10], "int32")}, signature="generate")
    assert error.value.status == refused
    with pytest.raises(ServerError, match="model 'lm'.*prompt must not be empty"):
        client.predict("lm", {**LM_INPUTS, "prompt": ["", "a"]})
    # The server keeps serving.
    assert client.predict("vae", {"seed": [1]})["images"].shape == (1, 8, 8, 1)


def test_unreachable_server_and_bad_arguments():
    port = free_port()  # nothing listens there
    with pytest.raises(ServerError, match=f"127.0.0.1:{port}.*model 'vae'.*cannot connect"):
        Client(f"http://127.0.0.1:{port}", timeout=5).status("vae")
    with pytest.raises(ServerError, match="model 'vae'"):
        Client(f"grpc://127.0.0.1:{port}", timeout=5).status("vae")
    with pytest.raises(ValueError, match="ftp://x: unknown scheme 'ftp'"):
        Client("ftp://x")
    with pytest.raises(ValueError, match="host:8500: give a scheme"):
        Client("host:8500")
    with pytest.raises(ValueError, match="gRPC needs a port"):
        Client("grpc://host")
    client = Client("host:8500", protocol="grpc")
    assert client.url == "grpc://host:8500"
    with pytest.raises(ValueError, match="exactly one of inputs"):
        client.predict("m")
    with pytest.raises(ValueError, match="version=0"):
        client.predict("m", {"seed": [1]}, version=0)


def sample(*args):
    """`kgen sample ...` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    status = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["sample", *map(str, args)])
        except SystemExit as e:
            status = e.code
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_sample_url_writes_the_same_file_as_the_export(server, tmp_path, scheme):
    port = server["port"] if scheme == "http" else server["grpc_port"]
    url = f"{scheme}://127.0.0.1:{port}/v1/models"
    root = server["root"]
    cases = [
        # 6 rows over the VAE's max_rows of 4: sent in parts, as locally
        ("vae", ["--n", "6", "--seed", "11"], "png"),
        ("vae", ["--n", "3", "--version", "1"], "npy"),
        ("gan", ["--n", "4", "--label", "7", "--seed", "-3"], "png"),
        ("lm", ["--n", "2", "--set", "prompt=bad", "--set", "max_new_tokens=6"], "txt"),
        # the WAV's rate comes from the answer's sample_rate output alone
        ("audio", ["--n", "5", "--label", "3", "--set", "num_steps=2"], "wav"),
    ]
    for name, options, suffix in cases:
        here, there = tmp_path / f"local.{suffix}", tmp_path / f"served.{suffix}"
        status, stdout, stderr = sample(root / name, *options, "--out", here)
        assert status == 0, stderr
        status, stdout, stderr = sample("--url", f"{url}/{name}", *options, "--out", there)
        assert status == 0, stderr
        assert stdout.strip() == str(there)
        assert there.read_bytes() == here.read_bytes(), (name, options)
    status, _, stderr = sample("--url", f"{url}/vae/versions/1", "--n", "2",
                               "--out", tmp_path / "v.npy")
    assert status == 0, stderr
    # Two rows against the first two of three: the same seeds, but a batch
    # of another size may round the decoder's matmuls differently in the
    # last bit (oneDNN blocks by batch size on some CPUs).
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"),
                               np.load(tmp_path / "local.npy")[:2], rtol=0, atol=1e-6)


def test_sample_url_says_what_the_server_cannot_tell(server, tmp_path):
    url = f"http://127.0.0.1:{server['port']}/v1/models"
    cases = [
        ([f"{url}/lm"], "model 'lm': the generate signature needs 'prompt', whose default "
                        "the server does not publish"),
        ([f"{url}/gan"], "model 'gan' is conditional"),
        ([f"{url}/vae", "--label", "1"], "--label 1: this model is unconditional"),
        ([f"{url}/vae", "--set", "steps=3"], "--set steps=...: the generate signature has "
                                             "no input 'steps'"),
        ([f"{url}/lm", "--set", "prompt=a", "--set", "max_new_tokens=x"],
         "--set max_new_tokens=x: expected a value of the input's dtype int32"),
        ([f"{url}/vae", "--set", "seed=4"], "--set seed=...: use --seed instead"),
        ([f"{url}/lm", "--set", "prompt="], "model 'lm': the generate signature refused "
                                             "the request (400: prompt must not be empty"),
        ([f"{url}/nope"], "model 'nope': answered 404"),
        ([f"{url}/vae", "--version", "2"], "model 'vae': answered 404"),
        ([f"{url}/vae/versions/1", "--version", "2"], "--version 2: the URL names version 1"),
        ([f"http://127.0.0.1:{server['port']}/v2/models/vae"], "the path must be /v1/models/NAME"),
        ([f"ftp://127.0.0.1/v1/models/vae"], "--url ftp://127.0.0.1/v1/models/vae: expected"),
    ]
    for args, expected in cases:
        # A language model writes text: to a .txt file (a .png is refused first).
        out = tmp_path / ("x.txt" if args[0].endswith("/lm") else "x.png")
        status, _, stderr = sample("--url", *args, "--out", out)
        assert status == 2, (args, stderr)
        line = stderr.strip()
        assert line.startswith("kgen: error: ") and "\n" not in line, line
        assert expected in line, (expected, line)
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.txt").exists()
    status, _, stderr = sample(server["root"] / "vae", "--url", f"{url}/vae")
    assert status == 2 and "not both" in stderr


def test_deploy_health_check_passes_against_the_status_route(server):
    models = deploy.find_models(server["root"])
    command = deploy.health_command(models, port=server["port"])
    run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    missing = deploy.health_command([*models, {"name": "absent"}], port=server["port"])
    run = subprocess.run(["bash", "-c", missing], capture_output=True, text=True, timeout=30)
    assert run.returncode != 0
    closed = deploy.health_command(models, port=free_port())
    assert subprocess.run(["bash", "-c", closed], capture_output=True,
                          timeout=30).returncode != 0
