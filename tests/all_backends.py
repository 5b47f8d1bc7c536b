"""Run the whole test suite once per Keras backend and sum the results.

    python tests/all_backends.py [pytest args...]

Each backend runs in its own pytest process with KERAS_BACKEND set (Keras
fixes its backend at import). Exits non-zero if any backend fails.
"""

import os
import pathlib
import re
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
REPO = pathlib.Path(__file__).resolve().parents[1]


def main():
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    failed_backends = []
    for backend in BACKENDS:
        print(f"\n===== KERAS_BACKEND={backend} =====", flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        start = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests",
             *sys.argv[1:]],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )
        last = ""
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.strip():
                last = line
        code = proc.wait()
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", last)}
        for key, n in counts.items():
            totals[key] += n
        print(f"----- {backend}: exit {code} in {time.time() - start:.0f}s", flush=True)
        if code != 0 or not counts.get("passed"):
            failed_backends.append(backend)
    summary = (f"{totals['passed']} passed, {totals['failed'] + totals['error']} failed"
               f", {totals['skipped']} skipped")
    if failed_backends:
        print(f"\nfailing backends: {', '.join(failed_backends)}")
    print(f"\nall backends: {summary}")
    sys.exit(1 if failed_backends else 0)


if __name__ == "__main__":
    main()
