"""KServe state kgen sets that KServe does not make public API.

Written for KServe 0.21 (`kgen.compat.SUPPORTED["kserve"]`); pinned by
`tests/compat/test_kserve_members.py`.

`kserve.model_server` parses `sys.argv` with its own flags when it is first
imported (`args, _ = parser.parse_known_args()`, and `import kserve` imports
it), and `ModelServer` reads that namespace: its constructor's defaults,
whether and how it configures logging, the predictor settings, and the gRPC
options of KServe's own `start`. kgen imports KServe as it is (the command
line of `kgen serve` holds none of KServe's flags; a pinned test checks
every one of them) and, when a server is built, puts KServe's defaults back
into that namespace so that nothing a process was started with configures
kgen's server.
"""

import kserve.model_server


def model_server_defaults():
    """KServe's model-server flags at their defaults (an
    `argparse.Namespace`), whatever this process's command line holds.

    For KServe 0.21, whose flags are the module-level
    `kserve.model_server.parser`; KServe has no public accessor for them.
    """
    return kserve.model_server.parser.parse_args([])


def reset_model_server_arguments():
    """Make `kserve.model_server.args`, which KServe 0.21 parsed from
    `sys.argv` at import and `ModelServer` reads, its defaults again.

    For KServe 0.21; it has no public way to configure `ModelServer`
    without that namespace (its constructor reads `args.configure_logging`
    and `args.log_config_file` directly).

    Returns:
        The names of the flags the command line had set (sorted; empty for
        `kgen serve`, whose flags are none of KServe's).
    """
    defaults = model_server_defaults()
    parsed = vars(kserve.model_server.args)
    taken = sorted(name for name, value in vars(defaults).items()
                   if parsed.get(name, value) != value)
    kserve.model_server.args = defaults
    return taken
