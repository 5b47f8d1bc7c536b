"""The `kgen` command.

```
kgen recipes [NAME]
kgen train RECIPE [--set key=value]... [--backend B] [--strategy S]
                  [--run-dir runs/NAME] [--overwrite]
                  [--export saved_models/NAME | --no-export]
kgen export MODEL.keras --to saved_models/NAME
kgen sample saved_models/NAME [--version N] [--n 16] [--seed 0] [--out FILE]
kgen sample --url http://HOST:8501/v1/models/NAME [--version N] [--n 16] ...
kgen serve saved_models/ [--host 127.0.0.1] [--port 8501] [--grpc-port 8500]
kgen deploy saved_models/ --out deploy/ [--overwrite] [--enable-batching] ...
kgen tune RECIPE --space KEY=SPEC... --objective NAME --trials N [--workers N] ...
kgen distill RUN_OR_RECIPE [--steps 4] [--set key=value]... [--run-dir DIR] ...
kgen evaluate saved_models/NAME --data DATA --classifier CLASSIFIER.keras ...  (images, audio)
kgen evaluate saved_models/NAME|MODEL.keras --data TEXT [--keras MODEL.keras] ...  (text)
```

One error style: a user mistake (an argument, a setting, a path, a data or
model file: a `kgen.errors.UserError`, or an `OSError` naming a path) ends
in one line, `kgen: error: ...`, naming the bad value, and exit status 2;
any other failure in one line, `kgen: internal error: ...`, and exit
status 1. `--debug` adds the traceback and TensorFlow's own log
lines, which are silenced otherwise.

The Keras backend is chosen before Keras is imported, so nothing at the top
of this file may import Keras.
"""

import argparse
import os
import pathlib
import sys

from kgen import lock as kgen_lock
from kgen.errors import UserError
from kgen.errors import first_line
from kgen.serving import defaults as serving_defaults

BACKENDS = ("tensorflow", "jax", "torch")
# Commands that import TensorFlow (to train, export or run a SavedModel).
_TENSORFLOW_COMMANDS = ("train", "export", "sample", "tune", "evaluate", "distill")


class CommandError(UserError, ValueError):
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

    recipes = sub.add_parser(
        "recipes", help="list the recipes, one line each; or one recipe's settings",
        description="With no NAME, list the recipes that ship with kgen, one "
                    "line each. With NAME (a recipe name or path), print its "
                    "settings: each one's default, type and what it does; "
                    "`kgen train NAME --set KEY=VALUE` changes one.",
        parents=[common])
    recipes.add_argument("name", nargs="?", metavar="NAME",
                         help="a recipe name (or path) whose settings to print")

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
                       choices=("none", "mirrored", "multi_worker", "tpu", "data_parallel"),
                       help="distribution: mirrored (one host), multi_worker "
                            "(one process per worker, cluster from TF_CONFIG) or tpu "
                            "(tf.distribute, tensorflow); data_parallel "
                            "(keras.distribution, jax); torch: none")
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
                    "samples: a PNG grid for images, WAV files for audio. This runs the graph the "
                    "SavedModel holds: use only exports you trust.",
        parents=[common],
    )
    sample.add_argument("model_dir", type=pathlib.Path, metavar="saved_models/NAME",
                        nargs="?",
                        help="a model's base path, or one version's directory")
    sample.add_argument("--url", metavar="http://HOST:PORT/v1/models/NAME",
                        help="draw the samples from a server instead (kgen serve, TF "
                             "Serving or KServe; grpc://HOST:PORT/v1/models/NAME for "
                             "gRPC): the same rows as from the export. The server does "
                             "not publish kgen.json: a conditional model needs --label, "
                             "an LM --set prompt=..., a diffusion model --set num_steps=N")
    sample.add_argument("--api-key", default=None, metavar="KEY",
                        help="with --url: the server's API key (default: $KGEN_API_KEY)")
    sample.add_argument("--ca-cert", default=None, metavar="PEM",
                        help="with an https:// or grpcs:// --url: the certificate "
                             "authority to trust (default: the system's)")
    sample.add_argument("--version", type=int, help="version to use (default: newest)")
    sample.add_argument("--n", type=_positive_int, default=16,
                        help="number of samples (default 16), drawn in chunks of the "
                             "export's max_rows; an image grid or WAV output holds at "
                             "most 10000, a .npy array or a text file any number "
                             "(written chunk by chunk)")
    sample.add_argument("--seed", type=int, default=0,
                        help="seed of the first sample; row i uses seed+i (default 0)")
    sample.add_argument("--label", type=int,
                        help="class label for conditional models (default: row i's "
                             "seed mod the number of classes, so rows cycle through them)")
    sample.add_argument("--set", dest="sets", action="append", default=[],
                        metavar="NAME=VALUE",
                        help="one value of a generate input for every row, over the "
                             "export's default (e.g. --set num_steps=20 --set "
                             "prompt=ROMEO:); repeat for more")
    sample.add_argument("--out", type=pathlib.Path,
                        help="output file, e.g. grid.png, or rows.npy for the float32 "
                             "array; for audio a folder (one WAV per row) or x.wav; for "
                             "video clips.gif or clips.mp4 (with a PNG contact sheet "
                             "beside it) (default: samples.png, samples/ for audio, "
                             "samples.txt for text, samples.gif for video)")
    deploy = sub.add_parser(
        "deploy", help="write TF Serving's models.config, a Compose file and KServe YAML",
        description="From a tree of exported models (saved_models/NAME/<version>/), "
                    "write OUT/models.config (TF Serving's model_config_list), "
                    "OUT/docker-compose.yml (tensorflow/serving on the tree, mounted "
                    "read-only) and OUT/kserve/NAME.yaml (one KServe InferenceService "
                    "per model, with a storageUri placeholder to replace).",
        parents=[common],
    )
    deploy.add_argument("tree", type=pathlib.Path, metavar="saved_models/",
                        help="the folder holding one folder per exported model")
    deploy.add_argument("--out", required=True, type=pathlib.Path, metavar="DIR",
                        help="the folder to write (must be new or empty)")
    deploy.add_argument("--overwrite", action="store_true",
                        help="replace --out when it exists and is not empty")
    deploy.add_argument("--image", default=None,
                        help="TF Serving's Docker image in the Compose file (default: "
                             "tensorflow/serving at the release the exports' kgen.json "
                             "name as proven to load them; alone, its tag also sets "
                             "--runtime-version)")
    deploy.add_argument("--runtime-version", default=None, metavar="TAG",
                        help="KServe's runtimeVersion, the TF Serving release (default: "
                             "the same release as --image; alone, it also sets the "
                             "image to tensorflow/serving:TAG)")
    deploy.add_argument("--rest-port", type=int, default=8501,
                        help="host port of the REST API (default 8501)")
    deploy.add_argument("--grpc-port", type=int, default=8500,
                        help="host port of the gRPC API (default 8500)")
    deploy.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                        help="host address the Compose file publishes the ports on "
                             "(default 127.0.0.1, this machine only; 0.0.0.0: all)")
    deploy.add_argument("--poll-seconds", type=int, default=30,
                        help="how often TF Serving looks for new versions (default 30)")
    deploy.add_argument("--enable-batching", action="store_true",
                        help="merge concurrent requests into batches in TF Serving "
                             "(at most the smallest max_rows of the models)")
    deploy.add_argument("--storage-uri", default=None, metavar="URI",
                        help="where the tree is uploaded for KServe; each model's "
                             "storageUri is URI/NAME (default: a placeholder to replace)")
    deploy.add_argument("--min-replicas", type=int, default=1,
                        help="KServe replicas kept running (default 1; 0 scales to zero)")
    deploy.add_argument("--max-replicas", type=int, default=3,
                        help="KServe's most replicas (default 3)")
    deploy.add_argument("--scale-metric", default="concurrency",
                        help="KServe autoscaling metric: concurrency, rps, cpu or "
                             "memory (default concurrency)")
    deploy.add_argument("--scale-target", type=int, default=4,
                        help="the metric's target per replica (default 4)")

    serve = sub.add_parser(
        "serve", help="serve a saved_models/ tree: TF Serving REST and gRPC, KServe V2",
        description="Serve every model of a saved_models/ tree (NAME/<version>/) with "
                    "KServe's model server, loading each SavedModel with TensorFlow "
                    "alone: TF Serving's REST API (POST /v1/models/NAME:predict, "
                    "status, metadata), KServe's V2 REST and gRPC, TF Serving's gRPC "
                    "PredictionService, OpenAI-compatible completions with token "
                    "streaming for language models (POST /openai/v1/completions, GET "
                    "/openai/v1/models), health and Prometheus /metrics. A version "
                    "published while it runs is served without a restart. This runs "
                    "the graphs the SavedModels hold: serve only exports you trust.",
        parents=[common],
    )
    serve.add_argument("root", type=pathlib.Path, metavar="saved_models/",
                       help="the tree holding NAME/<version>/saved_model.pb")
    serve.add_argument("--host", default=serving_defaults.HOST,
                       help=f"address to listen on (default {serving_defaults.HOST}; "
                            "0.0.0.0 for every interface)")
    serve.add_argument("--port", type=_positive_int, default=serving_defaults.REST_PORT,
                       help="REST port: TF Serving /v1, V2 /v2, health, /metrics "
                            f"(default {serving_defaults.REST_PORT})")
    serve.add_argument("--grpc-port", type=_positive_int, default=serving_defaults.GRPC_PORT,
                       help="gRPC port: V2 and TF Serving's PredictionService "
                            f"(default {serving_defaults.GRPC_PORT})")
    serve.add_argument("--max-body-bytes", type=_positive_int,
                       default=serving_defaults.MAX_BODY_BYTES, metavar="N",
                       help="largest request body; larger ones are answered 413 (default "
                            f"{serving_defaults.size_text(serving_defaults.MAX_BODY_BYTES)})")
    batching = serve.add_mutually_exclusive_group()
    batching.add_argument("--no-batching", action="store_true",
                          help="run every request alone")
    batching.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                          help="most rows one merged call of concurrent requests holds "
                               f"(default {serving_defaults.BATCH_SIZE}, and at most the "
                               "export's max_rows)")
    serve.add_argument("--batch-wait-ms", type=_non_negative_float, default=None, metavar="T",
                       help="how long an idle model waits for more requests to merge "
                            f"(default {serving_defaults.BATCH_WAIT_MS:g})")
    serve.add_argument("--poll-seconds", type=_positive_float,
                       default=serving_defaults.POLL_SECONDS, metavar="S",
                       help="how often the tree is read for new models and versions "
                            f"(default {serving_defaults.POLL_SECONDS:g})")
    serve.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="threads running TensorFlow calls (default: CPUs + 2)")
    serve.add_argument("--api-key", default=None, metavar="KEY",
                       help="require 'Authorization: Bearer KEY' (gRPC: authorization "
                            "metadata) on every route but health (default: "
                            "$KGEN_API_KEY, else none)")
    serve.add_argument("--allow-repository-api", action="store_true",
                       help="answer KServe's model load/unload routes (403 without it)")
    serve.add_argument("--read-timeout", type=_positive_float,
                       default=serving_defaults.READ_TIMEOUT, metavar="S",
                       help="seconds a request body may take to arrive; 408 after "
                            f"(default {serving_defaults.READ_TIMEOUT:g})")
    serve.add_argument("--request-timeout", type=_positive_float,
                       default=serving_defaults.REQUEST_TIMEOUT, metavar="S",
                       help="seconds from a request's body to its answer; 504 after "
                            f"(default {serving_defaults.REQUEST_TIMEOUT:g})")
    serve.add_argument("--tls-cert", default=None, metavar="PEM",
                       help="serve REST over HTTPS and gRPC with TLS: the certificate "
                            "(chain); needs --tls-key")
    serve.add_argument("--tls-key", default=None, metavar="PEM",
                       help="the certificate's private key")
    serve.add_argument("--max-streams", type=_positive_int,
                       default=serving_defaults.MAX_STREAMS, metavar="N",
                       help="OpenAI completions (POST /openai/v1/completions) decoding at "
                            "once, streamed or not; more are answered 429 (default "
                            f"{serving_defaults.MAX_STREAMS})")
    serve.add_argument("--stream-timeout", type=_positive_float,
                       default=serving_defaults.STREAM_TIMEOUT, metavar="S",
                       help="seconds a streamed completion may run after its first byte "
                            "(--request-timeout bounds the time to that byte); it then "
                            "ends with an error event (default "
                            f"{serving_defaults.STREAM_TIMEOUT:g})")

    evaluate = sub.add_parser(
        "evaluate", help="measure a model's samples against real data, with a real floor",
        usage=("\n  kgen evaluate saved_models/NAME --data DATA --classifier "
               "CLASSIFIER.keras [options]   (images, audio)"
               "\n  kgen evaluate saved_models/NAME|MODEL.keras --data TEXT "
               "[--keras MODEL.keras] [options]   (language models)"),
        description=(
            "Draw --n samples (through the export's generate signature, or "
            "from a .keras file) and print every metric of the model's "
            "family: images: FID, KID (± std) and precision/recall in a "
            "classifier's feature space, the classifier's accuracy on a "
            "class-conditional model's samples, a VAE's test negative ELBO; "
            "audio: the spoken-digit classifier's accuracy on the clips, and "
            "their peak, RMS and seconds sounding; "
            "language models: test bits per character and perplexity. The "
            "same numbers for held-out real data (the data's last 10%, or "
            "the FSDD's test takes) are the floor. This runs the graph the SavedModel holds: use "
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
                          help="required for image and audio models: the judge's "
                               "features and labels, e.g. "
                               "runs/mnist_classifier/best.keras (images) or "
                               "runs/digit_classifier_fsdd/best.keras (audio); "
                               "not used for language models")
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
    evaluate.add_argument("--set", dest="sets", action="append", default=[],
                          metavar="NAME=VALUE",
                          help="one value of a generate input for every row, over the "
                               "export's default (e.g. --set num_steps=20 --set "
                               "guidance_scale=5); repeat for more")
    evaluate.add_argument("--json", action="store_true",
                          help="print one JSON object instead of the table")
    _tune_parser(sub, common)
    return parser


def _positive_float(text):
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _non_negative_float(text):
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value




def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text}")
    return value


def _tune_parser(sub, common):
    _add_distill_parser(sub, common)

    tune = sub.add_parser(
        "tune", help="search recipe settings with Optuna",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Search RECIPE's settings with Optuna. Each trial is a normal kgen\n"
            "run (checkpoints, backups, history, TensorBoard) in DIR/trial-NNNN/,\n"
            "with its settings merged over --set; the objective is reported each\n"
            "epoch so the pruner can stop a bad trial early (recorded PRUNED,\n"
            "never exported). The study lives in DIR/study.db (SQLite) unless\n"
            "--storage names another database; run the same command again to\n"
            "resume a stopped search: finished trials are kept, and a trial that\n"
            "was running is enqueued again and resumes from its run's backup.\n"
            "At the end: a table of the trials, the best settings as a --set line\n"
            "(also in DIR/best.txt) and TensorBoard HParams in DIR/hparams/.\n"
            "\n"
            "SPEC, one per --space KEY=SPEC (KEY a setting of the recipe):\n"
            "  float:LOW:HIGH       uniform, e.g. beta=float:0.5:2\n"
            "  float:LOW:HIGH:log   log-uniform, e.g. learning_rate=float:1e-4:1e-2:log\n"
            "  int:LOW:HIGH[:STEP]  integers, e.g. latent_dim=int:4:16:4\n"
            "  choice:A,B,C         values written as --set writes them, e.g.\n"
            "                       likelihood=choice:bernoulli,gaussian; a list\n"
            "                       setting separates its choices with |:\n"
            "                       filters=choice:16,32|32,64\n"
            "\n"
            "Example:\n"
            "  kgen tune vae_digits --space learning_rate=float:1e-4:1e-2:log \\\n"
            "      --space latent_dim=int:4:16:4 --objective val_loss --trials 20 \\\n"
            "      --set epochs=10 --workers 2"
        ),
        parents=[common],
    )
    tune.add_argument("recipe", help="a recipe name (see `kgen recipes`) or a path "
                                     "to a recipe file (its code runs)")
    tune.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                      help="a setting to search and its range; repeat. SPEC: "
                           "float:LOW:HIGH[:log], int:LOW:HIGH[:STEP] or choice:A,B,C "
                           "(see above)")
    tune.add_argument("--objective", required=True, metavar="NAME",
                      help="the logged value to optimize: val_loss, loss, val_kid, ...")
    tune.add_argument("--direction", choices=("minimize", "maximize"), default="minimize",
                      help="minimize (default) or maximize the objective")
    tune.add_argument("--trials", type=_positive_int, required=True, metavar="N",
                      help="trials in the whole search (finished ones of an earlier, "
                           "stopped run of the same command count)")
    tune.add_argument("--dir", type=pathlib.Path, metavar="tunes/NAME",
                      help="the search's directory: study.db, trial-NNNN/, hparams/, "
                           "best.txt (default: tunes/RECIPE)")
    tune.add_argument("--storage", metavar="URL",
                      help="an Optuna database URL, e.g. postgresql://user@host/db, "
                           "so several machines share the study (default: "
                           "sqlite:///DIR/study.db)")
    tune.add_argument("--study", metavar="NAME",
                      help="the study's name in the storage (default: DIR's name)")
    tune.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                      help="Optuna pruner that stops bad trials early (default median)")
    tune.add_argument("--pruner-startup", type=_non_negative_int, metavar="N",
                      help="median pruner: prune nothing until N trials completed "
                           "(Optuna's n_startup_trials, default 5)")
    tune.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                      help="processes on this machine sharing the study (default 1)")
    tune.add_argument("--set", dest="sets", action="append", default=[],
                      metavar="KEY=VALUE", help="a fixed setting for every trial; repeat")
    tune.add_argument("--timeout", type=_positive_seconds, metavar="S",
                      help="start no new trial after S seconds")
    tune.add_argument("--backend", choices=BACKENDS,
                      help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    tune.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)


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
    from kgen import recipe
    from kgen.config import format_value

    if args.name:
        if not getattr(args, "debug", False):
            _quiet_tensorflow()  # a recipe imports its model's modules
        rows = [(key, format_value(default), kind, note)
                for key, default, kind, note in recipe.settings(args.name)]
        header = ("setting", "default", "type", "")
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(3)]
        print(f"{args.name}: {recipe.summary(args.name) or '(no description)'}")
        print(f"change one with: kgen train {args.name} --set KEY=VALUE\n")
        for row in [header, *rows]:
            print("  ".join(f"{row[i]:<{widths[i]}}" for i in range(3)) + f"  {row[3]}")
        return
    names = recipe.names()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {recipe.summary(name)}")


def _cmd_train(args):
    from kgen import training

    export_to = None if args.no_export else (args.export or _default_export(args.recipe))
    # A terminal gets Keras' live progress bar; a log file or a pipe one
    # plain line per epoch (no carriage returns, no colour codes).
    verbose = "auto" if _is_terminal(sys.stdout) else 2
    result = training.train(
        args.recipe, sets=_parse_sets(args.sets), run_dir=args.run_dir,
        export_to=export_to, strategy=args.strategy, overwrite=args.overwrite,
        verbose=verbose,
    )
    if result.get("chief") is False:
        print(f"worker done: the chief writes {result['run_dir']}")
        return
    if result.get("up_to_date"):
        print(f"model:       {result['best']}")
        if result["exported"]:
            print(f"exported:    {result['exported']}")
        return
    logs = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result["logs"].items())
                     if isinstance(v, float))
    if result.get("trained_earlier"):  # a rerun that only exported the trained run
        took = "" if result["wall_s"] is None else f" in {result['wall_s']:.1f}s"
        print(f"\ntrained earlier{took} (this run only exported it): {logs}")
    else:
        print(f"\ntrained in {result['wall_s']:.1f}s: {logs}")
    print(f"model:       {result['best']}")
    if (result["run_dir"] / "samples").is_dir():
        print(f"samples:     {result['run_dir'] / 'samples'}")
    print(f"TensorBoard: tensorboard --logdir {result['run_dir'] / 'logs'}")
    if result["exported"]:
        print(f"exported:    {result['exported']}")


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _recipe_stem(recipe):
    return pathlib.Path(recipe).stem


def _default_export(recipe):
    """`saved_models/<recipe>`, or None for a recipe whose model is not
    served (`EXPORT = False`: a classifier, kept as its `.keras` file)."""
    from kgen import recipe as kgen_recipe

    if not kgen_recipe.load(recipe).EXPORT:
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
    with kgen_lock.hold_run_of(model):  # a run's model: no run writes it meanwhile
        print(export_model(model, args.to, max_rows=args.max_rows or DEFAULT_MAX_ROWS))


def _cmd_sample(args):
    from kgen.export.sample import sample_from_server
    from kgen.export.sample import sample_saved_model

    if (args.model_dir is None) == (args.url is None):
        raise CommandError("give an exported model (saved_models/NAME) or --url, "
                           "not both" if args.url else
                           "give an exported model (saved_models/NAME) or --url URL")
    options = dict(version=args.version, n=args.n, seed=args.seed, label=args.label,
                   out=args.out, settings=_input_settings(args.sets))
    if args.url:
        print(sample_from_server(args.url, api_key=args.api_key, ca_cert=args.ca_cert,
                                 **options))
    else:
        print(sample_saved_model(args.model_dir, **options))


def _check_sample(args):
    """`kgen sample`'s own checks, before TensorFlow loads: a mistake (an
    `--n` too large for the output, a bad suffix) is refused at once."""
    from kgen.export.sample import check_request

    if args.model_dir is not None and args.url is None:
        check_request(args.model_dir, args.version, args.n, args.seed, args.out)


# Checks a command makes before TensorFlow is imported.
_EARLY_CHECKS = {"sample": _check_sample}


def _cmd_deploy(args):
    from kgen.serving import deploy

    options = {"overwrite": args.overwrite, "rest_port": args.rest_port,
               "grpc_port": args.grpc_port, "poll_seconds": args.poll_seconds,
               "batching": args.enable_batching, "min_replicas": args.min_replicas,
               "max_replicas": args.max_replicas, "scale_metric": args.scale_metric,
               "scale_target": args.scale_target, "bind": args.bind}
    if args.image:
        options["image"] = args.image
    if args.runtime_version:
        options["runtime_version"] = args.runtime_version
    if args.storage_uri:
        options["storage_uri"] = args.storage_uri
    result = deploy.write_deployment(args.tree, args.out, **options)
    names = ", ".join(m["name"] for m in result["models"])
    print(f"models:  {names}")
    print(f"serving: {result['image']} (KServe runtimeVersion {result['runtime_version']})")
    for name in result["files"]:
        print(f"wrote:   {result['out'] / name}")
    for note in result["notes"]:
        print(f"note:    {note}")


def _cmd_serve(args):
    from kgen.serving.tree import check_tree

    if args.no_batching and args.batch_wait_ms is not None:
        _fail("--batch-wait-ms: not with --no-batching (nothing waits)")
    _require_extra("kserve", "kgen serve needs KServe", "serving")
    check_tree(args.root)  # before TensorFlow and KServe load: fails fast
    from kgen.serving.options import network_options

    options = network_options(
        api_key=args.api_key, allow_repository_api=args.allow_repository_api,
        read_timeout=args.read_timeout, request_timeout=args.request_timeout,
        tls_cert=args.tls_cert, tls_key=args.tls_key)
    if not args.debug:
        _quiet_tensorflow()
    from kgen.serving.server import serve

    serve(args.root, host=args.host, port=args.port, grpc_port=args.grpc_port,
          max_body_bytes=args.max_body_bytes, batching=not args.no_batching,
          batch_size=args.batch_size or serving_defaults.BATCH_SIZE,
          batch_wait_ms=(serving_defaults.BATCH_WAIT_MS if args.batch_wait_ms is None
                         else args.batch_wait_ms),
          poll_seconds=args.poll_seconds, threads=args.threads, debug=args.debug,
          options=options, max_streams=args.max_streams, stream_timeout=args.stream_timeout)
    # Stopped cleanly (SIGINT or SIGTERM): nothing is left to write, and the
    # C++ teardown of TensorFlow and gRPC would keep the process seconds longer.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _require_extra(module, what, extra):
    """A `CommandError` saying which extra to install when `module` is
    missing: `kgen: error: kgen serve needs KServe: pip install 'kgen[serving]'`."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise CommandError(f"{what}: pip install 'kgen[{extra}]'")


def _add_distill_parser(sub, common):
    """`kgen distill`'s arguments (its settings are `kgen.distill.DEFAULTS`)."""
    distill = sub.add_parser(
        "distill", help="distil a trained diffusion run into a few-step student",
        description=(
            "Progressive distillation (Salimans & Ho, 2022): starting from the "
            "teacher's DDIM sampler at start_steps steps, each round trains a "
            "student to take in one step what its teacher takes in two, halving "
            "the step count down to --steps. The student is a diffusion model "
            "sampling with DDIM at --steps steps by default, exported and served "
            "like any other. A killed run resumes where it stopped when the same "
            "command runs again; the teacher's run is only read. Settings "
            "(--set KEY=VALUE): steps, start_steps, epochs_per_round, "
            "steps_per_epoch, batch_size, learning_rate, guidance_scale, "
            "label_dropout, ema_decay, data, seed."),
        parents=[common],
    )
    distill.add_argument("run", metavar="RUN_OR_RECIPE",
                         help="the run directory of a trained diffusion model, or a "
                              "recipe name whose runs/RECIPE is one")
    distill.add_argument("--steps", type=_positive_int, default=None,
                         help="the student's step count (default 4)")
    distill.add_argument("--set", dest="sets", action="append", default=[],
                         metavar="KEY=VALUE",
                         help="one distillation setting; repeat for more (e.g. --set "
                              "start_steps=64 --set epochs_per_round=3 --set data=DIR)")
    distill.add_argument("--backend", choices=BACKENDS,
                         help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    distill.add_argument("--run-dir", type=pathlib.Path,
                         help="where the rounds' checkpoints and logs go (default: "
                              "runs/<teacher run>-distill<steps>)")
    distill.add_argument("--overwrite", action="store_true",
                         help="replace an earlier distillation in the run directory "
                              "that had other settings")
    group = distill.add_mutually_exclusive_group()
    group.add_argument("--export", type=pathlib.Path, metavar="saved_models/NAME",
                       help="base path to publish the student to (default: "
                            "saved_models/<run directory name>)")
    group.add_argument("--no-export", action="store_true", help="do not export")


def _cmd_distill(args):
    from kgen import distill

    sets = _parse_sets(args.sets)
    if args.steps is not None:
        if "steps" in sets and sets["steps"] != str(args.steps):
            raise CommandError(f"--steps {args.steps} and --set steps={sets['steps']}: "
                               "give the step count once")
        sets["steps"] = str(args.steps)
    export_to = None if args.no_export else (args.export or "default")
    verbose = "auto" if _is_terminal(sys.stdout) else 2
    result = distill.distill(args.run, sets=sets, run_dir=args.run_dir,
                             export_to=export_to, overwrite=args.overwrite,
                             verbose=verbose)
    steps = " -> ".join([str(result["rounds"][0][0])]
                        + [str(student) for _, student in result["rounds"]])
    if result["wall_s"] is None:
        print(f"{result['run_dir']} is a finished distillation with these settings "
              f"(steps {steps}): nothing trained")
    else:
        print(f"\ndistilled in {result['wall_s']:.1f}s (steps {steps})")
    print(f"model:       {result['best']}")
    print(f"TensorBoard: tensorboard --logdir {result['run_dir'] / 'logs'}")
    if result["exported"]:
        print(f"exported:    {result['exported']}")


def _cmd_tune(args):
    from kgen import tune

    tune.tune(args.recipe, args.space, args.objective, args.trials,
              direction=args.direction, sets=_parse_sets(args.sets), directory=args.dir,
              storage=args.storage, study=args.study, pruner=args.pruner,
              pruner_startup=args.pruner_startup, workers=args.workers,
              timeout=args.timeout, worker_index=args.worker_index)


def _input_settings(items):
    """`--set NAME=VALUE` of `kgen sample` and `kgen evaluate`: one value of
    a `generate` input for every row, `{name: text}`."""
    settings = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise CommandError(f"--set {item}: expected NAME=VALUE")
        settings[name.strip()] = value
    return settings


def _cmd_evaluate(args):
    import json

    from kgen.evaluate import evaluate
    from kgen.evaluate import format_report

    report = evaluate(
        args.model, version=args.version, data=args.data, n=args.n,
        classifier=args.classifier, seed=args.seed, batch=args.batch,
        keras_path=args.keras, features=args.features,
        inception_weights=args.inception_weights,
        settings=_input_settings(args.sets), progress=not args.json,
    )
    print(json.dumps(report) if args.json else format_report(report))


_COMMANDS = {"recipes": _cmd_recipes, "train": _cmd_train, "export": _cmd_export,
             "sample": _cmd_sample, "deploy": _cmd_deploy, "serve": _cmd_serve,
             "tune": _cmd_tune, "evaluate": _cmd_evaluate, "distill": _cmd_distill}


def _fail(message, status=2):
    print(f"kgen: error: {message}", file=sys.stderr)
    sys.exit(status)


# Mistakes in a path the user gave, which Python names with the path.
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError,
                NotADirectoryError, PermissionError)


def _user_errors():
    """The exceptions that mean a user mistake: each message names the value
    (`UserError`, and an OS error about a path the user gave)."""
    return (UserError, *_PATH_ERRORS)


def _is_user_error(error):
    """A `_user_errors()` exception, or an OS error about a name the user
    typed that the file system cannot hold (too long)."""
    import errno

    return isinstance(error, _user_errors()) or (
        isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG)


def _message(error):
    """The one line a failure is shown as: a path error's path and reason,
    else the first line of the message."""
    import errno

    if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG:
        return _name_too_long(error.filename or "", "a path you gave")
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return first_line(error)


def _name_max(path):
    """The longest file name (in bytes) the file system holding `path` allows."""
    # os.path.exists is False (not an error) for a name that is too long.
    existing = next((p for p in (path, *path.parents) if os.path.exists(p)),
                    pathlib.Path("."))
    try:
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _name_too_long(path, what):
    """`PATH: file name too long (...)` naming the part that is too long."""
    path = pathlib.Path(path)
    limit = _name_max(path)
    longest = max(path.parts or ("",), key=lambda part: len(os.fsencode(part)))
    return (f"{path}: file name too long ({what}: {len(os.fsencode(longest))} bytes "
            f"in one name, {longest[:12]}...; this file system allows {limit})")


def _check_name_lengths(args):
    """Refuse a path argument with a name longer than the file system
    allows, before anything is written under it."""
    for flag in ("run_dir", "export", "to", "out", "model_dir", "dir"):
        path = getattr(args, flag, None)
        if not isinstance(path, pathlib.Path):
            continue
        limit = _name_max(path)
        if any(len(os.fsencode(part)) > limit for part in path.parts):
            option = "--" + flag.replace("_", "-") if flag != "model_dir" else "the model"
            raise CommandError(_name_too_long(path, option))


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
    argv = sys.argv[1:] if argv is None else list(argv)
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
        _check_name_lengths(args)
        _EARLY_CHECKS.get(args.command, lambda _: None)(args)
        if args.command in _TENSORFLOW_COMMANDS and not debug:
            _quiet_tensorflow()
        with kgen_lock.terminate_as_interrupt(args.command in ("train", "export", "tune", "distill")):
            _COMMANDS[args.command](args)
    except KeyboardInterrupt as e:
        print(f"kgen: {getattr(e, 'word', 'interrupted')}", file=sys.stderr)
        sys.exit(getattr(e, "status", 130))
    except Exception as e:
        if debug:
            import traceback

            traceback.print_exc()
        if _is_user_error(e):
            _fail(_message(e))
        print(f"kgen: internal error: {type(e).__name__}: {_message(e)}"
              + ("" if debug else " (run again with --debug for the traceback)"),
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
