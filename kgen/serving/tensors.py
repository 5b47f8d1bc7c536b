"""TF Serving's JSON tensor encoding: request bodies to numpy arrays and
arrays back to response bodies, as `tensorflow_model_server` writes them.

The rules follow TF Serving's REST API (`api_rest.md`, `json_tensor.cc`):

- A predict body is a JSON object with an optional `signature_name` and
  either `instances` (row format: a non-empty list, one item per row; an
  object per row when the signature has several inputs) or `inputs`
  (columnar format: an object of named tensors, or one bare tensor when the
  signature has one input), never both.
- A row-format request is answered with `{"predictions": ...}` (a list of
  values when the signature has one output, else a list of objects); a
  columnar one with `{"outputs": ...}` (the tensor, or an object of them).
- Strings are JSON strings; a `{"b64": "..."}` object is binary data.
  Outputs whose names end in `_bytes` are written as `{"b64": ...}`, as
  TF Serving does; a string output that is not valid UTF-8 is written the
  same way rather than corrupted.
- Floats are written in their shortest round-trip form (a float32 read back
  as float32 is the same number); `NaN`, `Infinity` and `-Infinity` are
  accepted and written as tokens, as TF Serving does.

Every failure is a `TensorError` whose message names the input.
"""

import base64
import binascii
import json
import math

import numpy as np
import orjson

from kgen.errors import UserError

# TF Serving's name for each dtype the exports use (DataType enum names).
DT_NAMES = {
    "float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int8": "DT_INT8",
    "int16": "DT_INT16", "int32": "DT_INT32", "int64": "DT_INT64",
    "uint8": "DT_UINT8", "uint16": "DT_UINT16", "uint32": "DT_UINT32",
    "uint64": "DT_UINT64", "bool": "DT_BOOL", "string": "DT_STRING",
    "float16": "DT_HALF", "bfloat16": "DT_BFLOAT16",
}
BYTES_SUFFIX = "_bytes"
# The deepest nesting of a request body (orjson's own limit; a tensor of
# any rank the exports take is far shallower).
MAX_JSON_DEPTH = 1024


class TensorError(UserError, ValueError):
    """A request's tensor cannot be read as the signature expects."""


def dt_name(dtype):
    """`tf.DType` or dtype name -> TF Serving's name (`DT_INT64`)."""
    name = getattr(dtype, "name", str(dtype))
    return DT_NAMES.get(name, f"DT_{name.upper()}")


def parse_json(body):
    """Request bytes -> JSON object (a dict), NaN/Infinity tokens allowed."""
    if not body:
        raise TensorError("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if "recursion" in str(e).lower():
            raise _too_deep() from None
        # orjson refuses NaN and Infinity, which TF Serving accepts.
        try:
            doc = json.loads(body)
        except RecursionError:
            raise _too_deep() from None
        except (ValueError, UnicodeDecodeError) as e:
            raise TensorError(f"JSON Parse error: {e}") from None
    if not isinstance(doc, dict):
        raise TensorError(
            f"JSON Value: {_short(doc)} Is not object (a predict body is a JSON "
            "object with 'instances' or 'inputs')")
    return doc


def _too_deep():
    return TensorError(f"JSON Parse error: the request body nests arrays or objects "
                       f"deeper than {MAX_JSON_DEPTH} levels")


def request_format(doc):
    """`("row", instances)` or `("columnar", inputs)`; refuses a body with
    both keys or neither, an `instances` that is not a non-empty list, and
    a `signature_name` that is not a string."""
    name = doc.get("signature_name")
    if name is not None and not isinstance(name, str):
        raise TensorError(
            f"signature_name: expected a string, got {_short(name)}")
    has_rows, has_columns = "instances" in doc, "inputs" in doc
    if has_rows and has_columns:
        raise TensorError(
            "the request has both 'instances' and 'inputs'; send one of them "
            "(instances: row format, inputs: columnar format)")
    if has_rows:
        rows = doc["instances"]
        if not isinstance(rows, list):
            raise TensorError(f"instances: expected a list (one item per row), "
                              f"got {_short(rows)}")
        if not rows:
            raise TensorError("instances: no values in 'instances' (empty batch); "
                              "send at least one row")
        return "row", rows
    if has_columns:
        return "columnar", doc["inputs"]
    raise TensorError("Missing 'inputs' or 'instances' key")


def _is_b64(value):
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named(value):
    return isinstance(value, dict) and not _is_b64(value)


def rows_to_columns(instances, specs):
    """Row format -> `{name: list of per-row values}`."""
    names = sorted(specs)
    first = instances[0]
    if not _is_named(first):
        if len(names) > 1:
            raise TensorError(
                "instances is a plain list, but this signature has several inputs "
                f"({', '.join(names)}): send one object per row with those keys")
        for i, item in enumerate(instances):
            if _is_named(item):
                raise TensorError(f"instances[{i}]: expected a value or list like "
                                  "instances[0], got an object")
        return {names[0]: instances}
    columns = {name: [] for name in names}
    for i, item in enumerate(instances):
        if not _is_named(item):
            raise TensorError(f"instances[{i}]: expected an object with keys "
                              f"{', '.join(names)} like instances[0], got {_short(item)}")
        missing = [n for n in names if n not in item]
        extra = sorted(k for k in item if k not in specs)
        if missing or extra:
            raise TensorError(
                f"instances[{i}]: " + _key_problem(missing, extra, names))
        for name in names:
            columns[name].append(item[name])
    return columns


def columnar_inputs(inputs, specs):
    """Columnar format -> `{name: tensor value}`."""
    names = sorted(specs)
    if not _is_named(inputs):
        if len(names) > 1:
            raise TensorError(
                "inputs is a plain value/list, but this signature has several inputs "
                f"({', '.join(names)}): send an object with those keys")
        return {names[0]: inputs}
    missing = [n for n in names if n not in inputs]
    extra = sorted(k for k in inputs if k not in specs)
    if missing or extra:
        raise TensorError("inputs: " + _key_problem(missing, extra, names))
    return {name: inputs[name] for name in names}


def _key_problem(missing, extra, names):
    parts = []
    if missing:
        parts.append(f"missing input {', '.join(missing)}")
    if extra:
        parts.append(f"unknown input {', '.join(extra)}")
    return "; ".join(parts) + f" (this signature takes {', '.join(names)})"


def to_array(value, dtype, name):
    """A JSON value -> numpy array of the signature's `dtype` (a `tf.DType`).

    Raises:
        TensorError: naming `name` when the value is ragged or holds a value
            of the wrong JSON type (a float for an int, a string for a
            number), or a number that the dtype cannot hold exactly.
    """
    if dtype.name == "string":
        return _string_array(value, name)
    array = _numeric(value, dtype, name)
    target = np.dtype(dtype.as_numpy_dtype)
    if array.size == 0:  # no values: only the shape matters
        return array.astype(target)
    if dtype.name == "bool":
        if array.dtype.kind != "b":
            raise _type_error(value, dtype, name)
        return array
    kind = array.dtype.kind
    if target.kind in "iu":
        if kind not in "iu":
            raise _type_error(value, dtype, name)
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise TensorError(
                f"{name}: value out of range for {dt_name(dtype)} "
                f"[{info.min}, {info.max}]")
        return array.astype(target)
    if target.kind == "f":
        if kind not in "iuf":
            raise _type_error(value, dtype, name)
        if kind in "iu" and array.size:
            # TF Serving's rule: integers up to 2**digits - 1 (every one of
            # them exact in the float type), no larger.
            exact = 2 ** (np.finfo(target).nmant + 1) - 1
            if np.abs(array.astype(np.float64)).max() > exact:
                raise TensorError(
                    f"{name}: cannot convert an integer above {exact} to "
                    f"{dt_name(dtype)} without loss of precision")
        if kind == "f" and array.size:
            finite = np.isfinite(array)
            big = np.abs(np.where(finite, array, 0)).max()
            if big > np.finfo(target).max:
                raise TensorError(
                    f"{name}: value {big} out of range for {dt_name(dtype)}")
        return array.astype(target)
    raise TensorError(f"{name}: inputs of type {dt_name(dtype)} are not supported")


def _numeric(value, dtype, name):
    if isinstance(value, (str, dict)) or value is None:
        raise _type_error(value, dtype, name)
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError):
        raise TensorError(
            f"{name}: ragged or mixed list (every row and nested list must "
            "have the same length and hold numbers)") from None
    if array.dtype.kind not in "biuf":
        if array.dtype.kind == "O":
            raise TensorError(
                f"{name}: ragged or mixed list, or a number out of range (every "
                "row must have the same shape and hold numbers)")
        raise _type_error(value, dtype, name)
    return array


def _type_error(value, dtype, name):
    return TensorError(
        f"{name}: JSON value {_short(value)} is not of expected type {dt_name(dtype)}")


def _string_array(value, name):
    shape = []
    level = value
    while isinstance(level, list):
        shape.append(len(level))
        if not level:
            break
        level = level[0]
    flat = []

    def walk(item, depth):
        if isinstance(item, list):
            if depth >= len(shape) or len(item) != shape[depth]:
                raise TensorError(
                    f"{name}: ragged list (every row and nested list must have "
                    "the same length)")
            for x in item:
                walk(x, depth + 1)
            return
        if depth != len(shape):
            raise TensorError(f"{name}: ragged list (values found at different depths)")
        if isinstance(item, str):
            try:
                flat.append(item.encode("utf-8"))
            except UnicodeEncodeError as e:
                raise TensorError(
                    f"{name}: string {_short(item)} holds a lone UTF-16 surrogate "
                    f"({item[e.start]!a} at character {e.start}), which is not "
                    "Unicode text; send valid UTF-8, or bytes as {\"b64\": ...}") from None
        elif _is_b64(item):
            try:
                flat.append(base64.b64decode(item["b64"], validate=True))
            except (binascii.Error, ValueError):
                raise TensorError(f"{name}: unable to base64 decode "
                                  f"{_short(item['b64'])}") from None
        else:
            raise TensorError(f"{name}: JSON value {_short(item)} is not of "
                              "expected type DT_STRING (a string or {\"b64\": ...})")

    walk(value, 0)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def _short(value, limit=80):
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# === Responses ===


def _jsonable(name, array):
    """An output array -> something orjson writes as TF Serving would."""
    if array.dtype.kind in "OSU":
        as_bytes = name.endswith(BYTES_SUFFIX)
        return _strings(array.tolist(), as_bytes)
    return array


def _strings(value, as_bytes):
    if isinstance(value, list):
        return [_strings(v, as_bytes) for v in value]
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not as_bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(value).decode("ascii")}


def response_body(outputs, form):
    """`{"predictions": ...}` (row) or `{"outputs": ...}` (columnar) bytes.

    Args:
        outputs: `{name: numpy array}` with a leading batch axis.
        form: `"row"` or `"columnar"`.
    """
    names = sorted(outputs)
    converted = {n: _jsonable(n, np.ascontiguousarray(outputs[n])) for n in names}
    if form == "row":
        rows = len(outputs[names[0]])
        for n in names:
            if np.ndim(outputs[n]) == 0 or len(outputs[n]) != rows:
                raise TensorError(
                    f"output {n} has no batch axis matching the other outputs; "
                    "use the columnar format ('inputs')")
        if len(names) == 1:
            doc = {"predictions": converted[names[0]]}
        else:
            doc = {"predictions": [{n: converted[n][i] for n in names}
                                   for i in range(rows)]}
    else:
        doc = {"outputs": converted[names[0]] if len(names) == 1 else converted}
    if all(_finite(outputs[n]) for n in names):
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    # orjson writes NaN as null; TF Serving writes the NaN/Infinity tokens.
    return json.dumps(_plain(doc), allow_nan=True).encode("utf-8")


def _finite(array):
    return array.dtype.kind != "f" or bool(np.isfinite(array).all())


def _plain(value):
    if isinstance(value, np.ndarray):
        if value.dtype == np.float32:
            return [_plain(v) for v in value] if value.ndim else _float32(value)
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return _float32(value) if value.dtype == np.float32 else value.item()
    return value


def _float32(value):
    value = float(value)
    if not math.isfinite(value):
        return value
    # The shortest text that reads back as the same float32.
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def error_body(message):
    """TF Serving's error body: `{"error": message}` (a lone surrogate a
    client sent, quoted in the message, is written escaped)."""
    if not message.isascii():
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return orjson.dumps({"error": message})
