"""What `kgen serve` does at its front door: authentication, the
repository API, time bounds and TLS, checked once at start-up.

Light on purpose (no TensorFlow, no KServe), so a wrong option is refused
before the server's libraries load.

- `api_key`: every route except health (`/`, `/v2/health/live`,
  `/v2/health/ready`, and gRPC's `ServerLive` / `ServerReady`) needs
  `Authorization: Bearer KEY` (REST) or `authorization: Bearer KEY`
  metadata (gRPC). KServe's model server has no authentication of its own
  (on a cluster it leaves that to the mesh in front of it), so this is
  kgen's. From `--api-key` or the `KGEN_API_KEY` environment variable.
- `allow_repository_api`: KServe's repository routes (`POST
  /v2/repository/models/NAME/load|unload`, gRPC `RepositoryModelLoad` /
  `RepositoryModelUnload`) answer 403 / PERMISSION_DENIED unless set.
- `read_timeout`: seconds a request body may take to arrive in full; a
  stalled or dripped body is answered 408 and its connection closed.
- `request_timeout`: seconds from a request's full body to its answer;
  later, 504 (DEADLINE_EXCEEDED on gRPC).
- `tls_cert`, `tls_key`: a PEM certificate (chain) and its key: REST is
  served over HTTPS (uvicorn's own TLS, as KServe's `ssl_certfile` /
  `ssl_keyfile`), gRPC with server credentials. KServe's environment
  variables `KSERVE_TLS_CERT_FILE` / `KSERVE_TLS_KEY_FILE` are read when
  the options are not given.
"""

import dataclasses
import os
import pathlib

from kgen.serving import defaults
from kgen.serving.tree import ServeError

API_KEY_ENV = "KGEN_API_KEY"
TLS_ENV = ("KSERVE_TLS_CERT_FILE", "KSERVE_TLS_KEY_FILE")


@dataclasses.dataclass(frozen=True)
class NetworkOptions:
    """The checked front-door options (see the module's docstring)."""

    api_key: str = None
    allow_repository_api: bool = False
    read_timeout: float = defaults.READ_TIMEOUT
    request_timeout: float = defaults.REQUEST_TIMEOUT
    tls_cert: str = None
    tls_key: str = None

    @property
    def tls(self):
        return self.tls_cert is not None

    def __repr__(self):  # never shows the key
        key = "set" if self.api_key else None
        return (f"NetworkOptions(api_key={key}, allow_repository_api="
                f"{self.allow_repository_api}, read_timeout={self.read_timeout}, "
                f"request_timeout={self.request_timeout}, tls_cert={self.tls_cert!r})")


def network_options(api_key=None, allow_repository_api=False,
                    read_timeout=defaults.READ_TIMEOUT,
                    request_timeout=defaults.REQUEST_TIMEOUT, tls_cert=None, tls_key=None,
                    environ=None):
    """Checks the options, filling the key and TLS files from the
    environment when they are not given.

    Raises:
        ServeError: naming the option and what it needs.
    """
    environ = os.environ if environ is None else environ
    if api_key is None:
        api_key = environ.get(API_KEY_ENV) or None
        where = API_KEY_ENV
    else:
        where = "--api-key"
    if api_key is not None:
        _check_key(api_key, where)
    for flag, value in (("--read-timeout", read_timeout),
                        ("--request-timeout", request_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ServeError(f"{flag} {value}: must be a number of seconds > 0")
    if tls_cert is None and tls_key is None:
        tls_cert, tls_key = (environ.get(name) or None for name in TLS_ENV)
    if (tls_cert is None) != (tls_key is None):
        given, missing = (("--tls-cert", "--tls-key") if tls_key is None
                          else ("--tls-key", "--tls-cert"))
        raise ServeError(f"{given} {tls_cert or tls_key}: needs {missing} too (a PEM "
                         "certificate and its private key)")
    if tls_cert is not None:
        tls_cert, tls_key = str(tls_cert), str(tls_key)
        _check_tls(tls_cert, tls_key)
    return NetworkOptions(api_key=api_key, allow_repository_api=bool(allow_repository_api),
                          read_timeout=float(read_timeout),
                          request_timeout=float(request_timeout),
                          tls_cert=tls_cert, tls_key=tls_key)


def _check_key(key, where):
    if not key.strip():
        raise ServeError(f"{where}: the API key is empty; give a secret of at least 16 "
                         "characters (e.g. python -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))')")
    if not key.isascii() or not key.isprintable() or key != key.strip() or " " in key:
        raise ServeError(f"{where}: the API key must be printable ASCII without spaces "
                         "(it travels in an HTTP header)")
    if len(key) < 16:
        raise ServeError(f"{where}: the API key has {len(key)} characters; give at "
                         "least 16 (e.g. python -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))')")


def _check_tls(cert, key):
    import ssl

    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not pathlib.Path(path).is_file():
            raise ServeError(f"{flag} {path}: no such file (a PEM file)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        reason = {"KEY_VALUES_MISMATCH": "the key is not the certificate's"}.get(
            e.reason, "not readable as PEM")
        raise ServeError(f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate "
                         f"and its matching private key ({reason})") from None
    except OSError as e:
        raise ServeError(f"--tls-cert {cert} / --tls-key {key}: cannot be read "
                         f"({e.strerror or e})") from None
