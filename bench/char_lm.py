"""Benchmark: char_lm_shakespeare at nanoGPT's CPU config, once per backend.

    python bench/char_lm.py [--data ../shared/data/tinyshakespeare/input.txt]
                            [--backends tensorflow,jax,torch]
                            [--precision float32,mixed_bfloat16] [--fit-only]
                            [--set KEY=VALUE]...

Trains the recipe's defaults (nanoGPT's CPU network: 4 layers, 4 heads,
128 dims, context 64; trained for time: batch 16, 900 iterations, AdamW
6e-3 with warm-up and cosine decay to 3e-4, beta2 0.99, dropout 0; XLA on
TensorFlow and JAX) with `fit()`, then reports:

- validation loss (mean over 200 fixed batches of the held-out 10%) and
  the wall time of `fit()` (target: <= 1.88 within 45 s on TensorFlow;
  nanoGPT's own schedule is `--set batch_size=12 --set learning_rate=1e-3
  --set min_learning_rate=1e-4 --iterations 2000`);
- tokens/s generating 256 new tokens with the KV cache vs recomputing the
  whole window at every step (target: cache >= 5x), for one row and for a
  batch of 16 rows;
- tokens/s of the exported SavedModel's `generate` vs in-process cached
  generation, same rows (target: export within 1.5x).

Each backend (and each `--precision`, the recipe's `precision` setting,
`kgen.precision`) runs in its own process, one after the other (Keras
fixes the backend at import); `--fit-only` skips the generation and export
figures. The output ends with one line per run:
`char_lm backend=NAME precision=P val_loss=FLOAT wall_s=FLOAT load=L1,L5,L15`,
`load` being `os.getloadavg()` when that run's `fit()` ended (the machine's
other work skews the figures). `--write-results` also writes the tables
into docs/results.md.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import _results

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
NEW_TOKENS = 256
PROMPT = "ROMEO:"
BATCHES = (1, 16)


def _best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def worker(data_path, iterations, overrides, fit_only=False):
    import keras

    from kgen import config as kgen_config
    from kgen.export import export_model

    backend = keras.backend.backend()
    recipe = kgen_config.load_recipe("char_lm_shakespeare")
    sets = {"data": str(data_path), "validation_batches": "200"}
    if iterations is not None:
        sets.update(epochs="1", steps_per_epoch=str(iterations))
    sets.update(kgen_config.parse_sets(overrides))
    config = kgen_config.apply_overrides(recipe.CONFIG, sets)
    keras.utils.set_random_seed(config["seed"])
    model, data = recipe.build(config)

    start = time.perf_counter()
    model.fit(data.train, epochs=config["epochs"],
              steps_per_epoch=config["steps_per_epoch"], verbose=2)
    wall = time.perf_counter() - start
    load = os.getloadavg()
    val = model.evaluate(data.validation, return_dict=True, verbose=0)
    print(f"[{backend} {config['precision']}] trained "
          f"{config['epochs'] * config['steps_per_epoch']} iterations in {wall:.1f}s "
          f"(load {load[0]:.2f}); val_loss={val['loss']:.4f} "
          f"val_bits_per_token={val['bits_per_token']:.3f}", flush=True)
    result = dict(backend=backend, precision=config["precision"],
                  val_loss=float(val["loss"]), wall_s=wall, load=load)
    if config["precision"] != "float32":
        # The same trained weights, evaluated with float32 arithmetic.
        full, _ = recipe.build({**config, "precision": "float32"})
        full.set_weights(model.get_weights())
        result["val_loss_float32_eval"] = float(full.evaluate(
            data.validation, return_dict=True, verbose=0)["loss"])
        print(f"[{backend} {config['precision']}] the same weights evaluated in float32: "
              f"val_loss={result['val_loss_float32_eval']:.4f}", flush=True)
    if fit_only:
        print("RESULT " + json.dumps(result), flush=True)
        return

    # --- generation: KV cache vs recomputing the window ---------------------
    def run(batch, use_cache):
        return lambda: model.generate(batch, seed=0, prompt=PROMPT,
                                      max_new_tokens=NEW_TOKENS, sampler="top_k",
                                      top_k=20, temperature=0.8, use_cache=use_cache)

    speed = {}
    for batch in BATCHES:
        for use_cache in (True, False):
            run(batch, use_cache)()  # compile once per backend and shape
            seconds = _best_of(run(batch, use_cache))
            speed[f"{'cached' if use_cache else 'uncached'}_b{batch}"] = (
                batch * NEW_TOKENS / seconds)
    sample = model.generate(1, seed=0, prompt=PROMPT, max_new_tokens=NEW_TOKENS,
                            sampler="top_k", top_k=20, temperature=0.8)[0]

    # --- the exported SavedModel vs in-process ------------------------------
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        model.save(pathlib.Path(tmp) / "lm.keras")
        version_dir = export_model(pathlib.Path(tmp) / "lm.keras",
                                   pathlib.Path(tmp) / "saved_models" / "lm")
        generate = tf.saved_model.load(str(version_dir)).signatures["generate"]
        for batch in BATCHES:
            inputs = dict(
                prompt=tf.constant([PROMPT] * batch),
                seed=tf.range(batch, dtype=tf.int64),
                max_new_tokens=tf.fill([batch], NEW_TOKENS),
                temperature=tf.fill([batch], 0.8), top_k=tf.fill([batch], 20),
                top_p=tf.fill([batch], 1.0), stop_token=tf.fill([batch], ""),
            )
            generate(**inputs)
            seconds = _best_of(lambda: generate(**inputs))
            speed[f"exported_b{batch}"] = batch * NEW_TOKENS / seconds
        exported_text = generate(
            prompt=tf.constant([PROMPT]), seed=tf.constant([0], tf.int64),
            max_new_tokens=tf.constant([NEW_TOKENS]), temperature=tf.constant([0.8]),
            top_k=tf.constant([20]), top_p=tf.constant([1.0]),
            stop_token=tf.constant([""]))["text"].numpy()[0].decode("utf-8")

    result.update(speed=speed, sample=sample, exported_sample=exported_text)
    print("RESULT " + json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--iterations", type=int,
                        help="override the recipe's 2,000 (for a quick check)")
    parser.add_argument("--precision", default="float32",
                        help="comma-separated precision settings to run side by side "
                             "(float32, mixed_bfloat16, mixed_float16)")
    parser.add_argument("--fit-only", action="store_true",
                        help="report the training figures only (no generation, export)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe setting (repeat for more)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    _results.add_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        return worker(args.data, args.iterations, args.set, args.fit_only)
    _results.start()

    results = []
    runs = [(b, p) for b in args.backends.split(",") for p in args.precision.split(",")]
    for backend, precision in runs:
        print(f"\n===== KERAS_BACKEND={backend} precision={precision} =====", flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        cmd = [sys.executable, __file__, "--worker", "--data", str(args.data)]
        if args.iterations:
            cmd += ["--iterations", str(args.iterations)]
        if args.fit_only:
            cmd += ["--fit-only"]
        for item in [*args.set, f"precision={precision}"]:
            cmd += ["--set", item]
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
        lines = proc.stdout.splitlines()
        print("\n".join(l for l in lines if not l.startswith("RESULT ")), flush=True)
        found = [json.loads(l[len("RESULT "):]) for l in lines if l.startswith("RESULT ")]
        if proc.returncode or not found:
            print(proc.stderr[-3000:])
            print(f"char_lm backend={backend} FAILED (exit {proc.returncode})")
            continue
        r = found[0]
        results.append(r)
        if "speed" not in r:
            continue
        print(f"sample ({backend}, top_k=20, temperature=0.8):\n{r['sample']}\n")
        v = r["speed"]
        for batch in BATCHES:
            cached, uncached = v[f"cached_b{batch}"], v[f"uncached_b{batch}"]
            exported = v[f"exported_b{batch}"]
            print(f"generate {NEW_TOKENS} tokens batch={batch} backend={backend} "
                  f"cached_tok_s={cached:.0f} uncached_tok_s={uncached:.0f} "
                  f"cache_speedup={cached / uncached:.1f}x "
                  f"exported_tok_s={exported:.0f} in_process/exported={cached / exported:.2f}")
    print()
    rows = []
    for r in results:
        print(f"char_lm backend={r['backend']} precision={r['precision']} "
              f"val_loss={r['val_loss']:.4f} wall_s={r['wall_s']:.1f} "
              + (f"(float32 eval {r['val_loss_float32_eval']:.4f}) "
                 if "val_loss_float32_eval" in r else "") +
              f"load={','.join(f'{x:.2f}' for x in r['load'])}")
        row = [r["backend"], r["precision"], f"{r['val_loss']:.4f}",
               f"{r['val_loss_float32_eval']:.4f}"
               if "val_loss_float32_eval" in r else "", f"{r['wall_s']:.1f}"]
        for batch in BATCHES:
            v = r.get("speed")
            row.append(" / ".join(f"{v[f'{kind}_b{batch}']:.0f}"
                                  for kind in ("cached", "uncached", "exported"))
                       if v else "")
        rows.append(row + ["/".join(f"{x:.2f}" for x in r["load"])])
    _results.report(
        "char_lm", ["backend", "precision", "val loss", "val loss, float32 eval",
                    "fit() wall s"]
        + [f"{NEW_TOKENS} tokens, {b} row{'s' if b > 1 else ''}: cached / recomputed / "
           "exported tok/s" for b in BATCHES] + ["load after fit()"], rows, args,
        note="`char_lm_shakespeare` at its defaults"
             + (f" plus {' '.join('--set ' + s for s in args.set)}" if args.set else "")
             + (f", {args.iterations} iterations" if args.iterations else "")
             + "; validation loss over 200 fixed held-out batches."
             + (" Generation figures not measured (--fit-only)." if args.fit_only else ""))


if __name__ == "__main__":
    main()
