"""Run an exported model's `generate` signature through TensorFlow alone.

No Keras and no kgen model code is imported: this is what TF Serving sees,
so `kgen sample` proves an export is self-contained.
"""

import json
import pathlib

import numpy as np

from kgen import media
from kgen.export.publish import latest_version_dir

METADATA_FILE = "assets.extra/kgen.json"


class SampleError(ValueError):
    """A `kgen sample` argument does not fit the exported model."""


def resolve_version_dir(model_dir, version=None):
    """A version directory from a base path (newest or `version`) or itself."""
    model_dir = pathlib.Path(model_dir)
    if (model_dir / "saved_model.pb").is_file():
        if version is not None:
            raise SampleError(
                f"{model_dir} is already one version; drop --version or pass "
                "the model's base path"
            )
        return model_dir
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such exported model")
    return latest_version_dir(model_dir, version)


def generate_inputs(signature, metadata, n, seed, label=None):
    """Fill the `generate` signature's inputs for `n` rows."""
    inputs = {}
    specs = signature.structured_input_signature[1]
    defaults = metadata.get("defaults", {})
    for name, spec in specs.items():
        if name == "seed":
            inputs[name] = np.arange(seed, seed + n, dtype="int64")
        elif name == "label":
            classes = int(metadata.get("num_classes", 10))
            if label is not None and not 0 <= label < classes:
                raise SampleError(f"--label {label}: must be in [0, {classes})")
            rows = np.full(n, label) if label is not None else np.arange(n) % classes
            inputs[name] = rows.astype(spec.dtype.as_numpy_dtype)
        elif name in defaults:
            inputs[name] = np.full(n, defaults[name], dtype=spec.dtype.as_numpy_dtype)
        else:
            raise SampleError(
                f"the generate signature needs input {name!r}, which kgen sample "
                "cannot fill"
            )
    return inputs


def sample_saved_model(model_dir, version=None, n=16, seed=0, label=None, out=None):
    """Draw `n` samples from an exported model and write them to `out`.

    Returns:
        the path written.
    """
    import tensorflow as tf

    if n < 1:
        raise SampleError(f"--n {n}: must be at least 1")
    version_dir = resolve_version_dir(model_dir, version)
    meta_path = version_dir / METADATA_FILE
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    loaded = tf.saved_model.load(str(version_dir))
    if "generate" not in loaded.signatures:
        raise SampleError(f"{version_dir}: no 'generate' signature")
    signature = loaded.signatures["generate"]
    outputs = signature(**{
        k: tf.constant(v)
        for k, v in generate_inputs(signature, metadata, n, seed, label).items()
    })
    kind = metadata.get("output_kind", "images")
    if kind == "images":
        out = pathlib.Path(out or "samples.png")
        # Rows cycling through the classes: one column per class.
        columns = metadata.get("num_classes") if label is None else None
        return media.save_image_grid(out, outputs["images"].numpy(), columns=columns or None)
    if kind == "audio":
        out = pathlib.Path(out or "samples")
        rate = int(metadata["sample_rate"])
        return [media.save_wav(out / f"sample_{i:02d}.wav", clip, rate)
                for i, clip in enumerate(outputs["audio"].numpy())][0].parent
    out = pathlib.Path(out or "samples.txt")
    texts = [t.decode("utf-8", "replace") for t in outputs["text"].numpy()]
    out.write_text("\n\n---\n\n".join(texts), encoding="utf-8")
    return out
