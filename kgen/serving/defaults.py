"""The defaults of `kgen serve`, in one place.

`kgen serve`'s flags, `kgen.serving.serve()`, `kgen.serving.models.Settings`
and `kgen deploy` read them from here; help texts are formatted from them.
The ports are TF Serving's own (REST 8501, gRPC 8500), so a client written
for TF Serving finds `kgen serve` where it looks.
"""

HOST = "127.0.0.1"
REST_PORT = 8501
GRPC_PORT = 8500
# The largest request body (413 above it; RESOURCE_EXHAUSTED on gRPC).
MAX_BODY_BYTES = 32 * 1024 * 1024
# The most rows one merged call of concurrent requests holds.
BATCH_SIZE = 64
# How long an idle signature waits for more requests to merge.
BATCH_WAIT_MS = 2.0
# How often the tree is read for new models and versions.
POLL_SECONDS = 2.0
# Seconds a request body may take to arrive in full (408 after).
READ_TIMEOUT = 30.0
# Seconds from a request's full body to its answer (504 after).
REQUEST_TIMEOUT = 60.0
# The most OpenAI completions decoding at once, streamed or not (429 over it).
MAX_STREAMS = 16
# Seconds a streamed completion may run after its first byte.
STREAM_TIMEOUT = 300.0


def size_text(n):
    """`n` bytes as help text shows them: `"33554432, 32 MiB"`."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n}, {n // size} {unit}"
    return str(n)
