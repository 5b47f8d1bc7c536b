"""`kgen serve`: a KServe model server over a `saved_models/` tree.

```
kgen serve saved_models/ [--host 127.0.0.1] [--port 8501] [--grpc-port 8500]
                         [--api-key KEY] [--tls-cert PEM --tls-key PEM] ...
```

One `kserve.ModelServer` answers, for every model of the tree
(`saved_models/NAME/<version>/`, loaded with TensorFlow alone):

- TF Serving's REST API (KServe's V1 protocol is this API) on `--port`:
  `POST /v1/models/NAME[/versions/N]:predict` in row (`instances`) or
  columnar (`inputs`) form, `GET /v1/models/NAME[/versions/N]` (status)
  and `GET /v1/models/NAME[/versions/N]/metadata` (SignatureDefs), with
  TF Serving's bodies, status codes and `{"error": ...}` messages;
- KServe's V2 (Open Inference Protocol) REST routes, `/v2/...`, on the
  same port, and its V2 gRPC service on `--grpc-port`, beside TF Serving's
  own `tensorflow.serving.PredictionService` and `ModelService` (one gRPC
  server holds all three);
- OpenAI-compatible completions for language models, streamed as
  server-sent events (`POST /openai/v1/completions`, `GET
  /openai/v1/models`; `kgen.serving.openai`);
- liveness and readiness (`/`, `/v2/health/live`, `/v2/health/ready`,
  `/v2/models/NAME/ready`) and Prometheus metrics on `/metrics` (KServe's
  and kgen's: `kgen_requests_total`, `kgen_request_errors_total`,
  `kgen_request_latency_seconds`, `kgen_rows_generated_total`,
  `kgen_model_calls_total`, `kgen_batch_requests`, `kgen_model_version`, and
  for completions `kgen_completion_time_to_first_token_seconds`,
  `kgen_completion_tokens_per_second`, `kgen_completion_tokens_total`,
  `kgen_completions_in_flight`).

How KServe is extended, through its public API: `_ModelServer` is a
`kserve.ModelServer` whose `start` registers the models and runs kgen's two
servers in place of KServe's. `_RestServer` is KServe's `RESTServer`; before
its `create_application()` registers KServe's routes (`/v1/models/{name}`
answering `{"name", "ready"}`, `:predict` passing the body to the model, V2,
health, metrics) on KServe's FastAPI app `kserve.model_server.app`, kgen's
`/v1/models/{path:path}` route is registered on that app, and Starlette
answers with the first route that matches, so TF Serving's shapes win while
`/v1/models` (the list), V2, health and metrics stay KServe's. It listens on
`--host` (KServe's servers listen on every interface; `--host` keeps a
laptop's server on 127.0.0.1 unless asked). `_GrpcServer` is a gRPC server
holding KServe's V2 `InferenceServicer` and TF Serving's servicers. The
KServe state kgen sets that is not public API is in `kgen.compat.kserve`.

Every REST request first passes kgen's front door, `_Guard` (ASGI
middleware), and every gRPC call `_GrpcGuard` (an interceptor),
configured by `kgen.serving.options.NetworkOptions`: the API key on every
route but health (401 / UNAUTHENTICATED), KServe's repository routes off
unless allowed (403 / PERMISSION_DENIED), a declared `Content-Length` over
`--max-body-bytes` answered 413 before any of the body is read (TF Serving
has no such limit of its own; 413 is HTTP's status for exactly this; gRPC
messages over it get RESOURCE_EXHAUSTED, gRPC's own limit), a body not in
full within `--read-timeout` answered 408, a request not answered within
`--request-timeout` answered 504 / DEADLINE_EXCEEDED (a server-sent
event stream that started in time runs on under its own bound,
`--stream-timeout`). An exception no
route answered is logged with its traceback and answered 500 with a
generic message (a client's text with a lone surrogate, or a body nested
too deeply for a JSON reader, is 400), and every answer >= 400 is counted
in `kgen_request_errors_total` by code. TLS is uvicorn's own (KServe's
`ssl_certfile` / `ssl_keyfile`) and gRPC's server credentials.
"""

import asyncio
import concurrent.futures
import hmac
import logging
import os
import re
import socket
import sys
import time

from kgen.compat import kserve as kserve_compat
from kgen.serving import defaults
from kgen.serving import metrics
from kgen.serving import status
from kgen.serving import tfs_grpc
from kgen.serving.errors import HTTP_STATUS
from kgen.serving.errors import ServingError
from kgen.serving.errors import invalid
from kgen.serving.models import Repository
from kgen.serving.models import Settings
from kgen.serving.openai import OpenAIRoutes
from kgen.serving.options import network_options
from kgen.serving.tensors import TensorError
from kgen.serving.tensors import columnar_inputs
from kgen.serving.tensors import error_body
from kgen.serving.tensors import parse_json
from kgen.serving.tensors import request_format
from kgen.serving.tensors import response_body
from kgen.serving.tensors import rows_to_columns
from kgen.serving.tensors import to_array
from kgen.serving.tree import ServeError
from kgen.serving.tree import check_tree

import grpc
import kserve
import orjson
import uvicorn
from fastapi import Request
from grpc_interceptor.exceptions import GrpcException
from grpc_interceptor.server import AsyncServerInterceptor
from starlette.responses import Response
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import NoModelReady
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer

log = logging.getLogger("kgen.serving")

# A body declared or found too large is read and dropped up to this many
# times the limit before the 413 is sent, so the client reads the answer
# rather than a reset connection; a larger one has its connection closed.
DRAIN_FACTOR = 4
# TF Serving's REST paths: /v1/models/NAME[/versions/N|/labels/L][:VERB|/metadata]
_V1_PATH = re.compile(
    r"(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>[^/:]*)|/(?P<sub>metadata))?\Z")


# === TF Serving REST (KServe V1) ===


class _V1Routes:
    """TF Serving's REST API over the repository's models."""

    def __init__(self, repository):
        self.repository = repository

    async def handle(self, request: Request):
        start = time.monotonic()
        path = request.url.path[len("/v1/models/"):]
        labels = ["", ""]
        try:
            match = _V1_PATH.match(path)
            if not match:
                raise invalid(f"Malformed request: {request.method} {request.url.path}")
            name, verb = match["name"], match["verb"]
            version = self._version(match)
            if request.method == "GET" and verb is None:
                model = status.find_model(self.repository, name, version)
                if match["sub"] == "metadata":
                    served = await model.get_async(version)
                    doc = status.to_json(status.metadata_proto(model.name, served))
                else:
                    doc = status.to_json(status.status_proto(model, version))
                return _json(doc)
            if request.method != "POST" or match["sub"] or verb is None:
                raise invalid(f"Malformed request: {request.method} {request.url.path}")
            if verb in ("classify", "regress"):
                raise ServingError("UNIMPLEMENTED", f"{verb} is not served by kgen serve "
                                   "(its exports have predict signatures only)")
            if verb != "predict":
                raise invalid(f"Malformed request: {request.method} {request.url.path} "
                              f"(unknown method {verb!r}; use :predict)")
            model = status.find_model(self.repository, name, version)
            labels[0] = model.name
            doc = _parse(await request.body())
            labels[1] = status.known_signature(model, doc.get("signature_name"))
            body, rows = await self._predict(model, version, doc)
            metrics.record(*labels, "v1", 200, time.monotonic() - start, rows)
            return Response(body, media_type="application/json")
        except ServingError as error:
            if request.method == "POST":
                metrics.record(*labels, "v1", error.http_status, time.monotonic() - start)
            return Response(error_body(error.message), status_code=error.http_status,
                            media_type="application/json")

    @staticmethod
    def _version(match):
        if match["label"] is not None:
            raise invalid(f"version labels are not supported by kgen serve (got label "
                          f"{match['label']!r}); use /versions/N")
        text = match["version"]
        if text is None:
            return None
        if not text.isdigit():
            raise invalid(f"Malformed request: version {text!r} is not a whole number")
        return int(text)

    async def _predict(self, model, version, doc):
        try:
            form, payload = request_format(doc)
        except TensorError as e:
            raise invalid(str(e)) from None

        def read(specs):
            try:
                if form == "row":
                    columns = rows_to_columns(payload, specs)
                else:
                    columns = columnar_inputs(payload, specs)
                return {name: to_array(value, specs[name].dtype, name)
                        for name, value in columns.items()}
            except TensorError as e:
                raise invalid(str(e)) from None

        served, signature, outputs, rows = await model.infer(
            read, signature=doc.get("signature_name"), version=version)
        try:
            return response_body(outputs, form), rows
        except TensorError as e:
            raise invalid(str(e)) from None


def _parse(body):
    try:
        return parse_json(body)
    except TensorError as e:
        raise invalid(str(e)) from None


def _json(doc, status_code=200):
    return Response(orjson.dumps(doc), status_code=status_code, media_type="application/json")


# Routes open without the API key: liveness and readiness, which probes
# (a kubelet's, a load balancer's) ask without credentials.
OPEN_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})
# KServe's model repository routes (load, unload): off unless asked for.
REPOSITORY_PREFIX = "/v2/repository/"
_MODEL_PATH = re.compile(r"/v([12])/models/([^/:]+)")
INTERNAL_ERROR = ("internal error while answering this request; the server's log "
                  "holds the details")


class _Guard:
    """ASGI middleware, kgen serve's front door before every route.

    In order: the API key (401), the repository API switch (403), the body
    (413 when its declared or read size is over `limit`, 408 when it has
    not arrived in full within `read_timeout` seconds), then the route,
    bounded by `request_timeout` seconds (504). An exception no route
    answered is logged here with its traceback and answered 500 with a
    generic message. Every answer with status >= 400 that no route counted
    is counted in `kgen_request_errors_total` by its code.
    """

    def __init__(self, app, options, limit, repository):
        self.app = app
        self.options = options
        self.limit = limit
        self.repository = repository
        self.key = options.api_key.encode("ascii") if options.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        answer = metrics.answering()
        sent = {}

        async def tracked(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                sent["stream"] = (b"content-type", b"text/event-stream") in [
                    (k.lower(), v.split(b";")[0].strip()) for k, v in message["headers"]]
                # Counted before the client can read the answer.
                if message["status"] >= 400:
                    metrics.record_error(*self._labels(scope), message["status"], answer)
            await send(message)

        await self._handle(scope, receive, tracked, sent)

    async def _handle(self, scope, receive, send, sent):
        path = scope["path"]
        deadline = asyncio.get_running_loop().time() + self.options.read_timeout
        if self.key is not None and path not in OPEN_PATHS:
            refusal = self._unauthorized(scope)
            if refusal is not None:
                return await self._refuse(scope, receive, send, deadline, 401, refusal, [
                    (b"www-authenticate", b'Bearer realm="kgen serve"')])
        if path.startswith(REPOSITORY_PREFIX) and not self.options.allow_repository_api:
            return await self._refuse(
                scope, receive, send, deadline, 403, "the model repository API (load, "
                "unload) is off on this server; start kgen serve with "
                "--allow-repository-api to allow it")
        body = await self._read_body(scope, receive, send, deadline)
        if body is None:  # answered (413, 408), or the client left
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        answering = asyncio.ensure_future(self.app(scope, replay, send))
        try:
            done, _ = await asyncio.wait({answering}, timeout=self.options.request_timeout)
            if done:
                answering.result()
            elif sent.get("stream"):
                # A stream started in time runs under its own bound
                # (--stream-timeout), ending with an error event.
                await answering
            else:
                answering.cancel()
                await asyncio.gather(answering, return_exceptions=True)
                raise asyncio.TimeoutError
        except asyncio.TimeoutError:
            if "status" not in sent:
                await _answer(send, 504, f"no answer within --request-timeout "
                              f"{self.options.request_timeout:g} s; send fewer rows or "
                              "fewer steps per request", close=False)
        except Exception as error:
            fault = _client_fault(error)
            if fault is None:
                log.exception("%s %s failed", scope["method"], path)
            if "status" not in sent:
                await _answer(send, 500 if fault is None else 400, fault or INTERNAL_ERROR,
                              close=False)
        finally:
            if not answering.done():
                answering.cancel()
                await asyncio.gather(answering, return_exceptions=True)

    def _unauthorized(self, scope):
        """None when the request carries the key, else the refusal's message."""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                if scheme.lower() != b"bearer":
                    break
                if hmac.compare_digest(token.strip(), self.key):
                    return None
                return "the API key in the Authorization header is not this server's"
        return ("this server needs an API key: send the header 'Authorization: Bearer "
                "KEY' (the key kgen serve was given with --api-key or KGEN_API_KEY)")

    async def _read_body(self, scope, receive, send, deadline):
        """The whole body, or None once answered (or the client left)."""
        declared = _declared_length(scope)
        if declared is not None and declared > self.limit:
            await self._refuse(scope, receive, send, deadline, 413,
                               self._too_large(declared))
            return None
        chunks, size = [], 0
        while True:
            message = await _receive(receive, deadline)
            if message is None:
                await self._stalled(send, size)
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send, deadline, 413,
                                   self._too_large(size), read=size,
                                   more=message.get("more_body", False))
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, size):
        return (f"request body of {size} bytes is larger than this server accepts "
                f"(--max-body-bytes {self.limit}); send fewer rows per request")

    async def _refuse(self, scope, receive, send, deadline, status_code, message,
                      headers=(), read=0, more=True):
        """Answers before the body is read in full, at once. A body the
        client may really be sending (declared or read up to DRAIN_FACTOR
        times the limit) is then read and dropped, within the read deadline,
        so the client reads the answer rather than a reset connection; a
        larger one is left unread and the connection closed."""
        declared = _declared_length(scope)
        drain = finish = more and (declared is None or declared <= DRAIN_FACTOR * self.limit)
        await _answer(send, status_code, message, headers, more=drain)
        while drain and read <= DRAIN_FACTOR * self.limit:
            received = await _receive(receive, deadline)
            if received is None or received["type"] == "http.disconnect":
                break
            read += len(received.get("body", b""))
            drain = received.get("more_body", False)
        if finish:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stalled(self, send, size):
        await _answer(send, 408, f"the request body did not arrive within --read-timeout "
                      f"{self.options.read_timeout:g} s ({size} bytes came); the "
                      "connection is closed")

    def _labels(self, scope):
        """`(model, protocol)` of a request's path, for its metrics."""
        path = scope.get("path", "")
        found = _MODEL_PATH.match(path)
        model = found[2] if found and self.repository.get_model(found[2]) else ""
        if path.startswith("/v1/"):
            return model, "v1"
        if path.startswith("/v2/") or path == "/v2":
            return model, "v2"
        if path.startswith("/openai/"):
            return "", "openai"
        return model, "other"


async def _receive(receive, deadline):
    """The next ASGI message, or None when `deadline` (loop time) passed."""
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        return None
    try:
        return await asyncio.wait_for(receive(), left)
    except asyncio.TimeoutError:
        return None


def _client_fault(error):
    """The message of an exception a client's request caused where no route
    names it (a body nested too deeply for a JSON reader, text holding a
    lone surrogate), or None for the server's own failures."""
    if isinstance(error, RecursionError):
        return "the request body nests arrays or objects too deeply to be read"
    if isinstance(error, UnicodeEncodeError) and error.reason == "surrogates not allowed":
        return (f"a string in the request holds a lone UTF-16 surrogate "
                f"({error.object[error.start:error.end]!a}), which is not Unicode text; "
                "send valid UTF-8")
    return None


def _declared_length(scope):
    declared = dict(scope["headers"]).get(b"content-length")
    return int(declared) if declared and declared.isdigit() else None


async def _answer(send, status_code, message, headers=(), more=False, close=True):
    """An `{"error": message}` answer from the front door; one sent before
    the body was read closes the connection (`close`)."""
    body = error_body(message)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *headers]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": more})


class _RestServer(RESTServer):
    """KServe's REST server on `host`, with TF Serving's V1 routes first and
    kgen's front door (`_Guard`) before every route; HTTPS through
    uvicorn's own TLS when `options` name a certificate."""

    def __init__(self, *args, host, repository, max_body_bytes, options, openai, **kwargs):
        super().__init__(*args, ssl_certfile=options.tls_cert, ssl_keyfile=options.tls_key,
                         **kwargs)
        self.config.host = host
        self.repository = repository
        self.max_body_bytes = max_body_bytes
        self.options = options
        self.openai = openai
        self.server = uvicorn.Server(self.config)

    def create_application(self):
        from kserve.model_server import app

        routes = _V1Routes(self.repository)
        # Before KServe's own /v1 routes: the first matching route answers.
        app.add_api_route("/v1/models/{path:path}", routes.handle, methods=["GET", "POST"],
                          include_in_schema=False)
        # OpenAI-compatible completions on KServe's /openai prefix
        # (kgen.serving.openai says why KServe's own module is not used).
        self.openai.register(app)

        async def serving_error(request, error):
            return _json({"error": error.message}, error.http_status)

        app.add_exception_handler(ServingError, serving_error)
        app.add_middleware(_Guard, options=self.options, limit=self.max_body_bytes,
                           repository=self.repository)
        super().create_application()

    async def start(self):
        self.create_application()
        await self.server.serve()

    def stop(self):
        self.server.should_exit = True


# === gRPC: KServe V2 and TF Serving ===


# gRPC methods open without the API key, and the repository's.
OPEN_RPCS = frozenset({"/inference.GRPCInferenceService/ServerLive",
                       "/inference.GRPCInferenceService/ServerReady"})
REPOSITORY_RPCS = frozenset({"/inference.GRPCInferenceService/RepositoryModelLoad",
                             "/inference.GRPCInferenceService/RepositoryModelUnload"})


class _GrpcGuard(AsyncServerInterceptor):
    """gRPC's front door, inside KServe's `ExceptionToStatusInterceptor`
    (which turns the errors raised here into statuses): the API key
    (UNAUTHENTICATED), the repository API switch (PERMISSION_DENIED) and
    `request_timeout` (DEADLINE_EXCEEDED). Every error no service counted
    is counted in `kgen_request_errors_total` (as the HTTP status TF
    Serving maps its code to) before its status is sent."""

    def __init__(self, options, repository):
        self.options = options
        self.repository = repository
        self.key = options.api_key.encode("ascii") if options.api_key else None

    async def intercept(self, method, request, context, method_name):
        answer = metrics.answering()
        try:
            if self.key is not None and method_name not in OPEN_RPCS:
                refusal = self._unauthorized(context)
                if refusal is not None:
                    raise ServingError("UNAUTHENTICATED", refusal)
            if method_name in REPOSITORY_RPCS and not self.options.allow_repository_api:
                raise ServingError("PERMISSION_DENIED", "the model repository API (load, "
                                   "unload) is off on this server; start kgen serve with "
                                   "--allow-repository-api to allow it")
            response = method(request, context)
            if hasattr(response, "__aiter__"):
                return response
            try:
                return await asyncio.wait_for(response, self.options.request_timeout)
            except asyncio.TimeoutError:
                raise ServingError("DEADLINE_EXCEEDED", f"no answer within "
                                   f"--request-timeout {self.options.request_timeout:g} s; "
                                   "send fewer rows or fewer steps per request") from None
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            protocol = "v2" if method_name.startswith("/inference.") else "tfs_grpc"
            metrics.record_error(self._model(request), protocol,
                                 _grpc_http_status(error, context), answer)
            raise

    def _unauthorized(self, context):
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                scheme, _, token = value.strip().partition(" ")
                if scheme.lower() == "bearer" and hmac.compare_digest(
                        token.strip().encode("utf-8"), self.key):
                    return None
                return "the API key in the authorization metadata is not this server's"
        return ("this server needs an API key: send the metadata 'authorization: "
                "Bearer KEY' (the key kgen serve was given with --api-key or KGEN_API_KEY)")

    def _model(self, request):
        name = getattr(request, "model_name", None)
        if name is None and hasattr(request, "model_spec"):
            name = request.model_spec.name
        return name if name and self.repository.get_model(name) else ""


def _grpc_http_status(error, context):
    """The HTTP status of the gRPC status an exception is answered with, as
    KServe's `ExceptionToStatusInterceptor` maps it."""
    from kserve import errors

    if isinstance(error, ServingError):
        return error.http_status
    if isinstance(error, GrpcException):
        return HTTP_STATUS.get(error.status_code.name, 500)
    if isinstance(error, (errors.InferenceError, errors.InvalidInput,
                          errors.UnsupportedProtocol)):
        return 400
    if isinstance(error, errors.ModelNotFound):
        return 404
    if isinstance(error, (errors.ModelNotReady, errors.ServerNotReady, errors.ServerNotLive)):
        return 503
    if isinstance(error, NotImplementedError):
        return 501
    code = getattr(context.code(), "name", None)  # a service that aborted itself
    return HTTP_STATUS.get(code, 500) if code and code != "OK" else 500


class _GrpcServer:
    """A gRPC server on `host:port` holding KServe's V2 inference service
    and TF Serving's PredictionService and ModelService.

    Args:
        host: the address to listen on.
        port: the port.
        dataplane: the `kserve.ModelServer`'s data plane.
        model_repository_extension: the `kserve.ModelServer`'s extension.
        repository: the `kgen.serving.models.Repository`.
        max_receive_bytes: the largest request message.
        max_send_bytes: the largest response message.
        grace_period: seconds calls in flight get when it stops.
        options: the `NetworkOptions` (key, repository API, deadline, TLS).
    """

    def __init__(self, host, port, dataplane, model_repository_extension, repository,
                 max_receive_bytes, max_send_bytes, grace_period, options):
        self.host = host
        self.port = port
        self.dataplane = dataplane
        self.model_repository_extension = model_repository_extension
        self.repository = repository
        self.max_receive_bytes = max_receive_bytes
        self.max_send_bytes = max_send_bytes
        self.grace_period = grace_period
        self.options = options
        self.server = None

    async def start(self, max_workers):
        from grpc import aio

        self.server = aio.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(ExceptionToStatusInterceptor(),
                          _GrpcGuard(self.options, self.repository)),
            options=[("grpc.max_send_message_length", self.max_send_bytes),
                     ("grpc.max_receive_message_length", self.max_receive_bytes)],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.dataplane, self.model_repository_extension), self.server)
        tfs_grpc.add_to_server(self.repository, self.server)
        address = _address(self.host, self.port)
        if self.options.tls:
            with open(self.options.tls_key, "rb") as key, \
                    open(self.options.tls_cert, "rb") as cert:
                credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
            self.server.add_secure_port(address, credentials)
        else:
            self.server.add_insecure_port(address)
        await self.server.start()
        await self.server.wait_for_termination()

    async def stop(self):
        if self.server is not None:
            await self.server.stop(grace=self.grace_period)


def _address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _ModelServer(kserve.ModelServer):
    """`kserve.ModelServer` starting kgen's REST and gRPC servers."""

    def __init__(self, repository, host, port, grpc_port, max_body_bytes, poll_seconds,
                 options, openai):
        taken = kserve_compat.reset_model_server_arguments()
        if taken:
            log.warning("KServe's flags on this command line are not used by kgen "
                        "serve: %s", ", ".join(f"--{name}" for name in taken))
        # Every argument given: the constructor's own defaults were read
        # from the command line when KServe was imported.
        flags = kserve_compat.model_server_defaults()
        super().__init__(http_port=port, grpc_port=grpc_port, workers=1,
                         max_threads=flags.max_threads,
                         max_asyncio_workers=flags.max_asyncio_workers,
                         registered_models=repository, enable_grpc=True,
                         enable_docs_url=False, enable_latency_logging=False,
                         access_log_format=None, event_loop=flags.event_loop,
                         timeout_keep_alive=flags.timeout_keep_alive, grace_period=5,
                         predictor_config=kserve.PredictorConfig(predictor_host=None),
                         ssl_certfile=options.tls_cert, ssl_keyfile=options.tls_key)
        # KServe moves its default port to its HTTPS one when given TLS;
        # kgen serve listens on the port it was given.
        self.http_port = port
        self.options = options
        self.repository = repository
        self.host = host
        self.max_body_bytes = max_body_bytes
        self.poll_seconds = poll_seconds
        self.openai = openai
        self.rest = None
        self.grpc = None

    def start(self, models):
        # As kserve.ModelServer.start with one REST worker, kgen's servers
        # in place of KServe's, and the version poller.
        ready = [model for model in models if model.ready]
        if not ready:
            raise NoModelReady(models)
        for model in ready:
            self.register_model(model)
            model.enable_latency_logging = self.enable_latency_logging
            model.start()
        self.rest = _RestServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
            self.http_port, grace_period=self.grace_period, event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive, host=self.host,
            repository=self.repository, max_body_bytes=self.max_body_bytes,
            options=self.options, openai=self.openai)
        self.grpc = _GrpcServer(
            self.host, self.grpc_port, self.dataplane, self.model_repository_extension,
            self.repository, max_receive_bytes=self.max_body_bytes,
            max_send_bytes=max(self.max_body_bytes, 4 << 20) * 4,
            grace_period=self.grace_period, options=self.options)
        self.servers += [self.rest.start(), self.grpc.start(self.max_threads)]
        stop_polling = self.repository.start_polling(self.poll_seconds)
        self.register_signal_handler()

        async def serve():
            await asyncio.gather(*self.servers)

        try:
            asyncio.run(serve())
        finally:
            stop_polling.set()

    def stop(self, sig):
        async def shutdown():
            if self.rest is not None:
                self.rest.stop()
            if self.grpc is not None:
                await self.grpc.stop()

        asyncio.get_running_loop().create_task(shutdown())


# === Entry point ===


def _check_port(host, port, flag):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ServeError(f"{flag} {port}: cannot listen on {host}:{port} "
                             f"({e.strerror or e})") from None


def _loopback(host):
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _configure_logging(debug):
    import warnings

    # KServe's own routes use a response class FastAPI now calls deprecated.
    warnings.filterwarnings("ignore", message=".*ORJSONResponse is deprecated")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kgen serve: %(message)s"))
    ours = logging.getLogger("kgen.serving")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO)
    ours.propagate = False
    quiet = logging.INFO if debug else logging.WARNING
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).setLevel(quiet)
    if not debug:
        logging.getLogger("kserve").addFilter(_client_errors_filter)


def _client_errors_filter(record):
    """KServe logs every refused request with its traceback; a client's
    mistake is answered (and counted in /metrics), not logged."""
    from kserve import errors

    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, (ServingError, errors.InvalidInput, errors.ModelNotFound,
                                errors.ModelNotReady))


def serve(root, host=defaults.HOST, port=defaults.REST_PORT, grpc_port=defaults.GRPC_PORT,
          max_body_bytes=defaults.MAX_BODY_BYTES, batching=True,
          batch_size=defaults.BATCH_SIZE, batch_wait_ms=defaults.BATCH_WAIT_MS,
          poll_seconds=defaults.POLL_SECONDS, threads=None, debug=False, options=None,
          max_streams=defaults.MAX_STREAMS, stream_timeout=defaults.STREAM_TIMEOUT):
    """Serves every model under `root` until interrupted (SIGINT or SIGTERM).

    Args:
        root: the tree, `saved_models/`, holding `NAME/<version>/`.
        host: the address to listen on (REST and gRPC).
        port: the REST port (TF Serving REST, V2 REST, health, metrics).
        grpc_port: the gRPC port (V2 and TF Serving's PredictionService).
        max_body_bytes: the largest request body (413 above it).
        batching: merge concurrent requests to one signature.
        batch_size: the most rows of one merged call.
        batch_wait_ms: how long an idle signature waits for more requests.
        poll_seconds: how often the tree is read for new models and versions.
        threads: threads running TensorFlow calls (default: CPU count + 2).
        debug: KServe's and uvicorn's request logs on stderr.
        options: the front door's `kgen.serving.options.NetworkOptions`
            (API key, repository API, read and request deadlines, TLS);
            default: `network_options()`, which reads `KGEN_API_KEY`.
        max_streams: the most OpenAI completions decoding at once, streamed
            or not (429 over it).
        stream_timeout: seconds a streamed completion may run after its
            first byte (it then ends with an error event).
    """
    if options is None:
        options = network_options()
    for flag, value in (("--port", port), ("--grpc-port", grpc_port)):
        if not 0 < value < 65536:
            raise ServeError(f"{flag} {value}: must be a port number in [1, 65535]")
    if port == grpc_port:
        raise ServeError(f"--port and --grpc-port are both {port}; give them different ports")
    for flag, value in (("--max-body-bytes", max_body_bytes), ("--batch-size", batch_size)):
        if value < 1:
            raise ServeError(f"{flag} {value}: must be >= 1")
    if batch_wait_ms < 0:
        raise ServeError(f"--batch-wait-ms {batch_wait_ms}: must be >= 0")
    if not poll_seconds > 0:
        raise ServeError(f"--poll-seconds {poll_seconds}: must be > 0")
    if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
        raise ServeError(f"--max-streams {max_streams}: must be a whole number >= 1")
    if not stream_timeout > 0:
        raise ServeError(f"--stream-timeout {stream_timeout}: must be a number of seconds > 0")
    names = check_tree(root)
    _check_port(host, port, "--port")
    _check_port(host, grpc_port, "--grpc-port")
    _configure_logging(debug)  # again below: KServe configures its loggers too

    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=threads or (os.cpu_count() or 1) + 2, thread_name_prefix="kgen-tf")
    settings = Settings(batching=batching, batch_size=batch_size,
                        batch_wait_s=batch_wait_ms / 1000.0, executor=executor)
    repository = Repository(root, settings)
    repository.load_models()
    models = list(repository.get_models().values())
    if not models:
        raise ServeError(f"{root}: none of the models ({', '.join(names)}) could be loaded "
                         "(see the errors above)")
    openai = OpenAIRoutes(repository, executor, max_streams=max_streams,
                          stream_timeout=stream_timeout)
    server = _ModelServer(repository, host, port, grpc_port, max_body_bytes, poll_seconds,
                          options, openai)
    _configure_logging(debug)
    log.info("REST %s://%s:%d (TF Serving /v1, V2 /v2, OpenAI /openai/v1, /metrics), "
             "gRPC %s%s "
             "(V2 and tensorflow.serving.PredictionService); batching %s",
             "https" if options.tls else "http", host, port, _address(host, grpc_port),
             " with TLS" if options.tls else "",
             f"up to {batch_size} rows, {batch_wait_ms:g} ms" if batching else "off")
    log.info("API key %s; repository API (load, unload) %s; read deadline %g s, "
             "request deadline %g s",
             "required (all but health)" if options.api_key else "off",
             "on" if options.allow_repository_api else "off",
             options.read_timeout, options.request_timeout)
    if not options.api_key and not _loopback(host):
        log.warning("listening on %s without an API key: anyone who reaches this address "
                    "can use every model (give --api-key or KGEN_API_KEY)", host)
    try:
        server.start(models)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
