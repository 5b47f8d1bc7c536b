"""Audio benchmark: training steps/s per backend, and seconds of audio
generated per second of compute (diffusion loop + Griffin-Lim), in-process
and through the exported SavedModel, at 1 and 16 rows.

    python bench/audio.py [--data ../shared/data/fsdd/recordings]
                          [--backends tensorflow,jax,torch] [--train-steps 10]
                          [--num-steps 25] [--rows 1,16] [--set key=value]...

The model is `recipes/audio_fsdd.py`'s at its defaults (`--set` changes a
setting, as `kgen train` does) on FSDD clips; sampling is guided (two
denoiser passes per step) with the recipe's sampler. Each backend runs in
its own process (Keras fixes its backend at import). Times exclude the first
(compiling) call; torch runs eagerly, so it gets no warm-up call. The
SavedModel figures come from the TensorFlow process (exports are TensorFlow
graphs whatever backend trained the model). `os.getloadavg()` is printed
beside each backend's figures: on a shared machine they are only as good
as the load was low. `--write-results` also writes the table into
docs/results.md.
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

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"


def run_one(args):
    import keras
    import numpy as np

    from kgen import config as kgen_config

    recipe = kgen_config.load_recipe("audio_fsdd")
    sets = dict(kv.split("=", 1) for kv in args.set)
    sets.update(data=str(args.data), limit=str(args.batch_size * args.train_steps),
                batch_size=str(args.batch_size), steps_per_epoch=str(args.train_steps))
    config = kgen_config.apply_overrides(recipe.CONFIG, sets)
    model, ds = recipe.build(config)
    seconds_per_clip = model.length / model.sample_rate
    model.fit(ds.train, epochs=1, steps_per_epoch=2, verbose=0)  # compile
    start = time.perf_counter()
    model.fit(ds.train, epochs=1, steps_per_epoch=args.train_steps, verbose=0)
    result = {"backend": keras.backend.backend(),
              "train_steps_per_s": args.train_steps / (time.perf_counter() - start),
              "batch_size": args.batch_size}

    options = dict(num_steps=args.num_steps, guidance_scale=2.0)
    for rows in args.rows:
        labels = [i % 10 for i in range(rows)]
        if keras.backend.backend() != "torch":  # torch runs eagerly: nothing to compile
            model.generate(rows, seed=0, labels=labels, **options)
        start = time.perf_counter()
        clips = model.generate(rows, seed=1, labels=labels, **options)
        assert np.isfinite(clips).all()
        result[f"generate_{rows}_rows_audio_s_per_s"] = (
            rows * seconds_per_clip / (time.perf_counter() - start))

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        from kgen.export import export_model

        with tempfile.TemporaryDirectory() as tmp:
            version = export_model(model, pathlib.Path(tmp) / "audio")
            generate = tf.saved_model.load(str(version)).signatures["generate"]
            for rows in args.rows:
                inputs = dict(seed=tf.range(rows, dtype=tf.int64),
                              label=tf.constant([i % 10 for i in range(rows)], tf.int32),
                              num_steps=tf.fill([rows], args.num_steps),
                              guidance_scale=tf.fill([rows], 2.0))
                generate(**inputs)  # warm up
                start = time.perf_counter()
                generate(**inputs)["audio"].numpy()
                result[f"savedmodel_{rows}_rows_audio_s_per_s"] = (
                    rows * seconds_per_clip / (time.perf_counter() - start))
    result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    print("RESULT " + json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA,
                        help="the FSDD's recordings/ folder")
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-steps", type=int, default=25,
                        help="diffusion steps per clip (the recipe's sample_steps)")
    parser.add_argument("--rows", default="1,16", help="rows per sampling call")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe setting (repeatable)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    _results.add_arguments(parser)
    args = parser.parse_args()
    if not args.data.is_dir():
        parser.error(f"--data {args.data}: no such folder (the FSDD's recordings/)")
    args.rows = [int(r) for r in args.rows.split(",")]
    if args.one:
        return run_one(args)
    _results.start()
    table = []
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        cmd = [sys.executable, __file__, "--one", "--data", str(args.data),
               "--train-steps", str(args.train_steps), "--batch-size", str(args.batch_size),
               "--num-steps", str(args.num_steps), "--rows", ",".join(map(str, args.rows)),
               *(f"--set={kv}" for kv in args.set)]
        start = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{backend}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        table.append(json.loads(lines[-1][len("RESULT "):]))
        print(f"{backend}: done in {time.time() - start:.0f}s: {json.dumps(table[-1])}",
              file=sys.stderr, flush=True)
    print(f"\naudio_fsdd model {args.set or '(defaults)'}, batch {args.batch_size}, "
          f"{args.num_steps} guided steps + Griffin-Lim per clip; audio s per s "
          f"of compute (>= 1: faster than real time)\n")
    keys = ["train_steps_per_s"] + [f"generate_{r}_rows_audio_s_per_s" for r in args.rows] \
        + [f"savedmodel_{r}_rows_audio_s_per_s" for r in args.rows]
    print(f"{'':36}" + "".join(f"{r['backend']:>12}" for r in table))
    for key in keys:
        cells = "".join(f"{r[key]:12.2f}" if key in r else f"{'-':>12}" for r in table)
        print(f"{key:36}{cells}")
    print(f"{'load average (1, 5, 15 min)':36}"
          + "".join(f"{'/'.join(f'{x:.1f}' for x in r['loadavg']):>12}" for r in table))
    rows = [[key] + [f"{r[key]:.2f}" if key in r else "-" for r in table] for key in keys]
    rows.append(["load average (1, 5, 15 min)"]
                + ["/".join(f"{x:.1f}" for x in r["loadavg"]) for r in table])
    _results.report("audio", ["figure"] + [r["backend"] for r in table], rows, args,
                    note=f"`audio_fsdd` model {' '.join(args.set) or '(defaults)'}, batch "
                         f"{args.batch_size}, {args.num_steps} guided steps + Griffin-Lim per "
                         "clip; audio seconds per second of compute (>= 1: faster than "
                         "real time). Training steps/s include the first steps' warm-up.")


if __name__ == "__main__":
    main()
