"""OpenAI-compatible completions of `kgen serve` (`kgen.serving.openai`),
driven with the official `openai` client as a user's code drives them.

One server runs for the module over a tree holding a tiny character LM
(`char_lm`, exported by `kgen export`'s own code with its streaming
signatures) and a VAE (not text): with an API key, `--max-streams 2`, a
short `--request-timeout` (a stream outlives it) and a `--stream-timeout`.
Every text it answers is compared with the export's `generate` signature
called directly in this process for the same prompts, seeds and options.

The text bookkeeping of one choice (whole UTF-8 characters from byte
pieces, stop sequences held back and cut) is checked without a server.
"""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tests.serving.test_server import _free_port
from tests.serving.test_server import _metric
from tests.serving.test_server import _tail

KEY = "test-key-0123456789abcdef"
MAX_ROWS = 8
MAX_STREAMS = 2
MAX_BODY = 100_000
REQUEST_TIMEOUT = 1.0
STREAM_TIMEOUT = 4.0
LONG = 4096  # tokens: a stream that runs for seconds

server_test = [
    pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                       reason="the server runs TensorFlow SavedModels whatever the "
                              "training backend; checked once, on tensorflow"),
    pytest.mark.tf_only, pytest.mark.slow]


def _server_test(fn):
    for mark in server_test:
        fn = mark(fn)
    return fn


# === Fixtures ===


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from kgen.export import export_model
    from kgen.export.metadata import read_metadata
    from tests.export.helpers import tiny

    root = tmp_path_factory.mktemp("openai") / "saved_models"
    export_model(tiny("lm"), root / "char_lm", max_rows=MAX_ROWS)
    assert read_metadata(root / "char_lm" / "1")["streaming"] == {
        "prefill": "prefill", "decode_step": "decode_step"}
    export_model(_byte_lm(), root / "byte_lm", max_rows=MAX_ROWS)
    export_model(tiny("vae"), root / "vae", max_rows=MAX_ROWS)
    return root


def _byte_lm():
    """A tiny LM over UTF-8 bytes: untrained, it samples bytes that are
    often not whole characters."""
    from kgen import models, networks
    from kgen.data import ByteTokenizer

    return models.CausalLM(networks.transformer_lm(256, 16, num_layers=1, num_heads=1,
                                                   hidden_dim=8), ByteTokenizer())


@pytest.fixture(scope="module")
def server(tree):
    port, grpc_port = _free_port(), _free_port()
    log = open(tree.parent / "server.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "kgen", "serve", str(tree), "--port", str(port),
         "--grpc-port", str(grpc_port), "--max-body-bytes", str(MAX_BODY),
         "--max-streams", str(MAX_STREAMS), "--request-timeout", str(REQUEST_TIMEOUT),
         "--stream-timeout", str(STREAM_TIMEOUT)],
        stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, KERAS_BACKEND="tensorflow", KGEN_API_KEY=KEY))
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, url, log)
        yield {"url": url, "process": process, "log": log}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError("kgen serve did not stop on SIGTERM:\n" + _tail(log))
        finally:
            log.close()
    assert code == 0, f"kgen serve exited with {code}"


def _wait_ready(process, url, log):
    import requests

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"kgen serve exited with {process.returncode}:\n{_tail(log)}")
        try:
            if all(requests.get(f"{url}/v2/models/{name}/ready", timeout=2,
                                headers={"Authorization": f"Bearer {KEY}"}).ok
                   for name in ("char_lm", "byte_lm", "vae")):
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError("kgen serve was not ready in 180 s:\n" + _tail(log))


@pytest.fixture(scope="module")
def client(server):
    import openai

    # No retries: a 429 must reach the test as it reached the client.
    return openai.OpenAI(base_url=server["url"] + "/openai/v1", api_key=KEY,
                         max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def generate(tree):
    """The export's `generate` signature called in this process for the
    rows of a completion request (row i = prompt i // n, seed seed + i)."""
    import tensorflow as tf

    signatures = {name: tf.saved_model.load(str(tree / name / "1")).signatures["generate"]
                  for name in ("char_lm", "byte_lm")}

    def call(prompts, seed, max_tokens, n=1, temperature=1.0, top_p=1.0, stop_token="",
             model="char_lm"):
        fn = signatures[model]
        rows = [p for p in ([prompts] if isinstance(prompts, str) else prompts)
                for _ in range(n)]
        k = len(rows)
        greedy = temperature == 0
        out = fn(prompt=tf.constant(rows), seed=tf.constant(np.arange(k) + seed, tf.int64),
                 max_new_tokens=tf.fill([k], max_tokens),
                 temperature=tf.fill([k], 1.0 if greedy else float(temperature)),
                 top_k=tf.fill([k], 1 if greedy else 0), top_p=tf.fill([k], float(top_p)),
                 stop_token=tf.fill([k], stop_token))
        # Bytes that are not UTF-8 are answered as U+FFFD.
        return [t.decode("utf-8", "replace") for t in out["completion"].numpy()]

    return call


def _metrics(server):
    import requests

    return requests.get(server["url"] + "/metrics", timeout=30,
                        headers={"Authorization": f"Bearer {KEY}"}).text


def _post(server, body, key=KEY):
    import requests

    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return requests.post(server["url"] + "/openai/v1/completions",
                         data=body if isinstance(body, (bytes, str)) else json.dumps(body),
                         headers=headers, timeout=60)


def _streamed(stream):
    """Each choice's text from a stream's chunks, the chunks, and each
    choice's finish_reason."""
    texts, finish, chunks = {}, {}, []
    for chunk in stream:
        chunks.append(chunk)
        for choice in chunk.choices:
            assert choice.index not in finish, f"choice {choice.index} went on after it ended"
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason is not None:
                finish[choice.index] = choice.finish_reason
    return texts, chunks, finish


def _in_flight(server):
    return _metric(_metrics(server), "kgen_completions_in_flight", model="char_lm")


def _wait_in_flight(server, value, within=10.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _in_flight(server) == value:
            return
        time.sleep(0.05)
    raise AssertionError(f"kgen_completions_in_flight is {_in_flight(server)}, "
                         f"not {value}, after {within} s")


# === Completions ===


@_server_test
def test_models_lists_the_served_text_models(client):
    assert [m.id for m in client.models.list()] == ["byte_lm", "char_lm"]


@_server_test
def test_a_completion_is_generates_completion(client, generate):
    answer = client.completions.create(model="char_lm", prompt="ab", max_tokens=12, seed=5)
    assert answer.object == "text_completion" and answer.model == "char_lm"
    [choice] = answer.choices
    assert choice.text == generate("ab", 5, 12)[0]
    assert choice.index == 0 and choice.finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens,
            answer.usage.total_tokens) == (2, 12, 14)
    # A version by number answers the same.
    again = client.completions.create(model="char_lm/versions/1", prompt="ab",
                                      max_tokens=12, seed=5)
    assert again.choices[0].text == choice.text


@_server_test
def test_prompts_times_n_are_rows_seed_plus_i(client, generate):
    prompts = ["ab", "hgf edc"]
    answer = client.completions.create(model="char_lm", prompt=prompts, max_tokens=9,
                                       seed=40, n=3, temperature=0.7, top_p=0.9)
    expected = generate(prompts, 40, 9, n=3, temperature=0.7, top_p=0.9)
    assert [c.index for c in answer.choices] == list(range(6))
    assert [c.text for c in answer.choices] == expected
    assert answer.usage.prompt_tokens == 3 * 2 + 3 * 7
    assert answer.usage.completion_tokens == 6 * 9


@_server_test
def test_temperature_zero_is_greedy(client, generate):
    answer = client.completions.create(model="char_lm", prompt="cab", max_tokens=10,
                                       temperature=0, seed=1)
    # Greedy ignores the seed.
    assert answer.choices[0].text == generate("cab", 99, 10, temperature=0)[0]


@_server_test
def test_stream_equals_the_completion_and_generate(client, generate):
    options = dict(model="char_lm", prompt=["ab", "fed"], max_tokens=20, seed=7, n=2)
    whole = client.completions.create(**options)
    texts, chunks, finish = _streamed(client.completions.create(
        **options, stream=True, stream_options={"include_usage": True}))
    expected = generate(["ab", "fed"], 7, 20, n=2)
    assert [texts[i] for i in range(4)] == [c.text for c in whole.choices] == expected
    assert finish == {i: "length" for i in range(4)}
    # Token by token: each chunk holds one choice's new text, and the last
    # one the usage alone.
    assert len(chunks) >= 4 * 20
    assert all(len(c.choices) == 1 for c in chunks[:-1])
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("cmpl-")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 80
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


@_server_test
def test_characters_whose_bytes_span_tokens_are_streamed_whole(client, generate):
    options = dict(model="byte_lm", prompt=["é", "ab€"], max_tokens=40, seed=3, n=2)
    whole = client.completions.create(**options)
    texts, chunks, _ = _streamed(client.completions.create(**options, stream=True))
    expected = generate(["é", "ab€"], 3, 40, n=2, model="byte_lm")
    assert [texts[i] for i in range(4)] == [c.text for c in whole.choices] == expected
    assert whole.usage.prompt_tokens == 2 * 2 + 2 * 5  # bytes
    assert whole.usage.completion_tokens == 4 * 40
    # Fewer events than tokens: a byte that does not end a character waits.
    assert len(chunks) < 4 * 40


@_server_test
def test_the_stream_is_server_sent_events_ending_with_done(server, generate):
    import requests

    answer = requests.post(server["url"] + "/openai/v1/completions", stream=True, timeout=60,
                           headers={"Authorization": f"Bearer {KEY}"},
                           json={"model": "char_lm", "prompt": "ab", "max_tokens": 5,
                                 "seed": 3, "stream": True})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = answer.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    chunks = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == generate("ab", 3, 5)[0]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"


@_server_test
def test_a_one_character_stop_ends_the_row_where_generate_does(client, generate):
    free = generate("ab", 11, 40)[0]
    stop = next(c for c in free[3:] if c.strip())  # a character it makes, not first
    expected = generate("ab", 11, 40, stop_token=stop)[0]
    assert expected.endswith(stop)
    options = dict(model="char_lm", prompt="ab", max_tokens=40, seed=11, stop=stop)
    answer = client.completions.create(**options)
    # The stop sequence is not returned, as OpenAI does.
    assert answer.choices[0].text == expected[:-1]
    assert answer.choices[0].finish_reason == "stop"
    texts, _, finish = _streamed(client.completions.create(**options, stream=True))
    assert texts[0] == expected[:-1] and finish[0] == "stop"


@_server_test
def test_a_longer_stop_sequence_is_cut_from_the_text(client, generate):
    free = generate("ab", 12, 40)[0]
    stop = free[5:8]
    cut = free[:free.find(stop)]
    options = dict(model="char_lm", prompt="ab", max_tokens=40, seed=12,
                   stop=["zz", stop])
    answer = client.completions.create(**options)
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == (cut, "stop")
    texts, chunks, finish = _streamed(client.completions.create(**options, stream=True))
    assert texts[0] == cut and finish[0] == "stop"
    assert not any(stop in c.choices[0].text for c in chunks)
    # A stop that never comes leaves the text whole.
    answer = client.completions.create(model="char_lm", prompt="ab", max_tokens=40,
                                       seed=12, stop="zz")
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == (free, "length")


# === Refusals ===


REFUSED = [
    ({"prompt": "ab", "logprobs": 2}, "logprobs"),
    ({"prompt": "ab", "echo": True}, "echo"),
    ({"prompt": "ab", "best_of": 3}, "best_of"),
    ({"prompt": "ab", "suffix": "x"}, "suffix"),
    ({"prompt": "ab", "frobnicate": 1}, "frobnicate"),
    ({"prompt": "ab", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "ab", "max_tokens": 4097}, "max_tokens"),
    ({"prompt": "ab", "max_tokens": "9"}, "max_tokens"),
    ({"prompt": "ab", "temperature": 2.5}, "temperature"),
    ({"prompt": "ab", "temperature": -0.1}, "temperature"),
    ({"prompt": "ab", "top_p": 0}, "top_p"),
    ({"prompt": "ab", "top_p": 1.5}, "top_p"),
    ({"prompt": "ab", "n": 0}, "n"),
    ({"prompt": "ab", "n": MAX_ROWS + 1}, "n"),
    ({"prompt": ["ab"] * 3, "n": 3}, "n"),
    ({"prompt": ["ab"] * (MAX_ROWS + 1)}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": "ab" * 200}, "prompt"),
    ({"prompt": "xyz"}, "prompt"),  # outside the tokenizer's vocabulary
    ({"prompt": "ab", "seed": 2 ** 63}, "seed"),
    ({"prompt": "ab", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "ab", "stop": [""]}, "stop"),
    ({"prompt": "ab", "stream": "yes"}, "stream"),
    ({"prompt": "ab", "stream_options": {"include_usage": True}}, "stream_options"),
    ({}, "prompt"),
    ({"prompt": "ab", "model": ""}, "model"),
]


@_server_test
@pytest.mark.parametrize("body,field", REFUSED,
                         ids=[f"{f}-{i}" for i, (_, f) in enumerate(REFUSED)])
def test_a_bad_request_is_400_naming_the_field(server, body, field):
    answer = _post(server, {"model": "char_lm", **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == field, error
    assert field in error["message"], error
    assert error["type"] == "invalid_request_error"


@_server_test
def test_the_openai_client_gets_its_own_errors(server, client):
    import openai

    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="char_lm", prompt="ab", max_tokens=0)
    assert raised.value.status_code == 400 and "max_tokens" in str(raised.value)
    with pytest.raises(openai.NotFoundError) as raised:
        client.completions.create(model="no_such_model", prompt="ab")
    assert "no_such_model" in str(raised.value)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="char_lm/versions/9", prompt="ab")
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="vae", prompt="ab")
    assert "not text" in str(raised.value)
    wrong = openai.OpenAI(base_url=server["url"] + "/openai/v1",
                          api_key="wrong-key-0123456789abcdef", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model="char_lm", prompt="ab")
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    # Without a key (the client itself will not send none).
    answer = _post(server, {"model": "char_lm", "prompt": "ab"}, key=None)
    assert answer.status_code == 401 and "API key" in answer.json()["error"]


@_server_test
def test_a_body_over_max_body_bytes_is_413(server):
    answer = _post(server, {"model": "char_lm", "prompt": "a" * MAX_BODY})
    assert answer.status_code == 413, answer.text
    assert "--max-body-bytes" in answer.text


# === Streams: the bound, disconnects, deadlines ===


@_server_test
def test_over_max_streams_is_429_until_a_slot_frees(server, client):
    import openai

    streams = [client.completions.create(model="char_lm", prompt="ab", max_tokens=LONG,
                                         seed=i, stream=True) for i in range(MAX_STREAMS)]
    try:
        for stream in streams:
            next(iter(stream))
        assert _in_flight(server) == MAX_STREAMS
        for stream in (False, True):
            with pytest.raises(openai.RateLimitError) as raised:
                client.completions.create(model="char_lm", prompt="ab", max_tokens=4,
                                          stream=stream)
            assert raised.value.status_code == 429
            assert f"--max-streams {MAX_STREAMS}" in str(raised.value)
    finally:
        for stream in streams:
            stream.close()
    _wait_in_flight(server, 0)
    answer = client.completions.create(model="char_lm", prompt="ab", max_tokens=4)
    assert len(answer.choices[0].text) == 4


@_server_test
def test_a_client_leaving_mid_stream_frees_its_slot_and_stops_decoding(server, client):
    def tokens():
        return _metric(_metrics(server), "kgen_completion_tokens_total", model="char_lm")

    before = tokens()
    stream = client.completions.create(model="char_lm", prompt="ab", max_tokens=LONG,
                                       seed=1, stream=True)
    chunks = iter(stream)
    for _ in range(5):
        next(chunks)
    # Other requests are answered while the stream decodes.
    start = time.monotonic()
    answer = client.completions.create(model="char_lm", prompt="ab", max_tokens=8)
    assert len(answer.choices[0].text) == 8 and time.monotonic() - start < REQUEST_TIMEOUT
    stream.close()
    _wait_in_flight(server, 0, within=2.0)
    made = tokens()
    time.sleep(1.0)
    assert tokens() == made, "decoding went on after the client left"
    assert made - before < LONG / 2
    answer = client.completions.create(model="char_lm", prompt="ab", max_tokens=4)
    assert len(answer.choices[0].text) == 4


@_server_test
def test_a_stream_outlives_the_request_timeout(client, generate):
    start = time.monotonic()
    texts, _, finish = _streamed(client.completions.create(
        model="char_lm", prompt="ab", max_tokens=600, seed=2, stream=True))
    seconds = time.monotonic() - start
    if not REQUEST_TIMEOUT < seconds < STREAM_TIMEOUT:
        pytest.skip(f"600 tokens took {seconds:.1f} s here, not between --request-timeout "
                    f"{REQUEST_TIMEOUT} s and --stream-timeout {STREAM_TIMEOUT} s")
    assert finish == {0: "length"} and texts[0] == generate("ab", 2, 600)[0]


@_server_test
def test_a_stream_over_the_stream_timeout_ends_with_an_error_event(server, client):
    import openai

    start = time.monotonic()
    stream = client.completions.create(model="char_lm", prompt=["ab"] * MAX_ROWS,
                                       max_tokens=LONG, seed=2, stream=True)
    with pytest.raises(openai.APIError) as raised:
        texts, _, finish = _streamed(stream)
        pytest.skip(f"{MAX_ROWS} x {LONG} tokens took {time.monotonic() - start:.1f} s "
                    f"here, less than --stream-timeout {STREAM_TIMEOUT} s")
    assert "--stream-timeout" in str(raised.value)
    assert STREAM_TIMEOUT <= time.monotonic() - start < STREAM_TIMEOUT + 3
    _wait_in_flight(server, 0)


# === Metrics ===


@_server_test
def test_metrics_count_tokens_first_token_time_and_streams(server, client):
    labels = {"model": "char_lm", "version": "1"}

    def read():
        text = _metrics(server)
        return {name: _metric(text, name, **labels) for name in (
            "kgen_completion_tokens_total",
            "kgen_completion_time_to_first_token_seconds_count",
            "kgen_completion_tokens_per_second_count")} | {
            "requests": _metric(text, "kgen_requests_total", model="char_lm",
                                protocol="openai", code="200"),
            "refused": _metric(text, "kgen_requests_total", model="char_lm",
                               protocol="openai", code="400")}

    before = read()
    client.completions.create(model="char_lm", prompt="ab", max_tokens=6, n=2)
    stream = client.completions.create(model="char_lm", prompt="ab", max_tokens=7,
                                       stream=True)
    _streamed(stream)
    _post(server, {"model": "char_lm", "prompt": "ab", "max_tokens": 0})
    after = read()
    assert after["kgen_completion_tokens_total"] - before["kgen_completion_tokens_total"] \
        == 2 * 6 + 7
    assert after["kgen_completion_time_to_first_token_seconds_count"] - \
        before["kgen_completion_time_to_first_token_seconds_count"] == 2
    assert after["kgen_completion_tokens_per_second_count"] - \
        before["kgen_completion_tokens_per_second_count"] == 2
    assert after["requests"] - before["requests"] == 2
    assert after["refused"] - before["refused"] == 1
    _wait_in_flight(server, 0)
    assert "kgen_completions_in_flight{" in _metrics(server)


# === One choice's text, without a server ===


@pytest.mark.backend_agnostic
def test_a_character_split_across_pieces_is_sent_whole():
    from kgen.serving.openai import _Row

    row = _Row(())
    sent = [row.add(piece, True, False) for piece in (b"a", b"\xc3", b"\xa9", b"\xe2\x82",
                                                      b"\xac")]
    assert sent == ["a", "", "é", "", "€"]
    assert row.add(b"\xf0\x9f", True, True) == "\ufffd"  # cut at the end: replaced
    assert (row.tokens, row.finish_reason) == (6, "length")


@pytest.mark.backend_agnostic
def test_a_stop_sequence_is_held_back_then_cut():
    from kgen.serving.openai import _Row

    row = _Row(("cde", "xy"))
    sent = [row.add(p, True, False) for p in (b"a", b"b", b"c", b"d", b"q", b"c", b"x")]
    # "c", then "cd", may begin "cde"; "x" may begin "xy".
    assert sent == ["a", "b", "", "", "cdq", "", "c"]
    assert row.add(b"y", True, False) == "" and row.finish_reason == "stop"
    assert row.text == "abcdqc"
    # Text held back at the end of a row that ends without a stop is sent.
    row = _Row(("cde",))
    assert [row.add(p, True, f) for p, f in ((b"a", False), (b"c", True))] == ["a", "c"]
    assert row.finish_reason == "length"


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("doc,field", [
    ({"model": "m", "prompt": "a", "temperature": True}, "temperature"),
    ({"model": "m", "prompt": "a", "n": 1.0}, "n"),
    ({"model": "m", "prompt": "a", "presence_penalty": 0.5}, "presence_penalty"),
    ({"model": "m", "prompt": "a", "logit_bias": {"1": 2}}, "logit_bias"),
    ({"model": "m", "prompt": "a", "stop": "x" * 65}, "stop"),
    ({"model": 3, "prompt": "a"}, "model"),
])
def test_parse_request_names_the_field(doc, field):
    from kgen.serving.openai import OpenAIError
    from kgen.serving.openai import parse_request

    with pytest.raises(OpenAIError) as raised:
        parse_request(doc)
    assert raised.value.status == 400 and raised.value.param == field
    assert raised.value.message.startswith(field + ":")


@pytest.mark.backend_agnostic
def test_parse_request_takes_openai_defaults_and_neutral_values():
    from kgen.serving.openai import parse_request

    request = parse_request({"model": "m", "prompt": ["a", "b"], "echo": False,
                             "logprobs": None, "best_of": 1, "presence_penalty": 0,
                             "frequency_penalty": 0.0, "logit_bias": {}, "user": "u"})
    assert (request.max_tokens, request.temperature, request.top_p, request.n,
            request.seed, request.stop, request.stream) == (16, 1.0, 1.0, 1, None, (), False)
    assert request.rows == 2
