"""`kgen train`: a recipe through `fit()` with checkpoints, TensorBoard,
resumption and export.

Everything a run writes lives in its run directory:

```
runs/NAME/config.json     the resolved settings and backend
runs/NAME/logs/           TensorBoard: scalars per epoch, sample grids
runs/NAME/samples/        the same samples as PNG / WAV / text files
runs/NAME/history.csv     one row per finished epoch
runs/NAME/best.keras      the model of the best epoch (lowest val_loss), or
runs/NAME/last.keras      the last epoch's, for families no loss ranks (GAN)
runs/NAME/backup/         BackupAndRestore state while a run is unfinished
```

A run killed part-way resumes from its last finished epoch when the same
command is run again.
"""

import contextlib
import csv
import json
import math
import pathlib
import time

import keras

from kgen import callbacks as kgen_callbacks
from kgen import config as kgen_config
from kgen.config import ConfigError

STRATEGIES = ("none", "mirrored", "data_parallel")


def strategy_scope(name):
    """The distribution scope for `--strategy NAME` on this backend."""
    backend = keras.backend.backend()
    if name == "none":
        return contextlib.nullcontext()
    if name == "mirrored":
        if backend != "tensorflow":
            raise ConfigError(
                f"--strategy mirrored needs --backend tensorflow (got {backend}); "
                "use --strategy data_parallel on jax"
            )
        import tensorflow as tf

        return tf.distribute.MirroredStrategy().scope()
    if name == "data_parallel":
        if backend != "jax":
            raise ConfigError(
                f"--strategy data_parallel needs --backend jax (got {backend})"
            )
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        return contextlib.nullcontext()
    raise ConfigError(f"--strategy {name}: expected one of {', '.join(STRATEGIES)}")


def _best_so_far(history_csv, monitor):
    """Lowest `monitor` in an unfinished run's history, so a resumed run's
    best checkpoint is not overwritten by a worse epoch."""
    if not history_csv.is_file():
        return None
    with history_csv.open() as f:
        values = [float(row[monitor]) for row in csv.DictReader(f)
                  if row.get(monitor) not in (None, "")]
    return min(values) if values else None


def train(recipe, sets=None, run_dir=None, export_to=None, strategy="none",
          verbose="auto"):
    """Train a recipe; returns a dict of what was written.

    Args:
        recipe: a recipe name or path.
        sets: `{key: string value}` overrides of the recipe's CONFIG.
        run_dir: the run directory (default `runs/<recipe>`).
        export_to: base path to export the best model to, or `None`.
        strategy: one of `STRATEGIES`.
        verbose: Keras' `fit()` verbosity.
    """
    module = kgen_config.load_recipe(recipe)
    config = kgen_config.apply_overrides(module.CONFIG, sets or {})
    run_dir = pathlib.Path(run_dir or pathlib.Path("runs") / module.RECIPE_NAME)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(
        {"recipe": module.RECIPE_NAME, "backend": keras.backend.backend(),
         "strategy": strategy, "config": config}, indent=2, default=str))

    keras.utils.set_random_seed(config.get("seed", 0))
    with strategy_scope(strategy):
        model, data = module.build(config)

    monitor = getattr(model, "checkpoint_monitor", "val_loss")
    validation = data.validation if monitor else None
    if monitor == "val_loss" and validation is None:
        monitor = "loss"
    backup_dir = run_dir / "backup"
    resuming = backup_dir.exists()
    checkpoint_path = run_dir / ("best.keras" if monitor else "last.keras")
    checkpoint = keras.callbacks.ModelCheckpoint(
        checkpoint_path, monitor=monitor or "loss", save_best_only=bool(monitor)
    )
    if resuming and monitor:
        best = _best_so_far(run_dir / "history.csv", monitor)
        if best is not None:
            checkpoint.best = best
    elif not resuming and (run_dir / "history.csv").exists():
        (run_dir / "history.csv").unlink()  # a fresh run: a fresh history
    callbacks = [
        # Order matters: the backup is written before the history row, so a
        # finished row always has a backup to resume from.
        keras.callbacks.BackupAndRestore(backup_dir),
        checkpoint,
        keras.callbacks.TensorBoard(run_dir / "logs"),
        kgen_callbacks.SampleLogger(
            run_dir / "logs", n=config.get("sample_count", 16),
            seed=config.get("sample_seed", 0), out_dir=run_dir / "samples",
            generate_kwargs=getattr(module, "sample_kwargs", lambda c: {})(config),
        ),
        keras.callbacks.CSVLogger(run_dir / "history.csv", append=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    start = time.time()
    history = model.fit(
        data.train,
        validation_data=validation,
        epochs=config["epochs"],
        steps_per_epoch=config.get("steps_per_epoch"),
        callbacks=callbacks,
        shuffle=False,  # the pipelines shuffle themselves
        verbose=verbose,
    )
    wall = time.time() - start
    final_logs = {k: v[-1] for k, v in history.history.items()}
    if any(isinstance(v, float) and not math.isfinite(v) for v in final_logs.values()):
        raise RuntimeError(f"training diverged: {final_logs}")
    best_path = checkpoint_path
    if not best_path.exists():  # every epoch had been run before the resume
        model.save(best_path)
    result = {"run_dir": run_dir, "best": best_path, "wall_s": wall,
              "logs": final_logs, "exported": None}
    if export_to:
        from kgen.export import export_model

        result["exported"] = export_model(best_path, export_to)
    return result
