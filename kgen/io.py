"""Writing files so that a kill at any instant leaves the previous good one.

kgen has one way to write a file (or a directory) it must not lose: write
it to a temporary sibling, flush it to disk, and rename it over its final
name (`os.replace`, atomic within one file system). `atomic_path` is that
writer; `atomic_write` and `write_text` are its short forms, and
`atomic_directory` its form for a new directory whose name is chosen when
it is renamed (a model's next export version). Every rename goes through
`move_into_place`.

A temporary's name (`temporary_sibling`) holds `.tmp-` and the writer's
process id, so a later process can tell an abandoned temporary (its writer
is gone) from one still being written, and `clean_stale_temporaries`
removes only the former.

Example:

```python
from kgen import io as kgen_io

with kgen_io.atomic_path("runs/x/best.keras", suffix=".keras") as tmp:
    model.save(tmp)
kgen_io.write_text("runs/x/state.json", '{"status": "trained"}')
```
"""

import contextlib
import os
import pathlib
import shutil
import time
import uuid

from kgen.errors import UserError

_TMP = ".tmp-"
_PROCESS_START = time.time()


class DamagedFileError(UserError, RuntimeError):
    """A file kgen wrote earlier cannot be read back; the message names it."""


def temporary_sibling(path, suffix=None):
    """`dir/NAME.tmp-PID-HEX[suffix]` beside `path`.

    Args:
        path: the final path.
        suffix: appended to the temporary's name (Keras needs names ending
            in `.keras` or `.weights.h5`); default: none.
    """
    path = pathlib.Path(path)
    name = f"{path.name}{_TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix or ''}"
    return path.with_name(name)


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary sibling of `path` to write; rename it into place.

    The caller writes the complete file (or directory) at the yielded path.
    When the block ends normally, it is flushed to disk and renamed over
    `path` (`move_into_place`); when the block raises, it is removed and
    `path` is left as it was.

    Args:
        path: the final path; its parent directories are made.
        suffix: appended to the temporary's name (see `temporary_sibling`).

    Yields:
        The temporary path (a `pathlib.Path` that does not exist yet).

    Example:

    ```python
    with atomic_path("runs/x/backup/epoch-0002.weights.h5", suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    ```
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path, suffix)
    try:
        yield tmp
        _sync(tmp)
        move_into_place(tmp, path)
    finally:
        _remove(tmp)


def atomic_write(path, write, suffix=None):
    """Write `path` through `write(tmp_path)` (`atomic_path` as a call).

    Args:
        path: the final path.
        write: a callable that writes the complete file at the path it is
            given.
        suffix: see `temporary_sibling`.

    Returns:
        `path` as a `pathlib.Path`.

    Example:

    ```python
    atomic_write("runs/x/best.keras", model.save, suffix=".keras")
    ```
    """
    with atomic_path(path, suffix) as tmp:
        write(tmp)
    return pathlib.Path(path)


def write_text(path, text):
    """Write `text` to `path` as UTF-8, atomically; returns the path."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_directory(parent, write, name):
    """Write a new directory under `parent` and rename it to `parent / name()`.

    The directory is written by `write(tmp)` into a temporary sibling (a
    hidden `.new.tmp-PID-HEX`, which `clean_stale_temporaries(parent)`
    removes once its writer is gone), flushed to disk, and renamed to the
    name `name()` gives at that moment. A name another writer took
    meanwhile (its directory exists and is not empty) is asked for again.

    Args:
        parent: the directory that receives the new one; it is made.
        write: a callable that writes the complete directory at the path it
            is given (which does not exist yet).
        name: a callable returning the name to take (e.g. the next free
            version number), called before each rename.

    Returns:
        The new directory's path.

    Example:

    ```python
    atomic_directory("saved_models/vae", archive.write_out,
                     lambda: str(next_version("saved_models/vae")))
    ```
    """
    parent = pathlib.Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(parent / ".new")
    try:
        write(tmp)
        _sync(tmp)
        while True:
            target = parent / str(name())
            try:
                move_into_place(tmp, target, replace=False)
                return target
            except OSError:
                if not target.exists():
                    raise
    finally:
        _remove(tmp)


def move_into_place(tmp, path, replace=True):
    """Rename the written temporary `tmp` to `path`: the commit of every
    atomic write.

    A file replaces `path` in one rename. A directory that replaces an
    existing directory takes two: the old one is moved aside first (and put
    back if the second rename fails), then removed. With `replace=False` an
    existing non-empty directory at `path` is never replaced: the rename
    fails with `OSError`.
    """
    tmp, path = pathlib.Path(tmp), pathlib.Path(path)
    if replace and tmp.is_dir() and path.is_dir() and not path.is_symlink():
        old = temporary_sibling(path)
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            os.replace(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    elif replace:
        os.replace(tmp, path)
    else:
        os.rename(tmp, path)
    _fsync(path.parent)


def _sync(path):
    """Flush `path` (a file, or every file and folder under a directory)."""
    if path.is_dir():
        for root, _, files in os.walk(path):
            for name in files:
                _fsync(os.path.join(root, name))
            _fsync(root)
    else:
        _fsync(path)


def _fsync(path):
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path):
    """Remove `path` (a file or a directory) if it exists."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _writer_alive(name):
    """Whether the process that named temporary `name` may still write it."""
    rest = name.split(_TMP, 1)[1]
    pid = rest.split("-", 1)[0]
    if not pid.isdigit():
        return None  # not named by this module: decide by age
    return process_alive(int(pid))


def process_alive(pid):
    """Whether process `pid` on this machine may still be running (this
    process is; one owned by another user is assumed to be)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(directory):
    """Remove abandoned temporaries (`*.tmp-*`) directly under `directory`.

    A temporary is abandoned when the process named in it has exited; one
    without a process id counts as abandoned when it is older than this
    process. Returns the paths removed.
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        if _TMP not in path.name:
            continue
        alive = _writer_alive(path.name)
        if alive is None:
            with contextlib.suppress(OSError):
                alive = path.stat().st_mtime >= _PROCESS_START
        if alive:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    return removed
