"""Imports KServe without letting it read this process's command line.

`kserve.model_server` parses `sys.argv` with its own flags when it is first
imported; `kgen serve`'s flags (and pytest's) are not KServe's, so it is
imported with an empty command line and configured through arguments.
"""

import sys

_saved, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve  # noqa: F401
    import kserve.model_server  # noqa: F401
finally:
    sys.argv = _saved
