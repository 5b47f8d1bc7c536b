"""Training steps per second under each `--strategy` and precision, one
recipe per family, measured side by side in one run (TensorFlow).

    python bench/distribute.py [--steps 20] [--data ../shared/data]
                               [--recipes vae_mnist,dcgan_mnist,ddpm_digits,char_lm_shakespeare]
                               [--configs none,mirrored1,mirrored2,worker1,worker2,bf16]

Configurations, each on the recipe's own global batch:

    none        one device, float32
    mirrored1   MirroredStrategy with one replica (one CPU)
    mirrored2   MirroredStrategy with two replicas (two logical CPUs)
    worker1     MultiWorkerMirroredStrategy, a cluster of one worker
    worker2     MultiWorkerMirroredStrategy, two worker processes on 127.0.0.1
    bf16        one device, --set precision=mixed_bfloat16

Each configuration runs in fresh processes (TensorFlow fixes its devices
when it starts): a 3-step `fit()` compiles the step, then `--steps` steps
are timed. A worker pair runs at once; the chief's figure is printed. The
load average is printed beside every figure: compare figures of one run.
`--write-results` also writes the table into docs/results.md.
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import _results

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ("none", "mirrored1", "mirrored2", "worker1", "worker2", "bf16")
RECIPES = ("vae_mnist", "dcgan_mnist", "ddpm_digits", "char_lm_shakespeare")


def data_setting(recipe, data_root):
    """The `data` setting a recipe needs from `--data` (None: embedded)."""
    if recipe.endswith("_mnist"):
        return str(pathlib.Path(data_root) / "mnist")
    if recipe == "char_lm_shakespeare":
        return str(pathlib.Path(data_root) / "tinyshakespeare" / "input.txt")
    return None


def worker(args):
    import tensorflow as tf

    if args.config == "mirrored2":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from kgen import config as kgen_config
    from kgen import distribute

    strategy = {"none": "none", "bf16": "none", "mirrored1": "mirrored",
                "mirrored2": "mirrored", "worker1": "multi_worker",
                "worker2": "multi_worker"}[args.config]
    recipe = kgen_config.load_recipe(args.recipe)
    sets = {"steps_per_epoch": str(args.steps), "seed": "0"}
    if args.data_setting:
        sets["data"] = args.data_setting
    if args.config == "bf16":
        sets["precision"] = "mixed_bfloat16"
    config = kgen_config.apply_overrides(recipe.CONFIG, sets)
    keras.utils.set_random_seed(0)
    dist = distribute.distribution(strategy)
    with dist.scope():
        model, data = recipe.build(config)
    train = dist.distribute_dataset(data.train)
    model.fit(train, epochs=1, steps_per_epoch=3, verbose=0)  # compile
    start = time.perf_counter()
    model.fit(train, epochs=1, steps_per_epoch=args.steps, verbose=0)
    elapsed = time.perf_counter() - start
    print(json.dumps({"steps_per_s": args.steps / elapsed, "replicas": dist.num_replicas,
                      "chief": dist.is_chief, "batch": config["batch_size"]}))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(recipe, config, args):
    """The chief's result dict for one (recipe, configuration)."""
    command = [sys.executable, __file__, "--worker", "--recipe", recipe, "--config", config,
               "--steps", str(args.steps)]
    setting = data_setting(recipe, args.data)
    if setting:
        command += ["--data-setting", setting]
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    workers = 2 if config == "worker2" else 1
    envs = [env]
    if config.startswith("worker"):
        hosts = [f"127.0.0.1:{free_port()}" for _ in range(workers)]
        envs = [dict(env, TF_CONFIG=json.dumps(
            {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}))
            for i in range(workers)]
    procs = [subprocess.Popen(command, env=e, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for e in envs]
    outputs = [p.communicate(timeout=1800) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        if proc.returncode:
            lines = err.strip().splitlines() or [f"exit {proc.returncode}"]
            return {"error": lines[-1]}
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    return next(r for r in results if r["chief"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"),
                        help="the folder holding mnist/ and tinyshakespeare/")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"a subset of {','.join(CONFIGS)}")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--data-setting", help=argparse.SUPPRESS)
    _results.add_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs {','.join(unknown)}: expected some of {','.join(CONFIGS)}")
    _results.start()
    table = []
    for recipe in args.recipes.split(","):
        baseline = None
        for config in configs:
            result = run_config(recipe, config, args)
            load = "/".join(f"{x:.1f}" for x in os.getloadavg())
            if "error" in result:
                print(f"distribute recipe={recipe} config={config} error={result['error']!r}",
                      flush=True)
                table.append((recipe, config, "", "", f"error: {result['error']}", "", load))
                continue
            rate = result["steps_per_s"]
            baseline = baseline or rate
            print(f"distribute recipe={recipe} config={config} replicas={result['replicas']} "
                  f"batch={result['batch']} steps_per_s={rate:.2f} "
                  f"vs_first={rate / baseline:.2f}x load={load}", flush=True)
            table.append((recipe, config, result["replicas"], result["batch"], f"{rate:.2f}",
                          f"{rate / baseline:.2f}x", load))
    _results.report("distribute", ("recipe", "config", "replicas", "global batch", "steps/s",
                                   "vs first config", "load after"), table, args,
                    note=f"TensorFlow; {args.steps} timed steps after a 3-step warm-up, each "
                         "configuration in fresh processes.")


if __name__ == "__main__":
    main()
