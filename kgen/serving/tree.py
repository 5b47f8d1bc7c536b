"""The layout `kgen serve` reads: `saved_models/NAME/<int version>/`.

Light on purpose (no TensorFlow, no KServe), so a tree that cannot be
served is refused before the server's libraries load.

A model is addressed by its folder's name in every protocol's path
(`/v1/models/NAME:predict`, `/v2/models/NAME/infer`), so only names made
of URL-safe characters are served: letters, digits, `.`, `_` and `-`, not
starting with `.` or `-`. TF Serving's REST paths cannot hold a name with
`/` or `:` at all (`/v1/models/a:b` reads as model `a`, verb `b`), and any
other character would have to be percent-encoded by every client. A
folder with another name is skipped with a warning, not loaded.
"""

import os
import pathlib
import re

from kgen.errors import UserError

# A version folder as TF Serving reads it: a plain whole number.
PLAIN_VERSION = re.compile(r"(0|[1-9][0-9]*)\Z")
# A model name every client can put in a URL path as it is.
ADDRESSABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
NAME_RULE = "letters, digits, '.', '_' and '-', not starting with '.' or '-'"


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


def addressable(name):
    """Whether a model folder's name can be used as it is in a URL path."""
    return bool(ADDRESSABLE_NAME.match(name))


def _version_dirs(root):
    try:
        entries = sorted(pathlib.Path(root).iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_dir() and not p.name.startswith(".")
            and plain_versions(p)]


def model_dirs(root):
    """The folders of `root` holding at least one version whose names can be
    served (`addressable`), by name."""
    return [p for p in _version_dirs(root) if addressable(p.name)]


def unaddressable_dirs(root):
    """The folders of `root` holding versions whose names cannot be served."""
    return [p for p in _version_dirs(root) if not addressable(p.name)]


def unaddressable_text(name):
    """Why the folder `name` is not served, for the warning that names it."""
    return (f"model folder {name!r} is not served: its name cannot be used as it is in "
            f"a URL path such as /v1/models/NAME:predict (use {NAME_RULE}); rename it")


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
    skipped = [p.name for p in unaddressable_dirs(root)]
    if not names and skipped:
        raise ServeError(f"{root}: no model folder whose name can be served (skipped "
                         f"{', '.join(map(repr, skipped))}: use {NAME_RULE})")
    if not names:
        raise ServeError(f"{root}: no exported models (expected {root}/NAME/<version>/"
                         "saved_model.pb, as `kgen export --to` writes)")
    return names


def version_stamp(path):
    """What identifies a version folder's files: the folder's inode and each
    file's name, inode, size and modification time. A folder replaced by
    another of the same number, or a file written into it later, changes
    it; None when the folder is gone."""
    path = pathlib.Path(path)
    try:
        found = [("", path.stat().st_ino, 0, 0)]
    except OSError:
        return None
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            file = os.path.join(folder, name)
            try:
                info = os.stat(file)
            except OSError:
                continue
            found.append((os.path.relpath(file, path), info.st_ino, info.st_size,
                          info.st_mtime_ns))
    return tuple(found)


def without_paths(text, root):
    """`text` with the tree's own location removed (`/srv/saved_models/vae/1`
    becomes `vae/1`): what a client is told names no server path."""
    root = pathlib.Path(root)
    forms = {str(root), os.path.abspath(root)}
    try:
        forms.add(str(root.resolve()))
    except OSError:
        pass
    for form in sorted(forms, key=len, reverse=True):
        form = form.rstrip(os.sep)
        if form:
            text = re.sub(r"(?<![\w./-])" + re.escape(form + os.sep), "", text)
    return text
