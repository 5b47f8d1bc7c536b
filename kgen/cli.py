"""The `kgen` command.

```
kgen recipes
kgen train RECIPE [--set key=value]... [--backend B] [--strategy S]
                  [--run-dir runs/NAME] [--overwrite]
                  [--export saved_models/NAME | --no-export]
kgen export MODEL.keras --to saved_models/NAME
kgen sample saved_models/NAME [--version N] [--n 16] [--seed 0] [--out FILE]
kgen evaluate saved_models/NAME|MODEL.keras --data ... [--version N] [--n 1000]
              [--classifier CLASSIFIER.keras] [--keras MODEL.keras] [--json]
```

One error style: a user mistake (an argument, a setting, a path, a data or
model file) ends in one line, `kgen: error: ...`, naming the bad value, and
exit status 2; any other failure in one line, `kgen: internal error: ...`,
and exit status 1. `--debug` adds the traceback and TensorFlow's own log
lines, which are silenced otherwise.

The Keras backend is chosen before Keras is imported, so nothing at the top
of this file may import Keras.
"""

import argparse
import os
import pathlib
import sys

BACKENDS = ("tensorflow", "jax", "torch")
# Commands that import TensorFlow (to train, export or run a SavedModel).
_TENSORFLOW_COMMANDS = ("train", "export", "sample", "evaluate")


class CommandError(ValueError):
    """A command-line argument is wrong; the message names it."""


class _Parser(argparse.ArgumentParser):
    """argparse with kgen's one-line error: `kgen: error: ...`, status 2."""

    def error(self, message):
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f" (see: kgen {command + ' ' if command else ''}--help)"
        _fail(f"{message}{where}")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _debug_flag(parser, default):
    parser.add_argument(
        "--debug", action="store_true", default=default,
        help="on failure print the traceback, and show TensorFlow's log lines",
    )


def _parser():
    parser = _Parser(
        prog="kgen",
        description=(
            "Train generative models with Keras 3 on TensorFlow, JAX or "
            "PyTorch, and ship them as SavedModels for TensorFlow Serving."
        ),
        epilog=(
            "Trust: `kgen train PATH.py` runs that file's Python code, and "
            "`kgen sample` runs the TensorFlow graph of the SavedModel it is "
            "given; use only recipes and exports you trust (your own). "
            "Errors: a mistake in what you pass ends in one line `kgen: error: "
            "...` and exit status 2; any other failure in one line `kgen: "
            "internal error: ...` and exit status 1; --debug shows the "
            "traceback and TensorFlow's log lines."
        ),
    )
    _debug_flag(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Each command takes --debug too (after its name); SUPPRESS keeps a
    # `kgen --debug COMMAND` from being reset by the command's default.
    common = argparse.ArgumentParser(add_help=False)
    _debug_flag(common, default=argparse.SUPPRESS)

    sub.add_parser("recipes", help="list the recipes, one line each", parents=[common])

    train = sub.add_parser(
        "train", help="train a recipe, checkpoint it, and export it",
        description=(
            "Train RECIPE with Keras fit(): progress bar, TensorBoard logs and "
            "sample grids in the run directory, the best epoch saved as "
            "best.keras, and a killed run resumed where it stopped when the "
            "same command runs again. Exports the best model at the end. "
            "A RECIPE path runs that file's Python code: use only recipes you trust."
        ),
        parents=[common],
    )
    train.add_argument("recipe", help="a recipe name (see `kgen recipes`) or a path "
                                      "to a recipe file (its code runs)")
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
        parents=[common],
    )
    export.add_argument("model", type=pathlib.Path, help="the .keras file")
    export.add_argument("--to", required=True, type=pathlib.Path,
                        metavar="saved_models/NAME", help="the model's base path")
    export.add_argument("--max-rows", type=_positive_int, default=None, metavar="N",
                        help="most rows one request may ask for (default 256)")

    sample = sub.add_parser(
        "sample", help="draw samples from an exported SavedModel",
        description="Run the `generate` signature of an exported model through "
                    "TensorFlow alone (no kgen model code) and write the "
                    "samples: a PNG grid for images. This runs the graph the "
                    "SavedModel holds: use only exports you trust.",
        parents=[common],
    )
    sample.add_argument("model_dir", type=pathlib.Path, metavar="saved_models/NAME",
                        help="a model's base path, or one version's directory")
    sample.add_argument("--version", type=int, help="version to use (default: newest)")
    sample.add_argument("--n", type=_positive_int, default=16,
                        help="number of samples (default 16)")
    sample.add_argument("--seed", type=int, default=0,
                        help="seed of the first sample; row i uses seed+i (default 0)")
    sample.add_argument("--label", type=int,
                        help="class label for conditional models (default: row i's "
                             "seed mod the number of classes, so rows cycle through them)")
    sample.add_argument("--out", type=pathlib.Path,
                        help="output file, e.g. grid.png, or rows.npy for the float32 "
                             "array (default: samples.png in the current directory)")

    evaluate = sub.add_parser(
        "evaluate", help="measure a model's samples against real data, with a real floor",
        description=(
            "Draw --n samples (through the export's generate signature, or "
            "from a .keras file) and print every metric of the model's "
            "family: images: FID, KID (± std) and precision/recall in a "
            "classifier's feature space, the classifier's accuracy on a "
            "class-conditional model's samples, a VAE's test negative ELBO; "
            "language models: test bits per character and perplexity. The "
            "same numbers for held-out real data (the data's last 10%) "
            "are the floor. This runs the graph the SavedModel holds: use "
            "only exports you trust."
        ),
        parents=[common],
    )
    evaluate.add_argument("model", type=pathlib.Path, metavar="saved_models/NAME",
                          help="a model's base path, one version's directory, "
                               "or a .keras file (e.g. runs/NAME/best.keras)")
    evaluate.add_argument("--version", type=int, help="version to use (default: newest)")
    evaluate.add_argument("--data", help="the real data: 'digits', an MNIST IDX directory, "
                                         "... (as --set data= takes), or a text file")
    evaluate.add_argument("--n", type=int, default=1000,
                          help="samples compared, at least 2; at most the held-out "
                               "split's size is used (default 1000)")
    evaluate.add_argument("--classifier", type=pathlib.Path, metavar="CLASSIFIER.keras",
                          help="features and labels for images, e.g. "
                               "runs/mnist_classifier/best.keras")
    evaluate.add_argument("--features", choices=("classifier", "inception"),
                          default="classifier",
                          help="the feature space of FID/KID (inception: InceptionV3, "
                               "when its weights file is on disk)")
    evaluate.add_argument("--inception-weights", type=pathlib.Path, metavar="FILE.h5",
                          help="InceptionV3 _notop weights (default: "
                               "$KGEN_INCEPTION_WEIGHTS or ~/.keras/models/)")
    evaluate.add_argument("--keras", type=pathlib.Path, metavar="MODEL.keras",
                          help="the .keras model for a VAE's ELBO or an LM's bits "
                               "(default: runs/NAME/best.keras)")
    evaluate.add_argument("--seed", type=int, default=0,
                          help="seed of the first sample; row i uses seed+i (default 0)")
    evaluate.add_argument("--batch", type=_positive_int, default=None, metavar="N",
                          help="rows per call (default 256, at most the export's max_rows)")
    evaluate.add_argument("--json", action="store_true",
                          help="print one JSON object instead of the table")
    return parser


def _select_backend(name):
    if name is None:
        return
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise CommandError(
                f"--backend {name}: Keras is already loaded with the "
                f"{keras.backend.backend()} backend in this process"
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

    export_to = None if args.no_export else (args.export or _default_export(args.recipe))
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
    if (result["run_dir"] / "samples").is_dir():
        print(f"samples:     {result['run_dir'] / 'samples'}")
    print(f"TensorBoard: tensorboard --logdir {result['run_dir'] / 'logs'}")
    if result["exported"]:
        print(f"exported:    {result['exported']}")


def _recipe_stem(recipe):
    return pathlib.Path(recipe).stem


def _default_export(recipe):
    """`saved_models/<recipe>`, or None for a recipe whose model is not
    served (`EXPORT = False`: a classifier, kept as its `.keras` file)."""
    from kgen import config

    if not getattr(config.load_recipe(recipe), "EXPORT", True):
        return None
    return pathlib.Path("saved_models") / _recipe_stem(recipe)


def _parse_sets(items):
    from kgen import config

    return config.parse_sets(items)


def _cmd_export(args):
    import zipfile

    from kgen.export import DEFAULT_MAX_ROWS, export_model

    model = args.model
    if not model.is_file():
        raise CommandError(f"{model}: no such model file (expected a .keras file)")
    # A .keras file is a zip archive holding config.json and the weights.
    if not zipfile.is_zipfile(model):
        raise CommandError(f"{model}: damaged .keras file (not a zip archive)")
    with zipfile.ZipFile(model) as archive:
        if "config.json" not in archive.namelist():
            raise CommandError(
                f"{model}: damaged .keras file (the zip archive holds no config.json)"
            )
    # Print the version directory last: callers read it from the last line.
    print(export_model(model, args.to, max_rows=args.max_rows or DEFAULT_MAX_ROWS))


def _cmd_sample(args):
    from kgen.export.sample import sample_saved_model

    out = sample_saved_model(
        args.model_dir, version=args.version, n=args.n, seed=args.seed,
        label=args.label, out=args.out,
    )
    print(out)


def _cmd_evaluate(args):
    import json

    from kgen.evaluate import evaluate
    from kgen.evaluate import format_report

    report = evaluate(
        args.model, version=args.version, data=args.data, n=args.n,
        classifier=args.classifier, seed=args.seed, batch=args.batch,
        keras_path=args.keras, features=args.features,
        inception_weights=args.inception_weights,
        progress=not args.json,
    )
    print(json.dumps(report) if args.json else format_report(report))


_COMMANDS = {"recipes": _cmd_recipes, "train": _cmd_train, "export": _cmd_export,
             "sample": _cmd_sample, "evaluate": _cmd_evaluate}


def _fail(message, status=2):
    print(f"kgen: error: {message}", file=sys.stderr)
    sys.exit(status)


def _user_errors():
    """The exceptions that mean a user mistake: each message names the value."""
    from kgen.config import ConfigError
    from kgen.data.errors import DataError
    from kgen.io import DamagedFileError
    from kgen.evaluate import EvaluateError
    from kgen.export.sample import SampleError
    from kgen.media import OutputError

    # A diverged run is named by kgen.callbacks, which loads Keras: only
    # look for it when it can have been raised.
    diverged = (sys.modules["kgen.callbacks"].NonFiniteError,) if "kgen.callbacks" in sys.modules else ()
    return (CommandError, ConfigError, DataError, SampleError, EvaluateError, OutputError,
            DamagedFileError, *diverged,
            FileNotFoundError, FileExistsError, IsADirectoryError,
            NotADirectoryError, PermissionError)


def _message(error):
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _quiet_tensorflow():
    """Keep TensorFlow's C++ start-up lines (oneDNN, CUDA probing) off the
    terminal: TF_CPP_MIN_LOG_LEVEL=3 filters what is logged after start-up,
    and the lines it writes while loading (before its logging is set up) go
    to /dev/null. Python-side TensorFlow and absl warnings are raised to
    errors only."""
    import logging

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    try:
        saved = os.dup(2)
    except OSError:
        saved = None
    if saved is not None:
        sys.stderr.flush()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    try:
        import tensorflow  # noqa: F401
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    for name in ("tensorflow", "absl", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv=None):
    args = _parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        # Before anything from kgen that may import Keras. An export is
        # written by the TensorFlow backend: choose it rather than start a
        # second process for it.
        backend = getattr(args, "backend", None)
        if args.command == "export" and "keras" not in sys.modules:
            backend = "tensorflow"
        _select_backend(backend)
        if args.command in _TENSORFLOW_COMMANDS and not debug:
            _quiet_tensorflow()
        _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("kgen: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if debug:
            import traceback

            traceback.print_exc()
        if isinstance(e, _user_errors()):
            _fail(_message(e))
        print(f"kgen: internal error: {type(e).__name__}: {_message(e)}"
              + ("" if debug else " (run again with --debug for the traceback)"),
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
