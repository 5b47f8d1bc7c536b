"""A run directory belongs to one process: an exclusive lock on it.

`kgen train`, each `kgen tune` trial and `kgen export` of a run's model hold
`RUN_DIR/kgen.lock` while they work in the run directory:

```python
from kgen import lock

with lock.hold("runs/vae_digits"):
    ...  # nothing else reads or writes the run directory meanwhile
```

The lock is an open lock file that the holder keeps `flock`ed; the file
also records who holds it (`pid`, `host`, `started`, `command`) so that a
refused process can name the holder. It is taken before anything in the
run directory is read or written, and released (the file removed) when the
`with` block ends, by a return, an exception, Ctrl-C or SIGTERM (the
`kgen` command turns SIGTERM into an exception, see
`terminate_as_interrupt`).

A second process asking for a held lock gets a `RunLockedError` naming the
holder. A lock left behind by a process that died without releasing it
(`kill -9`, a crash, a power cut) is stale when its holder ran on this
machine and is no longer running (its process id is gone, or now belongs
to a process started later); the next process takes it over and says so
on stderr. A lock recorded by another machine (a run directory on a shared
file system) is never taken over: kgen cannot see that machine's
processes, so the message says to remove the file once no kgen runs there.

Within one process the lock is re-entrant: a `kgen train` that exports its
model holds its run directory once.
"""

import contextlib
import datetime
import errno
import json
import os
import pathlib
import signal
import socket
import sys
import threading
import time

from kgen.errors import UserError
from kgen.io import process_alive

try:
    import fcntl
except ImportError:  # not a POSIX system: the recorded holder alone decides
    fcntl = None

LOCK_FILE = "kgen.lock"

# Bytes read from a lock file: a holder record is one short JSON object.
_MAX_RECORD = 64 * 1024
# How long a refused process waits for a holder that has just created the
# lock file to write its record.
_RECORD_WAIT_S = 2.0

# {resolved run directory: [file descriptor, depth, directories made]} of
# the locks this process holds.
_held = {}
_held_guard = threading.Lock()


class RunLockedError(UserError, RuntimeError):
    """The run directory is held by another process; the message names the
    run directory, the holder and what to do."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interruption so that what a Ctrl-C releases
    (a run directory's lock, a tune trial's record) is released too."""

    status = 128 + signal.SIGTERM
    word = "terminated"


def describe(record):
    """`pid 4242 on host h since 2026-01-02 10:00:00 UTC (kgen train ...)`."""
    if not record:
        return "a process that has not yet written its record"
    since = record.get("started")
    if isinstance(since, (int, float)):
        since = datetime.datetime.fromtimestamp(since, datetime.timezone.utc)
        since = since.strftime("%Y-%m-%d %H:%M:%S UTC")
    text = f"pid {record.get('pid', '?')} on host {record.get('host', '?')}"
    if since:
        text += f" since {since}"
    if record.get("command"):
        text += f" ({record['command']})"
    return text


def read_holder(run_dir):
    """The record of the process holding `run_dir`'s lock, or `None` when
    no lock file is there (or it is unreadable)."""
    try:
        return _parse(pathlib.Path(run_dir, LOCK_FILE).read_bytes()[:_MAX_RECORD])
    except OSError:
        return None


@contextlib.contextmanager
def hold(run_dir, command=None):
    """Hold `run_dir`'s lock for the `with` block (see the module docstring).

    The run directory is made if missing, and removed again at release when
    it is still empty (so a refused setting leaves nothing on disk).

    Args:
        run_dir: the run directory.
        command: what the holder is doing, as other processes are told;
            default: this process's command line.

    Raises:
        RunLockedError: another live process (or another machine) holds it.
    """
    key = os.path.realpath(run_dir)
    entry = None
    try:
        # A SIGTERM while the lock is taken comes in at the end of this
        # block, once the lock is registered here, so that the `finally`
        # below releases it (a record written and then abandoned would
        # name this process after it ended).
        with termination_deferred():
            with _held_guard:
                held = _held.get(key)
                if held is not None:
                    held[1] += 1
            if held is None:
                # Made and released by absolute path (the working directory
                # may change meanwhile); named as given in messages.
                made = _make_dirs(pathlib.Path(os.path.abspath(run_dir)))
                try:
                    fd = _acquire(pathlib.Path(run_dir), command or _command_line())
                except BaseException:
                    _remove_empty(made)
                    raise
                held = [fd, 1, made]
                with _held_guard:
                    _held[key] = held
            entry = held
        yield
    finally:
        if entry is not None:
            with _held_guard:
                entry[1] -= 1
                last = entry[1] == 0
                if last:
                    del _held[key]
            if last:
                _release(pathlib.Path(key), entry[0])
                _remove_empty(entry[2])


# The files that make a directory a run directory (`kgen.training`).
_RUN_RECORDS = ("config.json", "state.json")


def run_dir_of(model_path):
    """The run directory a model file lives in (`runs/x` for
    `runs/x/best.keras`), or `None` for a model file outside any run."""
    directory = pathlib.Path(model_path).parent
    if any((directory / name).is_file() for name in (*_RUN_RECORDS, LOCK_FILE)):
        return directory
    return None


def hold_run_of(model_path, command=None):
    """`hold` the run directory of `model_path` (see `run_dir_of`); nothing
    for a model file outside any run, or in a run this user cannot write
    (where no kgen process of theirs can train either)."""
    run_dir = run_dir_of(model_path)
    if run_dir is None or not os.access(run_dir, os.W_OK):
        return contextlib.nullcontext()
    return hold(run_dir, command)


# The `termination_deferred` blocks the main thread is in, and whether a
# SIGTERM came meanwhile.
_deferral = {"depth": 0, "pending": False}


def _terminate():
    """Raise `Terminated`; a second SIGTERM from now on ends the process."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


def _on_sigterm(signum, frame):
    if _deferral["depth"]:
        _deferral["pending"] = True
        return
    _terminate()


@contextlib.contextmanager
def terminate_as_interrupt(enabled=True):
    """Within the block, SIGTERM raises `Terminated` (a `KeyboardInterrupt`)
    in the main thread (at the end of a `termination_deferred` block it
    comes in); a second SIGTERM ends the process. Does nothing off the main
    thread or when `enabled` is false."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _deferral["pending"] = False


@contextlib.contextmanager
def termination_deferred():
    """A SIGTERM that comes within the block raises `Terminated` at its end
    (see `terminate_as_interrupt`), so that a database write in the block
    is not cut in half. An exception of the block's own goes first. Does
    nothing off the main thread, where SIGTERM is never raised (and a
    deferral there would end in another thread's `Terminated`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferral["depth"] += 1
    try:
        yield
    finally:
        _deferral["depth"] -= 1
    if not _deferral["depth"] and _deferral["pending"]:
        _deferral["pending"] = False
        _terminate()


# === Taking and releasing ===


def _acquire(run_dir, command):
    """The open, locked lock file's descriptor, holding this process's record."""
    path = run_dir / LOCK_FILE
    host = socket.gethostname()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                raise _locked(run_dir, _wait_for_record(fd), host)
            if not _is_current(fd, path):
                os.close(fd)  # its holder released and removed it meanwhile
                continue
            record = _parse(_read(fd))
            if record:
                _check_stale(run_dir, record, host)
            _write_record(fd, {"pid": os.getpid(), "host": host,
                               "started": time.time(), "command": command,
                               "process_start": _process_start(os.getpid())})
            return fd
        except BaseException:
            os.close(fd)
            raise


def _try_lock(fd):
    """flock `fd`: True when taken, False when another open file holds it.
    On a file system without locks only the recorded holder decides."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return True  # ENOLCK, EOPNOTSUPP: no locks here
    return True


def _is_current(fd, path):
    """Whether `path` still names the file `fd` has open."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _check_stale(run_dir, record, host):
    """Refuse a record of a live holder, or of another machine; announce
    the take-over of a stale one."""
    if record.get("host") != host:
        raise _locked(run_dir, record, host)
    pid = record.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and _holder_alive(record):
        raise _locked(run_dir, record, host)
    print(f"kgen: taking over the stale lock of {run_dir}: its holder, "
          f"{describe(record)}, is no longer running", file=sys.stderr, flush=True)


def _holder_alive(record):
    """Whether the recorded process still runs: its pid exists and, where
    the start time was recorded, it is the same process."""
    pid = record["pid"]
    if pid <= 0 or not process_alive(pid):
        return False
    recorded, now = record.get("process_start"), _process_start(pid)
    return recorded is None or now is None or recorded == now


def _locked(run_dir, record, host):
    lock_file = pathlib.Path(run_dir) / LOCK_FILE
    if record and record.get("host") != host:
        advice = (f"it may still run there; if no kgen process on "
                  f"{record.get('host')} uses it any more, remove {lock_file}")
    else:
        advice = ("wait for it to end (or stop it), or use another run directory")
    return RunLockedError(f"{run_dir}: in use by {describe(record)}; {advice}")


def _release(run_dir, fd):
    path = run_dir / LOCK_FILE
    try:
        if _is_current(fd, path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    finally:
        os.close(fd)


# === The lock file's record ===


def _read(fd):
    return os.pread(fd, _MAX_RECORD, 0)


def _parse(data):
    """The record in a lock file's bytes; `{}` when empty or unreadable."""
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _wait_for_record(fd):
    """The holder's record; a holder that has just created the file is given
    a moment to write it."""
    deadline = time.monotonic() + _RECORD_WAIT_S
    while True:
        record = _parse(_read(fd))
        if record or time.monotonic() >= deadline:
            return record
        time.sleep(0.05)


def _write_record(fd, record):
    data = json.dumps(record).encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _process_start(pid):
    """When process `pid` started, in clock ticks since boot (Linux's
    /proc/PID/stat), or `None` where that cannot be read."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _command_line():
    """This process's command line, as `kgen train ...` where it is kgen."""
    argv = list(sys.argv) or ["python"]
    first = pathlib.Path(argv[0]).name
    if first in ("kgen", "__main__.py"):
        argv = ["kgen", *argv[1:]]
    text = " ".join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


# === The run directory ===


def _make_dirs(run_dir):
    """Make `run_dir` and its missing parents; returns those made, deepest
    first."""
    made, directory = [], run_dir
    while not directory.exists() and directory != directory.parent:
        made.append(directory)
        directory = directory.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    return made


def _remove_empty(directories):
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return
