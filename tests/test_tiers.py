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


EACH = "not tf_only and not backend_agnostic"
ONCE = "tf_only or backend_agnostic"


@pytest.mark.parametrize("args, each, once", [
    ([], ["-m", EACH], ["-m", ONCE]),
    (["-m", "not slow"], ["-m", f"(not slow) and ({EACH})"], ["-m", f"(not slow) and ({ONCE})"]),
    (["-x", "-mslow", "-k", "vae"],
     ["-x", "-k", "vae", "-m", f"(slow) and ({EACH})"],
     ["-x", "-k", "vae", "-m", f"(slow) and ({ONCE})"]),
    (["-m", "a", "-m", "b or c"], ["-m", f"(b or c) and ({EACH})"],
     ["-m", f"(b or c) and ({ONCE})"]),
])
def test_lanes_combine_the_users_selection_with_their_tiers(args, each, once):
    assert all_backends.lane_args(all_backends.EACH, args) == each
    assert all_backends.lane_args(all_backends.ONCE, args) == once


def test_every_backend_runs_the_per_backend_tiers_and_tensorflow_the_once_tiers():
    lanes = {(backend, tests) for _, backend, tests in all_backends.LANES}
    assert lanes == {("tensorflow", EACH), ("tensorflow", ONCE), ("jax", EACH), ("torch", EACH)}
    assert len(all_backends.LANES) == len(lanes)


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
