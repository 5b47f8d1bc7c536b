"""Run an export's `generate` signature with TensorFlow alone and write the files.

`kgen sample` loads a SavedModel as TF Serving does: the graph and its
variables only, no kgen model code and no Keras object rebuilt, so it
proves an export is self-contained. It runs the graph it is given, so
trust only your own exports.

Every argument is checked before the graph runs and every failure is a
`SampleError` (or `kgen.media.OutputError`) naming the bad value, so a bad
request writes nothing.

Example:

```python
from kgen.export.sample import sample_saved_model

sample_saved_model("saved_models/vae_digits", n=16, seed=0, out="grid.png")
```
"""

import json
import pathlib
import re

import numpy as np

from kgen import media
from kgen.export import METADATA_FILE
from kgen.random import MAX_SEED
from kgen.random import MIN_SEED

# A version folder as TF Serving reads it: a plain whole number.
_PLAIN_VERSION = re.compile(r"(0|[1-9][0-9]*)\Z")


class SampleError(ValueError):
    """A `kgen sample` argument does not fit the exported model."""


def resolve_version_dir(model_dir, version=None):
    """A version directory from a base path (newest or `version`) or itself.

    Raises:
        SampleError: naming the path when it does not exist, holds no
            version, holds a version folder whose name is not a plain
            whole number (`01`, `²`), or lacks the requested version.
    """
    model_dir = pathlib.Path(model_dir)
    if not model_dir.exists():
        raise SampleError(
            f"{model_dir}: no such exported model (expected saved_models/NAME "
            "or one version's directory)"
        )
    if not model_dir.is_dir():
        raise SampleError(f"{model_dir}: expected an exported model's directory, found a file")
    if (model_dir / "saved_model.pb").exists():
        if version is not None:
            raise SampleError(
                f"{model_dir} is already one version; drop --version or pass "
                "the model's base path"
            )
        return model_dir
    folders = sorted(p.name for p in model_dir.iterdir()
                     if p.is_dir() and not p.name.startswith("."))
    odd = [name for name in folders
           if not _PLAIN_VERSION.match(name) and name.isdigit()]
    if odd:
        raise SampleError(
            f"{model_dir / odd[0]}: version folder {odd[0]!r} is not a plain whole "
            "number (expected 1, 2, ...; rename it)"
        )
    found = sorted(int(name) for name in folders if _PLAIN_VERSION.match(name))
    if not found:
        seen = f"; found {', '.join(folders)}" if folders else ""
        raise SampleError(
            f"{model_dir}: no exported versions (expected folders named 1, 2, ...{seen})"
        )
    if version is None:
        return model_dir / str(found[-1])
    if version not in found:
        raise SampleError(
            f"--version {version}: {model_dir} has no such version (found "
            f"{', '.join(map(str, found))})"
        )
    return model_dir / str(version)


def read_metadata(version_dir):
    """The export's `kgen.json` ({} when absent)."""
    path = pathlib.Path(version_dir) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise SampleError(f"{path}: not a readable kgen.json ({e})") from None
    if not isinstance(metadata, dict):
        raise SampleError(f"{path}: expected a JSON object")
    return metadata


def _check_seed(seed, n):
    """Refuse a `--seed` whose rows `seed .. seed + n - 1` leave 64 bits."""
    if not MIN_SEED <= seed <= MAX_SEED - (n - 1):
        last = seed + n - 1
        raise SampleError(
            f"--seed {seed}: with --n {n} the rows use seeds {seed}..{last}, "
            f"outside the 64-bit range [{MIN_SEED}, {MAX_SEED}]"
        )
    return seed


def generate_inputs(signature, metadata, n, seed, label=None):
    """Fill the `generate` signature's inputs for `n` rows."""
    inputs = {}
    specs = signature.structured_input_signature[1]
    defaults = metadata.get("defaults", {})
    if label is not None and "label" not in specs:
        raise SampleError(
            f"--label {label}: this model is unconditional (its generate "
            "signature takes no label)"
        )
    for name, spec in specs.items():
        if name == "label":
            continue
        if name == "seed":
            inputs[name] = np.arange(n, dtype="int64") + np.int64(seed)
        elif name in defaults:
            inputs[name] = np.full(n, defaults[name], dtype=spec.dtype.as_numpy_dtype)
        else:
            raise SampleError(
                f"the generate signature needs input {name!r}, which kgen sample "
                "cannot fill"
            )
    if "label" in specs:
        dtype = specs["label"].dtype.as_numpy_dtype
        inputs["label"] = _labels(metadata, n, seed, label).astype(dtype)
    return inputs


def _labels(metadata, n, seed, label):
    classes = metadata.get("num_classes")
    if not isinstance(classes, int) or classes < 1:
        if label is None:
            raise SampleError(
                f"{METADATA_FILE} does not record num_classes for this conditional "
                "model; pass --label N"
            )
        return np.full(n, label)  # the graph checks the range
    if label is not None and not 0 <= label < classes:
        raise SampleError(f"--label {label}: must be in [0, {classes})")
    if label is not None:
        return np.full(n, label)
    # As `model.generate`: a row's default label is its own seed mod
    # num_classes, so a row does not depend on its position.
    return (seed % classes + np.arange(n)) % classes


def _output_path(out, kind):
    if out is not None and pathlib.Path(out).suffix.lower() == ".npy" and kind != "text":
        return media.check_writable(pathlib.Path(out))
    if kind == "audio":
        out = pathlib.Path(out or "samples")
        if out.suffix.lower() == ".wav":
            return media.check_writable(out)
        if out.suffix and not out.is_dir():
            raise media.OutputError(
                f"{out}: cannot write audio as {out.suffix!r} (use a folder for one "
                ".wav file per row, a .wav file for the rows one after another, "
                "or .npy)")
        return media.check_writable(out, directory=True)
    if kind == "images":
        out = pathlib.Path(out or "samples.png")
        media.image_format(out)
        return media.check_writable(out)
    return media.check_writable(pathlib.Path(out or "samples.txt"))


def _run(signature, inputs, max_rows, version_dir):
    """The signature over `inputs`, `max_rows` rows per call (rows are
    independent, so the split does not change them)."""
    import tensorflow as tf

    n = len(inputs["seed"])
    step = max_rows if isinstance(max_rows, int) and max_rows > 0 else n
    parts = []
    for start in range(0, n, step):
        try:
            parts.append(signature(**{
                k: tf.constant(v[start : start + step]) for k, v in inputs.items()
            }))
        except tf.errors.InvalidArgumentError as e:
            raise SampleError(
                f"{version_dir}: the generate signature refused the request "
                f"({_graph_reason(e.message or '')})"
            ) from None
    return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}


def _graph_reason(message):
    """The message of a failed check inside a graph, without TensorFlow's
    node and stack lines."""
    found = re.search(r"assertion failed: \[(.*?)\](?= \[|\s*$)", message, re.MULTILINE)
    if found:
        return found.group(1)
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[{{node")
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not line.strip().startswith(noise)]
    return lines[0] if lines else "INVALID_ARGUMENT"


def sample_saved_model(model_dir, version=None, n=16, seed=0, label=None, out=None):
    """Draw `n` samples from an exported model and write them to `out`.

    Args:
        model_dir: `saved_models/NAME`, or one version's directory.
        version: the version to use (default: the newest).
        n: number of samples; row `i` uses seed `seed + i`.
        seed: seed of the first row (64-bit).
        label: class of every row for conditional models (default: row
            `i`'s seed mod num_classes, as `model.generate` does, so the
            rows cycle through the classes).
        out: the file (images: PNG or another image suffix, or `.npy` for
            the float32 array; audio: a folder for one 16-bit WAV file per
            row, a `.wav` file holding the rows one after another, or
            `.npy`; or a text file) to write.

    Returns:
        the path written.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SampleError(f"--n {n}: must be an integer >= 1")
    _check_seed(seed, n)
    version_dir = resolve_version_dir(model_dir, version)
    metadata = read_metadata(version_dir)
    kind = metadata.get("output_kind", "images")
    out = _output_path(out, kind)
    loaded = _load(version_dir)  # holds the variables the signature reads
    signature = loaded.signatures["generate"]
    inputs = generate_inputs(signature, metadata, n, seed, label)
    outputs = _run(signature, inputs, metadata.get("max_rows"), version_dir)
    values = outputs.get(kind if kind in ("images", "audio") else "text")
    if values is None:
        raise SampleError(
            f"{version_dir}: the generate signature has no {kind!r} output "
            f"(it returns {', '.join(outputs)})"
        )
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        rows = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
        raise SampleError(
            f"{version_dir}: the model produced non-finite values (NaN or inf) in "
            f"{len(rows)} of {n} rows (first: seed {seed + int(rows[0])}); its "
            "weights are probably not finite. Nothing written"
        )
    if out.suffix.lower() == ".npy":
        return media.save_array(out, values)
    if kind == "audio":
        return _save_audio(out, values, metadata, version_dir, inputs)
    if kind == "images":
        # Rows cycling through the classes: one column per class.
        columns = metadata.get("num_classes") if label is None else None
        return media.save_image_grid(out, values, columns=columns or None)
    texts = [t.decode("utf-8", "replace") for t in values]
    return media.save_text(out, "\n\n---\n\n".join(texts))


def _save_audio(out, clips, metadata, version_dir, inputs):
    """WAV files at the export's `sample_rate`: one per row in a folder
    (`seed_<seed>_label_<label>.wav`), or every row in one `.wav` file, one
    after another, in row order."""
    rate = metadata.get("sample_rate")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
        raise SampleError(
            f"{version_dir}: {METADATA_FILE} records no sample_rate for its audio "
            f"(found {rate!r})")
    if out.suffix.lower() == ".wav":
        return media.save_wav(out, clips.reshape(-1), rate)
    labels = inputs.get("label")
    names = [f"seed_{seed}" + ("" if labels is None else f"_label_{labels[i]}")
             for i, seed in enumerate(inputs["seed"])]
    out.mkdir(parents=True, exist_ok=True)
    media.save_wavs(out, clips, rate, names)
    return out


def _load(version_dir):
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(version_dir))
    except Exception as e:  # protobuf, OS and TensorFlow errors alike
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SampleError(
            f"{version_dir}: not a loadable SavedModel ({type(e).__name__}: {reason})"
        ) from None
    if "generate" not in loaded.signatures:
        raise SampleError(
            f"{version_dir}: no 'generate' signature (found "
            f"{', '.join(loaded.signatures) or 'none'})"
        )
    return loaded
