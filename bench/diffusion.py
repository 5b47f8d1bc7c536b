"""Diffusion benchmark: training steps/s per backend, and sampling images/s
for DDPM (1000 steps) vs DDIM (50) vs DPM-Solver++ 2M (20), in-process and
through the exported SavedModel.

    python bench/diffusion.py [--backends tensorflow,jax,torch] [--n 16]
                              [--train-steps 20] [--filters 16,32]

Each backend runs in its own process (Keras fixes its backend at import).
The model is a class-conditional U-Net on the 8x8 digits; sampling is guided
(two denoiser passes per step). Times exclude the first (compiling) call;
torch runs eagerly, so it gets no warm-up call.
The SavedModel figures come from the TensorFlow process (exports are
TensorFlow graphs whatever backend trained the model). `--write-results`
also writes the table into docs/results.md.
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

SAMPLERS = (("ddpm", 1000), ("ddim", 50), ("dpm_solver", 20))


def run_one(args):
    import keras

    from kgen import data, models, networks, schedulers

    images, labels = data.load_images("digits")
    model = models.DiffusionModel(
        networks.unet(images.shape[1:], args.filters, num_classes=10),
        schedulers.DDPMScheduler(1000, "cosine"), num_classes=10, seed=0,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    batch = args.batch_size
    x = {"images": images[:batch * args.train_steps],
         "labels": labels[:batch * args.train_steps]}
    warm = {k: v[:batch * 2] for k, v in x.items()}
    model.fit(warm, batch_size=batch, epochs=1, verbose=0)  # compile
    start = time.perf_counter()
    model.fit(x, batch_size=batch, epochs=1, verbose=0)
    result = {"backend": keras.backend.backend(),
              "train_steps_per_s": args.train_steps / (time.perf_counter() - start)}

    label = [i % 10 for i in range(args.n)]
    for name, steps in SAMPLERS:
        if keras.backend.backend() != "torch":  # torch runs eagerly: nothing to compile
            model.generate(args.n, seed=0, num_steps=steps, scheduler=name,
                           labels=label, guidance_scale=2.0)  # compile
        start = time.perf_counter()
        model.generate(args.n, seed=1, num_steps=steps, scheduler=name, labels=label,
                       guidance_scale=2.0)
        result[f"{name}_{steps}_images_per_s"] = args.n / (time.perf_counter() - start)

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        from kgen.export import export_model

        with tempfile.TemporaryDirectory() as tmp:
            for name, steps in SAMPLERS:
                model.sampler = name
                version = export_model(model, pathlib.Path(tmp) / name)
                generate = tf.saved_model.load(str(version)).signatures["generate"]
                inputs = dict(
                    seed=tf.range(args.n, dtype=tf.int64),
                    label=tf.constant(label, tf.int32),
                    num_steps=tf.fill([args.n], steps),
                    guidance_scale=tf.fill([args.n], 2.0),
                )
                generate(**inputs)  # warm up
                start = time.perf_counter()
                generate(**inputs)["images"].numpy()
                result[f"savedmodel_{name}_{steps}_images_per_s"] = (
                    args.n / (time.perf_counter() - start))
    result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    print("RESULT " + json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--n", type=int, default=16, help="images per sampling call")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--filters", default="16,32", help="U-Net channels per level")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    _results.add_arguments(parser)
    args = parser.parse_args()
    args.filters = tuple(int(w) for w in args.filters.split(","))
    if args.one:
        return run_one(args)
    _results.start()
    rows = []
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        cmd = [sys.executable, __file__, "--one", "--n", str(args.n),
               "--train-steps", str(args.train_steps), "--batch-size",
               str(args.batch_size), "--filters", ",".join(map(str, args.filters))]
        start = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{backend}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(lines[-1][len("RESULT "):]))
        print(f"{backend}: done in {time.time() - start:.0f}s: {json.dumps(rows[-1])}",
              file=sys.stderr, flush=True)
    print(f"\nU-Net filters {args.filters}, 8x8 digits, batch {args.batch_size}, "
          f"{args.n} guided images per sampling call\n")
    keys = ["train_steps_per_s"] + [f"{n}_{s}_images_per_s" for n, s in SAMPLERS] + [
        f"savedmodel_{n}_{s}_images_per_s" for n, s in SAMPLERS]
    print(f"{'':40}" + "".join(f"{r['backend']:>12}" for r in rows))
    for key in keys:
        cells = "".join(f"{r[key]:12.2f}" if key in r else f"{'-':>12}" for r in rows)
        print(f"{key:40}{cells}")
    table = [[key] + [f"{r[key]:.2f}" if key in r else "-" for r in rows] for key in keys]
    table.append(["load average (1, 5, 15 min)"]
                 + ["/".join(f"{x:.1f}" for x in r["loadavg"]) for r in rows])
    _results.report("diffusion", ["figure"] + [r["backend"] for r in rows], table, args,
                    note=f"U-Net filters {args.filters}, 8x8 digits, batch {args.batch_size}, "
                         f"{args.n} guided images per sampling call.")


if __name__ == "__main__":
    main()
