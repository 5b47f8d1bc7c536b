"""Model status and metadata as TF Serving answers them, shared by REST and gRPC.

Built with the official protos (`GetModelStatusResponse`,
`GetModelMetadataResponse` holding a `SignatureDefMap`) and written to
JSON the way TF Serving's REST API writes them (proto field names, every
field printed, 64-bit integers as strings):

```
GET /v1/models/vae
{"model_version_status": [{"version": "3", "state": "AVAILABLE",
                           "status": {"error_code": "OK", "error_message": ""}}]}
GET /v1/models/vae/metadata
{"model_spec": {"name": "vae", "signature_name": "", "version": "3"},
 "metadata": {"signature_def": {"@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
                                "signature_def": {"generate": {"inputs": {"seed": {
                                    "dtype": "DT_INT64", "tensor_shape": ...}}, ...}}}}}
```
"""

from google.protobuf import json_format

from kgen.serving.errors import not_found
from kgen.serving.tree import plain_versions

from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2


def find_model(repository, name, version=None):
    """The registered model `name`, or NOT_FOUND in TF Serving's words (also
    while a model whose last version was deleted is being unregistered)."""
    model = repository.get_model(name) if name else None
    if model is None or model.latest is None:
        which = f"Latest({name})" if version is None else f"Specific({name}, {version})"
        known = ", ".join(sorted(repository.get_models())) or "none"
        raise not_found(f"Servable not found for request: {which} (models: {known})")
    return model


def known_signature(model, name):
    """`name` (or serving_default) when the newest version has it, else ""
    (a metrics label never holds a name a client made up)."""
    name = name or "serving_default"
    latest = model.latest
    return name if latest is not None and name in latest.signatures else ""


def status_proto(model, version=None):
    """`GetModelStatusResponse`: every version on disk (or the one asked); a
    version deleted from disk is not listed, even before it is unloaded."""
    response = get_model_status_pb2.GetModelStatusResponse()
    on_disk = plain_versions(model.base)
    if version is not None:
        if version not in on_disk:
            raise not_found(f"Servable not found for request: Specific({model.name}, "
                            f"{version}) (versions: {', '.join(map(str, on_disk)) or 'none'})")
        numbers = [version]
    else:
        numbers = sorted(on_disk, reverse=True)
    for number in numbers:
        entry = response.model_version_status.add()
        entry.version = number
        failed = model.failure(number)
        entry.status.SetInParent()
        if failed:
            entry.state = get_model_status_pb2.ModelVersionStatus.END
            entry.status.error_code = 2  # UNKNOWN
            entry.status.error_message = f"cannot be loaded: {failed}"
        else:
            entry.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    return response


def metadata_proto(name, version):
    """`GetModelMetadataResponse` with the version's SignatureDefMap."""
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = name
    response.model_spec.version.value = version.number
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, value in version.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(value)
    response.metadata["signature_def"].Pack(signature_map)
    return response


def to_json(proto):
    """A proto as TF Serving's REST API writes it."""
    return json_format.MessageToDict(
        proto, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
