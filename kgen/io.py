"""Writing files so that a kill at any instant leaves the previous good one.

Every file a run or an export writes goes to a temporary sibling first and
is then renamed over its final name (`os.replace`, atomic within one file
system). A temporary's name holds the writer's process id, so a later
process can tell an abandoned temporary (its writer is gone) from one that
is still being written, and remove only the former.

Fault injection (for tests only): when the environment variable
`KGEN_FAULT` is `POINT:N` (e.g. `checkpoint:2`), the process kills itself
with SIGKILL at that write point, the N-th time it is reached (for
per-epoch points, N is the 1-based epoch). At a file write point the
temporary has been written and cut to half its size first, so the kill
leaves exactly what a kill in the middle of the write would leave. The
points are `epoch` (after the first batch of an epoch), `checkpoint`,
`history`, `backup` (per epoch), `state`, `export` (the N-th export) and
`trial` (`kgen tune`: after the first epoch, backup included, of the N-th
trial the process runs).
One point does not kill: `nonfinite:N` sets a weight to NaN as epoch N
begins, as a diverged update would.
"""

import contextlib
import os
import pathlib
import shutil
import signal
import time
import uuid

FAULT_ENV = "KGEN_FAULT"
_TMP = ".tmp-"
_PROCESS_START = time.time()


class DamagedFileError(RuntimeError):
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


def atomic_write(path, write, fault=None, suffix=None):
    """Write `path` through `write(tmp_path)`, then rename the temporary.

    Args:
        path: the final path.
        write: a callable that writes the complete file at the path it is
            given.
        fault: `(point, index)` naming this write for `KGEN_FAULT`.
        suffix: see `temporary_sibling`.

    Returns:
        `path` as a `pathlib.Path`.

    Example:

    ```python
    atomic_write("runs/x/best.keras", model.save, suffix=".keras")
    ```
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path, suffix)
    try:
        write(tmp)
        _fsync(tmp)
        if fault:
            fault_point(*fault, partial=tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
    return path


def write_text(path, text, fault=None):
    """`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"), fault)


def _fsync(path):
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


# === Fault injection (tests only) ===


def fault_point(point, index=1, partial=None, poison=None):
    """Kill this process with SIGKILL if `KGEN_FAULT` names `point:index`.

    A fault-injection hook for the durability tests: it does nothing unless
    the environment variable is set. With `partial`, that file (or the
    largest file under that directory) is first cut to half its size, so
    the kill leaves a partly written temporary. With `poison`, that callable
    runs instead of the kill.
    """
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, number = wanted.partition(":")
    if name != point or int(number or 1) != int(index):
        return
    if poison is not None:
        poison()
        return
    if partial is not None:
        _truncate_half(pathlib.Path(partial))
    os.kill(os.getpid(), signal.SIGKILL)


def _truncate_half(path):
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        if not files:
            return
        path = max(files, key=lambda p: p.stat().st_size)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
