"""OpenAI-compatible completions for every text export `kgen serve` holds.

```
POST /openai/v1/completions     {"model": "NAME", "prompt": "...", "stream": true, ...}
GET  /openai/v1/models          the served text models
```

KServe's own OpenAI layer (`kserve.protocol.rest.openai`:
`OpenAIGenerativeModel`, its endpoints and data plane) is not used: its
`types` package imports vLLM, which does not install beside kgen (it needs
its own torch, transformers and zmq), so importing it fails. This module
follows its interface and shapes instead, on the same `/openai` route
prefix: a model object with `create_completion(request)` returning a
`Completion` or an async iterator of chunks, errors as OpenAI's
`{"error": {"message", "type", "param", "code"}}` bodies, and server-sent
events framed `data: {...}\\n\\n`, ending with `data: [DONE]\\n\\n`. The
response types are the official `openai` package's (`openai.types.Completion`,
`CompletionChoice`, `CompletionUsage`); a streamed chunk is a `Completion`
holding one choice's new text, as OpenAI streams completions.

Tokens come from the export's step-by-step signatures, named in its
`kgen.json` (`"streaming": {"prefill": ..., "decode_step": ...}`): `prefill`
takes `generate`'s inputs and returns the loop state (the KV cache as
tensors), and each `decode_step` call advances every row by one position and
returns the piece (bytes) of the token it sampled. Streamed or not, a
completion runs this loop, so both answer the same text, which is
`generate`'s `completion` for the same prompt, seed and options (cut at a
stop sequence, see below). Every call runs in the server's TensorFlow
thread pool, one executor call per step, so concurrent completions take
turns step by step and the event loop never waits on TensorFlow.

The request (one row per prompt and choice, row `i = prompt * n + choice`):

- `model`: a served model's name (its newest version) or `NAME/versions/N`.
- `prompt`: a string or a list of strings (token arrays are refused).
- `max_tokens` (default 16): in [1, the export's `max_new_tokens_limit`].
- `temperature` (default 1) in [0, 2]; 0 is greedy (the export's `top_k=1`).
- `top_p` (default 1) in (0, 1]. The export's `top_k` is off (0).
- `seed`: row `i` is drawn from seed `seed + i` (the export's per-row seed,
  so a row equals `generate`'s row for that seed); without one, a seed is
  drawn for the request.
- `stop`: a string or a list of up to `MAX_STOPS`. The text of a choice is
  cut before the first occurrence of any of them, which is not returned (as
  OpenAI does), and the choice ends with `finish_reason` `"stop"`. This is
  done here on the decoded text, so a stop sequence of any length works;
  while a stream's text ends with the start of a stop sequence, that part
  is held back until it is known not to be one. A single stop of one
  character is also handed to the export as its `stop_token`, so the graph
  ends that row itself (when the character is one token of its tokenizer).
- `n` (default 1): choices per prompt; prompts x n <= the export's `max_rows`.
- `stream`, `stream_options.include_usage`.
- `user` is accepted and ignored; `echo`, `logprobs`, `best_of`, `suffix`,
  `logit_bias`, `presence_penalty` and `frequency_penalty` are accepted only
  at their neutral values (false, null, 1, null, {}, 0, 0); any other field
  or value is refused with 400 naming it.

Bounds: a request over a bound is answered 400 naming its field; a model
that is not served 404; more completions decoding at once than
`max_streams` (streamed or not) 429. The front door's bounds hold as for
every route (API key, `--max-body-bytes`). `--request-timeout` bounds a
non-streamed completion and a stream's time to its first byte (the
response starts once `prefill` has run); a stream then runs for at most
`stream_timeout` seconds, after which it ends with an error event. A
client that disconnects stops its completion at the next step and frees
its slot at once.

Metrics (labels `model`, `version`): `kgen_completion_time_to_first_token_seconds`,
`kgen_completion_tokens_per_second`, `kgen_completion_tokens_total`,
`kgen_completions_in_flight`; each request is counted in
`kgen_requests_total` with protocol `openai` and signature `decode_step`.
"""

import asyncio
import codecs
import dataclasses
import logging
import re
import secrets
import time
import uuid

import orjson
from openai.types import Completion
from openai.types import CompletionChoice
from openai.types import CompletionUsage
from fastapi import Request
from starlette.responses import Response

from kgen.export.metadata import output_kind
from kgen.serving import defaults
from kgen.serving import metrics
from kgen.serving.errors import ServingError
from kgen.serving.errors import from_tensorflow

log = logging.getLogger("kgen.serving")

ROUTE_PREFIX = "/openai/v1"
# decode_step's inputs that are not loop state.
SAMPLING_INPUTS = ("seed", "temperature", "top_k", "top_p")
# decode_step's outputs that are not loop state.
STEP_OUTPUTS = ("token", "emitted", "piece", "finished")
DEFAULT_MAX_TOKENS = 16
MAX_TEMPERATURE = 2.0
MAX_N = 128
MAX_STOPS = 4
MAX_STOP_CHARS = 64
# Without max_rows in kgen.json: the most rows (prompts x n) of a request.
DEFAULT_MAX_ROWS = 64
INT64 = (-(1 << 63), (1 << 63) - 1)
FIELDS = frozenset({"model", "prompt", "max_tokens", "temperature", "top_p", "seed",
                    "stop", "n", "stream", "stream_options", "user"})
# Fields kgen does not implement, accepted at their neutral values only.
NEUTRAL = {"echo": (False, None), "logprobs": (None,), "best_of": (None, 1),
           "suffix": (None,), "logit_bias": (None, {}),
           "presence_penalty": (None, 0), "frequency_penalty": (None, 0)}
_MODEL_ID = re.compile(r"(?P<name>[^/]+)(?:/versions/(?P<version>\d+))?\Z")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               404: "invalid_request_error", 413: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 504: "timeout_error"}


# === Errors ===


class OpenAIError(Exception):
    """A refusal answered as OpenAI answers it.

    Args:
        status: the HTTP status.
        message: what is wrong, naming the field.
        param: the request field at fault, or None.
        code: OpenAI's machine-readable code, e.g. `"model_not_found"`.
    """

    def __init__(self, status, message, param=None, code=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self):
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status, message, param=None, code=None):
    """OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message,
                      "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code or str(status)}}


def _bad(param, message):
    return OpenAIError(400, f"{param}: {message}", param=param)


# The export's input names -> the request fields they come from.
_EXPORT_FIELDS = {"max_new_tokens": "max_tokens", "stop_token": "stop", "prompt": "prompt",
                  "seed": "seed", "temperature": "temperature", "top_p": "top_p"}


def _refused_by_model(error):
    """A `ServingError` of the export's checks -> OpenAIError naming the
    request field its message names."""
    if error.http_status != 400:
        return OpenAIError(error.http_status, error.message)
    param = next((field for name, field in _EXPORT_FIELDS.items()
                  if name in error.message), None)
    return OpenAIError(400, f"the model refused the request: {error.message}", param=param)


# === The request ===


@dataclasses.dataclass
class CompletionRequest:
    """A checked completion request (`parse_request`)."""

    model: str
    prompts: list
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = None
    stop: tuple = ()
    n: int = 1
    stream: bool = False
    include_usage: bool = False

    @property
    def rows(self):
        return len(self.prompts) * self.n


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _neutral(field, value):
    for allowed in NEUTRAL[field]:
        if value is None or allowed is None:
            if value is allowed:
                return True
        elif type(value) in (type(allowed), float if _is_int(allowed) else type(allowed)) \
                and value == allowed:
            return True
    return False


def parse_request(doc):
    """The fields of a completion request's JSON object, checked in
    themselves (the model's own bounds are checked by `check_bounds`).

    Raises:
        OpenAIError: 400 naming the field.
    """
    if not isinstance(doc, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    for field, value in doc.items():
        if field in NEUTRAL:
            if not _neutral(field, value):
                raise _bad(field, f"not supported by kgen serve (got {_short(value)}; "
                           f"accepted only as {' or '.join(map(_json_text, NEUTRAL[field]))})")
        elif field not in FIELDS:
            raise _bad(field, "unknown or unsupported field (kgen serve takes "
                       f"{', '.join(sorted(FIELDS))})")
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "required: the name of a served text model "
                   "(GET /openai/v1/models lists them)")
    request = CompletionRequest(model=model, prompts=_prompts(doc.get("prompt")))
    max_tokens = doc.get("max_tokens")
    if max_tokens is not None:
        if not _is_int(max_tokens) or max_tokens < 1:
            raise _bad("max_tokens", f"must be a whole number >= 1 (got {_short(max_tokens)})")
        request.max_tokens = max_tokens
    temperature = doc.get("temperature")
    if temperature is not None:
        if not _is_number(temperature) or not 0 <= temperature <= MAX_TEMPERATURE:
            raise _bad("temperature", f"must be a number in [0, {MAX_TEMPERATURE:g}] "
                       f"(got {_short(temperature)})")
        request.temperature = float(temperature)
    top_p = doc.get("top_p")
    if top_p is not None:
        if not _is_number(top_p) or not 0 < top_p <= 1:
            raise _bad("top_p", f"must be a number in (0, 1] (got {_short(top_p)})")
        request.top_p = float(top_p)
    n = doc.get("n")
    if n is not None:
        if not _is_int(n) or not 1 <= n <= MAX_N:
            raise _bad("n", f"must be a whole number in [1, {MAX_N}] (got {_short(n)})")
        request.n = n
    seed = doc.get("seed")
    if seed is not None:
        if not _is_int(seed) or not INT64[0] <= seed <= INT64[1]:
            raise _bad("seed", f"must be a 64-bit whole number (got {_short(seed)})")
        request.seed = seed
    request.stop = _stops(doc.get("stop"))
    stream = doc.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", f"must be true or false (got {_short(stream)})")
    request.stream = bool(stream)
    options = doc.get("stream_options")
    if options is not None:
        if not request.stream:
            raise _bad("stream_options", "only with stream: true")
        if not isinstance(options, dict) or set(options) - {"include_usage"} or \
                not isinstance(options.get("include_usage", False), bool):
            raise _bad("stream_options", 'must be {"include_usage": true|false} '
                       f"(got {_short(options)})")
        request.include_usage = options.get("include_usage", False)
    return request


def _prompts(prompt):
    if isinstance(prompt, str):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise _bad("prompt", "required: a string or a non-empty list of strings")
    for item in prompt:
        if not isinstance(item, str):
            raise _bad("prompt", "token id arrays are not supported by kgen serve; send "
                       "text (a string or a list of strings)")
        if not item:
            raise _bad("prompt", "must not be empty (the model continues a prompt of "
                       "at least one character)")
    return prompt


def _stops(stop):
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("stop", f"must be a string or a list of strings (got {_short(stop)})")
    if len(stops) > MAX_STOPS:
        raise _bad("stop", f"{len(stops)} stop sequences; at most {MAX_STOPS}")
    for s in stops:
        if not s or len(s) > MAX_STOP_CHARS:
            raise _bad("stop", f"each stop sequence must hold 1 to {MAX_STOP_CHARS} "
                       f"characters (got {_short(s)})")
    return tuple(dict.fromkeys(stops))


def check_bounds(request, version):
    """The request against the export's own bounds (its `kgen.json`).

    Raises:
        OpenAIError: 400 naming the field.
    """
    metadata = version.metadata
    max_rows = version.max_rows or DEFAULT_MAX_ROWS
    if request.rows > max_rows:
        param = "n" if request.n > 1 else "prompt"
        raise _bad(param, f"{len(request.prompts)} prompt(s) x n={request.n} is "
                   f"{request.rows} rows; this model takes at most {max_rows} "
                   "(its export's max_rows)")
    limit = metadata.get("max_new_tokens_limit")
    if _is_int(limit) and request.max_tokens > limit:
        raise _bad("max_tokens", f"{request.max_tokens} is over this model's limit of "
                   f"{limit} tokens (max_new_tokens_limit)")
    context = metadata.get("context")
    if _is_int(context):
        for i, prompt in enumerate(request.prompts):
            size = len(prompt.encode("utf-8", "surrogatepass"))
            if size > 4 * context:
                raise _bad("prompt", f"prompt {i} holds {size} bytes; this model's "
                           f"context is {context} tokens (at most {4 * context} bytes)")
    if request.seed is not None and request.seed + request.rows - 1 > INT64[1]:
        raise _bad("seed", f"seed + rows - 1 must fit in 64 bits (seed {request.seed}, "
                   f"{request.rows} rows)")


def _short(value):
    text = _json_text(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_text(value):
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


# === The model's side: prefill, then decode_step until every row ends ===


def streaming_signatures(version):
    """`(prefill, decode_step)` signature names of a version, or None."""
    names = version.metadata.get("streaming")
    if not isinstance(names, dict):
        return None
    prefill, step = names.get("prefill"), names.get("decode_step")
    if prefill in version.signatures and step in version.signatures:
        return prefill, step
    return None


def is_text_model(version):
    return output_kind(version.metadata) == "text"


def warm_up(version):
    """Runs `prefill` and two `decode_step`s of one row (blocking), so a
    version's first completion runs at speed; the number of calls made."""
    import numpy as np

    names = streaming_signatures(version)
    if names is None:
        return 0
    prompt = (version.metadata.get("defaults") or {}).get("prompt") or "\n"
    inputs = {"prompt": np.array([prompt.encode("utf-8")], dtype=object),
              "seed": np.zeros(1, np.int64), "max_new_tokens": np.ones(1, np.int32),
              "temperature": np.ones(1, np.float32), "top_k": np.zeros(1, np.int32),
              "top_p": np.ones(1, np.float32), "stop_token": np.array([b""], dtype=object)}
    state = _call(version.signatures[names[0]], inputs)
    state_names = set(version.inputs[names[1]]) - set(SAMPLING_INPUTS)
    for _ in range(2):
        outputs = _call(version.signatures[names[1]], {
            **{k: state[k] for k in state_names},
            **{k: inputs[k] for k in SAMPLING_INPUTS}})
        state = outputs
    return 3


def _call(fn, inputs):
    """One signature call (in a worker thread) -> its output tensors.

    `inputs` hold numpy arrays or TensorFlow tensors (the previous step's
    state, passed on without a copy)."""
    import tensorflow as tf

    try:
        tensors = {k: v if isinstance(v, tf.Tensor) else tf.constant(v)
                   for k, v in inputs.items()}
        return fn(**tensors)
    except tf.errors.OpError as error:
        raise from_tensorflow(error) from None


def _prefill(fn, inputs, wanted):
    outputs = _call(fn, inputs)
    return outputs, {k: outputs[k].numpy() for k in wanted}


def _step(fn, state, sampling):
    outputs = _call(fn, {**state, **sampling})
    return outputs, {k: outputs[k].numpy() for k in STEP_OUTPUTS}


class _Row:
    """One choice's text as its pieces arrive: bytes decoded to whole
    characters, cut at the first stop sequence, and what may be sent."""

    def __init__(self, stops):
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.stops = stops
        self.text = ""
        self.sent = 0
        self.tokens = 0
        self.finish_reason = None
        self._searched = 0

    def add(self, piece, emitted, finished):
        """Takes one step's output; returns the text that may be sent now."""
        if self.finish_reason is not None:
            return ""
        if emitted:
            self.tokens += 1
            self.text += self.decoder.decode(piece)
        if finished:
            self.text += self.decoder.decode(b"", final=True)
        cut = self._find_stop()
        if cut is not None:
            self.text = self.text[:cut]
            self.finish_reason = "stop"
        elif finished:
            self.finish_reason = "length"
        end = len(self.text) if self.finish_reason else len(self.text) - self._held()
        delta = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return delta

    def _find_stop(self):
        if not self.stops:
            return None
        longest = max(map(len, self.stops))
        start = max(0, self._searched - longest + 1)
        found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        self._searched = len(self.text)
        return min(found) if found else None

    def _held(self):
        """Characters at the end of the text that begin a stop sequence."""
        held = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop[:size]):
                    held = size
                    break
        return held


@dataclasses.dataclass
class _Event:
    """What one step made: `(row, text)` deltas, the rows that ended and
    the number of tokens sampled."""

    deltas: list
    finished: list
    tokens: int


class Decoding:
    """One request's rows through `prefill` and `decode_step`.

    Args:
        version: the `kgen.serving.models.Version`.
        request: the `CompletionRequest`.
        executor: the thread pool running TensorFlow calls.
    """

    def __init__(self, version, request, executor):
        self.version = version
        self.request = request
        self.executor = executor
        self.prefill_name, self.step_name = streaming_signatures(version)
        self.rows = [_Row(request.stop) for _ in range(request.rows)]
        seed = request.seed
        if seed is None:
            seed = secrets.randbelow(INT64[1] - request.rows)
        self.seed = seed
        self.prompt_tokens = 0
        self.started = time.monotonic()
        self.first_token = None
        self.state = None
        self.steps = 0

    def _inputs(self):
        import numpy as np

        request = self.request
        rows = request.rows
        greedy = request.temperature == 0
        prompts = [p for p in request.prompts for _ in range(request.n)]
        single = (request.stop[0] if len(request.stop) == 1 and len(request.stop[0]) == 1
                  else "")
        inputs = {
            "prompt": np.array([p.encode("utf-8") for p in prompts], dtype=object),
            "seed": np.arange(rows, dtype=np.int64) + np.int64(self.seed),
            "max_new_tokens": np.full(rows, request.max_tokens, np.int32),
            "temperature": np.full(rows, 1.0 if greedy else request.temperature, np.float32),
            "top_k": np.full(rows, 1 if greedy else 0, np.int32),
            "top_p": np.full(rows, request.top_p, np.float32),
            "stop_token": np.array([single.encode("utf-8")] * rows, dtype=object),
        }
        return inputs

    async def start(self):
        """Runs `prefill`.

        Raises:
            OpenAIError: 400 naming the field the export refused.
        """
        loop = asyncio.get_running_loop()
        inputs = self._inputs()
        fn = self.version.signatures[self.prefill_name]
        step_inputs = set(self.version.inputs[self.step_name])
        state_names = sorted(step_inputs - set(SAMPLING_INPUTS))
        try:
            outputs, found = await loop.run_in_executor(
                self.executor, _prefill, fn, inputs, ["prompt_lengths"])
        except ServingError as error:
            if inputs["stop_token"][0] and "stop_token" in error.message:
                # The stop character is not one token of this model's
                # tokenizer: the text is cut here alone.
                inputs["stop_token"][:] = b""
                try:
                    outputs, found = await loop.run_in_executor(
                        self.executor, _prefill, fn, inputs, ["prompt_lengths"])
                except ServingError as again:
                    raise _refused_by_model(again) from None
            else:
                raise _refused_by_model(error) from None
        self.state = {name: outputs[name] for name in state_names}
        self.sampling = {name: inputs[name] for name in SAMPLING_INPUTS}
        self.prompt_tokens = int(found["prompt_lengths"].sum())
        self.max_steps = self.request.max_tokens + int(found["prompt_lengths"].max()) + 2

    @property
    def done(self):
        return all(row.finish_reason is not None for row in self.rows)

    async def step(self):
        """One `decode_step` of every row -> an `_Event`."""
        if self.steps >= self.max_steps:
            raise ServingError("INTERNAL", f"model {self.version.model} version "
                               f"{self.version.number}: decode_step did not finish its rows "
                               f"within {self.max_steps} steps")
        self.steps += 1
        loop = asyncio.get_running_loop()
        fn = self.version.signatures[self.step_name]
        outputs, found = await loop.run_in_executor(
            self.executor, _step, fn, self.state, self.sampling)
        self.state = {name: outputs[name] for name in self.state}
        deltas, finished, before = [], [], self.completion_tokens
        for i, row in enumerate(self.rows):
            if row.finish_reason is not None:
                continue
            delta = row.add(found["piece"][i], bool(found["emitted"][i]),
                            bool(found["finished"][i]))
            if delta:
                deltas.append((i, delta))
            if row.finish_reason is not None:
                finished.append(i)
        if self.first_token is None and found["emitted"].any():
            self.first_token = time.monotonic()
        return _Event(deltas, finished, self.completion_tokens - before)

    @property
    def completion_tokens(self):
        return sum(row.tokens for row in self.rows)

    def usage(self):
        tokens = self.completion_tokens
        return CompletionUsage(prompt_tokens=self.prompt_tokens, completion_tokens=tokens,
                               total_tokens=self.prompt_tokens + tokens)


# === The OpenAI-facing model ===


class CompletionModel:
    """One served text model answering OpenAI completions, as KServe's
    `OpenAIGenerativeModel.create_completion` does.

    Args:
        served: the `kgen.serving.models.ServedModel`.
        version: its `Version` the request named (or its newest).
        model_id: the `model` the client gave.
        executor: the thread pool running TensorFlow calls.
    """

    def __init__(self, served, version, model_id, executor):
        self.served = served
        self.version = version
        self.model_id = model_id
        self.executor = executor
        self.labels = (served.name, str(version.number))

    async def create_completion(self, request, is_disconnected=None):
        """`request` (a `CompletionRequest`) -> a `Completion`, or with
        `stream` an async iterator of chunks (`Completion`s of one choice's
        new text) after `prefill` has run.

        Args:
            is_disconnected: an async callable, True once the client of a
                non-streamed completion left (the decoding then stops).
        """
        decoding = Decoding(self.version, request, self.executor)
        await decoding.start()
        ident = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if request.stream:
            return self._chunks(decoding, ident, created)
        texts = [""] * request.rows
        while not decoding.done:
            event = await self._step(decoding)
            for i, delta in event.deltas:
                texts[i] += delta
            if is_disconnected is not None and await is_disconnected():
                raise OpenAIError(499, "the client disconnected; decoding stopped",
                                  code="client_disconnected")
        self._observe(decoding)
        choices = [CompletionChoice(index=i, text=texts[i], logprobs=None,
                                    finish_reason=row.finish_reason)
                   for i, row in enumerate(decoding.rows)]
        return Completion(id=ident, object="text_completion", created=created,
                          model=self.model_id, choices=choices, usage=decoding.usage())

    async def _chunks(self, decoding, ident, created):
        def chunk(choices, usage=None):
            return Completion.model_construct(
                id=ident, object="text_completion", created=created, model=self.model_id,
                choices=choices, usage=usage)

        while not decoding.done:
            event = await self._step(decoding)
            ended = set(event.finished)
            texts = dict(event.deltas)
            for i in sorted(set(texts) | ended):
                row = decoding.rows[i]
                yield chunk([CompletionChoice.model_construct(
                    index=i, text=texts.get(i, ""), logprobs=None,
                    finish_reason=row.finish_reason if i in ended else None)])
        self._observe(decoding)
        if decoding.request.include_usage:
            yield chunk([], decoding.usage())

    async def _step(self, decoding):
        event = await decoding.step()
        if event.tokens:
            metrics.COMPLETION_TOKENS.labels(*self.labels).inc(event.tokens)
        return event

    def _observe(self, decoding):
        end = time.monotonic()
        tokens = decoding.completion_tokens
        if decoding.first_token is not None:
            metrics.TIME_TO_FIRST_TOKEN.labels(*self.labels).observe(
                decoding.first_token - decoding.started)
            if end > decoding.first_token and tokens > 1:
                metrics.TOKENS_PER_SECOND.labels(*self.labels).observe(
                    (tokens - 1) / (end - decoding.first_token))


# === Routes ===


class _Slots:
    """The bound on completions decoding at once (429 over it)."""

    def __init__(self, limit):
        self.limit = limit
        self.taken = 0

    def take(self, labels):
        if self.taken >= self.limit:
            raise OpenAIError(429, f"{self.taken} completions are decoding, the most this "
                              f"server runs at once (--max-streams {self.limit}); try again "
                              "shortly", code="too_many_streams")
        self.taken += 1
        metrics.IN_FLIGHT.labels(*labels).inc()

    def give(self, labels):
        self.taken -= 1
        metrics.IN_FLIGHT.labels(*labels).dec()


class EventStream(Response):
    """Server-sent events from an async iterator of chunks:
    `data: {...}\\n\\n` each, then `data: [DONE]\\n\\n`.

    The stream stops at once when the client disconnects, and after
    `timeout` seconds with an error event; `on_close` runs when it ends,
    however it ends.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks, timeout, on_close):
        super().__init__(content=b"", media_type=self.media_type,
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        del self.headers["content-length"]
        self.chunks = chunks
        self.timeout = timeout
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        pump = asyncio.ensure_future(self._pump(send))
        listen = asyncio.ensure_future(_wait_disconnect(receive))
        outcome = "failed"
        try:
            done, _ = await asyncio.wait({pump, listen}, timeout=self.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if pump in done:
                pump.result()
                outcome = "done"
            elif listen in done:
                outcome = "disconnected"
            else:
                outcome = "timeout"
        finally:
            for task in (pump, listen):
                task.cancel()
            await asyncio.gather(pump, listen, return_exceptions=True)
            await self.chunks.aclose()
            self.on_close(outcome)
        if outcome == "timeout":
            await _send_event(send, error_body(
                504, f"the stream did not end within --stream-timeout {self.timeout:g} s; "
                "ask for fewer tokens or fewer choices", code="stream_timeout"))
            await _send_event(send, "[DONE]", more=False)

    async def _pump(self, send):
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        try:
            async for chunk in self.chunks:
                await _send_event(send, chunk.model_dump(exclude_unset=False))
        except OpenAIError as error:
            await _send_event(send, error.body())
        except ServingError as error:
            await _send_event(send, _refused_by_model(error).body())
        except Exception:
            log.exception("a completion stream failed")
            await _send_event(send, error_body(500, "internal error while decoding; the "
                                               "server's log holds the details"))
        await _send_event(send, "[DONE]", more=False)


async def _send_event(send, data, more=True):
    payload = data.encode() if isinstance(data, str) else orjson.dumps(data)
    await send({"type": "http.response.body", "body": b"data: " + payload + b"\n\n",
                "more_body": more})


async def _wait_disconnect(receive):
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _json(doc, status=200):
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


class OpenAIRoutes:
    """`POST /openai/v1/completions` and `GET /openai/v1/models` over the
    repository's text models.

    Args:
        repository: the `kgen.serving.models.Repository`.
        executor: the thread pool running TensorFlow calls.
        max_streams: the most completions decoding at once.
        stream_timeout: the most seconds a stream runs after its first byte.
    """

    def __init__(self, repository, executor, max_streams=defaults.MAX_STREAMS,
                 stream_timeout=defaults.STREAM_TIMEOUT):
        self.repository = repository
        self.executor = executor
        self.slots = _Slots(max_streams)
        self.stream_timeout = stream_timeout
        self.started = int(time.time())

    def register(self, app):
        app.add_api_route(f"{ROUTE_PREFIX}/completions", self.completions,
                          methods=["POST"], include_in_schema=False)
        app.add_api_route(f"{ROUTE_PREFIX}/models", self.models, methods=["GET"],
                          include_in_schema=False)

    async def models(self):
        data = []
        for name, model in sorted(self.repository.get_models().items()):
            latest = getattr(model, "latest", None)
            if latest is not None and is_text_model(latest) and streaming_signatures(latest):
                data.append({"id": name, "object": "model", "created": self.started,
                             "owned_by": "kgen"})
        return _json({"object": "list", "data": data})

    async def completions(self, request: Request):
        start = time.monotonic()
        labels = ["", ""]
        taken = None
        try:
            try:
                doc = orjson.loads(await request.body())
            except orjson.JSONDecodeError as e:
                raise OpenAIError(400, f"the request body is not JSON ({e})") from None
            labels[0] = self._known(doc)
            params = parse_request(doc)
            model = await self._model(params.model)
            labels[:] = [model.served.name, self.step_signature(model)]
            check_bounds(params, model.version)
            self.slots.take(model.labels)
            taken = model.labels
            result = await model.create_completion(
                params, None if params.stream else request.is_disconnected)
            if not params.stream:
                metrics.record(*labels, "openai", 200, time.monotonic() - start,
                               params.rows)
                return _json(result.model_dump())
            labels_now, rows = list(labels), params.rows

            def closed(outcome, held=taken):
                self.slots.give(held)
                code = {"done": 200, "disconnected": 499, "timeout": 504}.get(outcome, 500)
                metrics.record(*labels_now, "openai", code, time.monotonic() - start,
                               rows if code == 200 else 0)

            taken = None  # the stream gives its slot back when it ends
            return EventStream(result, self.stream_timeout, closed)
        except ServingError as error:
            failure = _refused_by_model(error) if error.http_status == 400 else OpenAIError(
                error.http_status, error.message,
                code="model_not_found" if error.http_status == 404 else None)
            return self._refuse(failure, labels, start)
        except OpenAIError as error:
            return self._refuse(error, labels, start)
        finally:
            if taken is not None:
                self.slots.give(taken)

    def _known(self, doc):
        """The served model a request names, for its metrics, or `""`."""
        model_id = doc.get("model") if isinstance(doc, dict) else None
        match = _MODEL_ID.match(model_id) if isinstance(model_id, str) else None
        return match["name"] if match and self.repository.get_model(match["name"]) else ""

    @staticmethod
    def step_signature(model):
        return streaming_signatures(model.version)[1]

    def _refuse(self, error, labels, start):
        metrics.record(*labels, "openai", error.status, time.monotonic() - start)
        return _json(error.body(), error.status)

    async def _model(self, model_id):
        match = _MODEL_ID.match(model_id)
        served = self.repository.get_model(match["name"]) if match else None
        if served is None or not hasattr(served, "get_async"):
            raise OpenAIError(404, f"model: no served model {model_id!r} (GET "
                              "/openai/v1/models lists them; a version is named "
                              "NAME/versions/N)", param="model", code="model_not_found")
        number = int(match["version"]) if match["version"] else None
        version = await served.get_async(number)
        if not is_text_model(version):
            raise _bad("model", f"{model_id} makes {output_kind(version.metadata)}, not "
                       "text; completions are served for language models")
        if streaming_signatures(version) is None:
            raise _bad("model", f"{model_id} (version {version.number}) was exported "
                       "without the streaming signatures (prefill, decode_step); export "
                       "it again with this kgen")
        return CompletionModel(served, version, model_id, self.executor)
