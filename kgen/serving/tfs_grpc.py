"""TF Serving's own gRPC API on `kgen serve`'s gRPC port.

`tensorflow.serving.PredictionService` (`Predict`, `GetModelMetadata`) and
`tensorflow.serving.ModelService` (`GetModelStatus`), from the official
`tensorflow-serving-api` protos, registered on the same server as KServe's
V2 `GRPCInferenceService`, so a `PredictionServiceStub` written for
`tensorflow_model_server` works against `kgen serve` unchanged. Tensors
travel as `TensorProto`s (`tf.make_ndarray` in, `tf.make_tensor_proto`
out); errors carry TF Serving's status codes and messages naming the input.
"""

import time

from kgen.serving import metrics
from kgen.serving import status
from kgen.serving.errors import ServingError
from kgen.serving.errors import invalid
from kgen.serving.tensors import dt_name

from grpc_interceptor.exceptions import GrpcException
import grpc
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc


def _unimplemented(what):
    return GrpcException(
        details=f"{what} is not served by kgen serve (its exports have predict "
                "signatures only)", status_code=grpc.StatusCode.UNIMPLEMENTED)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """`Predict` and `GetModelMetadata` over the repository's models."""

    def __init__(self, repository):
        self.repository = repository

    async def Predict(self, request, context):
        import tensorflow as tf

        start = time.monotonic()
        spec = request.model_spec
        labels = [spec.name if self.repository.get_model(spec.name) else "", ""]
        try:
            model = status.find_model(self.repository, spec.name, _version(spec))
            labels[1] = status.known_signature(model, spec.signature_name)
            inputs = {}
            for name, proto in request.inputs.items():
                try:
                    inputs[name] = tf.make_ndarray(proto)
                except Exception as e:
                    raise invalid(f"input {name}: not a readable TensorProto of "
                                  f"{dt_name(tf.as_dtype(proto.dtype))} ({e})") from None
            served, signature, outputs, rows = await model.infer(
                inputs, signature=spec.signature_name, version=_version(spec))
            wanted = list(request.output_filter)
            unknown = [w for w in wanted if w not in outputs]
            if unknown:
                raise invalid(f"output tensor alias not found in signature: "
                              f"{', '.join(unknown)} (outputs: {', '.join(sorted(outputs))})")
            response = predict_pb2.PredictResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = served.number
            response.model_spec.signature_name = signature
            for name, array in outputs.items():
                if not wanted or name in wanted:
                    response.outputs[name].CopyFrom(tf.make_tensor_proto(array))
        except ServingError as error:
            metrics.record(*labels, "tfs_grpc", error.http_status, time.monotonic() - start)
            raise
        metrics.record(*labels, "tfs_grpc", 200, time.monotonic() - start, rows)
        return response

    async def GetModelMetadata(self, request, context):
        spec = request.model_spec
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise invalid(f"metadata_field must be exactly ['signature_def'], got {fields}")
        model = status.find_model(self.repository, spec.name, _version(spec))
        served = await model.get_async(_version(spec))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.CopyFrom(status.metadata_proto(model.name, served))
        return response

    async def Classify(self, request, context):
        raise _unimplemented("Classify")

    async def Regress(self, request, context):
        raise _unimplemented("Regress")

    async def MultiInference(self, request, context):
        raise _unimplemented("MultiInference")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """`GetModelStatus`: the versions of a model and their state."""

    def __init__(self, repository):
        self.repository = repository

    async def GetModelStatus(self, request, context):
        spec = request.model_spec
        model = status.find_model(self.repository, spec.name, _version(spec))
        return status.status_proto(model, _version(spec))

    async def HandleReloadConfigRequest(self, request, context):
        raise _unimplemented("HandleReloadConfigRequest (kgen serve finds new "
                             "models and versions by itself)")


def _version(spec):
    if spec.WhichOneof("version_choice") == "version_label":
        raise ServingError(
            "INVALID_ARGUMENT",
            f"model {spec.name}: version labels are not supported by kgen serve "
            f"(got label {spec.version_label!r}); name a version number")
    return spec.version.value if spec.HasField("version") else None


def add_to_server(repository, server):
    """Registers both TF Serving services on a `grpc.aio` server."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(repository), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(repository), server)
