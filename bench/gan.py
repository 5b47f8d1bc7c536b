"""Training steps per second of the `dcgan_mnist` recipe, per backend, with
and without `jit_compile`, measured side by side in one run.

    python bench/gan.py [--data ../shared/data/mnist] [--steps 30]
                        [--backends tensorflow,jax,torch]

Each (backend, jit_compile) pair runs in its own process (Keras fixes its
backend at import): one warm-up epoch compiles the step, a second is timed.
On PyTorch, jit_compile=True means torch.compile. `--write-results` also
writes the table into docs/results.md.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import _results

REPO = pathlib.Path(__file__).resolve().parents[1]


def worker(args):
    import keras

    from kgen import config as kgen_config

    recipe = kgen_config.load_recipe("dcgan_mnist")
    cfg = kgen_config.apply_overrides(recipe.CONFIG, {
        "data": args.data, "steps_per_epoch": str(args.steps),
        "jit_compile": args.jit,
    })
    keras.utils.set_random_seed(0)
    model, data = recipe.build(cfg)
    model.fit(data.train, epochs=1, steps_per_epoch=3, verbose=0)  # compile
    start = time.perf_counter()
    model.fit(data.train, epochs=1, steps_per_epoch=args.steps, verbose=0)
    elapsed = time.perf_counter() - start
    print(json.dumps({"steps_per_s": args.steps / elapsed, "batch": cfg["batch_size"]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jit", default="false", help=argparse.SUPPRESS)
    _results.add_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    _results.start()
    results = []
    rows = []
    for backend in args.backends.split(","):
        for jit in ("false", "true"):
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", "--data", args.data,
                 "--steps", str(args.steps), "--jit", jit],
                env=env, capture_output=True, text=True, cwd=REPO,
            )
            if proc.returncode:
                error = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                line = f"gan backend={backend} jit_compile={jit} error={error!r}"
                rows.append((backend, jit, f"error: {error}", "", ""))
            else:
                out = json.loads(proc.stdout.strip().splitlines()[-1])
                line = (f"gan backend={backend} jit_compile={jit} "
                        f"steps_per_s={out['steps_per_s']:.2f} "
                        f"images_per_s={out['steps_per_s'] * out['batch']:.0f}")
                rows.append((backend, jit, f"{out['steps_per_s']:.2f}",
                             f"{out['steps_per_s'] * out['batch']:.0f}",
                             "/".join(f"{x:.2f}" for x in os.getloadavg())))
            print(line, flush=True)
            results.append(line)
    _results.report("gan", ("backend", "jit_compile", "steps/s", "images/s", "load after"),
                    rows, args, note=f"`dcgan_mnist` at its defaults, {args.steps} timed "
                                     "steps after a 3-step warm-up epoch.")


if __name__ == "__main__":
    main()
