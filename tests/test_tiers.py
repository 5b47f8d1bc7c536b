"""The suite's tiers: the markers pytest.ini declares, the selection
tests/all_backends.py gives each backend, and the tf_only check."""

import configparser

import pytest

from tests import all_backends
from tests import conftest

pytestmark = pytest.mark.backend_agnostic


def test_pytest_ini_declares_the_three_markers_strictly():
    ini = configparser.ConfigParser()
    ini.read(conftest.REPO / "pytest.ini")
    assert "--strict-markers" in ini["pytest"]["addopts"].split()
    declared = [line.split(":")[0].strip()
                for line in ini["pytest"]["markers"].strip().splitlines()]
    assert declared == ["tf_only", "backend_agnostic", "slow"]


@pytest.mark.parametrize("args, other", [
    ([], ["-m", "not tf_only and not backend_agnostic"]),
    (["-m", "not slow"], ["-m", "(not slow) and not tf_only and not backend_agnostic"]),
    (["-x", "-mslow", "-k", "vae"],
     ["-x", "-k", "vae", "-m", "(slow) and not tf_only and not backend_agnostic"]),
    (["-m", "a", "-m", "b or c"], ["-m", "(b or c) and not tf_only and not backend_agnostic"]),
])
def test_tensorflow_runs_every_tier_and_the_others_skip_the_once_tiers(args, other):
    assert all_backends.backend_args("tensorflow", args) == args
    for backend in ("jax", "torch"):
        assert all_backends.backend_args(backend, args) == other


@pytest.mark.parametrize("reason, flagged", [
    ("Skipped: tf.distribute.MirroredStrategy is the TensorFlow backend's", True),
    ("Skipped: kgen tune's tests run on TensorFlow only", True),
    ("Skipped: two replicas are tf.distribute's (TensorFlow) and keras.distribution's "
     "(JAX); PyTorch trains on one device", False),
    ("Skipped: keras.distribution data parallelism is the JAX backend's", False),
    ("Skipped: tf_only: runs on the TensorFlow backend only (this is jax)", False),
    ("Skipped: needs the fsdd data set", False),
])
def test_a_skip_for_tensorflow_is_recognised(reason, flagged):
    assert conftest._skips_for_tensorflow(reason) is flagged
