"""The one reader of an export's `kgen.json`.

`kgen export` writes `<version>/assets.extra/kgen.json` beside the
SavedModel: the family, the output kind, the `generate` options with their
dtypes, the inputs that must be uniform across a call, how the model is
evaluated, the request bounds and each family's own facts (shapes, classes,
defaults). `kgen sample`, `kgen evaluate`, `kgen serve` and `kgen deploy`
read it here, with no model code. This module imports neither Keras nor
TensorFlow.
"""

import json
import pathlib

from kgen.errors import UserError

METADATA_FILE = "assets.extra/kgen.json"


class MetadataError(UserError, ValueError):
    """An export's `kgen.json` cannot be read, or is not a JSON object."""


def read_metadata(version_dir):
    """The `kgen.json` of one export version.

    Args:
        version_dir: the version's directory (`saved_models/NAME/N`).

    Returns:
        the file's JSON object as a dict; `{}` when the export has none.

    Raises:
        MetadataError: naming the file when it cannot be read, is not JSON
            or does not hold a JSON object.
    """
    path = pathlib.Path(version_dir) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MetadataError(f"{path}: not a readable kgen.json ({reason})") from None
    if not isinstance(metadata, dict):
        raise MetadataError(f"{path}: expected a JSON object, found "
                            f"{type(metadata).__name__}")
    return metadata


def uniform_inputs(metadata):
    """The `generate` inputs that must hold one value across a call.

    Exports record them as `uniform_inputs`. An export written before they
    were recorded, whose `kgen.json` bounds `rows x num_steps`
    (`max_row_steps`), runs one step loop per call: its `num_steps` is
    uniform.
    """
    if "uniform_inputs" in metadata:
        found = metadata.get("uniform_inputs") or ()
        return frozenset(u for u in found if isinstance(u, str))
    if "max_row_steps" in metadata:
        return frozenset({"num_steps"})
    return frozenset()


def output_kind(metadata):
    """What the export's `generate` makes (`"images"` when unrecorded)."""
    return metadata.get("output_kind", "images")
