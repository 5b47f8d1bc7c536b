"""Checkpoints, backups and history that a kill cannot damage.

Each callback writes its file to a temporary sibling and renames it into
place (`kgen.io.atomic_path`), so a kill at any instant leaves the previous
good file. `kgen train` puts them in this order: `FiniteCheck` (stops a
diverging run before anything is written), `Checkpoint`, `TrainingBackup`
(whose generation also records the history rows up to its epoch), then
`HistoryLog` and the sample and TensorBoard callbacks. A backup generation
therefore always describes an epoch whose checkpoint is already on disk,
and its history rows are written again on resume: a run resumed from it
redoes at most the epoch that was being written, and no epoch is lost from
or repeated in `history.csv`.
"""

import csv
import io
import json
import math
import pathlib
import re
import sys

import keras
import numpy as np

from kgen import io as kgen_io
from kgen.errors import UserError
from kgen.compat.keras import set_initial_epoch


class NonFiniteError(UserError, RuntimeError):
    """A loss, metric or weight became NaN or infinite; the message says
    which value, at which epoch and batch."""


def first_non_finite(variables):
    """`(path, value)` of the first float variable holding a NaN or an
    infinity, or `None` when every one is finite."""
    for variable in variables:
        if not str(variable.dtype).startswith(("float", "bfloat")):
            continue
        value = keras.ops.convert_to_numpy(variable)
        bad = ~np.isfinite(value)
        if bad.any():
            return getattr(variable, "path", variable.name), value[bad].flat[0]
    return None


def _check_logs(logs, where):
    """A NonFiniteError naming the first logged value that is not finite."""
    for key, value in (logs or {}).items():
        if not _is_finite(value):
            raise NonFiniteError(f"training diverged: {key} is {float(value)} {where}")


def _is_finite(value):
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number: nothing to check


class FiniteCheck(keras.callbacks.Callback):
    """Stop training with `NonFiniteError` when a loss or weight is not finite.

    Checks every logged value after each batch, and the model's weights (and
    the epoch's logs, validation included) at each epoch's end, before any
    checkpoint of that epoch is written, so the last checkpoint on disk is
    the last finite one.

    Example:

    ```python
    model.fit(data, epochs=5, callbacks=[FiniteCheck(), Checkpoint("best.keras")])
    ```
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        _check_logs(logs, f"at epoch {self._epoch + 1}, batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        _check_logs(logs, f"at the end of epoch {epoch + 1}")
        bad = first_non_finite(self.model.weights)
        if bad:
            raise NonFiniteError(
                f"training diverged: weight {bad[0]} holds {bad[1]} at the end "
                f"of epoch {epoch + 1}"
            )


class Checkpoint(keras.callbacks.Callback):
    """Save the model as a `.keras` file, atomically, at each epoch's end.

    Args:
        path: the `.keras` file.
        monitor: a logged value to minimise (`"val_loss"`): the model is
            saved only when it improves on `best`. `None`: save every epoch.
        best: the best value of the monitor so far (a resumed run's).

    Example:

    ```python
    model.fit(data, validation_data=val, epochs=5,
              callbacks=[Checkpoint("runs/vae/best.keras", monitor="val_loss")])
    ```
    """

    def __init__(self, path, monitor=None, best=None):
        super().__init__()
        self.path = pathlib.Path(path)
        self.monitor = monitor
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor:
            value = (logs or {}).get(self.monitor)
            if value is None:
                raise KeyError(
                    f"Checkpoint monitors {self.monitor!r}, which the logs lack "
                    f"(logged: {', '.join(sorted(logs or {}))})"
                )
            value = float(value)
            if self.best is not None and not value < self.best:
                return
            self.best = value
        self.save(epoch)

    def save(self, epoch=None):
        """Write the model to `path` (`epoch`, 0-based, is the epoch that
        just ended, or `None` after training)."""
        with kgen_io.atomic_path(self.path, suffix=".keras") as tmp:
            self.model.save(tmp)


class HistoryLog(keras.callbacks.Callback):
    """`history.csv`, one row per finished epoch, rewritten atomically.

    Args:
        path: the CSV file (columns `epoch`, then the logged values sorted;
            `epoch` counts from 0, as Keras' `CSVLogger` writes it).
        rows: the rows of the epochs already done (a resumed run's, from
            its backup); written out when training begins.
    """

    def __init__(self, path, rows=()):
        super().__init__()
        self.path = pathlib.Path(path)
        self.rows = [dict(row) for row in rows]

    @staticmethod
    def row(epoch, logs):
        """The row of `epoch` (0-based) with its `logs`."""
        row = {"epoch": str(epoch)}
        row.update({k: repr(float(v)) if _is_number(v) else str(v)
                    for k, v in sorted((logs or {}).items())})
        return row

    def on_train_begin(self, logs=None):
        kgen_io.write_text(self.path, self.render())

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append(self.row(epoch, logs))
        kgen_io.write_text(self.path, self.render())

    def render(self):
        keys = ["epoch"]
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return out.getvalue()

    @property
    def last_logs(self):
        if not self.rows:
            return {}
        return {k: float(v) for k, v in self.rows[-1].items()
                if k != "epoch" and _is_number(v)}


def _is_number(value):
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


class TrainingBackup(keras.callbacks.Callback):
    """Back up the training state at each epoch's end; restore it on resume.

    Each generation is two files in `backup_dir`: `epoch-NNNN.weights.h5`
    (the model's and its optimizers' variables, `model.save_weights`) and
    then `epoch-NNNN.json` (the epoch count, the checkpoint's best value,
    the seed generators' states and the history rows), both written
    atomically; a generation counts once its `.json` exists.
    The newest `keep` generations are kept, so a damaged newest one (a disk
    fault, a copy cut short) leaves the one before it to resume from.

    `select()` (called before `fit()`) finds the newest generation whose
    files read back whole, reporting each damaged one with its path;
    `on_train_begin` loads its weights and `fit()` starts at its epoch.

    Args:
        backup_dir: the directory of the generations.
        checkpoint: the run's `Checkpoint`, whose best value is recorded.
        history: the run's `HistoryLog`, whose rows (with this epoch's)
            are recorded.
        keep: generations to keep (at least 2).
        log: where messages go (default: standard error).
        restore_dir: where `select()` and `on_train_begin` read the
            generations from, when not `backup_dir` (a non-chief worker of a
            multi-worker run resumes from the chief's backups and writes its
            own to a scratch directory); it is only read, never cleaned.

    Example:

    ```python
    backup = TrainingBackup("runs/vae/backup")
    restored = backup.select()
    model.fit(data, epochs=5, initial_epoch=restored["epoch"] if restored else 0,
              callbacks=[backup])
    ```
    """

    _NAME = re.compile(r"^epoch-(\d+)\.json$")

    def __init__(self, backup_dir, checkpoint=None, history=None, keep=2, log=None,
                 restore_dir=None):
        super().__init__()
        self.backup_dir = pathlib.Path(backup_dir)
        self.restore_dir = pathlib.Path(restore_dir) if restore_dir else None
        self.checkpoint = checkpoint
        self.history = history
        self.keep = max(int(keep), 2)
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.restored = None

    # === Paths ===

    def weights_path(self, epoch, directory=None):
        return (directory or self.backup_dir) / f"epoch-{epoch:04d}.weights.h5"

    def meta_path(self, epoch, directory=None):
        return (directory or self.backup_dir) / f"epoch-{epoch:04d}.json"

    def generations(self, directory=None):
        """Epoch counts of the generations on disk, newest first."""
        directory = directory or self.backup_dir
        if not directory.is_dir():
            return []
        found = (self._NAME.match(p.name) for p in directory.iterdir())
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    # === Restore ===

    def select(self):
        """The newest generation that reads back whole, as its metadata dict
        (`{"epoch": N, "best": value or None}`), or `None`."""
        source = self.restore_dir or self.backup_dir
        if self.restore_dir is None:
            kgen_io.clean_stale_temporaries(self.backup_dir)
        self.restored = None
        for epoch in self.generations(source):
            problem = self._check(epoch, source)
            if problem is None:
                self.restored = json.loads(self.meta_path(epoch, source).read_text())
                return self.restored
            self.log(f"kgen: warning: backup {problem}; trying the generation before it")
        if source.is_dir() and any(source.iterdir()):
            self.log(f"kgen: warning: no usable backup in {source}; "
                     "training starts again from epoch 1")
        return None

    def _check(self, epoch, directory=None):
        meta, weights = self.meta_path(epoch, directory), self.weights_path(epoch, directory)
        try:
            data = json.loads(meta.read_text())
            if int(data["epoch"]) != epoch:
                raise ValueError(f"records epoch {data['epoch']}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{meta} is damaged ({e})"
        if not weights.is_file():
            return f"{weights} is missing"
        reason = _h5_problem(weights)
        if reason:
            return f"{weights} is damaged ({reason})"
        return None

    def on_train_begin(self, logs=None):
        if not self.restored:
            return
        path = self.weights_path(int(self.restored["epoch"]), self.restore_dir)
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        try:
            self.model.load_weights(path)
        except Exception as e:  # h5py and Keras raise many kinds
            raise kgen_io.DamagedFileError(
                f"backup {path} does not fit this model ({type(e).__name__}: {e}); "
                f"delete it to resume from an earlier generation, or rerun with "
                f"--overwrite to start again"
            ) from None
        states = self.restored.get("seed_states") or {}
        for variable in _seed_states(self.model):
            if variable.path in states:
                variable.assign(np.asarray(states[variable.path], dtype=variable.dtype))
        set_initial_epoch(self.model, int(self.restored["epoch"]))

    # === Save ===

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        with kgen_io.atomic_path(self.weights_path(done), suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp, overwrite=True)
        best = self.checkpoint.best if self.checkpoint is not None else None
        seeds = {v.path: keras.ops.convert_to_numpy(v).tolist()
                 for v in _seed_states(self.model)}
        rows = (self.history.rows + [self.history.row(epoch, logs)]
                if self.history is not None else None)
        kgen_io.write_text(self.meta_path(done), json.dumps(
            {"epoch": done, "best": best, "weights": self.weights_path(done).name,
             "seed_states": seeds, "history": rows}))
        for old in self.generations()[self.keep:]:
            self.meta_path(old).unlink(missing_ok=True)
            self.weights_path(old).unlink(missing_ok=True)


def _seed_states(model):
    """The random-number states `save_weights` leaves out (each
    `keras.random.SeedGenerator`'s), so a resumed run draws the noise a run
    from scratch draws."""
    saved = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in saved
            and v.path.endswith("seed_generator_state")]


def _h5_problem(path):
    """Why an `.h5` file cannot be read whole, or `None`."""
    import h5py

    if path.stat().st_size == 0:
        return "0 bytes"
    try:
        with h5py.File(path, "r") as f:
            datasets = []
            f.visititems(lambda name, obj: datasets.append(obj)
                         if isinstance(obj, h5py.Dataset) else None)
            for dataset in datasets:
                dataset[()]
    except Exception as e:  # h5py raises OSError, KeyError, RuntimeError ...
        return f"{type(e).__name__}: {e}"
    return None
