"""The KServe state `kgen.compat.kserve` sets that is not public API, and
the KServe extension points `kgen serve` is built on, each pinned on the
installed KServe: a test fails naming the member and the version when a
release changes it (see `kgen/compat/__init__.py`)."""

import argparse
import inspect
import re

import pytest

kserve = pytest.importorskip("kserve", reason="KServe is kgen's [serving] extra")

from kgen import compat  # noqa: E402
from kgen.compat import kserve as kserve_compat  # noqa: E402

pytestmark = pytest.mark.tf_only

# The flags kgen serve reads from KServe's defaults (kgen.serving.server).
FLAGS_READ = ("max_threads", "max_asyncio_workers", "event_loop", "timeout_keep_alive",
              "ssl_certfile", "ssl_keyfile")


def _changed(member, detail):
    return compat.changed("kserve", member, detail)


def test_installed_kserve_is_a_verified_release():
    assert compat.is_supported("kserve"), (
        f"kserve {compat.installed_version('kserve')} is outside "
        f"{compat.supported_range('kserve')}, the releases kgen.compat's KServe members "
        "were verified on: run tests/compat/ on it and widen kgen.compat.SUPPORTED")


# === kserve.model_server.parser and .args ===


def test_model_server_parser_holds_the_flags_kgen_reads():
    import kserve.model_server as model_server

    member = "kserve.model_server.parser"
    assert isinstance(getattr(model_server, "parser", None), argparse.ArgumentParser), \
        _changed(member, "it is gone or not an argparse parser")
    flags = vars(kserve_compat.model_server_defaults())
    missing = [name for name in FLAGS_READ + ("configure_logging", "log_config_file")
               if name not in flags]
    assert not missing, _changed(member, f"it has no flag {', '.join(missing)}")


def test_model_server_args_are_read_by_the_model_server():
    import kserve.model_server as model_server

    member = "kserve.model_server.args"
    assert isinstance(getattr(model_server, "args", None), argparse.Namespace), \
        _changed(member, "it is gone or not a namespace")
    # The reason kgen resets it: the constructor reads it, not its arguments.
    source = inspect.getsource(kserve.ModelServer.__init__)
    assert "args.configure_logging" in source, _changed(
        member, "ModelServer.__init__ no longer reads args.configure_logging; see "
                "whether kgen.compat.kserve.reset_model_server_arguments is still needed")


def test_reset_puts_kserves_defaults_back(monkeypatch):
    import kserve.model_server as model_server

    parsed = model_server.parser.parse_args(["--workers", "3", "--configure_logging", "false"])
    monkeypatch.setattr(model_server, "args", parsed)
    assert kserve_compat.reset_model_server_arguments() == ["configure_logging", "workers"]
    assert vars(model_server.args) == vars(model_server.parser.parse_args([]))
    assert kserve_compat.reset_model_server_arguments() == []


def test_kgen_serve_flags_are_none_of_kserves(capsys):
    """KServe parses sys.argv when it is imported: `kgen serve`'s own
    command line must leave that parse at KServe's defaults."""
    from kgen import cli

    with pytest.raises(SystemExit):
        cli._parser().parse_args(["serve", "--help"])
    flags = sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", capsys.readouterr().out)))
    assert "--max-body-bytes" in flags and "--port" in flags, flags
    import kserve.model_server as model_server

    for flag in flags:
        parsed, unknown = model_server.parser.parse_known_args([flag, "1"])
        assert vars(parsed) == vars(kserve_compat.model_server_defaults()), _changed(
            "kserve.model_server.parser",
            f"it takes kgen serve's {flag} as one of its own flags (it parses sys.argv "
            "when kserve is imported)")


# === Public extension points kgen serve is built on ===


def test_model_server_constructor_takes_every_argument_kgen_gives():
    member = "kserve.ModelServer.__init__"
    parameters = inspect.signature(kserve.ModelServer.__init__).parameters
    given = ("http_port", "grpc_port", "workers", "registered_models", "enable_grpc",
             "enable_docs_url", "enable_latency_logging", "access_log_format",
             "grace_period", "predictor_config") + FLAGS_READ
    missing = [name for name in given if name not in parameters]
    assert not missing, _changed(member, f"it takes no {', '.join(missing)}")
    for name in ("register_model", "register_signal_handler"):
        assert callable(getattr(kserve.ModelServer, name, None)), \
            _changed(f"kserve.ModelServer.{name}", "it is gone")


def test_rest_server_builds_kserves_routes_after_routes_already_on_its_app():
    """kgen's /v1 route is put on `kserve.model_server.app` before
    `create_application()` adds KServe's, and must answer first."""
    import uvicorn
    from fastapi.testclient import TestClient
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_repository import ModelRepository
    from kserve.model_server import app
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    member = "kserve.protocol.rest.server.RESTServer.create_application"
    repository = ModelRepository()
    server = RESTServer(FASTAPI_APP_IMPORT_STRING, DataPlane(model_registry=repository),
                        ModelRepositoryExtension(model_registry=repository), 0)
    assert isinstance(server.config, uvicorn.Config) and server.config.host == "0.0.0.0", \
        _changed("kserve.protocol.rest.server.RESTServer.config", "not a uvicorn.Config")

    async def first(path: str):
        return {"first": path}

    app.add_api_route("/v1/models/{path:path}", first, methods=["GET"])
    server.create_application()
    client = TestClient(app)
    answer = client.get("/v1/models/probe")
    assert answer.json() == {"first": "probe"}, _changed(
        member, f"a route on kserve.model_server.app before it ran no longer answers "
                f"first: GET /v1/models/probe gave {answer.status_code} {answer.text}")
    assert client.get("/v2/health/live").status_code == 200, _changed(
        member, "it no longer puts KServe's V2 routes on kserve.model_server.app")


def test_grpc_pieces_kgen_assembles():
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.grpc.servicer import InferenceServicer

    parameters = list(inspect.signature(InferenceServicer.__init__).parameters)
    assert parameters[1:3] == ["data_plane", "model_repository_extension"], _changed(
        "kserve.protocol.grpc.servicer.InferenceServicer", f"it takes {parameters[1:]}")
    ExceptionToStatusInterceptor()
    assert callable(grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server)


def test_rest_server_takes_uvicorns_tls_options():
    """kgen serve's --tls-cert / --tls-key reach uvicorn through KServe's
    `RESTServer(ssl_certfile=, ssl_keyfile=)`."""
    from kserve.protocol.rest.server import RESTServer

    member = "kserve.protocol.rest.server.RESTServer.__init__"
    parameters = inspect.signature(RESTServer.__init__).parameters
    missing = [name for name in ("ssl_certfile", "ssl_keyfile") if name not in parameters]
    assert not missing, _changed(member, f"it takes no {', '.join(missing)}")
    # ModelServer moves its default port when given TLS; kgen serve puts
    # the port it was given back (kgen.serving.server._ModelServer).
    source = inspect.getsource(kserve.ModelServer.__init__)
    assert "self.http_port = http_port" in source, _changed(
        "kserve.ModelServer.__init__", "it no longer sets self.http_port from http_port")


def test_repository_routes_and_rpcs_are_where_kgens_front_door_looks():
    """The repository API switch and the open health routes match KServe's
    routes and V2 gRPC methods by path: a renamed one would escape them."""
    import fastapi
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

    from kgen.serving import server

    from fastapi.testclient import TestClient

    app = fastapi.FastAPI()
    register_v2_endpoints(app, None, None)
    client = TestClient(app, raise_server_exceptions=False)
    # 405 (a POST route asked with GET) or 500 (no data plane here): a route.
    for path in ("/v2/repository/models/m/load", "/v2/repository/models/m/unload"):
        assert path.startswith(server.REPOSITORY_PREFIX) and \
            client.get(path).status_code == 405, _changed(
                "kserve.protocol.rest.v2_endpoints", f"no POST route {path}")
    for path in (p for p in server.OPEN_PATHS if p.startswith("/v2")):
        assert client.get(path).status_code != 404, _changed(
            "kserve.protocol.rest.v2_endpoints", f"no health route {path}")
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {f"/{service.full_name}/{m.name}" for m in service.methods}
    assert server.OPEN_RPCS | server.REPOSITORY_RPCS <= methods, _changed(
        "kserve.protocol.grpc.grpc_predict_v2_pb2",
        f"no method {sorted((server.OPEN_RPCS | server.REPOSITORY_RPCS) - methods)}")
    assert {m for m in methods if "Repository" in m} <= server.REPOSITORY_RPCS, _changed(
        "kserve.protocol.grpc.grpc_predict_v2_pb2", "a repository method kgen does not switch")
