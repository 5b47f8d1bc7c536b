"""The generate contract, shown side by side: one seed, one sample, on every
backend and through the export.

    python bench/contract.py [--seed 5] [--n 4] [--steps 20] [--out DIR]

For one recipe per family (`vae_digits`, `dcgan_digits`, `ddpm_digits`,
`char_lm_pydoc`, each with embedded data) it trains `--steps` steps with
`kgen train` on TensorFlow and exports the model, then

- loads `best.keras` / `last.keras` in a TensorFlow, a JAX and a PyTorch
  process and calls `model.generate(n, seed=SEED, ...)` and, for each row
  `i`, `model.generate(1, seed=SEED + i, ...)`;
- runs `kgen sample saved_models/NAME --seed SEED --n N` (the export through
  TensorFlow alone, no kgen model code) with the same options;

and prints, per family and backend, the largest absolute difference between
a row and its one-row draw, and between a row and the export's row (for the
language model: whether the texts are identical). `--write-results` also
writes the table into docs/results.md.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

import _results

REPO = pathlib.Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax", "torch")
RECIPES = {
    "vae_digits": {},
    "dcgan_digits": {},
    "ddpm_digits": {"filters": "16,32", "sample_steps": "2"},
    "char_lm_pydoc": {"num_layers": "2", "hidden_dim": "64", "validation_batches": "2",
                      "sample_max_new_tokens": "8"},
}


def worker(args):
    """In one backend's process: the rows of `generate` as a JSON line."""
    import keras

    import kgen.models  # noqa: F401  (registers the classes)

    model = keras.saving.load_model(args.model)
    meta = json.loads(args.meta)
    options = dict(meta.get("defaults", {}))
    n, seed = args.n, args.seed
    if model.output_kind == "text":
        options = {"prompt": options.pop("prompt"), "temperature": options["temperature"],
                   "top_k": options["top_k"], "max_new_tokens": options["max_new_tokens"]}
        rows = model.generate(n, seed=seed, **options)
        ones = [model.generate(1, seed=seed + i, **options)[0] for i in range(n)]
        print(json.dumps({"rows": rows, "ones": ones}))
        return
    labels = None
    if model.num_classes:
        labels = [(seed + i) % model.num_classes for i in range(n)]
    rows = model.generate(n, seed=seed, labels=labels, **options)
    ones = np.concatenate([
        model.generate(1, seed=seed + i, labels=None if labels is None else [labels[i]],
                       **options) for i in range(n)])
    np.save(args.out, np.stack([rows, ones]))
    print(json.dumps({"saved": args.out}))


def kgen(*args, backend="tensorflow", cwd):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "kgen", *map(str, args)],
                            cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"kgen {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def in_backend(backend, *args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, __file__, "--worker", *map(str, args)],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{backend} worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="training steps per recipe")
    parser.add_argument("--out", type=pathlib.Path, help="keep the runs and exports here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--meta", help=argparse.SUPPRESS)
    _results.add_arguments(parser)
    args, rest = parser.parse_known_args()
    if args.worker:
        args.out = rest[0] if rest else None
        return worker(args)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    _results.start()
    work = args.out or pathlib.Path(tempfile.mkdtemp(prefix="kgen-contract-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()}; seed {args.seed}, n {args.n}; work dir {work}")
    print(f"{'recipe':<14} {'backend':<11} {'row i vs generate(1, seed+i)':>30} "
          f"{'row i vs kgen sample (export)':>31}")
    table = []
    for recipe, sets in RECIPES.items():
        settings = {"epochs": "1", "steps_per_epoch": str(args.steps), **sets}
        flags = [f for k, v in settings.items() for f in ("--set", f"{k}={v}")]
        kgen("train", recipe, *flags, "--run-dir", f"runs/{recipe}",
             "--export", f"saved_models/{recipe}", cwd=work)
        run = work / "runs" / recipe
        model = run / "best.keras" if (run / "best.keras").exists() else run / "last.keras"
        version = max((work / "saved_models" / recipe).iterdir(), key=lambda p: int(p.name))
        meta = json.loads((version / "assets.extra" / "kgen.json").read_text())
        text = meta["output_kind"] == "text"
        out = work / f"{recipe}-export.{'txt' if text else 'npy'}"
        kgen("sample", version, "--seed", args.seed, "--n", args.n, "--out", out, cwd=work)
        if text:
            served = out.read_text(encoding="utf-8").split("\n\n---\n\n")
        else:
            served = np.load(out)
        for backend in BACKENDS:
            rows_file = work / f"{recipe}-{backend}.npy"
            got = in_backend(backend, "--model", model, "--meta", json.dumps(meta),
                             "--seed", args.seed, "--n", args.n, rows_file)
            if text:
                same_one = "identical" if got["rows"] == got["ones"] else "DIFFERENT"
                same_export = "identical" if got["rows"] == served else "DIFFERENT"
                print(f"{recipe:<14} {backend:<11} {same_one:>30} {same_export:>31}")
                table.append((recipe, backend, same_one, same_export))
                continue
            rows, ones = np.load(rows_file)
            print(f"{recipe:<14} {backend:<11} {np.abs(rows - ones).max():>30.2e} "
                  f"{np.abs(rows - served).max():>31.2e}")
            table.append((recipe, backend, f"{np.abs(rows - ones).max():.2g}",
                          f"{np.abs(rows - served).max():.2g}"))
    _results.report(
        "contract", ("recipe", "backend", f"row i of generate({args.n}, seed={args.seed}) "
                     "vs generate(1, seed+i)", "row i vs kgen sample (export)"), table, args,
        note=f"Largest absolute difference over the rows; each recipe trained {args.steps} "
             "steps on TensorFlow, its .keras file loaded on each backend.")


if __name__ == "__main__":
    main()
