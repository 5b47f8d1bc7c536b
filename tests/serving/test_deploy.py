"""`kgen deploy`: models.config parses as TF Serving's ModelServerConfig, the
Compose file and each KServe InferenceService parse and name each model
(with only the fields KServe's own API knows), and every bad tree or option
is refused naming the path or value."""

import os
import shutil

import keras
import pytest

from kgen.cli import main
from kgen.export import export_model
from kgen.export import read_metadata
from kgen.export import serving_release
from kgen.serving import deploy
from tests.export.helpers import tiny

yaml = pytest.importorskip("yaml", reason="kgen deploy writes YAML with PyYAML "
                                          "(the serving extra)")

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="serving is checked once, on the TensorFlow backend (exports are "
           "TensorFlow graphs whatever the training backend)")
pytestmark = [pytestmark, pytest.mark.tf_only]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """saved_models/ with a VAE (two versions, max_rows 8) and an LM."""
    root = tmp_path_factory.mktemp("deploy") / "saved_models"
    first = export_model(tiny("vae"), root / "vae_digits", max_rows=8)
    shutil.copytree(first, root / "vae_digits" / "2")  # a second version
    export_model(tiny("lm"), root / "lm", max_rows=16)
    (root / "README.md").write_text("exports live here\n")
    (root / "notes").mkdir()  # a folder without versions is not a model
    return root


def deploy_cli(*args):
    """`kgen deploy ...` in this process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    status = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["deploy", *map(str, args)])
        except SystemExit as e:
            status = e.code
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def written(tree):
    out = tree.parent / "deploy"
    status, stdout, stderr = deploy_cli(tree, "--out", out, "--enable-batching",
                                        "--max-replicas", "5", "--scale-target", "2")
    assert status == 0, stderr
    assert "models:  lm, vae_digits" in stdout
    return out


def test_files_written(written):
    files = sorted(str(p.relative_to(written)) for p in written.rglob("*") if p.is_file())
    assert files == ["batching.config", "docker-compose.yml", "kserve/lm.yaml",
                     "kserve/vae_digits.yaml", "models.config"]
    assert not [p for p in written.parent.iterdir() if ".tmp-" in p.name]


def test_models_config_is_a_model_server_config(written):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse((written / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    entries = [(c.name, c.base_path, c.model_platform)
               for c in config.model_config_list.config]
    assert entries == [("lm", "/models/lm", "tensorflow"),
                       ("vae_digits", "/models/vae_digits", "tensorflow")]


def test_compose_runs_tf_serving_on_the_tree(written, tree):
    doc = yaml.safe_load((written / "docker-compose.yml").read_text())
    service = doc["services"]["tf-serving"]
    # The release proven to load what this TensorFlow writes, never latest.
    release = serving_release.release_for(serving_release.tensorflow_version())
    assert release and service["image"] == f"tensorflow/serving:{release}"
    # Published on this machine alone: TF Serving has no authentication.
    assert service["ports"] == ["127.0.0.1:8500:8500", "127.0.0.1:8501:8501"]
    mounts = {v["target"]: v for v in service["volumes"]}
    models = mounts["/models"]
    assert models["read_only"] is True
    # Compose resolves a relative source against the file's folder.
    assert (written / models["source"]).resolve() == tree.resolve()
    for target, source in (("/config/models.config", "models.config"),
                           ("/config/batching.config", "batching.config")):
        assert mounts[target]["read_only"] and (written / mounts[target]["source"]).is_file()
        assert mounts[target]["source"] == f"./{source}"
    assert service["command"] == [
        "--model_config_file=/config/models.config",
        "--file_system_poll_wait_seconds=30",
        "--enable_batching=true",
        "--batching_parameters_file=/config/batching.config"]
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"]
    for name in ("lm", "vae_digits"):
        assert f"GET /v1/models/{name} HTTP/1.0" in test[3]
    # A merged batch stays within the smallest max_rows (the VAE's 8).
    assert "max_batch_size { value: 8 }" in (written / "batching.config").read_text()


def _unknown_keys(document, cls, where="spec"):
    """Keys of `document` that KServe's API class `cls` (or a nested one)
    does not have."""
    import kserve  # noqa: F401
    import kubernetes.client

    known = {json_key: name for name, json_key in cls.attribute_map.items()}
    unknown = []
    for key, value in document.items():
        if key not in known:
            unknown.append(f"{where}.{key}")
            continue
        kind = cls.openapi_types[known[key]]
        nested = getattr(kserve, kind, None) or getattr(kubernetes.client, kind, None)
        if isinstance(value, dict) and nested is not None and hasattr(nested, "attribute_map"):
            unknown += _unknown_keys(value, nested, f"{where}.{key}")
    return unknown


def test_each_inference_service_names_its_model(written, tree):
    kserve = pytest.importorskip("kserve", reason="KServe's API classes check the fields")
    for name, service in (("lm", "lm"), ("vae_digits", "vae-digits")):
        doc = yaml.safe_load((written / "kserve" / f"{name}.yaml").read_text())
        assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
        assert doc["kind"] == "InferenceService"
        assert doc["metadata"]["name"] == service
        predictor = doc["spec"]["predictor"]
        assert predictor["model"]["modelFormat"] == {"name": "tensorflow"}
        release = serving_release.release_for(serving_release.tensorflow_version())
        assert predictor["model"]["runtimeVersion"] == release
        assert predictor["model"]["storageUri"] == f"{deploy.DEFAULT_STORAGE_URI}/{name}"
        assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 5)
        assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", 2)
        assert predictor["model"]["resources"]["limits"]["memory"] == "2Gi"
        assert _unknown_keys(doc["spec"], kserve.V1beta1InferenceServiceSpec) == []
        assert _unknown_keys(doc["metadata"], __import__("kubernetes").client.V1ObjectMeta,
                             "metadata") == []


def test_each_inference_service_says_how_to_add_auth(written):
    text = (written / "kserve" / "lm.yaml").read_text()
    header = "".join(line[2:] + "\n" for line in text.splitlines() if line.startswith("# "))
    assert "TF Serving, the runtime this InferenceService deploys, has\nnone of its own" \
        in header
    assert "name: KGEN_API_KEY" in header and "secretKeyRef: {name: kgen-api-key" in header
    assert "Authorization: Bearer" in header
    # The note is a comment: the document itself holds no env or secret.
    assert "KGEN_API_KEY" not in str(yaml.safe_load(text))


@pytest.mark.parametrize("bind, host", [("0.0.0.0", "0.0.0.0"), ("10.1.2.3", "10.1.2.3"),
                                        ("::1", "[::1]"), ("[::]", "[::]")])
def test_bind_publishes_the_ports_on_that_address(tree, tmp_path, bind, host):
    status, _, stderr = deploy_cli(tree, "--out", tmp_path / "d", "--bind", bind,
                                   "--rest-port", "9501")
    assert status == 0, stderr
    text = (tmp_path / "d" / "docker-compose.yml").read_text()
    ports = yaml.safe_load(text)["services"]["tf-serving"]["ports"]
    assert ports == [f"{host}:8500:8500", f"{host}:9501:8501"]
    loopback = bind == "::1"
    assert ("published on this machine alone" in text) == loopback
    assert ("put an authenticating" in text) == (not loopback)
    assert ("published on every interface" in text) == (bind in ("0.0.0.0", "[::]"))


def test_storage_uri_and_overwrite(tree, written):
    status, _, stderr = deploy_cli(tree, "--out", written)
    assert status == 2 and f"--out {written}: exists and is not empty" in stderr
    status, stdout, stderr = deploy_cli(tree, "--out", written, "--overwrite",
                                        "--storage-uri", "gs://bucket/models/")
    assert status == 0, stderr
    doc = yaml.safe_load((written / "kserve" / "lm.yaml").read_text())
    assert doc["spec"]["predictor"]["model"]["storageUri"] == "gs://bucket/models/lm"
    assert not (written / "batching.config").exists()  # replaced as a whole
    assert "replace the storageUri placeholder" not in stdout


def _refused(args, *expected):
    status, _, stderr = deploy_cli(*args)
    assert status == 2, stderr
    line = stderr.strip()
    assert line.startswith("kgen: error: ") and "\n" not in line, line
    for text in expected:
        assert text in line, line
    return line


def test_refusals_name_the_path_or_value(tree, tmp_path):
    out = tmp_path / "out"
    _refused([tmp_path / "nothing", "--out", out], f"{tmp_path / 'nothing'}: no such folder")
    (tmp_path / "file").write_text("x")
    _refused([tmp_path / "file", "--out", out], f"{tmp_path / 'file'}: is a file")
    _refused([tree / "vae_digits", "--out", out],
             f"{tree / 'vae_digits'}: is one model's base path", "version 1, 2")
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    _refused([empty, "--out", out], f"{empty}: no exported model")
    _refused([tree, "--out", tree / "deploy"], f"--out {tree / 'deploy'}: must lie outside")
    _refused([tree, "--out", tree.parent], f"--out {tree.parent}: must lie outside")
    _refused([tree, "--out", out, "--scale-metric", "qps"], "--scale-metric 'qps'")
    _refused([tree, "--out", out, "--max-replicas", "0"], "--max-replicas 0")
    _refused([tree, "--out", out, "--min-replicas", "3", "--max-replicas", "2"],
             "--max-replicas 2: must be at least --min-replicas 3")
    _refused([tree, "--out", out, "--rest-port", "8500"], "--rest-port 8500")
    for bind in ("localhost", "0.0.0.0:8501", "300.1.1.1", ""):
        _refused([tree, "--out", out, "--bind", bind], f"--bind {bind!r}: not an IP address",
                 "0.0.0.0")
    assert not out.exists(), "a refused deploy writes nothing"


def test_refusals_of_models_name_the_folder(tree, tmp_path):
    out = tmp_path / "out"
    copy = tmp_path / "models"
    shutil.copytree(tree / "lm", copy / "lm")
    (copy / "lm" / "2").mkdir()  # the newest version is no SavedModel
    _refused([copy, "--out", out], f"{copy / 'lm' / '2'}: not a SavedModel")
    shutil.rmtree(copy / "lm" / "2")
    shutil.copytree(copy / "lm", copy / "Bad.Name")
    _refused([copy, "--out", out], f"{copy / 'Bad.Name'}: model name 'Bad.Name' cannot "
                                   "name a KServe InferenceService")
    os.rename(copy / "Bad.Name", copy / "my_lm")
    shutil.copytree(copy / "lm", copy / "my-lm")
    _refused([copy, "--out", out], "models 'my-lm' and 'my_lm' both become "
                                   "InferenceService 'my-lm'")
    assert not out.exists()
    shutil.rmtree(copy / "my-lm")
    (copy / "my_lm" / "1" / "assets.extra" / "tf_serving_warmup_requests").unlink()
    status, stdout, stderr = deploy_cli(copy, "--out", out)
    assert status == 0, stderr
    assert ("note:    no warm-up requests in the newest version of my_lm (exported by "
            "an older kgen)") in stdout


def test_a_file_as_out_is_refused(tree, tmp_path):
    target = tmp_path / "deploy.txt"
    target.write_text("keep me")
    _refused([tree, "--out", target], f"--out {target}: is a file")
    assert target.read_text() == "keep me"


def test_health_command_asks_each_model(tree):
    models = deploy.find_models(tree)
    assert [m["name"] for m in models] == ["lm", "vae_digits"]
    assert [m["versions"] for m in models] == [[1], [1, 2]]
    command = deploy.health_command(models, port=9)
    assert command.count("/dev/tcp/127.0.0.1/9") == 2


def test_the_runtime_is_the_release_kgen_json_names(tree, tmp_path):
    """kgen.json records the TensorFlow that wrote the export and the TF
    Serving release proven to load it; --image and --runtime-version
    override it (either alone sets both); an export no known release loads
    is refused, naming its TensorFlow."""
    metadata = read_metadata(tree / "lm" / "1")
    assert metadata["tensorflow_version"] == serving_release.tensorflow_version()
    assert metadata["tf_serving_release"] == serving_release.release_for(
        metadata["tensorflow_version"])
    models = deploy.find_models(tree)
    release = metadata["tf_serving_release"]
    assert deploy.runtime(models) == (f"tensorflow/serving:{release}", release)
    assert deploy.runtime(models, image="tensorflow/serving:2.19.1") == (
        "tensorflow/serving:2.19.1", "2.19.1")
    assert deploy.runtime(models, runtime_version="2.19.1") == (
        "tensorflow/serving:2.19.1", "2.19.1")
    assert deploy.runtime(models, image="my.registry/tfs:2.20.0-gpu",
                          runtime_version="2.20.0-gpu") == (
        "my.registry/tfs:2.20.0-gpu", "2.20.0-gpu")
    with pytest.raises(deploy.DeployError, match=r"--image tensorflow/serving:latest: name "
                                                 r"a release tag"):
        deploy.runtime(models, image="tensorflow/serving:latest")
    newer = [{**models[0], "metadata": {"tensorflow_version": "9.9.0"}}]
    with pytest.raises(deploy.DeployError, match=r"exported by TensorFlow 9\.9\.0, which "
                                                 r"no TF Serving release"):
        deploy.runtime(newer)
    status, stdout, stderr = deploy_cli(tree, "--out", tmp_path / "d", "--runtime-version",
                                        "2.19.1")
    assert status == 0, stderr
    assert "serving: tensorflow/serving:2.19.1 (KServe runtimeVersion 2.19.1)" in stdout
    doc = yaml.safe_load((tmp_path / "d" / "kserve" / "lm.yaml").read_text())
    assert doc["spec"]["predictor"]["model"]["runtimeVersion"] == "2.19.1"
