"""The `kgen` command.

```
kgen recipes
kgen train RECIPE [--set key=value]... [--backend B] [--strategy S]
                  [--run-dir runs/NAME] [--overwrite]
                  [--export saved_models/NAME | --no-export]
kgen export MODEL.keras --to saved_models/NAME
kgen sample saved_models/NAME [--version N] [--n 16] [--seed 0] [--out FILE]
```

The Keras backend is chosen before Keras is imported, so nothing at the top
of this file may import Keras.
"""

import argparse
import os
import pathlib
import sys

BACKENDS = ("tensorflow", "jax", "torch")


def _parser():
    parser = argparse.ArgumentParser(
        prog="kgen",
        description=(
            "Train generative models with Keras 3 on TensorFlow, JAX or "
            "PyTorch, and ship them as SavedModels for TensorFlow Serving."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("recipes", help="list the recipes, one line each")

    train = sub.add_parser(
        "train", help="train a recipe, checkpoint it, and export it",
        description=(
            "Train RECIPE with Keras fit(): progress bar, TensorBoard logs and "
            "sample grids in the run directory, the best epoch saved as "
            "best.keras, and a killed run resumed where it stopped when the "
            "same command runs again. Exports the best model at the end."
        ),
    )
    train.add_argument("recipe", help="a recipe name (see `kgen recipes`) or a path to a recipe file")
    train.add_argument("--set", dest="sets", action="append", default=[],
                       metavar="KEY=VALUE",
                       help="override one recipe setting; repeat for more "
                            "(e.g. --set epochs=1 --set steps_per_epoch=3 --set data=DIR)")
    train.add_argument("--backend", choices=BACKENDS,
                       help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    train.add_argument("--strategy", default="none",
                       choices=("none", "mirrored", "data_parallel"),
                       help="distribution: mirrored (tf.distribute, tensorflow) "
                            "or data_parallel (keras.distribution, jax)")
    train.add_argument("--run-dir", type=pathlib.Path,
                       help="where logs, checkpoints and samples go (default: runs/RECIPE)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an earlier run in the run directory that had "
                            "other settings (its checkpoints, history and logs)")
    group = train.add_mutually_exclusive_group()
    group.add_argument("--export", type=pathlib.Path, metavar="saved_models/NAME",
                       help="base path to publish the best model to (default: saved_models/RECIPE)")
    group.add_argument("--no-export", action="store_true", help="do not export")

    export = sub.add_parser(
        "export", help="export a .keras model as the next SavedModel version",
        description="Publish MODEL.keras as saved_models/NAME/<next version>/ "
                    "(written by the TensorFlow backend, atomically).",
    )
    export.add_argument("model", type=pathlib.Path, help="the .keras file")
    export.add_argument("--to", required=True, type=pathlib.Path,
                        metavar="saved_models/NAME", help="the model's base path")
    export.add_argument("--max-rows", type=int, default=None, metavar="N",
                        help="most rows one request may ask for (default 256)")

    sample = sub.add_parser(
        "sample", help="draw samples from an exported SavedModel",
        description="Run the `generate` signature of an exported model through "
                    "TensorFlow alone (no kgen model code) and write the "
                    "samples: a PNG grid for images.",
    )
    sample.add_argument("model_dir", type=pathlib.Path, metavar="saved_models/NAME",
                        help="a model's base path, or one version's directory")
    sample.add_argument("--version", type=int, help="version to use (default: newest)")
    sample.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    sample.add_argument("--seed", type=int, default=0,
                        help="seed of the first sample; row i uses seed+i (default 0)")
    sample.add_argument("--label", type=int,
                        help="class label for conditional models (default: cycle through classes)")
    sample.add_argument("--out", type=pathlib.Path,
                        help="output file (default: samples.png in the current directory)")
    return parser


def _select_backend(name):
    if name is None:
        return
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise SystemExit(
                f"kgen: error: Keras is already loaded with the "
                f"{keras.backend.backend()} backend; cannot switch to {name}"
            )
    os.environ["KERAS_BACKEND"] = name


def _cmd_recipes(args):
    from kgen import config

    names = config.recipe_names()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {config.recipe_summary(name)}")


def _cmd_train(args):
    from kgen import training

    export_to = None if args.no_export else (args.export or pathlib.Path("saved_models") / _recipe_stem(args.recipe))
    result = training.train(
        args.recipe, sets=_parse_sets(args.sets), run_dir=args.run_dir,
        export_to=export_to, strategy=args.strategy, overwrite=args.overwrite,
    )
    if result.get("up_to_date"):
        print(f"model:       {result['best']}")
        if result["exported"]:
            print(f"exported:    {result['exported']}")
        return
    logs = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result["logs"].items())
                     if isinstance(v, float))
    print(f"\ntrained in {result['wall_s']:.1f}s: {logs}")
    print(f"model:       {result['best']}")
    print(f"samples:     {result['run_dir'] / 'samples'}")
    print(f"TensorBoard: tensorboard --logdir {result['run_dir'] / 'logs'}")
    if result["exported"]:
        print(f"exported:    {result['exported']}")


def _recipe_stem(recipe):
    return pathlib.Path(recipe).stem


def _parse_sets(items):
    from kgen import config

    return config.parse_sets(items)


def _cmd_export(args):
    from kgen.export import DEFAULT_MAX_ROWS, export_model

    # Print the version directory last: callers read it from the last line.
    print(export_model(args.model, args.to,
                       max_rows=args.max_rows or DEFAULT_MAX_ROWS))


def _cmd_sample(args):
    from kgen.serving.local import sample_saved_model

    out = sample_saved_model(
        args.model_dir, version=args.version, n=args.n, seed=args.seed,
        label=args.label, out=args.out,
    )
    print(out)


def main(argv=None):
    args = _parser().parse_args(argv)
    # Before anything from kgen that may import Keras.
    _select_backend(getattr(args, "backend", None))
    from kgen.config import ConfigError
    from kgen.data.errors import DataError
    from kgen.serving.local import SampleError

    try:
        {"recipes": _cmd_recipes, "train": _cmd_train, "export": _cmd_export,
         "sample": _cmd_sample}[args.command](args)
    except (ConfigError, DataError, FileNotFoundError, SampleError) as e:
        print(f"kgen: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
