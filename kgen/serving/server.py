"""`kgen serve`: a KServe model server over a `saved_models/` tree.

```
kgen serve saved_models/ [--host 127.0.0.1] [--port 8501] [--grpc-port 8500]
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
- liveness and readiness (`/`, `/v2/health/live`, `/v2/health/ready`,
  `/v2/models/NAME/ready`) and Prometheus metrics on `/metrics` (KServe's
  and kgen's: `kgen_requests_total`, `kgen_request_errors_total`,
  `kgen_request_latency_seconds`, `kgen_rows_generated_total`,
  `kgen_model_calls_total`, `kgen_batch_requests`, `kgen_model_version`).

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

Bodies over `--max-body-bytes` are refused with 413 Payload Too Large
before they are parsed (TF Serving has no such limit of its own; 413 is
HTTP's status for exactly this, and proxies and clients know it), and gRPC
messages over it with RESOURCE_EXHAUSTED (gRPC's own limit).
"""

import asyncio
import concurrent.futures
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
from kgen.serving.errors import ServingError
from kgen.serving.errors import invalid
from kgen.serving.models import Repository
from kgen.serving.models import Settings
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

import kserve
import orjson
import uvicorn
from fastapi import Request
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


class _BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413
    with an `{"error": ...}` body before any route reads it."""

    def __init__(self, app, limit, repository):
        self.app = app
        self.limit = limit
        self.repository = repository

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        declared = int(declared) if declared and declared.isdigit() else None
        chunks, size, more = [], 0, True
        while more and (declared is None or declared <= self.limit):
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.limit:
                break
            chunks.append(chunk)
        if size > self.limit or (declared or 0) > self.limit:
            while more and size <= DRAIN_FACTOR * self.limit:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                size += len(message.get("body", b""))
                more = message.get("more_body", False)
            return await self._refuse(scope, send, max(size, declared or 0))
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, send, size):
        path = scope.get("path", "")
        found = re.match(r"/v([12])/models/([^/:]+)", path)
        model = found[2] if found and self.repository.get_model(found[2]) else ""
        if found:
            metrics.record(model, "", "v1" if found[1] == "1" else "v2", 413)
        message = (f"request body of {size} bytes is larger than this server accepts "
                   f"(--max-body-bytes {self.limit}); send fewer rows per request")
        body = error_body(message)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _RestServer(RESTServer):
    """KServe's REST server on `host`, with TF Serving's V1 routes first."""

    def __init__(self, *args, host, repository, max_body_bytes, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.host = host
        self.repository = repository
        self.max_body_bytes = max_body_bytes
        self.server = uvicorn.Server(self.config)

    def create_application(self):
        from kserve.model_server import app

        routes = _V1Routes(self.repository)
        # Before KServe's own /v1 routes: the first matching route answers.
        app.add_api_route("/v1/models/{path:path}", routes.handle, methods=["GET", "POST"],
                          include_in_schema=False)

        async def serving_error(request, error):
            return _json({"error": error.message}, error.http_status)

        app.add_exception_handler(ServingError, serving_error)
        app.add_middleware(_BodyLimit, limit=self.max_body_bytes, repository=self.repository)
        super().create_application()

    async def start(self):
        self.create_application()
        await self.server.serve()

    def stop(self):
        self.server.should_exit = True


# === gRPC: KServe V2 and TF Serving ===


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
    """

    def __init__(self, host, port, dataplane, model_repository_extension, repository,
                 max_receive_bytes, max_send_bytes, grace_period):
        self.host = host
        self.port = port
        self.dataplane = dataplane
        self.model_repository_extension = model_repository_extension
        self.repository = repository
        self.max_receive_bytes = max_receive_bytes
        self.max_send_bytes = max_send_bytes
        self.grace_period = grace_period
        self.server = None

    async def start(self, max_workers):
        from grpc import aio

        self.server = aio.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(ExceptionToStatusInterceptor(),),
            options=[("grpc.max_send_message_length", self.max_send_bytes),
                     ("grpc.max_receive_message_length", self.max_receive_bytes)],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.dataplane, self.model_repository_extension), self.server)
        tfs_grpc.add_to_server(self.repository, self.server)
        self.server.add_insecure_port(_address(self.host, self.port))
        await self.server.start()
        await self.server.wait_for_termination()

    async def stop(self):
        if self.server is not None:
            await self.server.stop(grace=self.grace_period)


def _address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _ModelServer(kserve.ModelServer):
    """`kserve.ModelServer` starting kgen's REST and gRPC servers."""

    def __init__(self, repository, host, port, grpc_port, max_body_bytes, poll_seconds):
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
                         ssl_certfile=flags.ssl_certfile, ssl_keyfile=flags.ssl_keyfile)
        self.repository = repository
        self.host = host
        self.max_body_bytes = max_body_bytes
        self.poll_seconds = poll_seconds
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
            repository=self.repository, max_body_bytes=self.max_body_bytes)
        self.grpc = _GrpcServer(
            self.host, self.grpc_port, self.dataplane, self.model_repository_extension,
            self.repository, max_receive_bytes=self.max_body_bytes,
            max_send_bytes=max(self.max_body_bytes, 4 << 20) * 4,
            grace_period=self.grace_period)
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
          poll_seconds=defaults.POLL_SECONDS, threads=None, debug=False):
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
    """
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
    server = _ModelServer(repository, host, port, grpc_port, max_body_bytes, poll_seconds)
    _configure_logging(debug)
    log.info("REST http://%s:%d (TF Serving /v1, V2 /v2, /metrics), gRPC %s "
             "(V2 and tensorflow.serving.PredictionService); batching %s",
             host, port, _address(host, grpc_port),
             f"up to {batch_size} rows, {batch_wait_ms:g} ms" if batching else "off")
    try:
        server.start(models)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
