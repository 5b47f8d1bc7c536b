"""Benchmark: this CPU's matmul speed per precision, with and without XLA.

    python bench/matmul.py [--shape 768,512,128] [--repeats 2000]

Times `(m, k) @ (k, n)` in float32 and bfloat16, once through TensorFlow's
own kernels (oneDNN) and once through `tf.function(jit_compile=True)`
(XLA's CPU backend), and prints GFLOP/s for each with `os.getloadavg()`.
The default shape is the char LM's feed-forward output matmul at 12
windows of 64 tokens (768 rows, 512 -> 128); the figures say whether
`--set precision=mixed_bfloat16` can speed up a model that Keras runs
under XLA (docs/results.md, "Character language model").
`--write-results` also writes the table into docs/results.md.
"""

import argparse
import os
import time

import _results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="768,512,128",
                        help="m,k,n of (m, k) @ (k, n) (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=2000)
    _results.add_arguments(parser)
    args = parser.parse_args()
    try:
        m, k, n = (int(v) for v in args.shape.split(","))
    except ValueError:
        parser.error(f"--shape {args.shape}: expected three integers m,k,n")
    if min(m, k, n) < 1 or args.repeats < 1:
        parser.error("--shape and --repeats must be positive")

    _results.start()
    import tensorflow as tf

    rows = []
    for dtype in (tf.float32, tf.bfloat16):
        for jit in (False, True):
            a = tf.cast(tf.random.normal((m, k)), dtype)
            b = tf.cast(tf.random.normal((k, n)), dtype)
            fn = tf.function(lambda a, b: tf.matmul(a, b), jit_compile=jit)
            fn(a, b).numpy()
            start = time.perf_counter()
            for _ in range(args.repeats):
                out = fn(a, b)
            out.numpy()
            seconds = (time.perf_counter() - start) / args.repeats
            load = ",".join(f"{v:.2f}" for v in os.getloadavg())
            gflops = 2 * m * k * n / seconds / 1e9
            print(f"matmul {m}x{k}x{n} dtype={dtype.name} "
                  f"{'xla' if jit else 'tensorflow'}: "
                  f"{gflops:.0f} GFLOP/s load={load}", flush=True)
            rows.append((f"{m}x{k} @ {k}x{n}", dtype.name,
                         "XLA" if jit else "TensorFlow (oneDNN)", f"{gflops:.1f}",
                         load.replace(",", "/")))
    _results.report("matmul", ("matmul", "dtype", "kernels", "GFLOP/s", "load (1, 5, 15 min)"),
                    rows, args, note=f"{args.repeats} repeats per row, after one warm-up call.")


if __name__ == "__main__":
    main()
