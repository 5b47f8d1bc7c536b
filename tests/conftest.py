"""Shared fixtures: the test data sets and a `kgen` runner.

Data: tests find the real data sets in the folder named by the `KGEN_DATA`
environment variable (default `../shared/data` beside the checkout), laid
out as their publishers ship them (see README, "Data"). Where a data set is
not there, `shared()` writes a stand-in built from data that ships in the
installed packages, once per session:

- `mnist/`: scikit-learn's 8x8 digits, enlarged to 20x20 and centred in a
  28x28 frame as MNIST is, written as the gzipped IDX files
  `t10k-images-idx3-ubyte.gz` and `t10k-labels-idx1-ubyte.gz`.
- `tinyshakespeare/input.txt`: CPython's help texts (`pydoc_data.topics`).

A data set with no stand-in (`fsdd`), or a test of the published data set
itself (`real_data()`), skips with a reason saying how to get it.

The backend under test is the one in KERAS_BACKEND (the README's test
command runs the suite once per backend). `KGEN_TEST_PRECISION=mixed_bfloat16`
(or `mixed_float16`) builds every model of the session under that Keras
dtype policy (`kgen.precision`), to run a module's tests on a
mixed-precision model (e.g. `tests/export/`); tests that check the global
policy itself (`tests/test_precision.py`) expect float32.

Tiers: every test may carry these markers (declared in pytest.ini, which
runs with --strict-markers):

- `tf_only`: the test only makes sense on the TensorFlow backend: SavedModel
  export and `kgen sample`, serving, deploy, evaluate, tune, tf.distribute.
  On another backend it is skipped here, and a test that skips itself on
  another backend with a reason naming TensorFlow (and neither JAX nor
  PyTorch) without the marker fails, so that the marker stays complete.
- `backend_agnostic`: the test's outcome does not depend on KERAS_BACKEND:
  data loaders, tokenizers, config parsing, media files, argument errors. It
  builds and runs no Keras model.
- `slow`: the test takes long: whole recipes, `kgen` processes that train,
  several processes, servers, kill-and-resume chains.

`tests/all_backends.py` runs the `tf_only` and `backend_agnostic` tests once,
on TensorFlow, and the others on TensorFlow, JAX and PyTorch; `-m "not slow"`
is the fast lane.

`kgen_main(*args)` runs the `kgen` command in this process (argument
errors, `--help`, refusals); `run_kgen(*args, cwd=...)` runs it in a
subprocess, for what needs a real process (a kill, a lock, another backend,
an environment variable read at import, what a terminal shows).
"""

import contextlib
import gzip
import io
import os
import pathlib
import subprocess
import sys
import tempfile
import typing

import numpy as np
import pytest

# XLA (JAX's compiler) generates CPU code at its lowest optimization level
# for the tests and the processes they start: the suite's tiny models spend
# most of their JAX time compiling, not running, and this halves it. The
# compiled computations are the same; only LLVM's optimization of the
# machine code differs. Set before anything imports JAX.
FAST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_XLA_FLAGS}".strip()

# TensorFlow's C++ start-up lines (a failed CUDA probe where the full
# tensorflow wheel is installed on a machine without a GPU) are written when
# its devices are first listed, which may be inside a test that captures
# stderr and checks it holds exactly one `kgen: error:` line. Set before
# anything imports TensorFlow; tests that need a user's environment build
# their own.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"

# Where each real data set comes from, for skip reasons (README, "Data").
SOURCES = {
    "mnist": "MNIST's t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
             "from http://yann.lecun.com/exdb/mnist/",
    "tinyshakespeare": "input.txt from https://raw.githubusercontent.com/karpathy/"
                       "char-rnn/master/data/tinyshakespeare/input.txt",
    "fsdd": "the recordings/ folder of "
            "https://github.com/Jakobovski/free-spoken-digit-dataset",
}

_fallback_root = None


def data_root():
    """The folder holding the real data sets: $KGEN_DATA or ../shared/data."""
    return pathlib.Path(os.environ.get("KGEN_DATA") or DEFAULT_DATA)


def how_to_get(name):
    return (f"set KGEN_DATA=DIR where DIR/{name}/ holds {SOURCES[name]} "
            f"(looked in {data_root()})")


def write_idx(path, array):
    """Write a uint8 array as a gzipped IDX file, as MNIST ships."""
    array = np.asarray(array, dtype="uint8")
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))
    return path


def write_digits_as_mnist(directory):
    """scikit-learn's digits as MNIST's t10k IDX files: each 8x8 digit
    enlarged (bilinear) to 20x20 and centred in a 28x28 frame, uint8."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.zeros((len(digits.images), 28, 28), dtype="uint8")
    for i, digit in enumerate(digits.images):
        small = Image.fromarray((digit * (255.0 / 16.0)).astype("float32"))
        big = np.asarray(small.resize((20, 20), Image.BILINEAR))
        images[i, 4:24, 4:24] = np.clip(big + 0.5, 0, 255).astype("uint8")
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / "t10k-images-idx3-ubyte.gz", images)
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", digits.target)


def write_pydoc_as_shakespeare(directory):
    """CPython's help texts as one UTF-8 `input.txt`."""
    from pydoc_data.topics import topics

    directory.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n"
    (directory / "input.txt").write_text(text, encoding="utf-8")


FALLBACKS = {
    "mnist": ("scikit-learn's digits at 28x28", write_digits_as_mnist),
    "tinyshakespeare": ("pydoc_data text", write_pydoc_as_shakespeare),
}


@pytest.fixture(scope="session", autouse=True)
def _fallback_data(tmp_path_factory):
    """One folder per session for the stand-in data sets, written on demand."""
    global _fallback_root
    _fallback_root = tmp_path_factory.mktemp("data")
    yield _fallback_root
    _fallback_root = None


def has_real(name, *parts):
    return data_root().joinpath(name, *parts).exists()


def real_data(name, *parts):
    """The path of a real data set's file; skips where it is absent. For
    tests of the published data set itself (its size, its vocabulary)."""
    path = data_root().joinpath(name, *parts)
    if not path.exists():
        pytest.skip(f"needs the real {name} data set: {how_to_get(name)}")
    return path


def shared(name, *parts):
    """The path of data set `name` (then `parts` inside it): the real one
    under $KGEN_DATA, else its stand-in; skips where there is neither."""
    global _fallback_root
    if has_real(name, *parts):
        return data_root().joinpath(name, *parts)
    if name not in FALLBACKS:
        pytest.skip(f"needs the {name} data set, which cannot ship with the "
                    f"packages: {how_to_get(name)}")
    if _fallback_root is None:  # called outside a pytest session
        _fallback_root = pathlib.Path(tempfile.mkdtemp(prefix="kgen-data-"))
    directory = _fallback_root / name
    if not directory.exists():
        FALLBACKS[name][1](directory)
    path = directory.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path}: the {name} stand-in has no such file")
    return path


def _backend_name():
    """The backend under test, read without importing Keras."""
    if "keras" in sys.modules:
        return backend()
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def pytest_collection_modifyitems(config, items):
    """tf_only tests are skipped on the JAX and PyTorch backends."""
    name = _backend_name()
    if name == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"tf_only: runs on the TensorFlow backend only "
                                   f"(this is {name})")
    for item in items:
        if item.get_closest_marker("tf_only"):
            item.add_marker(skip)


def _skips_for_tensorflow(reason):
    """Whether a skip reason says the test is the TensorFlow backend's."""
    return "TensorFlow" in reason and not any(
        other in reason for other in ("JAX", "PyTorch", "tf_only:"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that skips itself off TensorFlow for TensorFlow's sake must
    carry the tf_only marker: its skip is turned into a failure naming it."""
    outcome = yield
    report = outcome.get_result()
    if (not report.skipped or item.get_closest_marker("tf_only")
            or _backend_name() == "tensorflow"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if _skips_for_tensorflow(reason) and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} skips off TensorFlow ({reason!r}) but is not "
                           f"marked tf_only: add @pytest.mark.tf_only (or a module "
                           f"pytestmark) so that tests/all_backends.py runs it once")


def pytest_configure(config):
    policy = os.environ.get("KGEN_TEST_PRECISION")
    if policy:
        import keras

        from kgen import precision

        keras.config.set_dtype_policy(
            precision.resolve(precision.check(policy, "KGEN_TEST_PRECISION"))[0])


def pytest_report_header(config):
    lines = []
    if os.environ.get("KGEN_TEST_PRECISION"):
        lines.append(f"  models built under {os.environ['KGEN_TEST_PRECISION']} "
                     "(KGEN_TEST_PRECISION)")
    for name in SOURCES:
        if has_real(name):
            lines.append(f"  {name}: {data_root() / name}")
        elif name in FALLBACKS:
            lines.append(f"  {name}: stand-in ({FALLBACKS[name][0]})")
        else:
            lines.append(f"  {name}: absent (its tests skip)")
    return [f"kgen data from {data_root()} (KGEN_DATA):", *lines]


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


class KgenResult(typing.NamedTuple):
    """What `kgen_main` returns; unpacks as (code, out, err)."""

    returncode: int
    stdout: str
    stderr: str


def kgen_main(*args, cwd=None, check=True):
    """Run `kgen ARGS` in this process (`kgen.cli.main`), in `cwd` if given.

    Returns a KgenResult (returncode, stdout, stderr): the exit status (0 when
    `main` returns, else its SystemExit code) and what it printed. For
    argument errors, `--help` and refusals; `run_kgen` is for what needs a
    real process.
    """
    from kgen import cli

    args = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    previous = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(args)
            except SystemExit as exited:
                if exited.code is None or isinstance(exited.code, int):
                    code = exited.code or 0
                else:  # sys.exit(message): Python prints it and exits 1
                    print(exited.code, file=sys.stderr)
                    code = 1
    finally:
        os.chdir(previous)
    result = KgenResult(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"kgen {' '.join(args)} exited {code}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result
