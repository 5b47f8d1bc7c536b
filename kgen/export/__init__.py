"""SavedModel export for TensorFlow Serving.

`export_model(model, to)` writes `to/<next version>/` with each family's
serving signatures, `generate` also published as `serving_default`, and
TF Serving's warm-up requests (`assets.extra/tf_serving_warmup_requests`,
one per signature; see `kgen.export.warmup`). Export
runs on the TensorFlow backend: from a JAX or PyTorch process the model is
saved as `.keras` and exported by a TensorFlow-backend subprocess.
"""

import datetime
import json
import os
import pathlib

from kgen.errors import UserError
from kgen.export.metadata import METADATA_FILE
from kgen.export.metadata import MetadataError  # noqa: F401  (re-exported)
from kgen.export.metadata import read_metadata  # noqa: F401  (re-exported)
from kgen.export import serving_release
from kgen.export.publish import latest_version_dir
from kgen.export.publish import next_version
from kgen.export.publish import publish
from kgen.export.publish import versions

# Rows one request may ask for, unless `export_model(..., max_rows=N)` says
# otherwise; recorded in kgen.json and enforced inside the graph.
DEFAULT_MAX_ROWS = 256


class NotGenerativeError(UserError, TypeError):
    """The model to export belongs to no generative family (a classifier)."""


def _family(model, source=None):
    """The model's family declaration (`kgen.family`): its signature
    builder and the facts `kgen.json` records.

    Raises:
        NotGenerativeError: naming the model (`source`) when it declares no
            family: a classifier says so, and what it is for.
    """
    from kgen.family import FamilyError
    from kgen.family import family_of
    from kgen.family import families

    try:
        return family_of(model)
    except FamilyError:
        pass
    where = source or type(model).__name__
    known = ", ".join(sorted(cls.__name__ for cls in families()))
    shape = getattr(model, "output_shape", None)
    if (isinstance(shape, tuple) and len(shape) == 2 and isinstance(shape[-1], int)
            and shape[-1] >= 2):
        raise NotGenerativeError(
            f"{where}: a classifier ({shape[-1]} classes), not a generative model; "
            f"kgen export publishes generative families ({known}). "
            "A classifier judges samples: pass it to `kgen evaluate saved_models/NAME "
            f"--classifier {where}`") from None
    raise NotGenerativeError(
        f"{where}: no serving signatures for {type(model).__name__}: it declares no "
        f"generative family (kgen.family.declare_family); kgen export publishes {known}"
    ) from None


def _load(path):
    import keras

    import kgen.models  # noqa: F401  (registers the classes)

    from kgen.io import DamagedFileError

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file (expected a .keras file)")
    try:
        return keras.saving.load_model(path)
    except Exception as e:  # zipfile, h5py and Keras raise many kinds
        raise DamagedFileError(
            f"{path}: cannot be read as a .keras model ({type(e).__name__}: {e})"
        ) from None


def _check_archive(path):
    """A `.keras` file must be a whole zip archive (a copy or a write cut
    short is not); checked before any subprocess is started."""
    import zipfile

    from kgen.io import DamagedFileError

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file (expected a .keras file)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DamagedFileError(f"{path}: damaged .keras file ({e})") from None
    if bad is not None:
        raise DamagedFileError(f"{path}: damaged .keras file ({bad} fails its CRC)")


def _check_finite(model, source):
    """Refuse a model with a NaN or infinite weight, naming the first."""
    from kgen.callbacks.checkpoints import NonFiniteError
    from kgen.callbacks.checkpoints import first_non_finite

    bad = first_non_finite(model.weights)
    if bad:
        raise NonFiniteError(
            f"{source}: weight {bad[0]} holds {bad[1]}; a model with non-finite "
            f"weights is not exported"
        )


def export_model(model, to, max_rows=DEFAULT_MAX_ROWS, verbose=False):
    """Publish `model` (a kgen model or a `.keras` path) under `to`.

    Args:
        model: a kgen model, or the path of its `.keras` file.
        to: the model's base path, `saved_models/<name>`.
        max_rows: the most rows (samples) one request may ask for; a
            request with more fails with INVALID_ARGUMENT naming `seed`.
        verbose: print the variables Keras writes.

    Returns:
        `pathlib.Path` of the new version directory.
    """
    import keras

    from kgen.compat.keras import without_default_save_signatures
    from kgen.export.warmup import check_requests
    from kgen.export.warmup import warmup_requests
    from kgen.export.warmup import write_warmup_file

    max_rows = _check_max_rows(max_rows)
    source = None
    if isinstance(model, (str, os.PathLike)):
        _check_archive(model)
    else:
        _check_finite(model, type(model).__name__)
    if keras.backend.backend() != "tensorflow":
        return _export_in_tensorflow_process(model, to, max_rows)
    if isinstance(model, (str, os.PathLike)):
        source = model
        model = _load(model)
        _check_finite(model, source)
    family = _family(model, source)
    endpoints, metadata = family.signature_builder()(model, max_rows=max_rows)
    # The declaration's facts, recorded so that serving, deploy and
    # `kgen sample` read them from the export alone.
    metadata = {**metadata, **family.export_metadata()}
    # TF Serving replays these while it loads the version (one it refuses
    # would fail that load), so each is checked against its signature.
    warmup = warmup_requests(endpoints, {"max_rows": max_rows, **metadata})
    check_requests(endpoints, warmup, max_rows)

    def write(directory):
        with without_default_save_signatures():
            write_archive(directory)

    def write_archive(directory):
        archive = keras.export.ExportArchive()
        archive.track(model)
        for name, fn in endpoints.items():
            archive.add_endpoint(name, fn)
        archive.add_endpoint("serving_default", endpoints["generate"])
        archive.write_out(str(directory), verbose=verbose)
        meta_path = pathlib.Path(directory) / METADATA_FILE
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps({
            "family": type(model).__name__,
            "kgen_version": _version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "max_rows": max_rows,
            # The Keras dtype policy the model computes in (`kgen.precision`).
            "precision": model.dtype_policy.name,
            # The TensorFlow that writes it, the TF Serving release that loads it.
            **serving_release.export_record(),
            **metadata,
        }, indent=2))
        write_warmup_file(directory, warmup, model_name=pathlib.Path(to).name)

    return publish(to, write)


def _check_max_rows(max_rows):
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows={max_rows!r}: must be an int >= 1")
    return max_rows


def _export_in_tensorflow_process(model, to, max_rows):
    """`export_model` in a TensorFlow-backend child process (see
    `kgen.export._worker`); raises what the export raised there."""
    import tempfile

    from kgen.export._worker import export_in_subprocess

    with tempfile.TemporaryDirectory() as tmp:
        if not isinstance(model, (str, os.PathLike)):
            path = pathlib.Path(tmp) / "model.keras"
            model.save(path)
            model = path
        return export_in_subprocess(model, to, max_rows)


def _version():
    from kgen.version import __version__

    return __version__
