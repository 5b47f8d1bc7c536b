"""Errors of `kgen serve`, each with TF Serving's status code.

A request fails with a `ServingError` carrying the canonical code TF
Serving would answer (`INVALID_ARGUMENT`, `NOT_FOUND`, ...) and a message
naming what is wrong. Each protocol turns it into its own error: REST into
the HTTP status TF Serving maps the code to and an `{"error": message}`
body, gRPC into the status code itself.
"""

import grpc
from grpc_interceptor.exceptions import GrpcException

from kgen.export.messages import graph_reason

# TF Serving's mapping of status codes to HTTP (model_servers/http_server.cc).
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class ServingError(GrpcException):
    """A request the server refuses or could not answer.

    A `GrpcException`, so KServe's gRPC interceptor answers it with its own
    code and message on the V2 gRPC service too.

    Args:
        code: TF Serving's canonical status name, e.g. `"INVALID_ARGUMENT"`.
        message: what is wrong, naming the model, signature or input.
        http_status: the REST status when it is not TF Serving's mapping
            of `code` (a body over `--max-body-bytes` is 413).
    """

    def __init__(self, code, message, http_status=None):
        super().__init__(details=message, status_code=getattr(grpc.StatusCode, code))
        self.code = code
        self.message = message
        self.http_status = http_status or HTTP_STATUS[code]

    def __str__(self):
        return self.message


def invalid(message):
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message):
    return ServingError("NOT_FOUND", message)


def from_tensorflow(error):
    """A `tf.errors.OpError` -> `ServingError` with its code and the message
    of the failed check (without TensorFlow's node and stack lines)."""
    code = type(error).__name__
    codes = {"InvalidArgumentError": "INVALID_ARGUMENT", "OutOfRangeError": "OUT_OF_RANGE",
             "ResourceExhaustedError": "RESOURCE_EXHAUSTED", "NotFoundError": "NOT_FOUND",
             "FailedPreconditionError": "FAILED_PRECONDITION",
             "UnimplementedError": "UNIMPLEMENTED", "CancelledError": "CANCELLED",
             "DeadlineExceededError": "DEADLINE_EXCEEDED", "UnavailableError": "UNAVAILABLE"}
    message = getattr(error, "message", "") or str(error)
    return ServingError(codes.get(code, "INTERNAL"),
                        graph_reason(message, default="the model refused the request"))
