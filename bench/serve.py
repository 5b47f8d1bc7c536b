"""Benchmark: `kgen serve` under bounded load on 127.0.0.1, beside the SavedModel in-process.

    python bench/serve.py [--requests 2000] [--clients 8] [--rows 1]
                          [--vae saved_models/NAME] [--lm saved_models/NAME]
                          [--batch-size 64] [--batch-wait-ms 2] [--api-key KEY]

For the VAE's `generate` and the character LM's `generate` (tiny models
exported into a temporary tree unless `--vae`/`--lm` name exports), the
same `--requests` requests (`--rows` rows each, distinct seeds) are
answered three ways:

- in-process: one loop calling the SavedModel's signature, request after
  request (what a single Python worker without a server does);
- `kgen serve` with batching, `--clients` concurrent clients, each with
  one keep-alive connection, sending TF Serving REST bodies;
- `kgen serve --no-batching`, the same clients;
- with `--api-key KEY`, also `kgen serve` with batching and that key
  (`KGEN_API_KEY`), every request sending `Authorization: Bearer KEY`,
  printed beside the same server without a key (the other servers run
  without one whatever the environment holds).

It prints requests/s, p50 and p99 latency side by side, with
`os.getloadavg()` before each run (the machine's other work shows there),
checks that every server answer is 200 and that a sample of them equals
the in-process answer, and ends with one line per model:
`serve model=NAME inprocess_rps=F batched_rps=F unbatched_rps=F
batched_vs_inprocess=F batched_p99_over_p50=F errors=N` (and, with a
key, `keyed_rps=F keyed_vs_batched=F keyed_p50_ms=F keyed_p99_ms=F`).
Targets: batched_vs_inprocess >= 0.8 and p99 < 5 x p50, with zero errors.
`--write-results` also writes the table into docs/results.md.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import _results
from kgen.serving import defaults

REPO = pathlib.Path(__file__).resolve().parents[1]
LM_SETTINGS = {"prompt": "ROMEO:", "max_new_tokens": 32, "temperature": 0.8, "top_k": 20,
               "top_p": 1.0, "stop_token": ""}
CHECKED = 20  # server answers compared with the in-process ones


def export_tiny(root):
    """A VAE (28x28x1, 16 latents) and a character LM (2 layers, 64 dims),
    untrained, exported as `kgen export` does."""
    os.environ["KERAS_BACKEND"] = "tensorflow"
    from kgen import models, networks
    from kgen.data import CharTokenizer
    from kgen.export import export_model

    vae = models.VAE(*networks.conv_vae_networks((28, 28, 1), 16, (32, 64), 128), seed=0)
    text = "ROMEO: But, soft! what light through yonder window breaks?\n"
    tokenizer = CharTokenizer.from_text(text + "abcdefghijklmnopqrstuvwxyz ")
    lm = models.CausalLM(networks.transformer_lm(tokenizer.vocabulary_size, 64, num_layers=2,
                                                 num_heads=4, hidden_dim=64), tokenizer)
    return (export_model(vae, root / "vae").parent, export_model(lm, root / "lm").parent)


def requests_for(kind, count, rows):
    """`count` columnar inputs of `rows` rows, seeds 0, 1, 2, ..."""
    out = []
    for i in range(count):
        seeds = list(range(i * rows, (i + 1) * rows))
        inputs = {"seed": seeds}
        if kind == "lm":
            inputs.update({k: [v] * rows for k, v in LM_SETTINGS.items()})
        out.append(inputs)
    return out


def percentiles(latencies):
    a = np.sort(np.asarray(latencies))
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def in_process(version_dir, inputs):
    import tensorflow as tf

    fn = tf.saved_model.load(str(version_dir)).signatures["generate"]
    specs = fn.structured_input_signature[1]

    def call(x):
        return {k: v.numpy() for k, v in fn(**{
            k: tf.constant(v, dtype=specs[k].dtype) for k, v in x.items()}).items()}

    for x in inputs[:3]:  # trace and warm up, as the server's first calls do
        call(x)
    latencies, answers = [], []
    start = time.perf_counter()
    for x in inputs:
        t = time.perf_counter()
        answers.append(call(x))
        latencies.append(time.perf_counter() - t)
    return {"seconds": time.perf_counter() - start, "latencies": latencies,
            "answers": answers[:CHECKED]}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tree, batching, batch_size, batch_wait_ms, log, api_key=None):
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "kgen", "serve", str(tree), "--port", str(port),
               "--grpc-port", str(grpc_port)]
    command += (["--batch-size", str(batch_size), "--batch-wait-ms", str(batch_wait_ms)]
                if batching else ["--no-batching"])
    env = {k: v for k, v in os.environ.items() if k != "KGEN_API_KEY"}
    if api_key:
        env["KGEN_API_KEY"] = api_key
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"kgen serve exited with {process.returncode}; see {log.name}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/v2/health/ready")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"kgen serve was not ready in 300 s; see {log.name}")


def stop_server(process):
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def load(port, model, bodies, clients, api_key=None):
    """Sends every body once from `clients` threads; latencies and answers."""
    path = f"/v1/models/{model}:predict"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    latencies = [None] * len(bodies)
    statuses = [None] * len(bodies)
    answers = {}
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            t = time.perf_counter()
            try:
                connection.request("POST", path, bodies[i], headers)
                response = connection.getresponse()
                data = response.read()
                statuses[i] = response.status
            except OSError as e:
                statuses[i] = f"{type(e).__name__}: {e}"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            finally:
                latencies[i] = time.perf_counter() - t
            if i < CHECKED:
                answers[i] = json.loads(data)
        connection.close()

    for body in bodies[:clients]:  # warm up: first calls trace the graph
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        connection.request("POST", path, body, headers)
        connection.getresponse().read()
        connection.close()
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    seconds = time.perf_counter() - start
    errors = [s for s in statuses if s != 200]
    return {"seconds": seconds, "latencies": latencies, "errors": errors, "answers": answers}


def same(kind, served, local):
    outputs = served["outputs"]
    if kind == "lm":
        return all(outputs[k] == [t.decode() for t in local[k]] for k in ("text", "completion"))
    return np.allclose(np.asarray(outputs, "float32"), local["images"], atol=2e-5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--vae", type=pathlib.Path, help="an exported VAE's base path")
    parser.add_argument("--lm", type=pathlib.Path, help="an exported CausalLM's base path")
    parser.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE)
    parser.add_argument("--batch-wait-ms", type=float, default=defaults.BATCH_WAIT_MS)
    parser.add_argument("--api-key", metavar="KEY",
                        help="also run the batched server with this API key, side by side")
    _results.add_arguments(parser)
    args = parser.parse_args()
    _results.start()
    # The keyed server right after the unkeyed one it is compared with.
    runs = ("inprocess", "batched") + (("keyed",) if args.api_key else ()) + ("unbatched",)

    with tempfile.TemporaryDirectory() as tmp:
        tree = pathlib.Path(tmp) / "saved_models"
        tree.mkdir()
        if args.vae is None or args.lm is None:
            vae, lm = export_tiny(pathlib.Path(tmp) / "exports")
        vae, lm = args.vae or vae, args.lm or lm
        # The tree the server reads: the two models under fixed names.
        (tree / "vae").symlink_to(pathlib.Path(vae).resolve())
        (tree / "lm").symlink_to(pathlib.Path(lm).resolve())
        from kgen.serving.tree import plain_versions

        work = {kind: requests_for(kind, args.requests, args.rows) for kind in ("vae", "lm")}
        results = {kind: {} for kind in work}
        for kind, inputs in work.items():
            version = tree / kind / str(plain_versions(tree / kind)[-1])
            results[kind]["load"] = os.getloadavg()
            results[kind]["inprocess"] = in_process(version, inputs)
        log = open(pathlib.Path(tmp) / "server.log", "w")
        for mode in runs[1:]:
            key = args.api_key if mode == "keyed" else None
            process, port = start_server(tree, mode != "unbatched", args.batch_size,
                                         args.batch_wait_ms, log, api_key=key)
            try:
                for kind, inputs in work.items():
                    bodies = [json.dumps({"signature_name": "generate", "inputs": x}).encode()
                              for x in inputs]
                    results[kind][f"load_{mode}"] = os.getloadavg()
                    results[kind][mode] = load(port, kind, bodies, args.clients, key)
            finally:
                stop_server(process)
        log.close()

    print(f"\n{args.requests} requests of {args.rows} row(s), {args.clients} clients, "
          f"batching up to {args.batch_size} rows / {args.batch_wait_ms:g} ms; "
          f"{os.cpu_count()} CPUs" + ("; keyed: batched, with an API key on every "
                                      "request" if args.api_key else ""))
    print(f"{'model':6} {'run':10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  "
          f"load average before (1, 5, 15 min)")
    summary = []
    table = []
    for kind, r in results.items():
        rps = {}
        for run in runs:
            res = r[run]
            rps[run] = args.requests / res["seconds"]
            p50, p99 = percentiles(res["latencies"])
            load_avg = r["load" if run == "inprocess" else f"load_{run}"]
            res["p50"], res["p99"] = p50, p99
            print(f"{kind:6} {run:10} {rps[run]:8.1f} {p50 * 1e3:8.2f} {p99 * 1e3:8.2f} "
                  f"{len(res.get('errors', [])):6d}  {', '.join(f'{x:.2f}' for x in load_avg)}")
            table.append((kind, run, f"{rps[run]:.1f}", f"{p50 * 1e3:.2f}", f"{p99 * 1e3:.2f}",
                          len(res.get("errors", [])), "/".join(f"{x:.2f}" for x in load_avg)))
        errors = sum(len(r[run]["errors"]) for run in runs[1:])
        mismatched = sum(not same(kind, r[run]["answers"][i], r["inprocess"]["answers"][i])
                         for run in runs[1:]
                         for i in r[run]["answers"])
        if errors:
            first = [e for run in runs[1:] for e in r[run]["errors"]][:3]
            print(f"  {kind}: first errors: {first}")
        keyed = ""
        if args.api_key:
            keyed = (f" keyed_rps={rps['keyed']:.1f} "
                     f"keyed_vs_batched={rps['keyed'] / rps['batched']:.2f} "
                     f"keyed_p50_ms={r['keyed']['p50'] * 1e3:.2f} "
                     f"keyed_p99_ms={r['keyed']['p99'] * 1e3:.2f}")
        summary.append(
            f"serve model={kind} inprocess_rps={rps['inprocess']:.1f} "
            f"batched_rps={rps['batched']:.1f} unbatched_rps={rps['unbatched']:.1f} "
            f"batched_vs_inprocess={rps['batched'] / rps['inprocess']:.2f} "
            f"batched_p99_over_p50={r['batched']['p99'] / r['batched']['p50']:.2f} "
            f"errors={errors} mismatched={mismatched}{keyed}")
    print()
    print("\n".join(summary))
    # The command line in the results names the key's place, not the key.
    sys.argv = [("KEY" if before == "--api-key" else
                 "--api-key=KEY" if arg.startswith("--api-key=") else arg)
                for before, arg in zip([None] + sys.argv[:-1], sys.argv)]
    _results.report("serve", ("model", "run", "requests/s", "p50 ms", "p99 ms", "errors",
                              "load before"), table, args,
                    note=f"{args.requests} requests of {args.rows} row(s), {args.clients} "
                         f"clients, batching up to {args.batch_size} rows / "
                         f"{args.batch_wait_ms:g} ms. " + " ".join(summary))


if __name__ == "__main__":
    main()
