"""The TensorFlow-backend export child (`kgen.export._worker`) and the one
`kgen.json` reader (`kgen.export.metadata`)."""

import json

import keras
import numpy as np
import pytest

from kgen.callbacks.checkpoints import NonFiniteError
from kgen.export import _worker
from kgen.export.metadata import METADATA_FILE
from kgen.export.metadata import MetadataError
from kgen.export.metadata import read_metadata
from kgen.export.metadata import uniform_inputs
from kgen.io import DamagedFileError
from kgen.models import VAE
from kgen.networks import conv_decoder
from kgen.networks import conv_encoder


def _vae():
    return VAE(conv_encoder((8, 8, 1), 2, (4,), 8), conv_decoder(2, (8, 8, 1), (4,), 8),
               seed=0)


def test_the_child_exports_and_the_parent_gets_the_version(tmp_path):
    """Whatever the parent's backend, the child writes the version and the
    parent reads its directory from the result file."""
    model = _vae()
    model(np.zeros((1, 8, 8, 1), "float32"))
    model.save(tmp_path / "vae.keras")
    version = _worker.export_in_subprocess(tmp_path / "vae.keras", tmp_path / "vae", 4)
    assert version == tmp_path / "vae" / "1" and (version / "saved_model.pb").is_file()
    assert read_metadata(version)["max_rows"] == 4


def test_the_childs_named_error_is_raised_again(tmp_path):
    """A model with a non-finite weight is refused in the child; the parent
    raises the same NonFiniteError, naming the weight, as an export in the
    parent process would."""
    model = _vae()
    model(np.zeros((1, 8, 8, 1), "float32"))
    weight = model.weights[0]
    weight.assign(keras.ops.full(weight.shape, float("nan")))
    model.save(tmp_path / "nan.keras")
    with pytest.raises(NonFiniteError, match="non-finite weights is not exported"):
        _worker.export_in_subprocess(tmp_path / "nan.keras", tmp_path / "nan", 4)
    assert not (tmp_path / "nan" / "1").exists()


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("error, expected, message", [
    ({"module": "kgen.io", "type": "DamagedFileError", "message": "m.keras: damaged"},
     DamagedFileError, "m.keras: damaged"),
    ({"module": "kgen.callbacks.checkpoints", "type": "NonFiniteError", "message": "w"},
     NonFiniteError, "w"),
    ({"module": "builtins", "type": "TypeError", "message": "no serving signatures"},
     TypeError, "no serving signatures"),
    ({"module": "kgen.export.metadata", "type": "MetadataError", "message": "bad"},
     MetadataError, "bad"),
    # Not kgen's nor a built-in: never imported, named in a RuntimeError.
    ({"module": "os", "type": "system", "message": "x"}, RuntimeError, "os.system: x"),
    ({"module": "kgen.io", "type": "nope", "message": "x"}, RuntimeError, "kgen.io.nope: x"),
    ({}, RuntimeError, "failed"),
])
def test_the_result_file_names_the_error(error, expected, message):
    rebuilt = _worker._rebuild(error, "m.keras")
    assert type(rebuilt) is expected and message in str(rebuilt)


def test_a_child_that_leaves_no_result_is_a_runtime_error(tmp_path, monkeypatch):
    """A child that ends without writing its result (here: a program that
    fails at once) is a RuntimeError naming the model and the status."""
    import shutil

    monkeypatch.setattr(_worker.sys, "executable", shutil.which("false"))
    with pytest.raises(RuntimeError, match=r"m.keras in a TensorFlow-backend process "
                                           r"exited with status 1 and no result"):
        _worker.export_in_subprocess(tmp_path / "m.keras", tmp_path / "m", 4)


@pytest.fixture
def version(tmp_path):
    (tmp_path / "assets.extra").mkdir()
    return tmp_path


@pytest.mark.backend_agnostic
def test_metadata_absent_is_empty(tmp_path):
    assert read_metadata(tmp_path) == {}


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("text, message", [
    ("{not json", "not a readable kgen.json"),
    ("[1, 2]", "expected a JSON object, found list"),
    (b"\xff\xfe", "not a readable kgen.json"),
])
def test_unreadable_metadata_is_one_named_error(version, text, message):
    path = version / METADATA_FILE
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(MetadataError, match=message) as found:
        read_metadata(version)
    assert str(found.value).startswith(f"{path}: ") and "\n" not in str(found.value)
    assert isinstance(found.value, ValueError)


@pytest.mark.backend_agnostic
def test_uniform_inputs_as_recorded_or_from_an_older_exports_step_bound(version):
    (version / METADATA_FILE).write_text(json.dumps({"uniform_inputs": ["num_steps", 3]}))
    assert uniform_inputs(read_metadata(version)) == {"num_steps"}
    assert uniform_inputs({"uniform_inputs": []}) == frozenset()
    # Written before uniform_inputs was recorded: rows x num_steps bounded.
    assert uniform_inputs({"family": "x", "max_row_steps": 400}) == {"num_steps"}
    assert uniform_inputs({"family": "x"}) == frozenset()
