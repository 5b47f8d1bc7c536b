"""`kgen serve`'s defaults are written once, in `kgen.serving.defaults`:
its flags, their help, `serve()` and `Settings` all read them there."""

import inspect

import pytest

from kgen import cli
from kgen.serving import defaults

pytestmark = pytest.mark.tf_only

pytest.importorskip("kserve", reason="KServe is kgen's [serving] extra")


def _serve_help(capsys):
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["serve", "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_flags_default_to_the_constants():
    args = cli._parser().parse_args(["serve", "tree"])
    assert (args.host, args.port, args.grpc_port, args.max_body_bytes, args.poll_seconds) == (
        defaults.HOST, defaults.REST_PORT, defaults.GRPC_PORT, defaults.MAX_BODY_BYTES,
        defaults.POLL_SECONDS)


def test_help_states_the_constants(capsys):
    text = _serve_help(capsys)
    for expected in (f"default {defaults.HOST};", f"(default {defaults.REST_PORT})",
                     f"(default {defaults.GRPC_PORT})",
                     f"(default {defaults.MAX_BODY_BYTES}, 32 MiB)",
                     f"(default {defaults.BATCH_SIZE}, and at most",
                     f"(default {defaults.BATCH_WAIT_MS:g})",
                     f"(default {defaults.POLL_SECONDS:g})"):
        assert expected in text, (expected, text)


def test_serve_and_settings_default_to_the_constants():
    from kgen.serving.models import Settings
    from kgen.serving.server import serve

    parameters = inspect.signature(serve).parameters
    assert {name: parameters[name].default for name in (
        "host", "port", "grpc_port", "max_body_bytes", "batch_size", "batch_wait_ms",
        "poll_seconds")} == {
        "host": defaults.HOST, "port": defaults.REST_PORT, "grpc_port": defaults.GRPC_PORT,
        "max_body_bytes": defaults.MAX_BODY_BYTES, "batch_size": defaults.BATCH_SIZE,
        "batch_wait_ms": defaults.BATCH_WAIT_MS, "poll_seconds": defaults.POLL_SECONDS}
    settings = Settings()
    assert settings.batch_size == defaults.BATCH_SIZE
    assert settings.batch_wait_s == defaults.BATCH_WAIT_MS / 1000.0


def test_deploy_batching_waits_as_kgen_serve():
    from kgen.serving.deploy import batching_config_text

    text = batching_config_text(8)
    assert f"batch_timeout_micros {{ value: {int(defaults.BATCH_WAIT_MS * 1000)} }}" in text


def test_size_text():
    assert defaults.size_text(32 * 1024 * 1024) == "33554432, 32 MiB"
    assert defaults.size_text(3 << 30) == "3221225472, 3 GiB"
    assert defaults.size_text(1000) == "1000"


def test_front_door_flags_default_to_the_constants(capsys):
    args = cli._parser().parse_args(["serve", "tree"])
    assert (args.read_timeout, args.request_timeout) == (
        defaults.READ_TIMEOUT, defaults.REQUEST_TIMEOUT)
    assert (args.api_key, args.allow_repository_api, args.tls_cert, args.tls_key) == (
        None, False, None, None)
    text = _serve_help(capsys)
    for expected in (f"(default {defaults.READ_TIMEOUT:g})",
                     f"(default {defaults.REQUEST_TIMEOUT:g})", "$KGEN_API_KEY"):
        assert expected in text, (expected, text)
    from kgen.serving.options import network_options

    options = network_options(environ={})
    assert (options.read_timeout, options.request_timeout) == (
        defaults.READ_TIMEOUT, defaults.REQUEST_TIMEOUT)
