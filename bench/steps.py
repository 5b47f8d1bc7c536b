"""Benchmark: a recipe's training step time under a few settings, side by side.

    python bench/steps.py RECIPE [--set KEY=VALUE]... [--vary KEY=V1,V2,...]
                          [--steps 60] [--backend tensorflow]

Builds RECIPE with its defaults plus `--set` overrides, once per value of
`--vary` (e.g. `--vary precision=float32,mixed_bfloat16`), each in its own
process one after the other, runs `fit()` for `--steps` steps and prints
the median and 90th-percentile milliseconds per step (the first 10 steps,
compilation included, are left out) with `os.getloadavg()`: the figures
behind "N ms a step instead of M" in docs/results.md, and the recipe's
whole run estimated from them (its epochs times its steps per epoch at the
median step). Run it alone: other work on the machine skews it.
`--write-results` also writes the table into the run's section of
docs/results.md (`section_name`).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import _results


def worker(recipe_name, sets, steps):
    import keras
    import numpy as np

    from kgen import config as kgen_config

    recipe = kgen_config.load_recipe(recipe_name)
    config = kgen_config.apply_overrides(recipe.CONFIG, sets)
    keras.utils.set_random_seed(config["seed"])
    model, data = recipe.build(config)
    ends = []

    class StepEnds(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())

    per_epoch = steps_per_epoch(config, data.train)
    model.fit(data.train, epochs=1, steps_per_epoch=steps, verbose=0,
              callbacks=[StepEnds()])
    ms = np.diff(ends[10:]) * 1000
    median = float(np.median(ms))
    run_steps = per_epoch * config["epochs"] if per_epoch and "epochs" in config else None
    print(json.dumps({"median_ms": median,
                      "p90_ms": float(np.percentile(ms, 90)),
                      "run_steps": run_steps,
                      "run_minutes": run_steps * median / 60000 if run_steps else None,
                      "load": os.getloadavg()[0]}), flush=True)


def steps_per_epoch(config, train):
    """The training steps of one epoch of the recipe's run: its
    `steps_per_epoch`, else the training split's batches (None if unknown)."""
    if config.get("steps_per_epoch"):
        return int(config["steps_per_epoch"])
    try:
        n = int(train.cardinality())
    except (AttributeError, TypeError):
        try:
            n = len(train)
        except TypeError:
            return None
    return n if n > 0 else None


def section_name(args):
    """This run's section of docs/results.md: `steps-RECIPE` for a `--vary`
    comparison, `steps-defaults-RECIPE` for the recipe at its defaults, with
    `-BACKEND` for a backend other than TensorFlow."""
    name = f"steps-{args.recipe}" if args.vary else f"steps-defaults-{args.recipe}"
    return name if args.backend == "tensorflow" else f"{name}-{args.backend}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--vary", default=None, metavar="KEY=V1,V2",
                        help="one run per value (default: one run)")
    parser.add_argument("--steps", type=int, default=60,
                        help="steps per run, at least 12 (default %(default)s)")
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"),
                        choices=("tensorflow", "jax", "torch"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    _results.add_arguments(parser)
    args = parser.parse_args()
    from kgen import config as kgen_config

    if args.steps < 12:
        parser.error(f"--steps {args.steps}: at least 12 (the first 10 are left out)")
    sets = kgen_config.parse_sets(args.set)
    if args.worker is not None:
        return worker(args.recipe, {**sets, **json.loads(args.worker)}, args.steps)
    runs = [{}]
    if args.vary:
        key, sep, values = args.vary.partition("=")
        if not sep or not key or not values:
            parser.error(f"--vary {args.vary!r}: expected KEY=V1,V2,...")
        runs = [{key: v} for v in values.split(",")]
    _results.start()
    rows = []
    for extra in runs:
        env = {**os.environ, "KERAS_BACKEND": args.backend}
        cmd = [sys.executable, __file__, args.recipe, "--steps", str(args.steps),
               "--worker", json.dumps(extra)] + [f"--set={s}" for s in args.set]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        label = " ".join(f"{k}={v}" for k, v in extra.items()) or "defaults"
        if out.returncode or not lines:
            print(f"{args.recipe} {label}: failed\n{out.stderr[-2000:]}", flush=True)
            rows.append((args.recipe, args.backend, label, "failed", "", args.steps, "", ""))
            continue
        r = json.loads(lines[-1])
        run = (f"{r['run_steps']} steps: {r['run_minutes']:.0f} min" if r.get("run_steps")
               else "unknown")
        print(f"{args.recipe} backend={args.backend} {label}: "
              f"{r['median_ms']:.1f} ms/step median, {r['p90_ms']:.1f} p90 "
              f"({args.steps} steps) load={r['load']:.2f}; its whole run: {run}", flush=True)
        rows.append((args.recipe, args.backend, label, f"{r['median_ms']:.1f}",
                     f"{r['p90_ms']:.1f}", args.steps, run, f"{r['load']:.2f}"))
    sets = " ".join(f"--set {s}" for s in args.set)
    _results.report(section_name(args), ("recipe", "backend", "setting", "median ms/step", "p90 ms/step",
                              "steps", "whole run (estimate)", "load (1 min)"), rows, args,
                    note="The first 10 steps (compilation included) are left out"
                         + (f"; recipe defaults plus {sets}." if sets else "; recipe defaults.")
                         + " The whole run is the recipe's training steps (epochs x steps "
                           "per epoch) at the median step time: validation, sample grids "
                           "and checkpoints come on top.")


if __name__ == "__main__":
    main()
