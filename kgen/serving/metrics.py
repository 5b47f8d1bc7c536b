"""kgen's own Prometheus metrics, served on `/metrics` beside KServe's.

Labels hold only names the server knows (a model and signature that exist,
or `""` for a request that named none that exist), so a client cannot grow
the label sets. `code` is the HTTP status of the answer (a gRPC status is
counted as the HTTP status TF Serving maps it to); `protocol` is `v1`
(TF Serving REST), `v2` (Open Inference Protocol REST or gRPC),
`tfs_grpc` (TF Serving's gRPC services), `openai` (OpenAI-compatible
completions, `kgen.serving.openai`, counted with signature `decode_step`)
or `other` (any other route).

`kgen_requests_total` counts the predict requests a model route answered;
`kgen_request_errors_total` counts every answer with status >= 400 on any
route, including those refused before a route read them (401, 403, 408,
413, 504, a body that is not JSON): the server's front door counts each
error answer that no route counted (`answering` / `record_error`).
"""

import contextvars

from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram

REQUESTS = Counter(
    "kgen_requests", "Predict requests answered, by model, signature, protocol "
    "and status code", ["model", "signature", "protocol", "code"])
ERRORS = Counter(
    "kgen_request_errors", "Requests answered with an error (status >= 400), on "
    "every route, by model, signature, protocol and status code",
    ["model", "signature", "protocol", "code"])
LATENCY = Histogram(
    "kgen_request_latency_seconds", "Time from a predict request's arrival to "
    "its answer", ["model", "signature"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
             5.0, 10.0, 30.0, 60.0))
ROWS = Counter(
    "kgen_rows_generated", "Rows (samples) answered by successful requests",
    ["model", "signature"])
CALLS = Counter(
    "kgen_model_calls", "Calls of a signature's graph (one call may answer "
    "several batched requests)", ["model", "signature"])
BATCH_REQUESTS = Histogram(
    "kgen_batch_requests", "Requests answered by one call of a signature's graph",
    ["model", "signature"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
# OpenAI-compatible completions (kgen.serving.openai), by model and version.
TIME_TO_FIRST_TOKEN = Histogram(
    "kgen_completion_time_to_first_token_seconds", "Time from a completion "
    "request's arrival to its first sampled token", ["model", "version"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
TOKENS_PER_SECOND = Histogram(
    "kgen_completion_tokens_per_second", "Sampled tokens per second of one "
    "completion (all its choices), after its first token", ["model", "version"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000))
COMPLETION_TOKENS = Counter(
    "kgen_completion_tokens", "Tokens sampled for completions", ["model", "version"])
IN_FLIGHT = Gauge(
    "kgen_completions_in_flight", "Completions decoding now (streamed or not)",
    ["model", "version"])
VERSION = Gauge(
    "kgen_model_version", "Newest version each model serves", ["model"])


# The answer being made in this task: {"counted": bool}, set by `answering`.
_ANSWER = contextvars.ContextVar("kgen_answer", default=None)


def answering():
    """Starts counting one request's answer (at the server's front door).

    Returns:
        `{"counted": False}`; `record` sets it to True when a route counts
        the answer itself, so the front door counts only the others.
    """
    answer = {"counted": False}
    _ANSWER.set(answer)
    return answer


def record_error(model, protocol, code, answer=None):
    """Count an error answer no route counted (`answer` from `answering`)."""
    if answer is not None:
        if answer["counted"]:
            return
        answer["counted"] = True
    ERRORS.labels(model, "", protocol, str(code)).inc()


def record(model, signature, protocol, code, seconds=None, rows=0):
    """Count one answered predict request."""
    answer = _ANSWER.get()
    if answer is not None:
        answer["counted"] = True
    code = str(code)
    REQUESTS.labels(model, signature, protocol, code).inc()
    if int(code) >= 400:
        ERRORS.labels(model, signature, protocol, code).inc()
    if seconds is not None and model and signature:
        LATENCY.labels(model, signature).observe(seconds)
    if rows and int(code) < 400:
        ROWS.labels(model, signature).inc(rows)
