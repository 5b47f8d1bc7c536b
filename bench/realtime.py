"""Benchmark: real-time generation, side by side in one run.

    python bench/realtime.py [--lm saved_models/NAME] [--teacher saved_models/NAME]
                             [--student saved_models/NAME] [--requests 40]
                             [--tokens 64] [--image-requests 40]

Two parts, each measured in-process (the SavedModel's signatures called
from one Python loop) and through `kgen serve` on 127.0.0.1:

- **Text.** The language model's `prefill` and one `decode_step` (median
  over `--requests` calls), then through the server's OpenAI-compatible
  `/openai/v1/completions`: time to first token (the first SSE chunk with
  text) and tokens per second of a streamed completion of `--tokens`
  tokens, beside the same request not streamed (time to the whole
  answer). Every streamed text is checked equal to the non-streamed one.
  Target: time to first token through the server at most 2 x (prefill +
  one decode step) measured in-process.
- **Images.** One row and 16 rows of `generate`, p50 and p99 over
  `--image-requests` requests: the teacher at 50 steps against the student
  at its own step count (its `kgen.json` default), in-process and through
  the server (TF Serving's REST `:predict`). Target: one image through the
  server at least 8x faster at p50 for the student.

Without `--lm`, a tiny untrained character LM is exported into a temporary
tree; without `--teacher`/`--student`, a tiny untrained conditional DDPM
stands for both (its student row then uses 4 steps): such figures time the
machinery, not a trained model. `os.getloadavg()` is printed beside every
figure. `--write-results` writes the tables into docs/results.md.
"""

import argparse
import http.client
import json
import os
import pathlib
import tempfile
import time

import numpy as np

import _results
import serve
from kgen.serving import defaults
from serve import stop_server

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPT = "ROMEO:"
IMAGE_ROWS = (1, 16)


def export_tiny(root):
    """An untrained character LM and an untrained class-conditional DDPM,
    exported as `kgen export` does."""
    os.environ["KERAS_BACKEND"] = "tensorflow"
    from kgen import models, networks
    from kgen.data import CharTokenizer
    from kgen.export import export_model

    text = "ROMEO: But, soft! what light through yonder window breaks?\n"
    tokenizer = CharTokenizer.from_text(text + "abcdefghijklmnopqrstuvwxyz ")
    lm = models.CausalLM(networks.transformer_lm(tokenizer.vocabulary_size, 64, num_layers=2,
                                                 num_heads=4, hidden_dim=64), tokenizer)
    ddpm = models.DiffusionModel(networks.unet((28, 28, 1), (16, 32), num_classes=10),
                                 num_classes=10, sampler="ddim", guidance_scale=3.0)
    return export_model(lm, root / "lm").parent, export_model(ddpm, root / "ddpm").parent


def latest(base):
    from kgen.serving.tree import plain_versions

    return pathlib.Path(base) / str(plain_versions(pathlib.Path(base))[-1])


def percentiles(seconds):
    a = np.asarray(seconds) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def load_text():
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# --- in-process -----------------------------------------------------------------


def signature(version_dir, name):
    import tensorflow as tf

    fn = tf.saved_model.load(str(version_dir)).signatures[name]
    specs = fn.structured_input_signature[1]

    def call(**inputs):
        return fn(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()})

    return call


def lm_inputs(seed, tokens):
    return {"prompt": [PROMPT], "seed": [seed], "max_new_tokens": [tokens],
            "temperature": [1.0], "top_k": [0], "top_p": [1.0], "stop_token": [""]}


def lm_in_process(version_dir, requests, tokens):
    """Median prefill and decode-step times (ms) of the exported signatures."""
    prefill = signature(version_dir, "prefill")
    step = signature(version_dir, "decode_step")
    prefill_s, step_s = [], []
    for i in range(requests + 2):  # the first two trace and warm up
        inputs = lm_inputs(i, tokens)
        t = time.perf_counter()
        state = prefill(**inputs)
        state = {k: v.numpy() for k, v in state.items()}
        if i >= 2:
            prefill_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = step(**state, seed=inputs["seed"], temperature=inputs["temperature"],
                   top_k=inputs["top_k"], top_p=inputs["top_p"])
        {k: v.numpy() for k, v in out.items()}
        if i >= 2:
            step_s.append(time.perf_counter() - t)
    return float(np.median(prefill_s)) * 1e3, float(np.median(step_s)) * 1e3


def images_in_process(version_dir, steps, rows, requests, defaults):
    generate = signature(version_dir, "generate")
    seconds = []
    for i in range(requests + 2):
        seeds = list(range(i * rows, (i + 1) * rows))
        inputs = image_inputs(seeds, steps, defaults)
        t = time.perf_counter()
        generate(**inputs)["images"].numpy()
        if i >= 2:
            seconds.append(time.perf_counter() - t)
    return seconds


def image_inputs(seeds, steps, defaults):
    inputs = {"seed": seeds, "num_steps": [steps] * len(seeds),
              "guidance_scale": [float(defaults.get("guidance_scale", 1.0))] * len(seeds)}
    if defaults.get("num_classes"):
        inputs["label"] = [s % defaults["num_classes"] for s in seeds]
    return inputs


# --- through the server -----------------------------------------------------------


def start_server(tree, log):
    """`kgen serve` on the tree with its default batching (`bench/serve.py`'s)."""
    return serve.start_server(tree, True, defaults.BATCH_SIZE, defaults.BATCH_WAIT_MS, log)


def post(port, path, body):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", path, json.dumps(body).encode(),
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    return connection, response


def completion(port, seed, tokens, stream):
    """(text, time to first text in s, total s, tokens) of one completion."""
    body = {"model": "lm", "prompt": PROMPT, "max_tokens": tokens, "temperature": 1.0,
            "top_p": 1.0, "seed": seed, "stream": stream}
    t = time.perf_counter()
    connection, response = post(port, "/openai/v1/completions", body)
    if response.status != 200:
        raise SystemExit(f"/openai/v1/completions answered {response.status}: "
                         f"{response.read()[:300]!r}")
    if not stream:
        doc = json.loads(response.read())
        total = time.perf_counter() - t
        connection.close()
        used = doc.get("usage", {}).get("completion_tokens", tokens)
        return doc["choices"][0]["text"], total, total, used
    text, first, chunks = [], None, 0
    buffer = b""
    while True:
        line = response.readline()
        if not line:
            break
        buffer = line.strip()
        if not buffer.startswith(b"data:"):
            continue
        data = buffer[5:].strip()
        if data == b"[DONE]":
            break
        piece = json.loads(data)["choices"][0]["text"]
        if piece and first is None:
            first = time.perf_counter() - t
        text.append(piece)
        chunks += 1
    total = time.perf_counter() - t
    connection.close()
    return "".join(text), first, total, chunks


def images_through_server(port, model, steps, rows, requests, defaults):
    seconds = []
    for i in range(requests + 2):
        seeds = list(range(i * rows, (i + 1) * rows))
        body = {"signature_name": "generate", "inputs": image_inputs(seeds, steps, defaults)}
        t = time.perf_counter()
        connection, response = post(port, f"/v1/models/{model}:predict", body)
        data = response.read()
        connection.close()
        if response.status != 200:
            raise SystemExit(f"{model}:predict answered {response.status}: {data[:300]!r}")
        if i >= 2:
            seconds.append(time.perf_counter() - t)
    return seconds


# --- main ---------------------------------------------------------------------


def image_settings(version_dir, steps_override=None):
    from kgen.export.metadata import read_metadata

    meta = read_metadata(version_dir)
    defaults = dict(meta.get("defaults", {}))
    defaults["num_classes"] = meta.get("num_classes", 0)
    steps = steps_override or int(defaults.get("num_steps", 50))
    return steps, defaults


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", type=pathlib.Path, help="an exported CausalLM's base path")
    parser.add_argument("--teacher", type=pathlib.Path,
                        help="an exported diffusion model's base path (sampled at 50 steps)")
    parser.add_argument("--student", type=pathlib.Path,
                        help="its distilled student's base path (sampled at its own steps)")
    parser.add_argument("--requests", type=int, default=40,
                        help="prefill/decode-step calls and completions per mode")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per completion")
    parser.add_argument("--image-requests", type=int, default=40,
                        help="requests per image row count, model and mode")
    _results.add_arguments(parser)
    args = parser.parse_args()
    if (args.teacher is None) != (args.student is None):
        parser.error("--teacher and --student go together")
    _results.start()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        if args.lm is None or args.teacher is None:
            lm_base, ddpm_base = export_tiny(tmp / "exports")
        lm_base = args.lm or lm_base
        teacher_base = args.teacher or ddpm_base
        student_base = args.student or ddpm_base
        tree = tmp / "saved_models"
        tree.mkdir()
        for name, base in (("lm", lm_base), ("teacher", teacher_base),
                           ("student", student_base)):
            (tree / name).symlink_to(pathlib.Path(base).resolve())
        teacher_steps, teacher_defaults = image_settings(latest(teacher_base), 50)
        student_steps, student_defaults = image_settings(
            latest(student_base), None if args.student else 4)
        images = {"teacher": (teacher_steps, teacher_defaults),
                  "student": (student_steps, student_defaults)}

        # In-process first, alone on the machine.
        text_rows, image_rows = [], []
        load = load_text()
        prefill_ms, step_ms = lm_in_process(latest(lm_base), args.requests, args.tokens)
        print(f"lm in-process: prefill {prefill_ms:.2f} ms, decode step {step_ms:.2f} ms "
              f"(median of {args.requests}; load {load})", flush=True)
        text_rows.append(("in-process", "prefill", f"{prefill_ms:.2f}", "", "", load))
        text_rows.append(("in-process", "decode_step", f"{step_ms:.2f}", "", "", load))
        in_process = {}
        for name, (steps, defaults) in images.items():
            for rows in IMAGE_ROWS:
                load = load_text()
                seconds = images_in_process(latest(tree / name), steps, rows,
                                            args.image_requests, defaults)
                in_process[name, rows] = (percentiles(seconds), load)
                p50, p99 = in_process[name, rows][0]
                print(f"{name} {steps} steps, {rows} row(s), in-process: p50 {p50:.1f} ms, "
                      f"p99 {p99:.1f} ms (load {load})", flush=True)

        log = open(tmp / "server.log", "w")
        process, port = start_server(tree, log)
        try:
            # Text through the server: warm up, then streamed and not, alternating.
            completion(port, 0, args.tokens, True)
            completion(port, 0, args.tokens, False)
            streamed, whole, mismatched = [], [], 0
            load = load_text()
            for i in range(args.requests):
                s = completion(port, 1000 + i, args.tokens, True)
                w = completion(port, 1000 + i, args.tokens, False)
                mismatched += s[0] != w[0]
                streamed.append(s)
                whole.append(w)
            ttft = [s[1] for s in streamed]
            rate = [s[3] / s[2] for s in streamed]
            ttft_p50, ttft_p99 = percentiles(ttft)
            whole_p50, whole_p99 = percentiles([w[2] for w in whole])
            text_rows.append(("server, streamed", "time to first token",
                              f"{ttft_p50:.2f}", f"{ttft_p99:.2f}",
                              f"{np.median(rate):.1f}", load))
            text_rows.append(("server, not streamed", "whole answer", f"{whole_p50:.2f}",
                              f"{whole_p99:.2f}",
                              f"{np.median([w[3] / w[2] for w in whole]):.1f}", load))
            # Images through the server.
            served = {}
            for name, (steps, defaults) in images.items():
                for rows in IMAGE_ROWS:
                    load = load_text()
                    seconds = images_through_server(port, name, steps, rows,
                                                    args.image_requests, defaults)
                    served[name, rows] = (percentiles(seconds), load)
        finally:
            stop_server(process)
            log.close()

    print()
    print(_results.markdown_table(
        ("path", "what", "p50 ms", "p99 ms", "tokens/s", "load before"), text_rows))
    for name, (steps, _) in images.items():
        for rows in IMAGE_ROWS:
            for mode, table in (("in-process", in_process), ("server", served)):
                (p50, p99), load = table[name, rows]
                image_rows.append((name, steps, rows, mode, f"{p50:.1f}", f"{p99:.1f}", load))
    print()
    print(_results.markdown_table(
        ("model", "steps", "rows", "path", "p50 ms", "p99 ms", "load before"), image_rows))
    bound = 2 * (prefill_ms + step_ms)
    speedup = served["teacher", 1][0][0] / served["student", 1][0][0]
    summary = (
        f"realtime ttft_p50_ms={ttft_p50:.2f} prefill_plus_step_ms={prefill_ms + step_ms:.2f} "
        f"ttft_target_ms={bound:.2f} ttft_met={ttft_p50 <= bound} "
        f"tokens_per_s={np.median(rate):.1f} mismatched={mismatched} "
        f"teacher_steps={teacher_steps} student_steps={student_steps} "
        f"one_image_server_speedup={speedup:.2f} speedup_met={speedup >= 8}")
    print()
    print(summary)
    _results.report("realtime-text", ("path", "what", "p50 ms", "p99 ms", "tokens/s",
                                      "load before"), text_rows, args,
                    note=f"{args.requests} completions of {args.tokens} tokens each way. "
                         + summary)
    _results.report("realtime-images", ("model", "steps", "rows", "path", "p50 ms",
                                        "p99 ms", "load before"), image_rows, args,
                    note=f"{args.image_requests} requests per row. " + summary)


if __name__ == "__main__":
    main()
