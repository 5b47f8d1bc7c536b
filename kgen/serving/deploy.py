"""`kgen deploy`: the files that put a tree of exports behind TF Serving.

From `saved_models/` (one folder per model, versions `1/`, `2/`, ...
inside) `write_deployment` writes a folder holding:

- `models.config`: TF Serving's `ModelServerConfig` text proto, one
  `config { name base_path model_platform }` per model, built with TF
  Serving's own proto classes, so it is valid by construction;
- `docker-compose.yml`: `tensorflow/serving` on the tree, mounted
  read-only at `/models`: gRPC on 8500, REST on 8501, published on
  127.0.0.1 only unless `bind` names another address (TF Serving has no
  authentication of its own), a new version picked up by polling the file
  system, a health check that every model is AVAILABLE, and optionally
  server-side batching (`batching.config`);
- `kserve/<name>.yaml`: one KServe `InferenceService` per model
  (`serving.kserve.io/v1beta1`, the `tensorflow` model format, whose
  runtime is TF Serving), with a `storageUri` placeholder to replace with
  where the model's base path is uploaded, resources and autoscaling, and
  a comment saying how to put authentication in front of it.

The folder is written beside its final name and renamed into place, so a
failed run leaves the earlier folder as it was.

Example:

```python
from kgen.serving.deploy import write_deployment

write_deployment("saved_models", "deploy")
```
"""

import ipaddress
import os
import pathlib
import re
import shutil

from kgen import io as kgen_io
from kgen.errors import UserError
from kgen.export.metadata import MetadataError
from kgen.export.metadata import read_metadata
from kgen.export.metadata import uniform_inputs
from kgen.export import serving_release
from kgen.export.warmup import WARMUP_FILE
from kgen.serving import defaults

# A version folder as TF Serving reads it: a plain whole number.
_PLAIN_VERSION = re.compile(r"(0|[1-9][0-9]*)\Z")
# An InferenceService name: a DNS-1123 label that starts with a letter.
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?\Z")
MAX_NAME = 63
CONTAINER_ROOT = "/models"
CONFIG_DIR = "/config"
SCALE_METRICS = ("concurrency", "rps", "cpu", "memory")
DEFAULT_STORAGE_URI = "s3://REPLACE-WITH-YOUR-BUCKET/saved_models"
# The host address Compose publishes the ports on: this machine alone.
DEFAULT_BIND = "127.0.0.1"
# How to add authentication, written into each InferenceService's header.
AUTH_NOTE = """\
Authentication: TF Serving, the runtime this InferenceService deploys, has
none of its own, so whoever reaches the predictor can call it. Require a token
where traffic enters the cluster (with Istio: an AuthorizationPolicy on the
predictor's pods, or a RequestAuthentication for JWTs). Or serve the model
with kgen serve in a predictor container of your own (kgen[serving] installed,
kgen serve --host 0.0.0.0), which answers 401 to a request without the key it
is given: keep the key in a Secret and pass it to that container as
KGEN_API_KEY:
  kubectl create secret generic kgen-api-key --from-literal=key=$(openssl rand -hex 32)
  env:
  - name: KGEN_API_KEY
    valueFrom: {secretKeyRef: {name: kgen-api-key, key: key}}
Clients then send the header  Authorization: Bearer KEY"""


class DeployError(UserError, ValueError):
    """A `kgen deploy` argument or input tree is wrong; the message names it."""


def find_models(tree):
    """The exported models under `tree`, sorted by name.

    Returns:
        a list of dicts: `name`, `base` (path), `versions` (ints, ascending),
        `metadata` (the newest version's `kgen.json`, {} when absent).

    Raises:
        DeployError: naming the path when `tree` is missing, is one model's
            base path, holds no exported model, or a model's newest version
            is not a SavedModel.
    """
    tree = pathlib.Path(tree)
    if not tree.exists():
        raise DeployError(f"{tree}: no such folder (expected a tree of exported "
                          "models, saved_models/NAME/1/...)")
    if not tree.is_dir():
        raise DeployError(f"{tree}: is a file; expected a folder of exported models")
    own = _versions(tree)
    if own:
        raise DeployError(
            f"{tree}: is one model's base path (it holds version "
            f"{', '.join(map(str, own))}); pass the folder above it, which holds "
            "one folder per model")
    models = []
    for base in sorted(tree.iterdir()):
        if not base.is_dir() or base.name.startswith("."):
            continue
        found = _versions(base)
        if not found:
            continue
        newest = base / str(found[-1])
        if not (newest / "saved_model.pb").is_file():
            raise DeployError(
                f"{newest}: not a SavedModel (no saved_model.pb); TF Serving would "
                "fail to load this newest version of the model")
        models.append({"name": base.name, "base": base, "versions": found,
                       "metadata": _metadata(newest),
                       "warmup": (newest / WARMUP_FILE).is_file()})
    if not models:
        raise DeployError(
            f"{tree}: no exported model (expected NAME/<version>/saved_model.pb "
            "folders, as `kgen export` writes)")
    return models


def _versions(base):
    return sorted(int(p.name) for p in base.iterdir()
                  if p.is_dir() and _PLAIN_VERSION.match(p.name))


def _metadata(version_dir):
    try:
        return read_metadata(version_dir)
    except MetadataError:
        return {}


def service_name(model):
    """The InferenceService name of a model folder: lower case, `_` -> `-`.

    Raises:
        DeployError: when that is not a DNS-1123 label starting with a letter.
    """
    name = model["name"].lower().replace("_", "-")
    if not _DNS_LABEL.match(name) or len(name) > MAX_NAME:
        raise DeployError(
            f"{model['base']}: model name {model['name']!r} cannot name a KServe "
            f"InferenceService ({name!r} is not a DNS-1123 label: lower-case letters, "
            f"digits and '-', starting with a letter, at most {MAX_NAME} characters); "
            "rename the folder")
    return name


def model_server_config(models, root=CONTAINER_ROOT):
    """TF Serving's `ModelServerConfig` proto for `models` under `root`."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for model in models:
        entry = config.model_config_list.config.add()
        entry.name = model["name"]
        entry.base_path = f"{root}/{model['name']}"
        entry.model_platform = "tensorflow"
    return config


def models_config_text(models, root=CONTAINER_ROOT):
    """`models.config`: the text form of `model_server_config`."""
    from google.protobuf import text_format

    return text_format.MessageToString(model_server_config(models, root))


def batching_config_text(max_batch_size, timeout_micros=int(defaults.BATCH_WAIT_MS * 1000),
                         threads=4):
    """TF Serving's `BatchingParameters` text proto. A merged batch never
    holds more rows than `max_batch_size`, the smallest `max_rows` of the
    models, so it passes every export's row bound."""
    return (f"max_batch_size {{ value: {int(max_batch_size)} }}\n"
            f"batch_timeout_micros {{ value: {int(timeout_micros)} }}\n"
            f"num_batch_threads {{ value: {int(threads)} }}\n"
            "max_enqueued_batches { value: 100 }\n")


def health_command(models, port=8501):
    """A shell command that succeeds when every model reports AVAILABLE on
    TF Serving's REST status route. bash's /dev/tcp, because the
    tensorflow/serving image has no curl or wget."""
    checks = [
        f"exec 3<>/dev/tcp/127.0.0.1/{port} && "
        f"printf 'GET /v1/models/{model['name']} HTTP/1.0\\r\\n\\r\\n' >&3 && "
        "grep -q AVAILABLE <&3 && exec 3<&-"
        for model in models]
    return " && ".join(checks)


def runtime(models, image=None, runtime_version=None):
    """`(image, runtime_version)`: TF Serving's Docker image for Compose and
    the same release as KServe's `runtimeVersion`.

    By default the release every model's `kgen.json` names as proven to
    load it (`kgen.export.serving_release`; the newest of them, when models
    name different ones), never `latest`. `image` or `runtime_version`
    overrides it: either one alone sets both (`--image
    tensorflow/serving:2.19.1` gives runtimeVersion 2.19.1).
    """
    if image is None and runtime_version is None:
        releases = []
        for model in models:
            metadata = model["metadata"]
            release = metadata.get("tf_serving_release")
            if not release:
                writer = (metadata.get("tensorflow_version")
                          or serving_release.tensorflow_version())
                release = serving_release.release_for(writer)
            if not release:
                raise DeployError(
                    f"{model['base']}: exported by TensorFlow {writer}, which no TF "
                    f"Serving release kgen knows is proven to load; pass --image "
                    f"tensorflow/serving:TAG (and --runtime-version TAG) for a "
                    f"release you have checked")
            releases.append(release)
        release = max(releases, key=lambda r: tuple(int(p) for p in r.split(".")
                                                    if p.isdigit()))
        return serving_release.image(release), release
    if image is None:
        return serving_release.image(runtime_version), runtime_version
    if runtime_version is None:
        name, _, tag = image.rpartition(":")
        if not name or "/" in tag or not tag or tag == "latest":
            raise DeployError(
                f"--image {image}: name a release tag (tensorflow/serving:2.20.0), or "
                f"give --runtime-version for KServe's runtimeVersion")
        runtime_version = tag
    return image, runtime_version


def compose(models, tree_source, image, rest_port=8501, grpc_port=8500,
            poll_seconds=30, batching=False, bind=DEFAULT_BIND):
    """The Docker Compose document (a dict) running TF Serving on the tree,
    its ports published on the host address `bind` alone."""
    command = [f"--model_config_file={CONFIG_DIR}/models.config",
               f"--file_system_poll_wait_seconds={int(poll_seconds)}"]
    volumes = [
        {"type": "bind", "source": str(tree_source), "target": CONTAINER_ROOT,
         "read_only": True},
        {"type": "bind", "source": "./models.config",
         "target": f"{CONFIG_DIR}/models.config", "read_only": True},
    ]
    if batching:
        command += ["--enable_batching=true",
                    f"--batching_parameters_file={CONFIG_DIR}/batching.config"]
        volumes.append({"type": "bind", "source": "./batching.config",
                        "target": f"{CONFIG_DIR}/batching.config", "read_only": True})
    return {"services": {"tf-serving": {
        "image": image,
        # The image's entrypoint starts tensorflow_model_server with gRPC on
        # 8500 and REST on 8501 and passes these arguments on.
        "command": command,
        "ports": [f"{_host(bind)}:{int(grpc_port)}:8500",
                  f"{_host(bind)}:{int(rest_port)}:8501"],
        "volumes": volumes,
        "healthcheck": {
            "test": ["CMD", "bash", "-c", health_command(models)],
            "interval": "10s", "timeout": "5s", "retries": 3, "start_period": "60s",
        },
        "restart": "unless-stopped",
    }}}


def _host(bind):
    """An address as Compose's `ports` entries write it (IPv6 in brackets)."""
    return f"[{bind}]" if ":" in bind else bind


def _exposure(bind):
    """The Compose header's lines on who can reach the published ports."""
    address = ipaddress.ip_address(bind)
    if address.is_loopback:
        return ("TF Serving has no authentication: the ports are published on this "
                "machine alone\n(kgen deploy --bind 0.0.0.0 publishes them on every "
                "interface).\n")
    where = "every interface" if address.is_unspecified else bind
    return (f"TF Serving has no authentication: the ports are published on {where}, "
            "and whoever\nreaches them can call every model; put an authenticating "
            "proxy in front of them.\n")


def check_bind(bind):
    """`bind` as an IP address Compose can publish ports on.

    Raises:
        DeployError: naming it when it is not an IPv4 or IPv6 address.
    """
    try:
        return str(ipaddress.ip_address(str(bind).strip("[]")))
    except ValueError:
        raise DeployError(f"--bind {bind!r}: not an IP address; expected the host "
                          f"address to publish the ports on, e.g. {DEFAULT_BIND} (this "
                          "machine only, the default) or 0.0.0.0 (every interface)") from None


def inference_service(model, runtime_version, storage_uri=DEFAULT_STORAGE_URI,
                      min_replicas=1, max_replicas=3, scale_metric="concurrency",
                      scale_target=4, cpu="1", memory="2Gi"):
    """One KServe `InferenceService` (a dict) serving `model` with TF Serving
    release `runtime_version` (the tag of KServe's TF Serving image)."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": service_name(model),
            "labels": {"app.kubernetes.io/part-of": "kgen"},
        },
        "spec": {"predictor": {
            "minReplicas": int(min_replicas),
            "maxReplicas": int(max_replicas),
            "scaleMetric": scale_metric,
            "scaleTarget": int(scale_target),
            "model": {
                "modelFormat": {"name": "tensorflow"},
                # KServe's stock TF Serving is older than the TensorFlow
                # that writes kgen's exports: pin a release that loads them.
                "runtimeVersion": str(runtime_version),
                "storageUri": f"{storage_uri.rstrip('/')}/{model['name']}",
                "resources": {
                    "requests": {"cpu": str(cpu), "memory": str(memory)},
                    "limits": {"cpu": str(cpu), "memory": str(memory)},
                },
            },
        }},
    }


def _yaml(document, header):
    import yaml

    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comment + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def check_options(min_replicas=1, max_replicas=3, scale_metric="concurrency",
                  scale_target=4, poll_seconds=30, rest_port=8501, grpc_port=8500):
    """Refuse settings the manifests cannot hold, naming the option."""
    for flag, value, low in (("--min-replicas", min_replicas, 0),
                             ("--max-replicas", max_replicas, 1),
                             ("--scale-target", scale_target, 1),
                             ("--poll-seconds", poll_seconds, 1),
                             ("--rest-port", rest_port, 1),
                             ("--grpc-port", grpc_port, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DeployError(f"{flag} {value!r}: must be an integer >= {low}")
    if max_replicas < min_replicas:
        raise DeployError(f"--max-replicas {max_replicas}: must be at least "
                          f"--min-replicas {min_replicas}")
    if scale_metric not in SCALE_METRICS:
        raise DeployError(f"--scale-metric {scale_metric!r}: must be one of "
                          f"{', '.join(SCALE_METRICS)}")
    for flag, port in (("--rest-port", rest_port), ("--grpc-port", grpc_port)):
        if port > 65535:
            raise DeployError(f"{flag} {port}: must be at most 65535")
    if rest_port == grpc_port:
        raise DeployError(f"--rest-port {rest_port}: must differ from --grpc-port")


def write_deployment(tree, out, overwrite=False, image=None, runtime_version=None,
                     rest_port=8501,
                     grpc_port=8500, poll_seconds=30, batching=False,
                     storage_uri=DEFAULT_STORAGE_URI, min_replicas=1, max_replicas=3,
                     scale_metric="concurrency", scale_target=4, bind=DEFAULT_BIND):
    """Write models.config, docker-compose.yml and kserve/<name>.yaml to `out`.

    Args:
        tree: the folder of exported models (`saved_models/`).
        out: the folder to write; it must not exist or be empty, unless
            `overwrite` (then it is replaced as a whole).
        image: TF Serving's Docker image (default: the release the exports'
            `kgen.json` name as proven to load them; see `runtime`).
        runtime_version: KServe's `runtimeVersion` (default: the same
            release as `image`).
        rest_port, grpc_port: the host ports Compose publishes.
        bind: the host address Compose publishes them on (default
            127.0.0.1, this machine alone; 0.0.0.0 for every interface).
        poll_seconds: how often TF Serving looks for a new version.
        batching: turn on TF Serving's server-side batching.
        storage_uri: where the tree is uploaded for KServe; each model's
            `storageUri` is `storage_uri/NAME` (default: a placeholder).
        min_replicas, max_replicas, scale_metric, scale_target: KServe's
            autoscaling of each model's predictor.

    Returns:
        a dict: `out`, `models` (as `find_models`), `files` (paths written,
        relative to `out`), `notes` (lines for the user).
    """
    check_options(min_replicas, max_replicas, scale_metric, scale_target,
                  poll_seconds, rest_port, grpc_port)
    bind = check_bind(bind)
    tree, out = pathlib.Path(tree), pathlib.Path(out)
    models = find_models(tree)
    names = {}
    for model in models:
        name = service_name(model)
        if name in names:
            raise DeployError(
                f"{model['base']}: models {names[name]!r} and {model['name']!r} both "
                f"become InferenceService {name!r}; rename one folder")
        names[name] = model["name"]
    image, runtime_version = runtime(models, image, runtime_version)
    _check_out(tree, out, overwrite)

    notes = []
    cold = [m["name"] for m in models if not m["warmup"]]
    if cold:
        notes.append(f"no warm-up requests in the newest version of {', '.join(cold)} "
                     "(exported by an older kgen): export again to add them")
    files = {"models.config": models_config_text(models)}
    if batching:
        rows = [m["metadata"].get("max_rows") for m in models]
        rows = [r for r in rows if isinstance(r, int) and r > 0]
        files["batching.config"] = batching_config_text(min(rows) if rows else 32)
        # Inputs an export holds to one value per call (as its kgen.json
        # records them): merged requests must agree on them.
        uniform = {}
        for model in models:
            shared = tuple(sorted(uniform_inputs(model["metadata"])))
            if shared:
                uniform.setdefault(shared, []).append(model["name"])
        for shared, names in uniform.items():
            notes.append(
                f"batching merges requests: requests to {', '.join(names)} "
                f"must then share {', '.join(shared)} (one loop runs per merged batch)")
    tree_source = os.path.relpath(tree.resolve(), out.resolve().parent / out.name)
    files["docker-compose.yml"] = _yaml(
        compose(models, tree_source, image, rest_port, grpc_port, poll_seconds, batching,
                bind),
        "TensorFlow Serving on the models exported under "
        f"{tree_source} (written by kgen deploy).\n"
        f"{image}: the TF Serving release proven to load these exports.\n"
        "Start: docker compose up -d   (REST on "
        f"{_host(bind)}:{rest_port}, gRPC on {_host(bind)}:{grpc_port})\n"
        + _exposure(bind)
        + f"Check: curl localhost:{rest_port}/v1/models/{models[0]['name']}")
    for model in models:
        name = service_name(model)
        files[f"kserve/{model['name']}.yaml"] = _yaml(
            inference_service(model, runtime_version, storage_uri, min_replicas,
                              max_replicas, scale_metric, scale_target),
            f"KServe InferenceService for the kgen model {model['name']!r}.\n"
            f"Upload {model['base']}/ (its version folders) and set storageUri to it"
            + (" (replace the placeholder)" if storage_uri == DEFAULT_STORAGE_URI else "")
            + ".\n"
            f"Apply: kubectl apply -f kserve/{model['name']}.yaml\n"
            f"Served as /v1/models/{name}:predict (KServe names the model after the "
            "InferenceService).\n" + AUTH_NOTE)
    if storage_uri == DEFAULT_STORAGE_URI:
        notes.append(f"replace the storageUri placeholder ({DEFAULT_STORAGE_URI}/NAME) "
                     "in kserve/*.yaml, or pass --storage-uri")
    _publish(out, files, overwrite)
    return {"out": out, "models": models, "files": sorted(files), "notes": notes,
            "image": image, "runtime_version": runtime_version}


def _check_out(tree, out, overwrite):
    if out.exists() and not out.is_dir():
        raise DeployError(f"--out {out}: is a file; expected a folder")
    real_tree, real_out = tree.resolve(), out.resolve()
    if real_out == real_tree or real_tree in real_out.parents or real_out in real_tree.parents:
        raise DeployError(f"--out {out}: must lie outside {tree} (and not hold it)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DeployError(f"--out {out}: exists and is not empty; pass --overwrite "
                          "to replace it")


def _publish(out, files, overwrite):
    """Write `files` into a temporary sibling of `out`, then rename it into
    place (`kgen.io.atomic_path`: an earlier `out` is moved aside first, put
    back if the rename fails, and removed last)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_abandoned(out)
    with kgen_io.atomic_path(out) as tmp:
        for name, text in files.items():
            kgen_io.write_text(tmp / name, text)
        if out.exists() and any(out.iterdir()) and not overwrite:  # appeared meanwhile
            raise DeployError(f"--out {out}: exists and is not empty; pass --overwrite")


def _clean_abandoned(out):
    """Remove temporaries of `out` left by a killed `kgen deploy`."""
    prefix = f"{out.name}.tmp-"
    for path in out.parent.iterdir():
        if path.name.startswith(prefix) and path.is_dir():
            pid = path.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and not kgen_io.process_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
