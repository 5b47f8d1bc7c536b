"""The layout `kgen serve` reads: `saved_models/NAME/<int version>/`.

Light on purpose (no TensorFlow, no KServe), so a tree that cannot be
served is refused before the server's libraries load.
"""

import pathlib
import re

from kgen.errors import UserError

# A version folder as TF Serving reads it: a plain whole number.
PLAIN_VERSION = re.compile(r"(0|[1-9][0-9]*)\Z")


class ServeError(UserError, ValueError):
    """A `kgen serve` argument or tree cannot be served; names the value."""


def plain_versions(base):
    """The version directories under `base` holding a SavedModel, ascending."""
    found = []
    try:
        entries = list(pathlib.Path(base).iterdir())
    except OSError:
        return found
    for p in entries:
        if PLAIN_VERSION.match(p.name) and (p / "saved_model.pb").is_file():
            found.append(int(p.name))
    return sorted(found)


def model_dirs(root):
    """The folders of `root` holding at least one version, by name."""
    try:
        entries = sorted(pathlib.Path(root).iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_dir() and not p.name.startswith(".")
            and plain_versions(p)]


def check_tree(root):
    """The tree's model names, or a `ServeError` naming what is wrong."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise ServeError(f"{root}: no such directory (expected a tree like saved_models/ "
                         "holding NAME/<version>/saved_model.pb)")
    if plain_versions(root):
        raise ServeError(f"{root} is one model's base path (it holds versions); pass the "
                         f"tree above it, {root.parent}/")
    if (root / "saved_model.pb").is_file():
        raise ServeError(f"{root} is one version of a model; pass the tree two levels up, "
                         f"{root.parent.parent}/")
    names = [p.name for p in model_dirs(root)]
    if not names:
        raise ServeError(f"{root}: no exported models (expected {root}/NAME/<version>/"
                         "saved_model.pb, as `kgen export --to` writes)")
    return names
