"""`kgen.errors`: the one base of user mistakes, and the one first-line rule."""

import pytest

from kgen.errors import UserError
from kgen.errors import first_line

pytestmark = pytest.mark.backend_agnostic


def _user_error_classes():
    """Every error class kgen raises for a user's mistake, with the built-in
    base it keeps (code that catches that base still catches it)."""
    from kgen.callbacks.checkpoints import NonFiniteError
    from kgen.cli import CommandError
    from kgen.config import ConfigError
    from kgen.data import DataError
    from kgen.evaluate import EvaluateError
    from kgen.export.sample import SampleError
    from kgen.metrics import SampleBufferFull
    from kgen.metrics import TooFewSamples
    from kgen.serving.client import ServerError
    from kgen.serving.deploy import DeployError
    from kgen.serving.tensors import TensorError
    from kgen.serving.tree import ServeError
    from kgen.tune import TuneError
    from kgen.export.metadata import MetadataError
    from kgen.io import DamagedFileError
    from kgen.media import OutputError
    from kgen.trainers.jax_distribution import DistributionError

    return [(CommandError, ValueError), (ConfigError, ValueError), (TuneError, ValueError),
            (DataError, ValueError), (EvaluateError, ValueError), (SampleError, ValueError),
            (SampleBufferFull, ValueError), (TooFewSamples, ValueError),
            (ServerError, RuntimeError), (DeployError, ValueError),
            (TensorError, ValueError), (ServeError, ValueError),
            (NonFiniteError, RuntimeError), (DamagedFileError, RuntimeError),
            (OutputError, ValueError), (DistributionError, ValueError),
            (MetadataError, ValueError)]


def test_user_errors_share_one_base_and_keep_their_own():
    for cls, builtin in _user_error_classes():
        assert issubclass(cls, UserError), cls
        assert issubclass(cls, builtin), (cls, builtin)


@pytest.mark.parametrize("value, expected", [
    (ValueError("--set epochs=0: must be >= 1\nmore detail"), "--set epochs=0: must be >= 1"),
    (ValueError("\n\n   indented first line  \nsecond"), "indented first line"),
    (KeyError("model"), "'model'"),
    (KeyError(), "KeyError"),
    (RuntimeError("   \n  "), "RuntimeError"),
    ("text\nmore", "text"),
    ("", ""),
    ("  \n", ""),
])
def test_first_line(value, expected):
    assert first_line(value) == expected


def test_first_line_default():
    assert first_line(ValueError(""), "no detail") == "no detail"
    assert first_line("\n", "fallback") == "fallback"
    assert first_line(ValueError("x"), "unused") == "x"


def test_graph_reason_is_the_first_line_worth_showing():
    """An exported graph's refusal: the failed check's own message, else
    the first line that is not TensorFlow's node or stack decoration."""
    from kgen.export.messages import graph_reason

    assert graph_reason("Graph execution error:\n\nDetected at node x\n"
                        "assertion failed: [seed must be >= 0] [[{{node y}}]]") == (
        "seed must be >= 0")
    assert graph_reason("Graph execution error:\n  Detected at node a\n\n"
                        "  label 12 out of range\n[[{{node b}}]]") == "label 12 out of range"
    assert graph_reason("Graph execution error:\n[[{{node b}}]]") == "INVALID_ARGUMENT"
    assert graph_reason("", default="refused") == "refused"
