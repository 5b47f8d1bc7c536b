"""Run the test suite on every Keras backend and sum the results.

    python tests/all_backends.py [pytest args...]
    python tests/all_backends.py -m "not slow"      # the fast lane

TensorFlow runs every test; JAX and PyTorch run those that are neither
`tf_only` nor `backend_agnostic` (see pytest.ini), so those two tiers run
once. A `-m EXPR` given here applies to every backend: JAX and PyTorch run
`(EXPR) and not tf_only and not backend_agnostic`. A backend left with no
test by the selection (pytest's exit status 5) does not fail the run.

Each backend runs in its own pytest processes with KERAS_BACKEND set
(Keras fixes its backend at import). TensorFlow's share comes in two
lanes, the tiers that run once (`tf_only or backend_agnostic`) and the
rest, so that the four lanes pack evenly onto the workers. `KGEN_TEST_JOBS`
lanes run at a time (default 2, one per core; 1 runs them one after
another), the longest first. Each lane's output is printed whole when it
finishes, with its slowest tests. Exits non-zero if any lane fails.
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

BACKENDS = ("tensorflow", "jax", "torch")
# Tests of the tiers that run once (on TensorFlow), and the others.
ONCE = "tf_only or backend_agnostic"
EACH = "not tf_only and not backend_agnostic"
# (lane, backend, the tests it takes), the longest first (measured on two
# cores, docs/results.md), so that the last to start is the shortest.
LANES = (
    ("jax", "jax", EACH),
    ("tensorflow", "tensorflow", EACH),
    ("tensorflow (once)", "tensorflow", ONCE),
    ("torch", "torch", EACH),
)
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


def lane_args(tests, args):
    """The pytest arguments for a lane taking `tests` (a marker expression):
    the user's, with their `-m` expression combined with the lane's."""
    rest, expression = split_marker_expression(args)
    selection = f"({expression}) and ({tests})" if expression else tests
    return [*rest, "-m", selection]


def run_lane(lane, backend, tests, args):
    """One lane's pytest run: (exit code, counts, seconds)."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.time()
    with _print_lock:
        print(f"===== {lane} (KERAS_BACKEND={backend}): started", flush=True)
    with tempfile.TemporaryFile("w+") as log:
        code = subprocess.call(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--durations=15",
             "tests", *lane_args(tests, args)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
        log.seek(0)
        output = log.read()
    seconds = time.time() - start
    lines = [line for line in output.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", last)}
    with _print_lock:
        print(f"\n===== {lane} (KERAS_BACKEND={backend}) =====\n{output}", end="", flush=True)
        print(f"----- {lane}: exit {code} in {seconds:.0f}s", flush=True)
    return code, counts, seconds


def main():
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    failed_lanes, empty_lanes = [], []
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(_jobs()) as pool:
        futures = {lane: pool.submit(run_lane, lane, backend, tests, sys.argv[1:])
                   for lane, backend, tests in LANES}
        for lane, future in futures.items():
            code, counts, _ = future.result()
            for key, n in counts.items():
                totals[key] += n
            if code == NO_TESTS_COLLECTED:
                empty_lanes.append(lane)  # the selection left it nothing
                continue
            if code != 0 or not counts.get("passed"):
                failed_lanes.append(lane)
    summary = (f"{totals['passed']} passed, {totals['failed'] + totals['error']} failed"
               f", {totals['skipped']} skipped")
    nothing_ran = len(empty_lanes) == len(LANES)
    if nothing_ran:
        print("\nno lane ran a test: the selection left every backend none")
    if failed_lanes:
        print(f"\nfailing lanes: {', '.join(failed_lanes)}")
    print(f"\nall backends: {summary} in {time.time() - start:.0f}s")
    sys.exit(1 if failed_lanes or nothing_ran else 0)


if __name__ == "__main__":
    main()
