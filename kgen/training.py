"""`kgen train`: a recipe through `fit()` with checkpoints, TensorBoard,
resumption and export.

Everything a run writes lives in its run directory:

```
runs/NAME/config.json     the resolved settings and backend
runs/NAME/logs/           TensorBoard: scalars per epoch, sample grids
runs/NAME/samples/        the same samples as PNG / WAV / text files (models
                          that generate; a classifier recipe writes none)
runs/NAME/history.csv     one row per finished epoch
runs/NAME/best.keras      the model of the best epoch (lowest val_loss), or
runs/NAME/last.keras      the last epoch's, for families no loss ranks (GAN)
runs/NAME/backup/         the last two epochs' training state, while unfinished
runs/NAME/state.json      "training" or "trained", the final logs, the export
runs/NAME/kgen.lock       while a process works in it (`kgen.lock`)
```

The run directory belongs to the process that trains it: `train` holds its
lock (`kgen.lock.hold`) from before it reads anything there to the end of
the export, so a second process on it is refused, naming the first.

Every one of these files is written to a temporary sibling and renamed, so
a kill at any instant leaves the previous good file. Run again with the
same settings, a run killed part-way resumes from its last backed-up epoch
(or at the export, if training had finished), and a finished run is left
as it is; a run with other settings is refused unless `overwrite=True`.

Under `--strategy multi_worker` only the chief writes any of this; the other
workers train in step in a scratch directory they remove, and resume from
the chief's backup (see `kgen.distribute`).
"""

import json
import pathlib
import shutil
import tempfile
import time

import keras

from kgen import callbacks as kgen_callbacks
from kgen import config as kgen_config
from kgen import distribute as kgen_distribute
from kgen import io as kgen_io
from kgen import lock as kgen_lock
from kgen import memory
from kgen import precision as kgen_precision
from kgen import recipe as kgen_recipe
from kgen.callbacks.checkpoints import NonFiniteError  # noqa: F401  (part of the API)
from kgen.config import ConfigError

STRATEGIES = kgen_distribute.STRATEGIES


def strategy_scope(name):
    """The distribution scope for `--strategy NAME` on this backend (see
    `kgen.distribute.distribution`, which also says which process is the
    chief)."""
    return kgen_distribute.distribution(name).scope()


def _settings(recipe, config, strategy):
    """What decides a run's result, as `config.json` records it."""
    return json.loads(json.dumps(
        {"recipe": recipe.name, "backend": keras.backend.backend(),
         "strategy": strategy, "config": config}, default=str))


def _resolve_precision(config, verbose):
    """`config` with its `precision` decided for this device (`auto` ->
    the policy `kgen.precision.resolve` picks), printed with the reason; a
    `ConfigError` for a policy this backend cannot train in."""
    if "precision" not in config:
        return config
    policy, reason = kgen_precision.resolve(config["precision"])
    refused = kgen_precision.refusal(policy)
    if refused:
        raise ConfigError(refused)
    if verbose:
        how = "auto: " if config["precision"] == kgen_precision.AUTO else ""
        print(f"precision: {policy} ({how}{reason})", flush=True)
    return {**config, "precision": policy}


def _differences(old, new):
    """`["latent_dim: 2 -> 3", ...]` between two runs' settings."""
    found = []
    for key in ("recipe", "backend", "strategy"):
        if old.get(key) != new.get(key):
            found.append(f"{key}: {old.get(key)} -> {new.get(key)}")
    old_config, new_config = old.get("config") or {}, new.get("config") or {}
    for key in sorted(set(old_config) | set(new_config)):
        if old_config.get(key) != new_config.get(key):
            found.append(f"{key}: {old_config.get(key, '(unset)')} -> "
                         f"{new_config.get(key, '(unset)')}")
    return found


def _free_run_dir(run_dir):
    k = 2
    while run_dir.with_name(f"{run_dir.name}-{k}").exists():
        k += 1
    return run_dir.with_name(f"{run_dir.name}-{k}")


def _read_json(path):
    """The JSON object in a run's `path` (None when it is missing); a
    `DamagedFileError` naming the file when it holds no JSON object."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise kgen_io.DamagedFileError(
            f"{path} is damaged ({e}); rerun with --overwrite to start the run again"
        ) from None
    if not isinstance(value, dict):
        raise kgen_io.DamagedFileError(
            f"{path} is damaged (it holds a JSON {_json_kind(value)}, expected an "
            f"object of the run's record); rerun with --overwrite to start the run again"
        )
    return value


def _json_kind(value):
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "boolean" if isinstance(value, bool) else "number"


# What a run writes; `--overwrite` removes these before it starts again.
_RUN_FILES = ("state.json", "history.csv", "best.keras", "last.keras")
_RUN_DIRS = ("backup", "samples", "logs")


def _clear_run(run_dir):
    for name in _RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in _RUN_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _legacy_state(run_dir):
    """The state of a run written before `state.json` existed."""
    if (run_dir / "backup").exists():
        return {"status": "training"}
    for name in ("best.keras", "last.keras"):
        if (run_dir / name).exists():
            return {"status": "trained", "checkpoint": name, "exported": None}
    return {"status": "training"}


def _resume_stream(train, steps, initial_epoch):
    """The training stream of a run that starts at `initial_epoch`.

    Epoch `e` of a resumed run sees the batches a run from scratch sees in
    its epoch `e`: a finite pipeline is repeated (its shuffle then draws the
    same order per pass as a fresh run) and the batches of the epochs
    already done are skipped. Returns `(stream, steps_per_epoch)`.
    """
    if not hasattr(train, "skip"):  # not a tf.data.Dataset: as given
        return train, steps
    if steps is None:
        import tensorflow as tf

        count = int(train.cardinality())
        if count in (tf.data.INFINITE_CARDINALITY, tf.data.UNKNOWN_CARDINALITY) or count < 1:
            return train, steps
        train, steps = train.repeat(), count
    if initial_epoch:
        train = train.skip(initial_epoch * steps)
    return train, steps


def train(recipe, sets=None, run_dir=None, export_to=None, strategy="none",
          verbose="auto", overwrite=False, callbacks=()):
    """Train a recipe; returns a dict of what was written.

    A run directory remembers its settings (`config.json`) and how far it
    got (`state.json`). Run again with the same settings, an unfinished run
    resumes from its last backup, a finished one is left as it is (only a
    missing export is written), and a run with other settings is refused
    unless `overwrite`.

    Args:
        recipe: a recipe name or path.
        sets: `{key: string value}` overrides of the recipe's CONFIG.
        run_dir: the run directory (default `runs/<recipe>`).
        export_to: base path to export the best model to, or `None`.
        strategy: one of `STRATEGIES` (`kgen.distribute`); a non-chief
            worker of `multi_worker` writes nothing and returns
            `{"chief": False, ...}`.
        verbose: Keras' `fit()` verbosity.
        overwrite: replace an earlier run with other settings (its
            checkpoints, history, backups, samples and logs are removed).
        callbacks: more Keras callbacks, run after kgen's own each epoch
            (so an epoch's checkpoint, backup and history row are on disk
            when they see it); `kgen tune` reports its objective here.

    Returns:
        A dict: `run_dir`, `best` (the checkpoint), `wall_s`, `logs` (the
        last epoch's), `exported` (a version directory or `None`),
        `up_to_date` (True when the run had finished before this call and
        nothing was written) and `trained_earlier` (True when this call
        trained nothing; `wall_s` is then the earlier training's time, or
        `None` when that run was resumed).

    Raises:
        ConfigError: a bad setting, or a run with other settings in `run_dir`.
        NonFiniteError: the loss or a weight stopped being finite; the last
            finite checkpoint stays and nothing is exported.
    """
    recipe = kgen_recipe.load(recipe)
    config = kgen_config.apply_overrides(recipe.CONFIG, sets or {})
    memory.check(config, sets, recipe.CONFIG, where=f"recipe {recipe.name}")  # before building
    if export_to and not recipe.EXPORT:
        raise ConfigError(
            f"--export {export_to}: recipe {recipe.name} trains a model "
            f"that is not exported (no generate signature); it is kept as its "
            f".keras file"
        )
    run_dir = pathlib.Path(run_dir or pathlib.Path("runs") / recipe.name)
    # Made before any other TensorFlow work: a multi-worker strategy must
    # configure the collectives at program start.
    dist = kgen_distribute.distribution(strategy)
    # After the distribution: reading the device starts the backend, which a
    # multi-process JAX or multi-worker TensorFlow cluster must be joined before.
    config = _resolve_precision(config, verbose)
    settings = _settings(recipe, config, strategy)
    if not dist.is_chief:
        return _train_worker(recipe, config, run_dir, settings, dist, verbose,
                             overwrite, callbacks)
    # Held for the whole run, export included, and taken before anything in
    # the run directory is read: `overwrite` never clears another process's run.
    with kgen_lock.hold(run_dir):
        return _train_chief(recipe, config, run_dir, settings, dist, export_to,
                            verbose, overwrite, callbacks)


def _train_chief(recipe, config, run_dir, settings, dist, export_to, verbose,
                 overwrite, callbacks):
    """`train` in the process that writes the run directory (it holds its lock)."""
    previous = _check_earlier_run(run_dir, settings, overwrite)
    if previous is not None:
        for directory in (run_dir, run_dir / "samples"):
            kgen_io.clean_stale_temporaries(directory)
        state = _read_json(run_dir / "state.json") or _legacy_state(run_dir)
        if state["status"] == "trained":
            return _finished(run_dir, state, export_to, verbose)

    # Built before a new run directory is made: a setting or data set the
    # recipe refuses leaves nothing on disk.
    keras.utils.set_random_seed(config.get("seed", 0))
    with dist.scope():
        model, data = recipe.build(config)
    kid = _validation_kid(model, data, recipe, config)
    if previous is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        kgen_io.write_text(run_dir / "config.json", json.dumps(settings, indent=2))
        _write_state(run_dir, {"status": "training"})

    run = _Run(run_dir, model, data, recipe, config, verbose, callbacks, kid=kid,
               dist=dist)
    wall = run.fit()
    state = {"status": "trained", "checkpoint": run.checkpoint_path.name,
             "best": run.checkpoint.best, "epochs": config["epochs"],
             "logs": run.history_log.last_logs,
             # The whole training's time; a resumed run knows only its own part.
             "wall_s": wall if run.initial_epoch == 0 else None, "exported": None}
    _write_state(run_dir, state)
    # Only once the run is recorded as trained: a kill before this line
    # resumes from the last backup instead of training again from scratch.
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    result = _finished(run_dir, state, export_to, verbose=0)
    result.update(wall_s=wall, up_to_date=False, trained_earlier=False)
    return result


def _train_worker(recipe, config, run_dir, settings, dist, verbose, overwrite, callbacks):
    """A non-chief worker of a multi-worker run (`dist.is_chief` false).

    It trains in step with the chief (the same callbacks, so the same
    collectives), resuming from the chief's backup in `run_dir` (which all
    workers must see, as TensorFlow's own backups require), but writes its
    logs, samples, history, checkpoints and backups to a temporary
    directory that is removed at the end; it never exports.
    """
    previous = None if overwrite else _read_json(run_dir / "config.json")
    if previous is not None and previous != settings:
        raise ConfigError(
            f"{run_dir} holds a run with other settings "
            f"({'; '.join(_differences(previous, settings))}); start every "
            f"worker with the chief's --run-dir and settings"
        )
    state = (_read_json(run_dir / "state.json") or {}) if previous is not None else {}
    result = {"run_dir": run_dir, "best": None, "wall_s": 0.0, "exported": None,
              "logs": state.get("logs") or {}, "up_to_date": True, "chief": False}
    if state.get("status") == "trained":
        return result
    keras.utils.set_random_seed(config.get("seed", 0))
    with dist.scope():
        model, data = recipe.build(config)
    kid = _validation_kid(model, data, recipe, config)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="kgen-worker-"))
    try:
        run = _Run(scratch, model, data, recipe, config, verbose, callbacks, kid=kid,
                   dist=dist, restore_dir=None if overwrite else run_dir / "backup")
        result.update(wall_s=run.fit(), logs=run.history_log.last_logs, up_to_date=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def _check_earlier_run(run_dir, settings, overwrite):
    """The earlier run's settings in `run_dir` (None when there is none, or
    when `overwrite` removed it); a ConfigError for a run with other
    settings, or for leftovers of an unknown one, unless `overwrite`."""
    previous = _read_json(run_dir / "config.json")
    if previous is not None:  # a run from before a common setting existed,
        # built in float32, the only precision there was then
        previous["config"] = kgen_config.with_common(
            {"precision": kgen_precision.DEFAULT, **(previous.get("config") or {})})
    if previous is not None and previous != settings and not overwrite:
        raise ConfigError(
            f"{run_dir} holds a run with other settings "
            f"({'; '.join(_differences(previous, settings))}); pass "
            f"--run-dir {_free_run_dir(run_dir)} for a new run, or "
            f"--overwrite to replace it"
        )
    leftovers = [name for name in _RUN_FILES if (run_dir / name).exists()]
    if previous is None and leftovers and not overwrite:
        raise ConfigError(
            f"{run_dir} holds {', '.join(leftovers)} but no config.json; pass "
            f"--run-dir {_free_run_dir(run_dir)} for a new run, or --overwrite "
            f"to replace them"
        )
    if overwrite and (previous is not None or leftovers):
        _clear_run(run_dir)
        return None
    return previous


class _Run:
    """One `fit()` of a run: its checkpoint, backup, history and sample
    callbacks, resumed from the newest good backup."""

    def __init__(self, run_dir, model, data, recipe, config, verbose, extra=(), kid=None,
                 dist=None, restore_dir=None):
        self.model, self.config, self.verbose = model, config, verbose
        dist = dist or kgen_distribute.Distribution("none")
        monitor = getattr(model, "checkpoint_monitor", "val_loss")
        self.validation = data.validation if monitor else None
        # `--set val_kid=CLASSIFIER.keras`: a cheap KID of fixed samples
        # ranks the epochs instead of the loss (GAN losses rank none).
        if kid is not None:
            monitor = "val_kid"
        if monitor == "val_loss" and self.validation is None:
            monitor = "loss"
        self.checkpoint_path = run_dir / ("best.keras" if monitor else "last.keras")
        self.checkpoint = kgen_callbacks.Checkpoint(self.checkpoint_path, monitor=monitor)
        backup = kgen_callbacks.TrainingBackup(run_dir / "backup", checkpoint=self.checkpoint,
                                               restore_dir=restore_dir)
        restored = backup.select()
        self.initial_epoch = int(restored["epoch"]) if restored else 0
        if restored:
            self.checkpoint.best = restored.get("best")
            if verbose:
                print(f"resuming {run_dir} after epoch {self.initial_epoch} "
                      f"(backup {backup.weights_path(self.initial_epoch)})")
        self.history_log = kgen_callbacks.HistoryLog(
            run_dir / "history.csv", rows=(restored or {}).get("history") or ())
        backup.history = self.history_log
        self.train, self.steps = _resume_stream(
            data.train, config.get("steps_per_epoch"), self.initial_epoch)
        # Each worker keeps its part of every global batch (`batch_size`).
        self.train = dist.distribute_dataset(self.train)
        if self.validation is not None:
            self.validation = dist.distribute_dataset(self.validation)
        self.callbacks = [
            # Order matters (see kgen/callbacks/checkpoints.py): val_kid is
            # logged before anything reads the logs; nothing of a
            # non-finite epoch is written; the checkpoint comes before the
            # backup, and the backup before the history row.
            *([kid] if kid is not None else []),
            kgen_callbacks.FiniteCheck(),
            self.checkpoint,
            backup,
            self.history_log,
        ]
        # A non-chief worker logs nothing (no collectives are skipped: the
        # samples only read the weights).
        if dist.is_chief:
            self.callbacks.append(keras.callbacks.TensorBoard(run_dir / "logs"))
        if hasattr(model, "generate") and dist.is_chief:  # a classifier logs no samples
            self.callbacks.append(kgen_callbacks.SampleLogger(
                run_dir / "logs", n=config.get("sample_count", 16),
                seed=config.get("sample_seed", 0), out_dir=run_dir / "samples",
                generate_kwargs=recipe.sample_kwargs(config),
            ))
        self.callbacks.extend(extra)

    def fit(self):
        """Train the remaining epochs; returns the wall time in seconds."""
        start = time.time()
        self.model.fit(
            self.train,
            validation_data=self.validation,
            epochs=self.config["epochs"],
            initial_epoch=self.initial_epoch,
            steps_per_epoch=self.steps,
            callbacks=self.callbacks,
            shuffle=False,  # the pipelines shuffle themselves
            verbose=self.verbose,
        )
        if not self.checkpoint_path.exists():  # every epoch ran before the resume
            self.checkpoint.save()
        return time.time() - start


def logged_values(model, data, config):
    """The names a run of this built model logs each epoch (what
    `history.csv` and the callbacks see), sorted: the model's metrics
    (those given to `compile()` by their names), the same prefixed `val_`
    where the run validates (as `_Run` decides), and `val_kid` where set."""
    names = {m.name for m in model.metrics if m.name != "compile_metrics"}
    compiled = model.get_compile_config() if model.compiled else None
    for key in ("metrics", "weighted_metrics"):
        names.update(_metric_names((compiled or {}).get(key)))
    if getattr(model, "checkpoint_monitor", "val_loss") and data.validation is not None:
        names |= {f"val_{name}" for name in names}
    if config.get("val_kid"):
        names.add("val_kid")
    return sorted(names)


def _metric_names(spec):
    """The names of `compile(metrics=...)`'s metrics, as Keras logs them."""
    if spec is None:
        return []
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, dict) and "class_name" in spec:  # one serialized metric
        return [(spec.get("config") or {}).get("name") or spec["class_name"]]
    values = spec.values() if isinstance(spec, dict) else spec
    return [name for value in values for name in _metric_names(value)]


def _validation_kid(model, data, recipe, config):
    """The `ValidationKID` callback a run's `val_kid` setting asks for
    (`None` when it is unset): `val_kid_n` samples, drawn with
    `val_kid_kwargs(config)` of the recipe (e.g. few diffusion steps),
    against as many fixed real images (validation split, else training)."""
    path = config.get("val_kid")
    if not path:
        return None
    if not hasattr(model, "generate") or getattr(model, "output_kind", "images") != "images":
        raise ConfigError(
            f"--set val_kid={path}: recipe {recipe.name} does not generate images"
        )
    n = config.get("val_kid_n", 100)
    source = data.validation if data.validation is not None else data.train
    try:
        real = kgen_callbacks.take_images(source, n)
        return kgen_callbacks.ValidationKID(
            path, real, n=n, seed=config.get("sample_seed", 0),
            generate_kwargs=recipe.val_kid_kwargs(config),
        )
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"--set val_kid={path}: {e}") from None


def _write_state(run_dir, state):
    kgen_io.write_text(run_dir / "state.json", json.dumps(state, indent=2))


def _finished(run_dir, state, export_to, verbose):
    """A trained run: export it if asked and not yet exported there."""
    best_path = run_dir / state["checkpoint"]
    if not best_path.is_file():
        raise kgen_io.DamagedFileError(
            f"{best_path} is missing although {run_dir / 'state.json'} records a "
            f"finished run; rerun with --overwrite to train again"
        )
    # `trained_earlier`: this call trained nothing; `wall_s` is the time of
    # the training that did (None for a run recorded before it was kept).
    result = {"run_dir": run_dir, "best": best_path, "wall_s": state.get("wall_s"),
              "logs": state.get("logs") or {}, "exported": None, "up_to_date": True,
              "trained_earlier": True}
    exported = state.get("exported")
    if export_to:
        base = pathlib.Path(export_to)
        if exported and pathlib.Path(exported).parent == base and pathlib.Path(exported).is_dir():
            result["exported"] = pathlib.Path(exported)
        else:
            from kgen.export import export_model

            result["exported"] = export_model(best_path, base)
            state = {**state, "exported": str(result["exported"])}
            _write_state(run_dir, state)
            result["up_to_date"] = False
    if result["up_to_date"] and verbose:
        print(f"{run_dir} is a finished run with these settings: nothing to do "
              f"(pass --overwrite to train it again, or --run-dir for a new run)")
    return result
