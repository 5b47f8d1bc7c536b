"""A client for TF Serving's APIs: REST (KServe's V1 protocol) and gRPC.

The same calls work against `kgen serve`, `tensorflow/serving` (Docker) and
a KServe `InferenceService` with the tensorflow predictor:

- `Client("http://host:8501")`: TF Serving's REST API through `requests`:
  `POST /v1/models/NAME[/versions/N]:predict` in columnar (`inputs`) or row
  (`instances`) form, `GET /v1/models/NAME[/versions/N]` (status) and
  `.../metadata`.
- `Client("grpc://host:8500")`, or `Client("host:8500", protocol="grpc")`:
  TF Serving's gRPC `PredictionService` (`Predict`, `GetModelMetadata`)
  and `ModelService` (`GetModelStatus`) through the official
  `tensorflow-serving-api` stubs.

A server started with an API key (`kgen serve --api-key`) is given it as
`api_key=` (default: the `KGEN_API_KEY` environment variable), sent as
`Authorization: Bearer KEY` (REST) or `authorization` metadata (gRPC). A
server with TLS is reached with `https://` or `grpcs://`, or `grpc://`
with `ca_cert=`; `ca_cert` is the PEM file of the certificate authority
(or the self-signed certificate) to trust instead of the system's.

Answers are numpy arrays typed by the signature (strings as `bytes`, as a
SavedModel returns them), so a served answer compares with the SavedModel's
own. A refusal or a failure to reach the server raises `ServerError`
naming the model, the server's status and its message.

Example:

```python
from kgen.serving import Client

client = Client("http://127.0.0.1:8501")
images = client.predict("vae_digits", {"seed": [0, 1, 2]}, signature="generate")["images"]
client.metadata("vae_digits")["signatures"]["generate"]["inputs"]
# {'seed': {'dtype': 'DT_INT64', 'shape': [-1]}}
```
"""

import base64
import os
import urllib.parse

import numpy as np

from kgen.errors import UserError
from kgen.errors import first_line

DEFAULT_TIMEOUT = 120.0
# gRPC's default message limit is 4 MB; a batch of images can be larger.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
PROTOCOLS = ("rest", "grpc")
API_KEY_ENV = "KGEN_API_KEY"


class ServerError(UserError, RuntimeError):
    """A server refused a request or could not be reached.

    Attributes:
        model: the model the request was for.
        status: the HTTP status (REST) or gRPC status name, or None when
            the server could not be reached.
        message: the server's own message.
    """

    def __init__(self, model, status, message, where):
        self.model, self.status, self.message = model, status, message
        status_text = f" answered {status}" if status is not None else ""
        super().__init__(f"{where}: model {model!r}:{status_text} {message}".rstrip())


class Client:
    """TF Serving's REST or gRPC API on one server.

    Args:
        url: `http://host:port` or `https://...` for REST (a path prefix
            before `/v1` is kept), `grpc://host:port` for gRPC, or
            `host:port` with `protocol`.
        protocol: `"rest"` or `"grpc"` (default: from the URL's scheme).
        timeout: seconds one call may take.
        api_key: the server's API key (default: `$KGEN_API_KEY`, else none).
        ca_cert: a PEM file of certificates to trust for TLS (default: the
            system's); with `grpc://` it turns TLS on.

    Example:

    ```python
    with Client("grpc://127.0.0.1:8500") as client:
        text = client.predict("lm", {"prompt": ["ROMEO:"], "seed": [0], ...})["text"]
    ```
    """

    def __init__(self, url, protocol=None, timeout=DEFAULT_TIMEOUT, api_key=None,
                 ca_cert=None):
        if protocol is not None and protocol not in PROTOCOLS:
            raise ValueError(f"protocol={protocol!r}: must be one of {', '.join(PROTOCOLS)}")
        text = str(url)
        parsed = urllib.parse.urlsplit(text if "://" in text else f"//{text}")
        scheme = parsed.scheme.lower()
        if scheme not in ("", "http", "https", "grpc", "grpcs"):
            raise ValueError(f"{url}: unknown scheme {scheme!r} (use http://, https://, "
                             "grpc:// or grpcs://)")
        if protocol is None:
            if not scheme:
                raise ValueError(f"{url}: give a scheme (http:// or grpc://) or protocol=")
            protocol = "grpc" if scheme.startswith("grpc") else "rest"
        if protocol == "rest" and scheme.startswith("grpc"):
            raise ValueError(f"{url}: protocol='rest' needs http:// or https://")
        if protocol == "grpc" and scheme in ("http", "https"):
            raise ValueError(f"{url}: protocol='grpc' needs grpc://host:port or host:port")
        if not parsed.hostname:
            raise ValueError(f"{url}: no host")
        try:
            parsed.port
        except ValueError:
            raise ValueError(f"{url}: the port is not a number in [0, 65535]") from None
        if protocol == "grpc" and not parsed.port:
            raise ValueError(f"{url}: gRPC needs a port (TF Serving's is 8500)")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout={timeout!r}: must be a number of seconds > 0")
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV) or None
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ValueError("api_key= must be a non-empty string")
        if ca_cert is not None and not os.path.isfile(ca_cert):
            raise ValueError(f"ca_cert={str(ca_cert)!r}: no such file (a PEM file)")
        if ca_cert is not None and scheme == "http":
            raise ValueError(f"{url}: ca_cert= is for TLS; use https://")
        self.protocol = protocol
        self.timeout = float(timeout)
        self.api_key = api_key
        self.ca_cert = None if ca_cert is None else str(ca_cert)
        self._signatures = {}
        if protocol == "rest":
            base = f"{scheme or 'http'}://{parsed.netloc}{parsed.path.rstrip('/')}"
            self.url = base
            self._session = None
        else:
            self.tls = scheme == "grpcs" or ca_cert is not None
            self.url = f"{'grpcs' if self.tls else 'grpc'}://{parsed.hostname}:{parsed.port}"
            self._target = f"{parsed.hostname}:{parsed.port}"
            self._channel = None

    def __repr__(self):
        return f"Client({self.url!r}, protocol={self.protocol!r})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close the connection (a later call opens a new one)."""
        if self.protocol == "rest" and self._session is not None:
            self._session.close()
            self._session = None
        elif self.protocol == "grpc" and self._channel is not None:
            self._channel.close()
            self._channel = None

    # === Calls ===

    def predict(self, model, inputs=None, *, instances=None, signature="serving_default",
                version=None):
        """Run `signature` of `model` on the server.

        Args:
            model: the model's name.
            inputs: columnar form, `{input name: array or list}` (one row
                per leading element).
            instances: row form instead, a list with one item per row: a
                `{input name: value}` dict, or a bare value when the
                signature has one input.
            signature: the signature's name.
            version: a version number (default: the newest the server has).

        Returns:
            `{output name: np.ndarray}` typed by the signature.
        """
        if (inputs is None) == (instances is None):
            raise ValueError("pass exactly one of inputs= (columnar) or instances= (rows)")
        if instances is not None and (not isinstance(instances, (list, tuple)) or not instances):
            raise ValueError("instances= must be a non-empty list, one item per row")
        if inputs is not None and not isinstance(inputs, dict):
            raise ValueError("inputs= must be a dict of named tensors")
        version = _check_version(version)
        if self.protocol == "rest":
            return self._rest_predict(model, inputs, instances, signature, version)
        return self._grpc_predict(model, inputs, instances, signature, version)

    def metadata(self, model, version=None):
        """The model's signatures, as TF Serving's metadata call gives them.

        Returns:
            `{"name", "version", "signatures": {name: {"inputs": {input:
            {"dtype": "DT_INT64", "shape": [-1]}}, "outputs": {...},
            "method_name"}}}`; a shape is None when its rank is unknown.
        """
        from tensorflow_serving.apis import get_model_metadata_pb2

        version = _check_version(version)
        if self.protocol == "rest":
            from google.protobuf import json_format

            doc = self._rest("GET", model, version, "/metadata")
            try:
                signature_map = json_format.ParseDict(
                    doc["metadata"]["signature_def"],
                    get_model_metadata_pb2.SignatureDefMap(), ignore_unknown_fields=True)
                served = doc.get("model_spec", {}).get("version")
            except (KeyError, TypeError, json_format.ParseError) as e:
                raise ServerError(model, None, f"unexpected metadata answer ({e})",
                                  self.url) from None
        else:
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=_model_spec(model, version), metadata_field=["signature_def"])
            response = self._grpc("PredictionService", "GetModelMetadata", model, request)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            if not response.metadata["signature_def"].Unpack(signature_map):
                raise ServerError(model, None, "metadata holds no SignatureDefMap", self.url)
            served = response.model_spec.version.value if response.model_spec.HasField(
                "version") else None
        signatures = {name: _signature_dict(sig)
                      for name, sig in signature_map.signature_def.items()}
        self._signatures[(model, version)] = signatures
        return {"name": model, "version": int(served) if served else None,
                "signatures": signatures}

    def status(self, model, version=None):
        """The model's versions on the server: a list of `{"version": int,
        "state": "AVAILABLE" | "LOADING" | ..., "error_code", "error_message"}`."""
        from tensorflow_serving.apis import get_model_status_pb2

        version = _check_version(version)
        if self.protocol == "rest":
            from google.protobuf import json_format

            doc = self._rest("GET", model, version, "")
            try:
                response = json_format.ParseDict(
                    doc, get_model_status_pb2.GetModelStatusResponse(),
                    ignore_unknown_fields=True)
            except json_format.ParseError as e:
                raise ServerError(model, None, f"unexpected status answer ({e})",
                                  self.url) from None
        else:
            request = get_model_status_pb2.GetModelStatusRequest(
                model_spec=_model_spec(model, version))
            response = self._grpc("ModelService", "GetModelStatus", model, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return [{"version": int(s.version), "state": states.Name(s.state),
                 "error_code": _code_name(s.status.error_code),
                 "error_message": s.status.error_message}
                for s in response.model_version_status]

    def signature(self, model, name="serving_default", version=None):
        """One signature's `{"inputs", "outputs", "method_name"}` (cached)."""
        signatures = self._signatures.get((model, _check_version(version)))
        if signatures is None:
            signatures = self.metadata(model, version)["signatures"]
        if name not in signatures:
            raise ServerError(model, None, f"no signature {name!r} (found "
                              f"{', '.join(sorted(signatures))})", self.url)
        return signatures[name]

    # === REST ===

    def _rest(self, method, model, version, suffix, body=None):
        import requests

        if self._session is None:
            self._session = requests.Session()
            if self.api_key is not None:
                self._session.headers["Authorization"] = f"Bearer {self.api_key}"
        path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{version}"
        url = self.url + path + suffix
        try:
            # verify= on each call: a session's own gives way to REQUESTS_CA_BUNDLE.
            answer = self._session.request(method, url, json=body, timeout=self.timeout,
                                           verify=self.ca_cert or True)
        except requests.Timeout:
            raise ServerError(model, None, f"no answer within {self.timeout:g} s",
                              url) from None
        except requests.exceptions.SSLError as e:
            raise ServerError(model, None, f"TLS handshake failed ({first_line(e)}); give "
                              "the server's certificate authority as ca_cert=",
                              url) from None
        except requests.ConnectionError:
            raise ServerError(model, None, "cannot connect (is the server running "
                              "there?)", url) from None
        except requests.RequestException as e:
            raise ServerError(model, None, f"cannot reach the server ({type(e).__name__}: "
                              f"{first_line(e)})", url) from None
        try:
            doc = answer.json()
        except ValueError:
            doc = None
        if answer.status_code >= 400 or not isinstance(doc, dict):
            message = doc.get("error") if isinstance(doc, dict) else None
            raise ServerError(model, answer.status_code,
                              message or first_line(answer.text) or answer.reason, url)
        if "error" in doc:
            raise ServerError(model, answer.status_code, doc["error"], url)
        return doc

    def _rest_predict(self, model, inputs, instances, signature, version):
        spec = self.signature(model, signature, version)
        body = {"signature_name": signature}
        if inputs is not None:
            body["inputs"] = {name: _to_json(value) for name, value in inputs.items()}
        else:
            body["instances"] = [
                {name: _to_json(value) for name, value in row.items()}
                if isinstance(row, dict) else _to_json(row) for row in instances]
        doc = self._rest("POST", model, version, ":predict", body)
        names = list(spec["outputs"])
        if "outputs" in doc:
            outputs = doc["outputs"]
            if not isinstance(outputs, dict) or (len(names) == 1 and names[0] not in outputs):
                outputs = {names[0]: outputs}
        elif "predictions" in doc:
            rows = doc["predictions"]
            if len(names) == 1 and not (rows and isinstance(rows[0], dict)):
                outputs = {names[0]: rows}
            else:
                outputs = {name: [row[name] for row in rows] for name in rows[0]} if rows else {}
        else:
            raise ServerError(model, None, "the answer holds neither outputs nor "
                              "predictions", self.url)
        return {name: _from_json(value, spec["outputs"].get(name, {}).get("dtype"))
                for name, value in outputs.items()}

    # === gRPC ===

    def _stub(self, service):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        if self._channel is None:
            options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                       ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
            if self.tls:
                roots = None
                if self.ca_cert is not None:
                    with open(self.ca_cert, "rb") as f:
                        roots = f.read()
                credentials = grpc.ssl_channel_credentials(root_certificates=roots)
                self._channel = grpc.secure_channel(self._target, credentials, options=options)
            else:
                self._channel = grpc.insecure_channel(self._target, options=options)
        if service == "ModelService":
            return model_service_pb2_grpc.ModelServiceStub(self._channel)
        return prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _grpc(self, service, method, model, request):
        import grpc

        try:
            metadata = (None if self.api_key is None
                        else [("authorization", f"Bearer {self.api_key}")])
            return getattr(self._stub(service), method)(request, timeout=self.timeout,
                                                        metadata=metadata)
        except grpc.RpcError as e:
            code = e.code().name if callable(getattr(e, "code", None)) else None
            details = e.details() if callable(getattr(e, "details", None)) else str(e)
            if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and not details:
                details = "cannot reach the server"
            raise ServerError(model, code, details or "", f"{self.url} {method}") from None

    def _grpc_predict(self, model, inputs, instances, signature, version):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        if instances is not None:
            inputs = self._columns(model, instances, signature, version)
        request = predict_pb2.PredictRequest(model_spec=_model_spec(model, version, signature))
        # A TensorProto carries its dtype (JSON does not): Python values take
        # the signature's; numpy arrays are sent as they are.
        wanted = {}
        if any(not isinstance(value, np.ndarray) for value in inputs.values()):
            wanted = self.signature(model, signature, version)["inputs"]
        for name, value in inputs.items():
            dtype = _NUMPY.get(wanted.get(name, {}).get("dtype"))
            if dtype is not None and not isinstance(value, np.ndarray):
                value = np.asarray(value, dtype=dtype)
            try:
                proto = tf.make_tensor_proto(_to_array(value))
            except (TypeError, ValueError) as e:
                raise ValueError(f"input {name!r}: cannot be sent as a tensor ({e})") from None
            request.inputs[name].CopyFrom(proto)
        response = self._grpc("PredictionService", "Predict", model, request)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def _columns(self, model, instances, signature, version):
        """Row form -> columnar form (gRPC has only tensors)."""
        if isinstance(instances[0], dict):
            names = list(instances[0])
            for i, row in enumerate(instances):
                if not isinstance(row, dict) or set(row) != set(names):
                    raise ValueError(f"instances[{i}]: every row must name the same inputs "
                                     f"({', '.join(names)})")
            return {name: [row[name] for row in instances] for name in names}
        spec = self.signature(model, signature, version)
        if len(spec["inputs"]) != 1:
            raise ValueError(f"instances: signature {signature!r} has inputs "
                             f"{', '.join(spec['inputs'])}; give each row as a dict")
        return {next(iter(spec["inputs"])): list(instances)}


# === Conversions ===


def _check_version(version):
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise ValueError(f"version={version!r}: must be a whole number >= 1")
    return int(version)


def _model_spec(model, version, signature=None):
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=model)
    if signature is not None:
        spec.signature_name = signature
    if version is not None:
        spec.version.value = version
    return spec


def _signature_dict(signature):
    from tensorflow.core.framework import types_pb2

    def tensors(infos):
        found = {}
        for name, info in infos.items():
            shape = (None if info.tensor_shape.unknown_rank
                     else [int(d.size) for d in info.tensor_shape.dim])
            found[name] = {"dtype": types_pb2.DataType.Name(info.dtype), "shape": shape}
        return found

    return {"inputs": tensors(signature.inputs), "outputs": tensors(signature.outputs),
            "method_name": signature.method_name}


def _code_name(code):
    from tensorflow_serving.apis import status_pb2

    enum = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type
    found = enum.values_by_number.get(code)
    return found.name if found is not None else str(code)


def _to_array(value):
    array = np.asarray(value)
    if array.dtype.kind == "U":
        array = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(array)
    return array


def _to_json(value):
    """A tensor as TF Serving's JSON: numbers as numbers, text as strings,
    bytes that are not UTF-8 as `{"b64": ...}`."""
    array = np.asarray(value)
    if array.dtype.kind in "SUO":
        def text(item):
            if isinstance(item, bytes):
                try:
                    return item.decode("utf-8")
                except UnicodeDecodeError:
                    return {"b64": base64.b64encode(item).decode("ascii")}
            return item if isinstance(item, str) else _to_json(item)
        if not array.ndim:
            return text(array.item())
        return np.vectorize(text, otypes=[object])(array).tolist()
    return array.tolist()


# TF Serving's dtype names -> numpy.
_NUMPY = {"DT_FLOAT": "float32", "DT_DOUBLE": "float64", "DT_INT8": "int8",
          "DT_INT16": "int16", "DT_INT32": "int32", "DT_INT64": "int64",
          "DT_UINT8": "uint8", "DT_UINT16": "uint16", "DT_UINT32": "uint32",
          "DT_UINT64": "uint64", "DT_BOOL": "bool", "DT_HALF": "float16"}


def _from_json(value, dtype):
    """TF Serving's JSON tensor -> numpy typed as the signature says;
    strings (and `{"b64": ...}`) as `bytes`, as a SavedModel returns them."""
    if dtype == "DT_STRING":
        def raw(item):
            if isinstance(item, dict) and set(item) == {"b64"}:
                return base64.b64decode(item["b64"])
            return item.encode("utf-8") if isinstance(item, str) else item
        array = np.empty(np.shape(value) if not _ragged(value) else (len(value),), object)
        flat = _flatten(value)
        array.reshape(-1)[:] = [raw(item) for item in flat]
        return array
    if dtype in _NUMPY:
        return np.asarray(value, dtype=_NUMPY[dtype])
    return np.asarray(value)


def _flatten(value):
    if isinstance(value, list):
        return [item for part in value for item in _flatten(part)]
    return [value]


def _ragged(value):
    try:
        np.shape(value)
    except ValueError:
        return True
    return False
