"""A run directory belongs to one process (`kgen.lock`).

The unit tests take the lock in this process (and in a small Python
process that imports only `kgen.lock`, for a holder that is alive); the
slow test runs two real `kgen` processes on one run directory.
"""

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import kgen_env
from tests.conftest import run_kgen

REPO = pathlib.Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def held_elsewhere(run_dir, command):
    """A live Python process holds `run_dir`'s lock (recorded as running
    `command`) for the `with` block; yields that process, and checks it
    ends cleanly once released."""
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from kgen import lock
            with lock.hold({str(run_dir)!r}, command={command!r}):
                print("held", flush=True)
                sys.stdin.read()
        """)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0


def _dead_pid():
    """The id of a process that has ended and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_record(run_dir, **record):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "kgen.lock").write_text(json.dumps(
        {"started": 1767225600.0, "command": "kgen train vae_digits", **record}))


@pytest.mark.backend_agnostic
def test_a_stale_lock_is_taken_over_with_a_message(tmp_path, capsys):
    from kgen import lock

    run_dir, pid = tmp_path / "runs" / "x", _dead_pid()
    _write_record(run_dir, pid=pid, host=socket.gethostname())
    with lock.hold(run_dir, command="kgen train again"):
        holder = lock.read_holder(run_dir)
        assert (holder["pid"], holder["command"]) == (os.getpid(), "kgen train again")
    err = capsys.readouterr().err
    assert err == (f"kgen: taking over the stale lock of {run_dir}: its holder, pid {pid} "
                   f"on host {socket.gethostname()} since 2026-01-01 00:00:00 UTC "
                   f"(kgen train vae_digits), is no longer running\n")
    assert not (run_dir / "kgen.lock").exists()  # released


@pytest.mark.backend_agnostic
def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path, capsys):
    """The recorded pid runs, but it is another process (started at another
    time) than the one that took the lock."""
    from kgen import lock

    run_dir = tmp_path / "x"
    _write_record(run_dir, pid=os.getppid(), host=socket.gethostname(),
                  process_start=-1)
    with lock.hold(run_dir):
        pass
    assert "taking over the stale lock" in capsys.readouterr().err


@pytest.mark.backend_agnostic
def test_a_lock_of_another_host_is_refused(tmp_path):
    from kgen import lock

    run_dir = tmp_path / "x"
    _write_record(run_dir, pid=_dead_pid(), host="elsewhere.example")
    with pytest.raises(lock.RunLockedError) as error:
        with lock.hold(run_dir):
            pass
    message = str(error.value)
    assert message.startswith(f"{run_dir}: in use by pid ")
    assert ("on host elsewhere.example since 2026-01-01 00:00:00 UTC "
            "(kgen train vae_digits); it may still run there; if no kgen process on "
            f"elsewhere.example uses it any more, remove {run_dir / 'kgen.lock'}") in message
    assert json.loads((run_dir / "kgen.lock").read_text())["host"] == "elsewhere.example"


@pytest.mark.backend_agnostic
def test_a_live_holder_is_refused(tmp_path):
    """A real process holds the lock (its flock, and its record); this one
    is refused, naming it, until it ends."""
    from kgen import lock

    run_dir = tmp_path / "x"
    with held_elsewhere(run_dir, "kgen train holder") as holder:
        with pytest.raises(lock.RunLockedError, match=(
                rf"^{run_dir}: in use by pid {holder.pid} on host .* since .* "
                rf"\(kgen train holder\); wait for it to end \(or stop it\), or use "
                rf"another run directory$")):
            with lock.hold(run_dir):
                pass
    assert not (run_dir / "kgen.lock").exists()
    with lock.hold(run_dir):  # free again
        pass


@pytest.mark.backend_agnostic
def test_released_on_an_exception_and_reentrant(tmp_path):
    from kgen import lock

    run_dir = tmp_path / "runs" / "x"
    with pytest.raises(ValueError):
        with lock.hold(run_dir):
            with lock.hold(run_dir):  # the same process: held once
                pass
            assert lock.read_holder(run_dir)["pid"] == os.getpid()
            raise ValueError("boom")
    assert not (run_dir / "kgen.lock").exists()
    # The directories made for the lock alone are removed with it.
    assert not (tmp_path / "runs").exists()


@pytest.mark.backend_agnostic
def test_export_of_a_run_holds_its_run_directory(tmp_path):
    from kgen import lock

    run_dir = tmp_path / "x"
    run_dir.mkdir()
    assert lock.run_dir_of(run_dir / "best.keras") is None  # not a run
    (run_dir / "config.json").write_text("{}")
    assert lock.run_dir_of(run_dir / "best.keras") == run_dir


# === Two real processes on one run directory ===

# `kgen train` that waits after its first epoch (its checkpoint written)
# until the file argv[1] exists: a callback given to training.train, the
# seam `tests/faults.py` uses.
_PAUSED_TRAIN = textwrap.dedent("""
    import pathlib, sys, time
    from kgen import cli, training

    original = training.train

    def train(*args, callbacks=(), **kwargs):
        import keras

        class Pause(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                while epoch == 0 and not pathlib.Path(go).exists():
                    time.sleep(0.1)

        return original(*args, callbacks=[*callbacks, Pause()], **kwargs)

    training.train = train
    go, sys.argv = sys.argv[1], ["kgen", *sys.argv[2:]]  # as the lock records it
    cli.main(sys.argv[1:])
""")


def _wait_for(predicate, process, what, timeout=300):
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the first kgen train ended before {what}:\n"
                                 f"{process.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout}s")
        time.sleep(0.2)


@pytest.mark.slow
def test_a_second_train_and_an_export_are_refused_while_a_run_trains(tmp_path):
    run_dir, go = tmp_path / "runs" / "c3", tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_TRAIN, str(go), "train", "vae_digits",
         "--set", "epochs=2", "--set", "steps_per_epoch=2", "--run-dir", "runs/c3",
         "--no-export"],
        cwd=tmp_path, env={**kgen_env(), "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: (run_dir / "best.keras").exists(), first, "checkpoint")
        holder = json.loads((run_dir / "kgen.lock").read_text())
        assert holder["pid"] == first.pid

        second = run_kgen("train", "vae_digits", "--set", "epochs=2",
                          "--set", "steps_per_epoch=2", "--set", "latent_dim=4",
                          "--run-dir", "runs/c3", "--overwrite", "--no-export",
                          cwd=tmp_path, check=False)
        export = run_kgen("export", "runs/c3/best.keras", "--to", "saved_models/c3",
                          cwd=tmp_path, check=False)
    finally:
        go.touch()
        out = first.communicate(timeout=600)[0]
    for refused in (second, export):
        line = refused.stderr.strip().splitlines()[-1]
        assert refused.returncode == 2, refused.stderr
        assert line.startswith(f"kgen: error: runs/c3: in use by pid {first.pid} on host "
                               f"{socket.gethostname()} since "), line
        assert line.endswith("(kgen train vae_digits --set epochs=2 --set steps_per_epoch=2 "
                             "--run-dir runs/c3 --no-export); wait for it to end (or stop "
                             "it), or use another run directory"), line
        print(f"exit {refused.returncode}: {line}")
    assert not (tmp_path / "saved_models").exists()

    # The first run ends as it would have alone: its settings, its two
    # epochs, its model; and the lock is gone.
    assert first.returncode == 0, out
    assert "trained in " in out
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["latent_dim"] == 8
    assert len((run_dir / "history.csv").read_text().splitlines()) == 3
    assert json.loads((run_dir / "state.json").read_text())["status"] == "trained"
    assert not (run_dir / "kgen.lock").exists()


@pytest.mark.backend_agnostic
def test_sigterm_raises_terminated_but_waits_for_a_deferred_block():
    """`kgen train`, `export` and `tune` turn SIGTERM into `Terminated` (so
    that the lock is released); a block that writes a database record
    finishes first."""
    import signal

    from kgen import lock

    def deliver():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs at the next bytecode

    previous = signal.getsignal(signal.SIGTERM)
    with lock.terminate_as_interrupt():
        with pytest.raises(lock.Terminated):
            deliver()
    assert signal.getsignal(signal.SIGTERM) is previous
    finished = []
    with lock.terminate_as_interrupt():
        with pytest.raises(lock.Terminated):
            with lock.termination_deferred():
                deliver()
                finished.append(True)
    assert finished == [True]
    assert signal.getsignal(signal.SIGTERM) is previous


@pytest.mark.backend_agnostic
def test_a_sigterm_as_the_lock_is_taken_still_releases_it(tmp_path, monkeypatch):
    """SIGTERM the moment the lock's record is written (a `kgen tune`
    worker whose parent was killed as the worker's trial began): the record
    is removed as `Terminated` unwinds, not left naming a process that
    ended."""
    import signal

    from kgen import lock

    write_record = lock._write_record

    def write_then_signal(fd, record):
        write_record(fd, record)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs at the next bytecode

    monkeypatch.setattr(lock, "_write_record", write_then_signal)
    run_dir = tmp_path / "run"
    entered = []
    with lock.terminate_as_interrupt():
        with pytest.raises(lock.Terminated):
            with lock.hold(run_dir):
                entered.append(True)
    assert entered == []  # the SIGTERM came in before the block began
    assert not (run_dir / "kgen.lock").exists()
    assert not run_dir.exists()  # made for the lock alone, removed with it


@pytest.mark.backend_agnostic
def test_a_lock_taken_off_the_main_thread_defers_no_sigterm(tmp_path):
    """`kgen.training.train` may run in a library user's thread: its lock
    takes no part in the main thread's SIGTERM deferral."""
    import threading

    from kgen import lock

    depths = []

    def take():
        with lock.hold(tmp_path / "run"):
            depths.append(lock._deferral["depth"])

    thread = threading.Thread(target=take)
    with lock.termination_deferred():  # the main thread's own block
        thread.start()
        thread.join()
        assert lock._deferral["depth"] == 1
    assert depths == [1] and lock._deferral["depth"] == 0
    assert not (tmp_path / "run" / "kgen.lock").exists()
