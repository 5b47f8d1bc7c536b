"""Exported models as KServe models, loaded with TensorFlow alone.

A tree `saved_models/NAME/<int version>/` (what `kgen export` publishes)
becomes one `ServedModel` (a `kserve.Model`) per NAME. Each loads its
versions with `tf.saved_model.load` and calls their signatures, as TF
Serving does: no kgen model code, no Keras. The newest version answers
unversioned requests; `Repository.poll()` loads a version published later
(the atomic rename of `kgen.export.publish`) and swaps it in once it is
ready, while requests already holding the previous version finish on it.
An older version is loaded when a request names it, and a few stay loaded.
A version deleted from disk is refused at once (NOT_FOUND) and unloaded
at the next poll; one replaced by another folder of the same number is
loaded again; a model left with no version is unregistered, as TF Serving
unloads a servable whose base path empties. A version that cannot be
loaded is logged once, and tried again when its files change. What a
client is told about it names no path of the server.

Every request goes through `ServedModel.infer`: the version and signature
are looked up, the inputs checked against the signature (names, dtype,
rank, fixed dimensions, 1 to `max_rows` rows), the call made (batched with
concurrent ones when batching is on) and TensorFlow's errors turned into
`ServingError`s with TF Serving's codes and the message of the check that
failed, which names the input.
"""

import asyncio
import collections
import gc
import logging
import pathlib
import threading
import time
import uuid
import weakref

import numpy as np

from kgen.export.metadata import MetadataError
from kgen.export.metadata import read_metadata
from kgen.export.metadata import uniform_inputs
from kgen.serving import defaults
from kgen.serving import metrics
from kgen.serving.batching import Batcher
from kgen.serving.errors import ServingError
from kgen.serving.errors import from_tensorflow
from kgen.serving.errors import invalid
from kgen.serving.errors import not_found
from kgen.serving.tensors import dt_name
from kgen.serving.tree import PLAIN_VERSION
from kgen.serving.tree import addressable
from kgen.serving.tree import model_dirs
from kgen.serving.tree import plain_versions
from kgen.serving.tree import unaddressable_dirs
from kgen.serving.tree import unaddressable_text
from kgen.serving.tree import version_stamp
from kgen.serving.tree import without_paths

import kserve
from kserve.model_repository import ModelRepository
from kserve.protocol.infer_type import InferOutput
from kserve.protocol.infer_type import InferRequest
from kserve.protocol.infer_type import InferResponse

log = logging.getLogger("kgen.serving")

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
# Older versions kept loaded after a request named them.
KEEP_OLD_VERSIONS = 2
# Open Inference Protocol datatypes of the dtypes the exports use.
V2_DATATYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16",
                "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
                "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
                "uint64": "UINT64", "bool": "BOOL", "string": "BYTES"}


class Settings:
    """How requests are run.

    Args:
        batching: merge concurrent requests to one signature.
        batch_size: the most rows of one merged call.
        batch_wait_s: how long an idle signature waits for more requests.
        executor: the thread pool running the TensorFlow calls.
    """

    def __init__(self, batching=True, batch_size=defaults.BATCH_SIZE,
                 batch_wait_s=defaults.BATCH_WAIT_MS / 1000.0, executor=None):
        self.batching = batching
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.executor = executor


class Version:
    """One loaded version: its signatures, their input and output specs,
    its `kgen.json` and the SignatureDefs TF Serving's metadata lists."""

    def __init__(self, model, number, path, stamp=None):
        import tensorflow as tf

        self.model = model
        self.number = number
        self.path = pathlib.Path(path)
        # The folder's files as they were loaded (`tree.version_stamp`).
        self.stamp = stamp
        self.loaded = tf.saved_model.load(str(path))  # holds the variables
        self.signatures = dict(self.loaded.signatures)
        self.inputs = {k: dict(fn.structured_input_signature[1])
                       for k, fn in self.signatures.items()}
        self.outputs = {k: dict(fn.structured_outputs) for k, fn in self.signatures.items()}
        self.metadata = _read_metadata(self.path)
        max_rows = self.metadata.get("max_rows")
        self.max_rows = max_rows if isinstance(max_rows, int) and max_rows > 0 else None
        # Inputs that hold one value across a whole call, as the export
        # records them: requests differing in them are never merged.
        self.uniform = uniform_inputs(self.metadata)
        self.signature_defs = _signature_defs(self.path)
        self._batchers = {}

    def signature(self, name):
        """The name of an existing signature (`""` or None: serving_default)."""
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise invalid(
                f'Serving signature name: "{name}" not found in signature def of '
                f"model {self.model} version {self.number} (signatures: "
                f"{', '.join(sorted(self.signatures))})")
        return name

    def check(self, signature, inputs):
        """Checks `inputs` (`{name: numpy array}`) against the signature and
        returns the request's row count.

        Raises:
            ServingError: INVALID_ARGUMENT naming the input: a missing or
                unknown input, a wrong dtype, rank or fixed dimension, an
                empty batch or more rows than the export's `max_rows`.
        """
        specs = self.inputs[signature]
        missing = sorted(set(specs) - set(inputs))
        extra = sorted(set(inputs) - set(specs))
        if missing or extra:
            parts = ([f"missing input {', '.join(missing)}"] if missing else []) + \
                ([f"unknown input {', '.join(extra)}"] if extra else [])
            raise invalid(f"signature {signature} of model {self.model}: "
                          f"{'; '.join(parts)} (it takes {', '.join(sorted(specs))})")
        rows = None
        for name in sorted(specs):
            spec, array = specs[name], inputs[name]
            want = np.dtype(object) if spec.dtype.name == "string" else np.dtype(spec.dtype.as_numpy_dtype)
            if array.dtype != want and not (want == object and array.dtype.kind in "SU"):
                raise invalid(f"input {name}: expected {dt_name(spec.dtype)}, got "
                              f"{_np_dt_name(array.dtype)}")
            expected = spec.shape
            if expected.rank is not None:
                if array.ndim != expected.rank or any(
                        d is not None and d != n for d, n in zip(expected.as_list(), array.shape)):
                    raise invalid(f"input {name}: expected shape {_shape_text(expected)}, got "
                                  f"{list(array.shape)}")
            if array.ndim == 0:
                continue
            if len(array) == 0:
                raise invalid(f"input {name}: empty batch (0 rows); send at least one row")
            if self.max_rows is not None and len(array) > self.max_rows:
                raise invalid(f"input {name}: {len(array)} rows; this export allows at most "
                              f"max_rows={self.max_rows} rows per request")
            rows = len(array) if rows is None else max(rows, len(array))
        return rows or 1

    def call(self, signature, inputs):
        """Runs the signature (blocking) -> `{output name: numpy array}`."""
        import tensorflow as tf

        fn = self.signatures[signature]
        try:
            tensors = {k: tf.constant(_tf_ready(v)) for k, v in inputs.items()}
            outputs = fn(**tensors)
            return {k: v.numpy() for k, v in outputs.items()}
        except tf.errors.OpError as error:
            raise from_tensorflow(error) from None

    async def run(self, signature, inputs, rows, settings):
        """The call, through this signature's batcher when batching is on."""
        loop = asyncio.get_running_loop()
        labels = (self.model, signature)
        if not settings.batching:
            result = await loop.run_in_executor(settings.executor, self.call, signature, inputs)
            _count_call(labels, 1)
            return result
        batcher = self._batchers.get(signature)
        if batcher is None:
            size = settings.batch_size if self.max_rows is None else min(
                settings.batch_size, self.max_rows)
            # Through a weak reference: the batcher, held by this version,
            # must not keep it alive once it is unloaded.
            version = weakref.ref(self)
            batcher = self._batchers[signature] = Batcher(
                lambda merged: version().call(signature, merged), max_rows=size,
                wait_s=settings.batch_wait_s, uniform=self.uniform,
                executor=settings.executor, on_call=lambda n: _count_call(labels, n))
        return await batcher.submit(inputs, rows)

    def warm_up(self):
        """Replays `assets.extra/tf_serving_warmup_requests` (PredictionLog
        records, as TF Serving does), and the streaming signatures once when
        no record holds them, so the first requests run at speed."""
        path = self.path / WARMUP_FILE
        if not path.is_file():
            return self._warm_up_streaming(set())
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        done, warmed = 0, set()
        for record in tf.data.TFRecordDataset(str(path)):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if not entry.HasField("predict_log"):
                continue
            request = entry.predict_log.request
            try:
                signature = self.signature(request.model_spec.signature_name)
                self.call(signature, {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
                done += 1
                warmed.add(signature)
            except Exception as e:  # a bad record must not stop the server
                log.warning("%s version %d: warm-up request failed: %s", self.model,
                            self.number, e)
        return done + self._warm_up_streaming(warmed)

    def _warm_up_streaming(self, warmed):
        """The streaming signatures' first calls (`kgen.serving.openai`)
        when the warm-up records did not make them (`warmed`)."""
        from kgen.serving import openai

        names = openai.streaming_signatures(self)
        if names is None or set(names) <= warmed:
            return 0
        try:
            return openai.warm_up(self)
        except Exception as e:  # must not stop the server
            log.warning("%s version %d: warm-up of prefill/decode_step failed: %s",
                        self.model, self.number, e)
            return 0


def _release():
    """Frees the memory of unloaded versions now: a loaded SavedModel's
    objects refer to each other, so dropping the last reference leaves
    them to Python's cycle collector."""
    gc.collect()


def _count_call(labels, requests):
    metrics.CALLS.labels(*labels).inc()
    metrics.BATCH_REQUESTS.labels(*labels).observe(requests)


def _tf_ready(array):
    if array.dtype.kind == "U":
        return np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(array)
    if array.dtype == object:
        flat = [s.encode("utf-8") if isinstance(s, str) else s for s in array.ravel()]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(array.shape)
    return array


def _np_dt_name(dtype):
    if dtype.kind in "OSU":
        return "DT_STRING"
    return dt_name(dtype.name)


def _shape_text(shape):
    dims = [-1 if d is None else d for d in shape.as_list()]
    return f"{dims} (-1: any size)" if -1 in dims else str(dims)


def _read_metadata(version_dir):
    """The version's `kgen.json`; {} (and a logged warning) when unreadable:
    TF Serving serves such a version, and so does `kgen serve`."""
    try:
        return read_metadata(version_dir)
    except MetadataError as e:
        log.warning("%s; serving without it", e)
        return {}


def _signature_defs(version_dir):
    """The SignatureDefs of the SavedModel's serving MetaGraph."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    for meta_graph in proto.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph.signature_def
    return proto.meta_graphs[0].signature_def if proto.meta_graphs else {}


class ServedModel(kserve.Model):
    """One model of the tree, every version of it (a `kserve.Model`).

    Args:
        name: the model's name (its folder under the tree).
        base: its base path, `saved_models/NAME`.
        settings: a `Settings`.
        root: the tree, stripped from what clients are told (default: the
            folder holding `base`).
    """

    def __init__(self, name, base, settings, root=None):
        super().__init__(name)
        self.base = pathlib.Path(base)
        self.root = pathlib.Path(root) if root is not None else self.base.parent
        self.settings = settings
        self.latest = None
        # Set when a version was unloaded: the repository frees its memory.
        self.dropped = False
        self._old = collections.OrderedDict()
        self._failed = {}
        self._lock = threading.Lock()

    # === Versions ===

    def load(self):
        """Loads the newest version (KServe's load hook)."""
        self.refresh()
        self.ready = self.latest is not None
        return self.ready

    def refresh(self):
        """Serves the newest loadable version on disk, unloading versions
        deleted from disk or replaced by another folder of the same number;
        True when the version served changed."""
        on_disk = plain_versions(self.base)
        forgotten = self._forget(on_disk)
        latest = self.latest
        stale = latest is not None and not self._unchanged(latest, on_disk)
        if stale:
            log.info("model %s: version %d %s; unloading it", self.name, latest.number,
                     "was replaced on disk" if latest.number in on_disk else
                     "is gone from disk")
        if forgotten or stale:
            self.dropped = True
        return self._serve_newest(on_disk, None if stale else latest)

    def _serve_newest(self, on_disk, current):
        """Swaps in the newest loadable version above `current` (the loaded
        version still on disk as it was, or None)."""
        for number in reversed(on_disk):
            if current is not None and number <= current.number:
                return False
            if self._still_failed(number):
                continue
            with self._lock:
                version = self._old.pop(number, None)
            if version is None:
                version = self._load(number)
            if version is None:
                continue
            with self._lock:
                previous, self.latest = self.latest, version
                self._old.pop(number, None)
                if current is not None:
                    self._remember(previous)
            metrics.VERSION.labels(self.name).set(number)
            log.info("model %s: serving version %d (%s)", self.name, number,
                     ", ".join(sorted(version.signatures)))
            self.ready = True
            return True
        if current is None and self.latest is not None:
            with self._lock:
                self.latest = None
            self.ready = False
            metrics.VERSION.remove(self.name)
            log.warning("model %s: no loadable version left on disk; unloaded until one "
                        "is exported", self.name)
            return True
        return False

    def _unchanged(self, version, on_disk):
        """Whether `version`'s folder is still the one it was loaded from."""
        return version.number in on_disk and version.stamp == version_stamp(version.path)

    def _forget(self, on_disk):
        """Unloads older versions deleted or replaced on disk, and forgets
        the failures of folders that are gone; True when one was unloaded."""
        gone = []
        with self._lock:
            for number, version in list(self._old.items()):
                if not self._unchanged(version, on_disk):
                    gone.append(self._old.pop(number).number)
        for number in gone:
            log.info("model %s: version %d %s; unloaded", self.name, number,
                     "was replaced on disk" if number in on_disk else "is gone from disk")
        for number in [n for n in self._failed if n not in on_disk]:
            del self._failed[number]
        return bool(gone)

    def failure(self, number):
        """Why `number` could not be loaded, or None (what a client may be
        told: no path of the server)."""
        failed = self._failed.get(number)
        return failed[0] if failed else None

    def _still_failed(self, number):
        """A version that failed to load is tried again once its files
        change (a copy that was not finished)."""
        failed = self._failed.get(number)
        if failed is None:
            return False
        if failed[1] == version_stamp(self.base / str(number)):
            return True
        del self._failed[number]
        return False

    def _load(self, number):
        path = self.base / str(number)
        start = time.monotonic()
        stamp = version_stamp(path)
        try:
            version = Version(self.name, number, path, stamp)
            warmed = version.warm_up()
        except Exception as e:  # a damaged version must not stop the server
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            reason = f"{type(e).__name__}: {reason}"
            self._failed[number] = (without_paths(reason, self.root), stamp)
            log.error("model %s: version %d cannot be loaded (%s); still serving %s",
                      self.name, number, reason,
                      self.latest.number if self.latest else "nothing")
            return None
        log.info("model %s: loaded version %d in %.1fs%s", self.name, number,
                 time.monotonic() - start, f" ({warmed} warm-up requests)" if warmed else "")
        return version

    def _remember(self, version):
        self._old[version.number] = version
        self._old.move_to_end(version.number)
        while len(self._old) > KEEP_OLD_VERSIONS:
            self._old.popitem(last=False)

    def _not_found(self, number, why=None):
        if why is None:
            found = ", ".join(str(v) for v in plain_versions(self.base)
                              if v not in self._failed) or "none"
            why = f"versions: {found}"
        return not_found(f"Servable not found for request: Specific({self.name}, {number}) "
                         f"({why})")

    def _resident(self, number):
        """The loaded version `number`, or None when it is not loaded.

        Raises:
            ServingError: NOT_FOUND when its folder is no longer on disk
                (it is unloaded at the next poll).
        """
        if not (self.base / str(number) / "saved_model.pb").is_file():
            raise self._not_found(number)
        latest = self.latest
        if latest is not None and number == latest.number:
            return latest
        with self._lock:
            cached = self._old.get(number)
            if cached is not None:
                self._old.move_to_end(number)
            return cached

    def get(self, number=None):
        """The version a request names (blocking: may load it).

        Raises:
            ServingError: NOT_FOUND naming the model and version.
        """
        if number is None:
            latest = self.latest
            if latest is None:
                raise not_found(f"Servable not found for request: Latest({self.name}) "
                                "(no loadable version)")
            return latest
        resident = self._resident(number)
        if resident is not None:
            return resident
        if self._still_failed(number):
            raise self._not_found(number, f"it cannot be loaded: {self.failure(number)}")
        version = self._load(number)
        if version is None:
            raise self._not_found(number, f"it cannot be loaded: {self.failure(number)}")
        with self._lock:
            self._remember(version)
        return version

    async def get_async(self, number=None):
        if number is None:
            return self.get()
        resident = self._resident(number)
        if resident is not None:
            return resident
        return await asyncio.get_running_loop().run_in_executor(
            self.settings.executor, self.get, number)

    # === Requests ===

    async def infer(self, inputs, signature=None, version=None):
        """Checks and runs one request.

        Args:
            inputs: `{name: numpy array}`, or a callable `inputs(specs)`
                returning them from the signature's input specs (how JSON
                bodies are read: by the dtypes the signature expects).
            signature: the signature name (default serving_default).
            version: a version number, or None for the newest.

        Returns:
            `(Version, signature name, {output name: numpy array}, rows)`.
        """
        served = await self.get_async(version)
        name = served.signature(signature)
        if callable(inputs):
            inputs = inputs(served.inputs[name])
        rows = served.check(name, inputs)
        outputs = await served.run(name, inputs, rows, self.settings)
        return served, name, outputs, rows

    # === Open Inference Protocol (V2 REST and gRPC) ===

    def get_input_types(self):
        return self._v2_types(lambda v: v.inputs)

    def get_output_types(self):
        return self._v2_types(lambda v: v.outputs)

    def _v2_types(self, which):
        latest = self.latest
        if latest is None or DEFAULT_SIGNATURE not in latest.signatures:
            return []
        return [{"name": name, "datatype": V2_DATATYPES.get(spec.dtype.name, spec.dtype.name.upper()),
                 "shape": [-1 if d is None else d for d in (spec.shape.as_list() or [])]}
                for name, spec in sorted(which(latest)[DEFAULT_SIGNATURE].items())]

    async def predict(self, payload, headers=None, response_headers=None):
        """V2 inference: inputs and outputs by name. `parameters` may name
        a `signature_name` (default serving_default); `model_version` (gRPC)
        picks a version."""
        if not isinstance(payload, InferRequest):
            raise invalid(f"model {self.name}: expected a V2 inference request")
        start = time.monotonic()
        signature = _parameter(payload.parameters, "signature_name")
        labels = [self.name, ""]
        try:
            number = _version_number(payload.model_version, self.name)
            inputs = {}
            for item in payload.inputs:
                if item.name in inputs:
                    raise invalid(f"input {item.name}: given twice")
                try:
                    inputs[item.name] = item.as_numpy()
                except Exception as e:
                    raise invalid(f"input {item.name}: cannot be read as {item.datatype} "
                                  f"of shape {item.shape} ({e})") from None
            served, name, outputs, rows = await self.infer(
                inputs, signature=signature, version=number)
            labels[1] = name
            wanted = [o.name for o in payload.request_outputs or []]
            unknown = [w for w in wanted if w not in outputs]
            if unknown:
                raise invalid(f"signature {name} of model {self.name} has no output "
                              f"{', '.join(unknown)} (outputs: {', '.join(sorted(outputs))})")
            result = [InferOutput(name=k, shape=list(v.shape),
                                  datatype=V2_DATATYPES.get(_v2_key(v), "BYTES"), data=v)
                      for k, v in sorted(outputs.items()) if not wanted or k in wanted]
        except ServingError as error:
            latest = self.latest
            known = signature or DEFAULT_SIGNATURE
            labels[1] = known if latest is not None and known in latest.signatures else ""
            metrics.record(*labels, "v2", error.http_status, time.monotonic() - start)
            raise
        metrics.record(*labels, "v2", 200, time.monotonic() - start, rows)
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()), model_name=self.name,
            model_version=str(served.number), infer_outputs=result,
            use_binary_outputs=payload.use_binary_outputs)


def _v2_key(array):
    return "string" if array.dtype.kind in "OSU" else array.dtype.name


def _parameter(parameters, key):
    if not parameters or key not in parameters:
        return None
    value = parameters[key]
    if hasattr(value, "string_param"):  # a gRPC InferParameter
        return value.string_param
    return value if isinstance(value, str) else None


def _version_number(text, model):
    if text in (None, ""):
        return None
    if isinstance(text, int) or (isinstance(text, str) and PLAIN_VERSION.match(text)):
        return int(text)
    raise not_found(f"model {model}: version {text!r} is not a whole number")


class Repository(ModelRepository):
    """KServe's model repository over a `saved_models/` tree: one
    `ServedModel` per folder holding versions, found again by `poll()`.

    A model is registered with KServe while it has a version to serve and
    unregistered when it has none left (requests to it then get NOT_FOUND).
    Models seen but not registered (their only versions failed to load)
    are kept, so a damaged version is logged once, not at every poll. A
    folder whose name cannot be put in a URL is skipped with a warning.
    """

    def __init__(self, root, settings):
        super().__init__(models_dir=str(root))
        self.root = pathlib.Path(root)
        self.settings = settings
        self._seen = {}
        self._skipped = set()

    def load_models(self):
        self.poll()

    def load(self, name):
        """Loads (or refreshes) the model `name` of the tree; True when it
        has a version to serve."""
        model = self._seen.get(name)
        base = self.root / name
        if model is None:
            if not addressable(name) or not plain_versions(base):
                return False
            model = self._seen[name] = ServedModel(name, base, self.settings, self.root)
            model.load()
        else:
            model.refresh()
        model.ready = model.latest is not None
        registered = self.get_model(name)
        if model.ready and registered is not model:
            self.update(model)
        elif not model.ready and registered is model:
            del self.models[name]
        if not model.ready and not plain_versions(base):
            del self._seen[name]
        return model.ready

    def load_model(self, name):
        return self.load(name)

    def poll(self):
        """One pass over the tree: new models registered, new versions
        loaded and swapped in, deleted ones unloaded."""
        self._warn_unaddressable()
        names = {path.name for path in model_dirs(self.root)} | set(self._seen)
        dropped = False
        for name in sorted(names):
            model = self._seen.get(name)
            try:
                self.load(name)
            except Exception:  # keep polling the other models
                log.exception("model %s: refresh failed", name)
            if model is not None and model.dropped:
                model.dropped, dropped = False, True
        if dropped:
            _release()

    def _warn_unaddressable(self):
        """Warns once about each folder skipped for its name."""
        found = {path.name for path in unaddressable_dirs(self.root)}
        for name in sorted(found - self._skipped):
            log.warning("%s", unaddressable_text(name))
        self._skipped = found

    def start_polling(self, every_s):
        """Polls every `every_s` seconds in a daemon thread; returns its stop event."""
        stop = threading.Event()

        def loop():
            while not stop.wait(every_s):
                self.poll()

        threading.Thread(target=loop, name="kgen-version-poll", daemon=True).start()
        return stop
