"""Where the tests' data comes from: $KGEN_DATA, else stand-ins that ship in
the installed packages, else a skip that says how to get the data set."""

import numpy as np
import pytest

from kgen.data import load_mnist
from kgen.data import load_text
from tests import conftest

pytestmark = pytest.mark.backend_agnostic


def test_kgen_data_names_the_folder_of_real_data_sets(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text("First Citizen:\n")
    monkeypatch.setenv("KGEN_DATA", str(tmp_path))
    path = conftest.shared("tinyshakespeare", "input.txt")
    assert path == tmp_path / "tinyshakespeare" / "input.txt"
    assert conftest.real_data("tinyshakespeare", "input.txt") == path


def test_stand_ins_where_kgen_data_lacks_a_data_set(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    monkeypatch.setenv("KGEN_DATA", str(tmp_path / "empty"))
    images, labels = load_mnist(conftest.shared("mnist"))
    digits = load_digits()
    assert images.shape == (1797, 28, 28, 1) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, digits.target)
    assert images.min() == 0.0 and images.max() > 0.9
    # The digit fills the middle 20x20, as in MNIST; the border is black.
    assert images[:, :4].max() == 0 and images[:, 24:].max() == 0
    assert images[:, 4:24, 4:24].mean() > 0.2
    text = load_text(conftest.shared("tinyshakespeare", "input.txt"))
    assert text == load_text("pydoc")


@pytest.mark.parametrize("call", [
    lambda: conftest.shared("fsdd", "recordings"),
    lambda: conftest.real_data("mnist"),
], ids=["no_stand_in", "real_only"])
def test_skip_says_which_data_set_and_how_to_get_it(tmp_path, monkeypatch, call):
    monkeypatch.setenv("KGEN_DATA", str(tmp_path))
    with pytest.raises(pytest.skip.Exception) as skipped:
        call()
    reason = str(skipped.value)
    assert "set KGEN_DATA=DIR where DIR/" in reason and str(tmp_path) in reason
    assert ("fsdd" in reason and "free-spoken-digit-dataset" in reason) or (
        "mnist" in reason and "t10k-images-idx3-ubyte.gz" in reason)
