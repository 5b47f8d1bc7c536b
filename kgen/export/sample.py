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

import contextlib
import pathlib
import re
import shutil
import sys
import time

import numpy as np

from kgen import media
from kgen.errors import UserError
from kgen.export import metadata as export_metadata
from kgen.export.metadata import METADATA_FILE
from kgen.export.messages import graph_reason
from kgen.random import MAX_SEED
from kgen.random import MIN_SEED

# Rows of one file a person looks at (an image grid, a WAV file or a
# folder of them); more rows go to a `.npy` array or a text file, which are
# written chunk by chunk with bounded memory.
MAX_VIEW_ROWS = 10_000
# Rows per call of the signature when the export records no max_rows, and
# the most whatever it records (an export may allow more rows per request
# than one chunk of a long draw should hold in memory).
DEFAULT_CHUNK_ROWS = 256
MAX_CHUNK_ROWS = 1024
# Between two texts in a text file of samples.
TEXT_SEPARATOR = "\n\n---\n\n"
# The suffixes a text model's samples may be written to.
TEXT_SUFFIXES = (".txt", ".md")
# A version folder as TF Serving reads it: a plain whole number.
_PLAIN_VERSION = re.compile(r"(0|[1-9][0-9]*)\Z")


class SampleError(UserError, ValueError):
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
    """The export's `kgen.json` ({} when absent; `kgen.export.metadata`).

    Raises:
        SampleError: naming the file when it is unreadable or not a JSON
            object.
    """
    try:
        return export_metadata.read_metadata(version_dir)
    except export_metadata.MetadataError as e:
        raise SampleError(str(e)) from None


def _check_seed(seed, n):
    """Refuse a `--seed` whose rows `seed .. seed + n - 1` leave 64 bits."""
    if not MIN_SEED <= seed <= MAX_SEED - (n - 1):
        last = seed + n - 1
        raise SampleError(
            f"--seed {seed}: with --n {n} the rows use seeds {seed}..{last}, "
            f"outside the 64-bit range [{MIN_SEED}, {MAX_SEED}]"
        )
    return seed


def generate_inputs(signature, metadata, n, seed, label=None, settings=None):
    """Fill the `generate` signature's inputs for `n` rows."""
    dtypes = {name: spec.dtype.as_numpy_dtype
              for name, spec in signature.structured_input_signature[1].items()}
    return fill_inputs(dtypes, metadata, n, seed, label, settings)


def fill_inputs(dtypes, metadata, n, seed, label=None, settings=None, missing=None):
    """`{input: array of n rows}` for a signature whose inputs have `dtypes`.

    Args:
        dtypes: `{input name: numpy dtype}`.
        metadata: the export's `kgen.json` (`defaults`, `num_classes`).
        n, seed, label: as `sample_saved_model`.
        settings: `{input name: text}` from `--set NAME=VALUE`: one value
            for every row, over the export's default.
        missing: `missing(name)` gives the message for an input with no
            value (default: kgen sample cannot fill it).
    """
    settings = dict(settings or {})
    for name in settings:
        if name in ("seed", "label"):
            raise SampleError(f"--set {name}=...: use --{name} instead")
        if name not in dtypes:
            raise SampleError(
                f"--set {name}=...: the generate signature has no input {name!r} "
                f"(its inputs: {', '.join(sorted(dtypes))})")
    inputs = {}
    defaults = metadata.get("defaults", {})
    if label is not None and "label" not in dtypes:
        raise SampleError(
            f"--label {label}: this model is unconditional (its generate "
            "signature takes no label)"
        )
    for name, dtype in dtypes.items():
        if name == "label":
            continue
        if name == "seed":
            inputs[name] = np.arange(n, dtype="int64") + np.int64(seed)
        elif name in settings:
            inputs[name] = np.full(n, _setting(name, settings[name], dtype), dtype=dtype)
        elif name in defaults:
            inputs[name] = np.full(n, defaults[name], dtype=dtype)
        else:
            raise SampleError(
                missing(name) if missing else
                f"the generate signature needs input {name!r}, which kgen sample "
                f"cannot fill (pass --set {name}=VALUE)"
            )
    if "label" in dtypes:
        inputs["label"] = _labels(metadata, n, seed, label).astype(dtypes["label"])
    return inputs


def _setting(name, text, dtype):
    """`--set NAME=TEXT` as one value of the input's dtype."""
    dtype = np.dtype(dtype)
    if dtype.kind in "SUO":
        return str(text).encode("utf-8")
    try:
        if dtype.kind in "iu":
            value = int(text)
        elif dtype.kind == "f":
            value = float(text)
            if not np.isfinite(value):
                raise ValueError
        elif dtype.kind == "b":
            value = {"true": True, "false": False}[str(text).lower()]
        else:
            raise ValueError
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        if info is not None and not info.min <= value <= info.max:
            raise OverflowError
    except (ValueError, KeyError, OverflowError):
        raise SampleError(
            f"--set {name}={text}: expected a value of the input's dtype {dtype.name}"
            + (" (a finite number)" if dtype.kind == "f" else "")
        ) from None
    return value


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


# The output kinds `kgen sample` writes itself; a family with another kind
# declares its `kgen.family.OutputWriter`.
BUILTIN_KINDS = ("images", "audio", "text")


def _writer(kind):
    """The declared `OutputWriter` of an output kind kgen does not write
    itself, or a SampleError naming the kind."""
    from kgen.family import writer_for

    writer = writer_for(kind)
    if writer is None:
        raise SampleError(f"kgen sample cannot write {kind!r} samples (no model family "
                          "declares a writer for them)")
    return writer


def _output_path(out, kind):
    if out is not None and pathlib.Path(out).suffix.lower() == ".npy" and kind != "text":
        return media.check_writable(pathlib.Path(out))
    if kind not in BUILTIN_KINDS:
        writer = _writer(kind)
        return pathlib.Path(writer.check_path(out if out is not None else writer.default_out))
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
    out = pathlib.Path(out or "samples.txt")
    if out.suffix.lower() not in TEXT_SUFFIXES:
        raise media.OutputError(
            f"{out}: cannot write text as {out.suffix or 'a file without a suffix'!r} "
            f"(this model writes text; use a file ending in {', '.join(TEXT_SUFFIXES)})")
    return media.check_writable(out)


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
                f"({graph_reason(e.message or '')})"
            ) from None
    return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}


def sample_saved_model(model_dir, version=None, n=16, seed=0, label=None, out=None,
                       settings=None, progress=None):
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
        settings: `{input name: text}`, one value of a `generate` input
            for every row over the export's default (`--set NAME=VALUE`).
        progress: print progress on stderr (default: when `n` needs more
            than one call of at most the export's `max_rows` rows).

    Returns:
        the path written. An image grid or WAV output holds at most
        `MAX_VIEW_ROWS` rows (more are refused at once); a `.npy` array or
        a text file any number, drawn and written one chunk of `max_rows`
        rows at a time.
    """
    version_dir, metadata, kind, out = check_request(model_dir, version, n, seed, out)
    loaded = _load(version_dir)  # holds the variables the signature reads
    signature = loaded.signatures["generate"]
    max_rows = metadata.get("max_rows")
    chunk = (min(max_rows, MAX_CHUNK_ROWS) if isinstance(max_rows, int) and max_rows > 0
             else DEFAULT_CHUNK_ROWS)

    def call(first_seed, count):
        inputs = generate_inputs(signature, metadata, count, first_seed, label, settings)
        return inputs, _run(signature, inputs, chunk, version_dir)

    # Rows cycling through the classes: one column per class.
    columns = metadata.get("num_classes") if label is None else None
    return draw(call, n, seed, chunk, out, kind, version_dir, columns, progress)


def check_request(model_dir, version=None, n=16, seed=0, out=None):
    """What `sample_saved_model` checks before it loads TensorFlow: the
    count, the seeds, the version, its `kgen.json` and the output path.

    Returns:
        `(version_dir, metadata, output kind, checked output path)`.

    Raises:
        SampleError, `kgen.media.OutputError`: naming the bad value.
    """
    _check_count(n)
    _check_seed(seed, n)
    version_dir = resolve_version_dir(model_dir, version)
    metadata = read_metadata(version_dir)
    kind = export_metadata.output_kind(metadata)
    out = _output_path(out, kind)
    check_output_rows(n, out, kind)
    return version_dir, metadata, kind, out


def check_output_rows(n, out, kind):
    """Refuse `n` rows for a file a person looks at (`MAX_VIEW_ROWS`), at
    once: a `.npy` array or a text file takes any number, chunk by chunk."""
    if _streamed(out, kind) or n <= MAX_VIEW_ROWS:
        return
    what = {"images": "an image grid", "audio": "WAV audio"}.get(kind, f"a {kind} file")
    raise SampleError(
        f"--n {n}: {out} would be {what} of {n} samples, more than the "
        f"{MAX_VIEW_ROWS} a person can look at; write them as a float32 array "
        f"with --out rows.npy (drawn and written in chunks, with bounded memory), "
        f"or ask for --n {MAX_VIEW_ROWS} or fewer")


def _streamed(out, kind):
    return out.suffix.lower() == ".npy" or kind == "text"


class _Progress:
    """`kgen sample: DONE/N rows` on stderr, every few seconds and at the end."""

    def __init__(self, total, out, chunk, enabled):
        self.total, self.done, self.enabled = total, 0, enabled
        self.last = time.monotonic()
        # Shown once the first call succeeded: a refused request prints only its error.
        self.header = f"drawing {total} rows into {out}, {chunk} rows per call"

    def _print(self, text):
        print(f"kgen sample: {text}", file=sys.stderr, flush=True)

    def add(self, count):
        if self.enabled and not self.done:
            self._print(self.header)
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self.last >= 5.0 or self.done == self.total):
            self.last = now
            self._print(f"{self.done}/{self.total} rows ({100 * self.done // self.total}%)")


def draw(call, n, seed, chunk, out, kind, where, columns=None, progress=None):
    """Draw rows `seed .. seed + n - 1`, `chunk` rows per `call`, and write them.

    Args:
        call: `call(first_seed, count) -> (inputs, outputs)` of the
            `generate` signature for `count` rows from seed `first_seed`.
        n, seed: the rows; row `i` has seed `seed + i` whatever the chunk,
            so the rows are the ones a single call would give.
        chunk: rows per call (the export's max_rows).
        out, kind: the checked output path and the output kind.
        where: the export or server named in errors.
        columns: the image grid's columns (None: square).
        progress: print progress on stderr (default: when there is more
            than one chunk).

    Returns:
        the path written. A `.npy` array or a text file is written chunk
        by chunk (memory holds one chunk); a grid or WAV files (at most
        `MAX_VIEW_ROWS` rows) once all rows are drawn.
    """
    bar = _Progress(n, out, chunk, n > chunk if progress is None else progress)
    if _streamed(out, kind):
        return _draw_streamed(call, n, seed, chunk, out, kind, where, bar)
    inputs, outputs = [], []
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        part_inputs, part_outputs = call(seed + start, count)
        inputs.append(part_inputs)
        outputs.append(part_outputs)
        bar.add(count)
    joined = {k: np.concatenate([p[k] for p in outputs]) for k in outputs[0]}
    joined_inputs = {k: np.concatenate([p[k] for p in inputs]) for k in inputs[0]}
    return write_samples(out, joined, kind, seed, columns, where, joined_inputs)


def _draw_streamed(call, n, seed, chunk, out, kind, where, bar):
    with contextlib.ExitStack() as stack:
        write = None
        for start in range(0, n, chunk):
            count = min(chunk, n - start)
            _, outputs = call(seed + start, count)
            values = _output_values(outputs, kind, where)
            _check_finite(values, seed + start, where)
            if write is None:
                write = _open_stream(stack, out, kind, n, values)
            write(values if kind != "text" else
                  [t.decode("utf-8", "replace") for t in values])
            bar.add(count)
    return out


def _open_stream(stack, out, kind, n, first):
    """The writer of `n` rows shaped as `first`'s, after checking that the
    disk holding `out` has room for them."""
    if kind == "text":
        return stack.enter_context(media.text_stream(out, TEXT_SEPARATOR))
    shape = (n, *first.shape[1:])
    needed = n * first[0].nbytes
    folder = next((p for p in (out.parent, *out.parent.parents) if p.is_dir()),
                  pathlib.Path("."))
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise SampleError(
            f"--n {n}: {out} would take {needed / 2**30:.1f} GiB ({n} rows of "
            f"{first[0].nbytes} bytes), more than the {free / 2**30:.1f} GiB free on "
            f"its disk; ask for fewer rows or write elsewhere")
    return stack.enter_context(media.array_stream(out, shape, first.dtype))


def _check_count(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SampleError(f"--n {n}: must be an integer >= 1")


def write_samples(out, outputs, kind, seed, columns, where, inputs):
    """Write the `generate` outputs: an image grid (or `.npy`), WAV files
    or text.

    Args:
        out: the checked output path.
        outputs: `{output name: array}` of the `generate` signature.
        kind: `"images"`, `"audio"`, `"text"`, or a kind whose family
            declares its `OutputWriter`.
        seed: the first row's seed (named when a row is not finite).
        columns: the image grid's columns (None: square).
        where: the export or server named in errors.
        inputs: the `generate` inputs (WAV file names hold each row's
            seed and label).
    """
    values = _output_values(outputs, kind, where)
    _check_finite(values, seed, where)
    if out.suffix.lower() == ".npy":
        return media.save_array(out, values)
    if kind == "audio":
        return _save_audio(out, values, outputs.get("sample_rate"), where, inputs)
    if kind == "images":
        return media.save_image_grid(out, values, columns=columns or None)
    if kind not in BUILTIN_KINDS:
        return _writer(kind).write(out, values, inputs, columns=columns or None)
    texts = [t.decode("utf-8", "replace") for t in values]
    return media.save_text(out, TEXT_SEPARATOR.join(texts))


def _output_values(outputs, kind, where):
    values = outputs.get(kind)
    if values is None:
        raise SampleError(
            f"{where}: the generate signature has no {kind!r} output "
            f"(it returns {', '.join(outputs)})"
        )
    return values


def _check_finite(values, seed, where):
    """Refuse rows (the first with seed `seed`) holding NaN or inf."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        rows = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
        raise SampleError(
            f"{where}: the model produced non-finite values (NaN or inf) in "
            f"{len(rows)} of {len(values)} rows (from seed {seed}; first: seed "
            f"{seed + int(rows[0])}); its weights are probably not finite. Nothing written"
        )


def _save_audio(out, clips, rates, where, inputs):
    """WAV files at the export's sample rate (the `generate` signature's
    `sample_rate` output, one per row, so a server's answer carries it as
    well): one per row in a folder (`seed_<seed>_label_<label>.wav`), or
    every row in one `.wav` file, one after another, in row order."""
    rates = np.unique(np.asarray(rates if rates is not None else [])).tolist()
    if len(rates) != 1 or rates[0] < 1:
        raise SampleError(
            f"{where}: the generate signature's sample_rate output gives {rates!r}, "
            "not one positive rate")
    rate = int(rates[0])
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


# === From a server (`kgen sample --url`) ===

# A model's URL: [prefix]/v1/models/NAME[/versions/N], as TF Serving routes it.
_MODEL_PATH = re.compile(r"(?P<prefix>.*?)/v1/models/(?P<name>[^/:]+)"
                         r"(?:/versions/(?P<version>[^/:]+))?/?\Z")
# Rows of one request when the export's max_rows is not known; a server
# that allows fewer says so in its refusal (`max_rows=N`), and the rows are
# then sent in parts of that size.
REMOTE_ROWS = 256
_MAX_ROWS_REFUSAL = re.compile(r"\bmax_rows=(\d+)")


def parse_model_url(url, version=None):
    """`http(s)://HOST:PORT[/prefix]/v1/models/NAME[/versions/N]` (or
    `grpc://...`) -> `(server URL, model name, version)`."""
    import urllib.parse

    parts = urllib.parse.urlsplit(str(url))
    if parts.scheme not in ("http", "https", "grpc", "grpcs") or not parts.netloc:
        raise SampleError(
            f"--url {url}: expected http://HOST:PORT/v1/models/NAME (REST) or "
            "grpc://HOST:PORT/v1/models/NAME (gRPC)")
    found = _MODEL_PATH.match(parts.path)
    if not found or parts.query or parts.fragment:
        raise SampleError(
            f"--url {url}: the path must be /v1/models/NAME (optionally "
            "/versions/N), as TF Serving routes a model")
    in_url = found.group("version")
    if in_url is not None:
        if not _PLAIN_VERSION.match(in_url) or in_url == "0":
            raise SampleError(f"--url {url}: version {in_url!r} is not a whole number >= 1")
        if version is not None and int(in_url) != version:
            raise SampleError(f"--version {version}: the URL names version {in_url}")
        version = int(in_url)
    if version is not None and version < 1:
        raise SampleError(f"--version {version}: must be a whole number >= 1")
    prefix = "" if parts.scheme.startswith("grpc") else found.group("prefix")
    server = f"{parts.scheme}://{parts.netloc}{prefix}"
    return server, urllib.parse.unquote(found.group("name")), version



def _writable_kinds():
    """The output kinds `kgen sample` writes, in the order a signature's
    outputs are searched for them: its own, then those families declare
    writers for."""
    from kgen.family import families

    declared = [f.output_kind for f in families().values()
                if f.writer is not None and f.output_kind not in BUILTIN_KINDS]
    return BUILTIN_KINDS + tuple(dict.fromkeys(declared))
# TF Serving's dtype names -> numpy, for the inputs `kgen sample` fills.
_DTYPES = {"DT_INT64": "int64", "DT_INT32": "int32", "DT_FLOAT": "float32",
           "DT_DOUBLE": "float64", "DT_STRING": "object", "DT_BOOL": "bool"}


def served_metadata(signature):
    """What `kgen sample` knows of a served model from its `generate`
    signature alone (TF Serving does not serve kgen.json): the output kind
    from the output names, and the defaults that are the same in every
    export of a family, as the families declare them (`kgen.family`:
    `served_defaults`, e.g. an LM's sampler settings). The rest (an LM's
    prompt, a diffusion step count, a class label) the user passes."""
    from kgen.family import families

    inputs, outputs = signature["inputs"], signature["outputs"]
    writable = _writable_kinds()
    kind = next((k for k in writable if k in outputs), None)
    if kind is None:
        raise SampleError(
            f"the generate signature returns {', '.join(sorted(outputs))}; kgen sample "
            f"writes {', '.join(repr(k) for k in writable)}")
    defaults = {}
    for declaration in families().values():
        if declaration.output_kind == kind and set(declaration.options) <= set(inputs):
            defaults.update(declaration.defaults_for_served(inputs))
    return {"output_kind": kind, "defaults": defaults}


def sample_from_server(url, version=None, n=16, seed=0, label=None, out=None,
                       settings=None, timeout=None, progress=None, api_key=None,
                       ca_cert=None):
    """`sample_saved_model` through a server's `generate` signature.

    The server may be `kgen serve`, TF Serving or KServe: the rows are the
    ones `kgen sample saved_models/NAME` draws with the same `n`, `seed`,
    `label` and settings, so the file is the same. TF Serving serves the
    signatures but not `kgen.json`, so a conditional model needs `label`,
    and an input whose default is the export's own (an LM's `prompt`, a
    diffusion model's `num_steps`) needs a setting (`--set NAME=VALUE`).

    Args:
        url: `http://HOST:PORT/v1/models/NAME[/versions/N]` (REST) or
            `grpc://HOST:PORT/v1/models/NAME` (gRPC).
        version, n, seed, label, out, settings, progress: as
            `sample_saved_model`.
        timeout: seconds one request may take (default the client's).
        api_key, ca_cert: as `kgen.serving.client.Client`'s.

    Returns:
        the path written.
    """
    from kgen.serving.client import DEFAULT_TIMEOUT
    from kgen.serving.client import Client
    from kgen.serving.client import ServerError

    _check_count(n)
    _check_seed(seed, n)
    server, name, version = parse_model_url(url, version)
    client = Client(server, timeout=timeout or DEFAULT_TIMEOUT, api_key=api_key,
                    ca_cert=ca_cert)
    where = f"{server} model {name!r}"
    try:
        signatures = client.metadata(name, version)["signatures"]
        if "generate" not in signatures:
            raise SampleError(f"{where}: no 'generate' signature (found "
                              f"{', '.join(sorted(signatures)) or 'none'})")
        signature = signatures["generate"]
        metadata = served_metadata(signature)
        out = _output_path(out, metadata["output_kind"])
        dtypes = {}
        for input_name, spec in signature["inputs"].items():
            if spec["dtype"] not in _DTYPES:
                raise SampleError(f"{where}: generate input {input_name!r} has dtype "
                                  f"{spec['dtype']}, which kgen sample cannot fill")
            dtypes[input_name] = np.dtype(_DTYPES[spec["dtype"]])
        if "label" in dtypes and label is None:
            raise SampleError(
                f"--label: {where} is conditional (its generate signature takes a "
                "label) and the server does not publish its classes; pass --label N")

        def missing(input_name):
            return (f"{where}: the generate signature needs {input_name!r}, whose default "
                    "the server does not publish (TF Serving serves no kgen.json); "
                    f"pass --set {input_name}=VALUE")

        check_output_rows(n, out, metadata["output_kind"])

        def call(first_seed, count):
            inputs = fill_inputs(dtypes, metadata, count, first_seed, label, settings,
                                 missing)
            return inputs, _run_remote(client, name, version, inputs, where)

        return draw(call, n, seed, REMOTE_ROWS, out, metadata["output_kind"], where,
                    progress=progress)
    except ServerError as e:
        raise SampleError(f"{e}") from None
    finally:
        client.close()


def _run_remote(client, name, version, inputs, where):
    """`generate` on the server, `REMOTE_ROWS` rows per request, or the
    export's max_rows when its refusal names a smaller one."""
    from kgen.serving.client import ServerError

    n = len(inputs["seed"])
    step, start, parts = REMOTE_ROWS, 0, []
    while start < n:
        part = {k: v[start:start + step] for k, v in inputs.items()}
        try:
            parts.append(client.predict(name, part, signature="generate", version=version))
        except ServerError as e:
            smaller = _MAX_ROWS_REFUSAL.search(e.message or "")
            if smaller and 0 < int(smaller.group(1)) < len(part["seed"]):
                step = int(smaller.group(1))
                continue
            raise SampleError(
                f"{where}: the generate signature refused the request "
                f"({e.status}: {e.message})") from None
        start += len(part["seed"])
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
