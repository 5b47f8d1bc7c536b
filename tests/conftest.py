"""Shared fixtures: the real data in ../shared/data and a `kgen` runner.

The backend under test is the one in KERAS_BACKEND (the README's test
command runs the suite once per backend).
"""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared(*parts):
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"shared test data missing: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def mnist_dir():
    return shared("mnist")


@pytest.fixture(scope="session")
def mnist_arrays(mnist_dir):
    from kgen.data import load_mnist

    return load_mnist(mnist_dir)


def backend():
    import keras

    return keras.backend.backend()


def kgen_env(**extra):
    env = dict(os.environ, KERAS_BACKEND=backend(), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_kgen(*args, cwd, check=True, timeout=900, env=None):
    """Run the `kgen` command in a subprocess; returns CompletedProcess."""
    result = subprocess.run(
        [sys.executable, "-m", "kgen", *map(str, args)], cwd=cwd,
        env=env or kgen_env(), capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"kgen {' '.join(map(str, args))} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result
