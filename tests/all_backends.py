"""Run the test suite on every Keras backend and sum the results.

    python tests/all_backends.py [pytest args...]
    python tests/all_backends.py -m "not slow"      # the fast lane

TensorFlow runs every test; JAX and PyTorch run those that are neither
`tf_only` nor `backend_agnostic` (see pytest.ini), so those two tiers run
once. A `-m EXPR` given here applies to every backend: JAX and PyTorch run
`(EXPR) and not tf_only and not backend_agnostic`. A backend left with no
test by the selection (pytest's exit status 5) does not fail the run.

Each backend runs in its own pytest process with KERAS_BACKEND set (Keras
fixes its backend at import). `KGEN_TEST_JOBS` backends run at a time
(default 2: on two cores the suites overlap well, since much of each is
compilation, process start-up and waiting on subprocesses and servers;
1 runs them one after another). Each backend's output is printed whole
when it finishes, with its slowest tests. Exits non-zero if any backend
fails.
"""

import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time

# The longest first, so that the last to start is the shortest.
BACKENDS = ("tensorflow", "jax", "torch")
# Tiers that run once, on TensorFlow.
ONCE = "not tf_only and not backend_agnostic"
NO_TESTS_COLLECTED = 5  # pytest's exit status when a selection leaves none
REPO = pathlib.Path(__file__).resolve().parents[1]
_print_lock = threading.Lock()


def _jobs():
    text = os.environ.get("KGEN_TEST_JOBS", "2")
    if not text.isdigit() or int(text) < 1:
        sys.exit(f"KGEN_TEST_JOBS={text!r}: expected a whole number >= 1")
    return int(text)


def split_marker_expression(args):
    """`args` without its `-m` options, and the last `-m` expression (pytest
    keeps the last), or None."""
    rest, expression = [], None
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-m" and i + 1 < len(args):
            expression = args[i + 1]
            i += 2
            continue
        if arg.startswith("-m") and arg != "-m" and not arg.startswith("--"):
            expression = arg[2:].lstrip("=")
        else:
            rest.append(arg)
        i += 1
    return rest, expression


def backend_args(backend, args):
    """The pytest arguments for `backend`: the user's, with the tiers that
    run once deselected everywhere but on TensorFlow."""
    if backend == "tensorflow":
        return list(args)
    rest, expression = split_marker_expression(args)
    selection = f"({expression}) and {ONCE}" if expression else ONCE
    return [*rest, "-m", selection]


def run_backend(backend, args):
    """One backend's pytest run: (exit code, counts, seconds)."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.time()
    with _print_lock:
        print(f"===== KERAS_BACKEND={backend}: started", flush=True)
    with tempfile.TemporaryFile("w+") as log:
        code = subprocess.call(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--durations=15",
             "tests", *backend_args(backend, args)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
        log.seek(0)
        output = log.read()
    seconds = time.time() - start
    lines = [line for line in output.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", last)}
    with _print_lock:
        print(f"\n===== KERAS_BACKEND={backend} =====\n{output}", end="", flush=True)
        print(f"----- {backend}: exit {code} in {seconds:.0f}s", flush=True)
    return code, counts, seconds


def main():
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    failed_backends, empty_backends = [], []
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(_jobs()) as pool:
        futures = {backend: pool.submit(run_backend, backend, sys.argv[1:])
                   for backend in BACKENDS}
        for backend, future in futures.items():
            code, counts, _ = future.result()
            for key, n in counts.items():
                totals[key] += n
            if code == NO_TESTS_COLLECTED:
                empty_backends.append(backend)  # the selection left it nothing
                continue
            if code != 0 or not counts.get("passed"):
                failed_backends.append(backend)
    summary = (f"{totals['passed']} passed, {totals['failed'] + totals['error']} failed"
               f", {totals['skipped']} skipped")
    nothing_ran = len(empty_backends) == len(BACKENDS)
    if nothing_ran:
        print("\nno backend ran a test: the selection left every backend none")
    if failed_backends:
        print(f"\nfailing backends: {', '.join(failed_backends)}")
    print(f"\nall backends: {summary} in {time.time() - start:.0f}s")
    sys.exit(1 if failed_backends or nothing_ran else 0)


if __name__ == "__main__":
    main()
