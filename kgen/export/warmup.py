"""Warm-up requests that TF Serving replays when it loads a version.

TensorFlow's runtime initialises lazily, so the first request to a freshly
loaded model is slow. TF Serving replays the requests it finds in
`<version>/assets.extra/tf_serving_warmup_requests` while it loads the
version, before the version serves: a TFRecord file of `PredictionLog`
records (at most 1,000), each holding a `PredictRequest`. A request that
fails makes the load fail, so each request is built from the export's own
defaults and bounds and checked against its signature's inputs before the
version is published, and the tests replay every family's requests against
its SavedModel.

kgen writes one record per signature (`generate`, `serving_default` and
each family's own: VAE `encode`/`decode`, the language model's `prefill` and
`decode_step`, ...), each a small valid request: `WARMUP_ROWS` rows with
cheap settings (one diffusion step, two new tokens). A streaming
`decode_step` (named by `kgen.json`'s `streaming`) gets the loop state of a
one-token prompt: zero cache and logits, the first position.

Example:

```python
from kgen.export.warmup import warmup_requests, write_warmup_file

requests = warmup_requests(endpoints, metadata)     # {signature: {input: array}}
write_warmup_file(version_dir, requests, model_name="vae_digits")
```
"""

import pathlib

import numpy as np

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
# TF Serving reads at most this many records.
MAX_RECORDS = 1000
WARMUP_ROWS = 2
# Cheap values of the family options that cost work per row.
CHEAP = {"num_steps": 1, "max_new_tokens": 2}


class WarmupError(ValueError):
    """A warm-up request cannot be built, or its signature refuses it."""


def input_specs(fn):
    """`{name: tf.TensorSpec}` of a `tf.function` with an input signature."""
    specs = getattr(fn, "input_signature", None)
    if specs is None:
        raise WarmupError(f"{fn!r}: a serving endpoint needs an input signature")
    return {spec.name: spec for spec in specs}


def warmup_inputs(signature_name, specs, metadata):
    """One small valid request for one signature: `{input: np.ndarray}`.

    Args:
        signature_name: the signature's name (for error messages).
        specs: `{input name: tf.TensorSpec}`.
        metadata: what the family's builder records in `kgen.json`
            (`max_rows`, `defaults`, `image_shape`, `latent_dim`, ...,
            and `warmup`: `{input: {"shape": row shape, "fill": value}}`
            for an input of the family's own, e.g. a video's known frames).

    Raises:
        WarmupError: naming an input this module has no value for.
    """
    rows = min(WARMUP_ROWS, int(metadata.get("max_rows") or WARMUP_ROWS))
    if "max_row_steps" in metadata:  # rows x num_steps is bounded too
        rows = max(1, min(rows, int(metadata["max_row_steps"]) // CHEAP["num_steps"]))
    defaults = metadata.get("defaults", {})
    state = {}
    if signature_name == metadata.get("streaming", {}).get("decode_step"):
        state = decode_step_state(rows, int(metadata["context"]))
    inputs = {}
    for name, spec in specs.items():
        dtype = spec.dtype.as_numpy_dtype
        if name in state:
            value = state[name].astype(dtype)
        elif name == "seed":
            value = np.arange(rows, dtype="int64")
        elif name == "label":
            value = np.zeros(rows, dtype)
        elif name in CHEAP:
            value = np.full(rows, CHEAP[name], dtype)
        elif name in defaults:
            default = defaults[name]
            if spec.dtype.name == "string":
                value = np.array([str(default).encode("utf-8")] * rows, dtype=object)
            else:
                value = np.full(rows, default, dtype)
        elif name == "images" and "image_shape" in metadata:
            # Mid-grey images: inside [0, 1] as the signature requires.
            value = np.full([rows, *metadata["image_shape"]], 0.5, dtype)
        elif name == "latents" and "latent_dim" in metadata:
            value = np.zeros([rows, int(metadata["latent_dim"])], dtype)
        elif name in metadata.get("warmup", {}):
            # A family's own input, as its builder records it in kgen.json:
            # {"shape": one row's shape, "fill": the value of every element}.
            value = np.full([rows, *metadata["warmup"][name]["shape"]],
                            metadata["warmup"][name]["fill"], dtype)
        elif spec.shape.rank is not None and spec.shape[1:].is_fully_defined():
            value = np.zeros([rows, *spec.shape[1:].as_list()], dtype)
        else:
            raise WarmupError(
                f"signature {signature_name!r}: no warm-up value for input {name!r} "
                f"({spec.dtype.name} {spec.shape}); add one in kgen/export/warmup.py"
            )
        inputs[name] = value
    return inputs


def decode_step_state(rows, context):
    """The loop state a streaming `decode_step` reads after `prefill` of a
    one-token prompt (token 0) asking for `CHEAP["max_new_tokens"]` tokens;
    the cache and logits (fixed shapes) are zeros."""
    new = CHEAP["max_new_tokens"]
    ones = np.ones(rows, "int32")
    return {
        "tokens": np.zeros([rows, 1 + new + context], "int32"),
        "position": ones, "window_start": 0 * ones, "done": np.zeros(rows, bool),
        "lengths": (1 + new) * ones, "prompt_lengths": ones, "ends": (1 + new) * ones,
        "stop_id": -ones,
    }


def warmup_requests(endpoints, metadata):
    """`{signature name: {input: array}}`, one request per signature, with
    `serving_default` (the `generate` endpoint) beside `generate`."""
    requests = {}
    for name, fn in endpoints.items():
        requests[name] = warmup_inputs(name, input_specs(fn), metadata)
        if name == "generate":
            requests["serving_default"] = requests[name]
    if len(requests) > MAX_RECORDS:
        raise WarmupError(
            f"{len(requests)} warm-up records: TF Serving reads at most {MAX_RECORDS}")
    return requests


def check_requests(endpoints, requests, max_rows):
    """Check every request against its endpoint's input signature: the same
    input names, each value of the input's dtype and shape, 1 to `max_rows`
    rows. A `WarmupError` names the signature and input. (The values are
    the export's own defaults and bounds; the tests replay each family's
    requests against its SavedModel. Running them here would cost every
    export a first call of each loop.)"""
    import tensorflow as tf

    for name, fn in endpoints.items():
        specs, inputs = input_specs(fn), requests[name]
        if set(specs) != set(inputs):
            raise WarmupError(f"signature {name!r}: warm-up inputs {sorted(inputs)} are "
                              f"not the signature's {sorted(specs)}")
        for input_name, spec in specs.items():
            value = inputs[input_name]
            where = f"signature {name!r}: warm-up input {input_name!r}"
            if tf.as_dtype(value.dtype if value.dtype != object else tf.string) != spec.dtype:
                raise WarmupError(f"{where} is {value.dtype}, not {spec.dtype.name}")
            if not spec.shape.is_compatible_with(value.shape):
                raise WarmupError(f"{where} has shape {value.shape}, not {spec.shape}")
            if not 1 <= value.shape[0] <= max_rows:
                raise WarmupError(f"{where} has {value.shape[0]} rows, not 1..{max_rows}")


def prediction_logs(requests, model_name):
    """`PredictionLog` protos (TF Serving's own), one per request."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for signature, inputs in requests.items():
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup_file(version_dir, requests, model_name):
    """Write `version_dir/assets.extra/tf_serving_warmup_requests`.

    `version_dir` is the unpublished temporary of a version (see
    `kgen.export.publish`), so the file becomes visible with the rename
    that publishes the version.

    Returns:
        the path written.
    """
    import tensorflow as tf

    path = pathlib.Path(version_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in prediction_logs(requests, model_name):
            writer.write(log.SerializeToString())
    return path


def read_warmup_file(path):
    """The `PredictionLog` records of a warm-up file, in order."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(str(path))]
