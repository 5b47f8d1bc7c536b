"""`kgen tune`: a hyperparameter search over recipe settings with Optuna.

```
kgen tune RECIPE --space key=SPEC... --objective NAME --trials N
                 [--direction minimize|maximize] [--dir tunes/NAME]
                 [--storage URL] [--study NAME] [--pruner median|hyperband|none]
                 [--workers N] [--set key=value]... [--timeout S]
```

From Python, the same search is one call with plain arguments:

```python
from kgen.tune import tune

tune("vae_digits", ["learning_rate=float:1e-4:1e-2:log"], "val_loss", 20,
     sets={"epochs": 10})
```

Each trial is a normal kgen run (`kgen.training.train`, the code path of
`kgen train`: config.json, state.json, checkpoints, backups, history and
TensorBoard logs) in its own run directory `DIR/trial-0007/`, with the
trial's settings merged over `--set`. A callback run after kgen's own each
epoch reports the objective (any logged key: `val_loss`, `loss`,
`val_kid`...) to Optuna, whose pruner may stop the trial there: the trial
is recorded PRUNED and its `state.json` says `"status": "pruned"`. Trials
are never exported; the search's result is the best settings, as a
`--set` line in `DIR/best.txt`.

A trial's objective value is the best (lowest when minimizing) value of
the objective over its epochs, as `best.keras` keeps the best epoch.

Search space (`--space KEY=SPEC`, KEY a setting of the recipe):

- `float:LOW:HIGH` or `float:LOW:HIGH:log` (log-uniform; LOW > 0),
- `int:LOW:HIGH` or `int:LOW:HIGH:STEP`,
- `choice:A,B,C`: values spelled as `--set` spells them (`none`, `true`,
  `3e-4`); a setting that is itself a list takes `|` between its choices
  (`choice:32,64|64,128`).

The search is checked before trial 1 (`check_against_recipe`): the
recipe's model is built, not trained, with each choice and each range end
in turn, and the objective must be among what every one of these models
logs; a refusal names the value and leaves nothing in `--dir`.

Where the study lives: `DIR/study.db` (SQLite, through Optuna's RDB
storage) unless `--storage URL` names another database Optuna supports
(`postgresql://...`), which lets several machines work on one study. The
study records its recipe, objective, space and `--set` values, and a rerun
with others is refused, so `--dir` always names one search.

Resuming: run the same command again. Finished trials (COMPLETE, PRUNED,
or FAIL for a diverged run) are not redone; `--trials N` counts them. A
trial left RUNNING by a process of this machine that no longer exists (a
kill, a crash, Ctrl-C) is marked FAIL and enqueued again with the same
settings and the same run directory, so its run resumes from its last
backed-up epoch (the epochs already done are reported to the new trial
from its `history.csv`).

Several processes (`--workers N`, or the same command on several machines
with one `--storage`): each worker takes the next trial under a file lock
(`DIR/tune.lock`) after counting the trials finished or running, so the
workers of one machine run `--trials` trials in total and never the same
trial twice. The workers end with the process that started them (even one
killed by `kill -9`: Linux's PR_SET_PDEATHSIG), recording their trial to be
resumed; each trial holds its run directory's lock (`kgen.lock`). Workers on other machines count through the database without
a shared lock, so a study shared by machines may run a few trials over N.
SQLite is used through Optuna's RDB storage with a 60 s busy timeout: a
write that meets another process's lock waits for it instead of failing,
and the file lock keeps the only read-then-write step (count, then ask)
to one process at a time.
"""

import contextlib
import math
import os
import pathlib
import socket
import subprocess
import sys
import time

from kgen import config as kgen_config
from kgen import io as kgen_io
from kgen import lock as kgen_lock
from kgen import memory
from kgen import recipe as kgen_recipe
from kgen.config import ConfigError
from kgen.errors import first_line

PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = ("minimize", "maximize")
SPEC_HELP = ("float:LOW:HIGH[:log], int:LOW:HIGH[:STEP] or choice:A,B,C "
             "(choices of a list setting separated by |)")


class TuneError(ConfigError):
    """A search argument is wrong (a space, an objective, a study that holds
    another search); the message names the value."""


# === Search space ===


class Param:
    """One searched setting: `kind` is float, int or choice."""

    def __init__(self, key, spec, kind, low=None, high=None, log=False, step=1,
                 choices=()):
        self.key, self.spec, self.kind = key, spec, kind
        self.low, self.high, self.log, self.step = low, high, log, step
        self.choices = tuple(choices)

    def suggest(self, trial):
        """The trial's value, as the `--set` text for this key."""
        if self.kind == "float":
            value = trial.suggest_float(self.key, self.low, self.high, log=self.log)
        elif self.kind == "int":
            value = trial.suggest_int(self.key, self.low, self.high, step=self.step)
        else:
            value = trial.suggest_categorical(self.key, list(self.choices))
        return value

    def edge_values(self):
        """The values whose `--set` form the recipe must accept."""
        if self.kind == "choice":
            return list(self.choices)
        return [self.low, self.high]

    def hparam(self):
        from tensorboard.plugins.hparams import api as hp

        if self.kind == "float":
            return hp.HParam(self.key, hp.RealInterval(float(self.low), float(self.high)))
        if self.kind == "int":
            return hp.HParam(self.key, hp.IntInterval(int(self.low), int(self.high)))
        return hp.HParam(self.key, hp.Discrete([str(c) for c in self.choices]))


def _number(text, kind, item):
    try:
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        raise TuneError(
            f"--space {item}: {text!r} is not {'an integer' if kind == 'int' else 'a number'} "
            f"(expected {SPEC_HELP})") from None
    if kind == "float" and not math.isfinite(value):
        raise TuneError(f"--space {item}: {text!r} is not a finite number")
    return value


def parse_spec(item):
    """`"learning_rate=float:1e-4:1e-2:log"` -> a `Param`.

    Raises:
        TuneError: naming `item` when it does not follow the grammar.
    """
    key, sep, spec = item.partition("=")
    key, spec = key.strip(), spec.strip()
    if not sep or not key or not spec:
        raise TuneError(f"--space {item!r}: expected KEY=SPEC with SPEC one of {SPEC_HELP}")
    kind, _, rest = spec.partition(":")
    if kind == "choice":
        separator = "|" if "|" in rest else ","
        choices = [c.strip() for c in rest.split(separator)]
        if not rest.strip() or any(not c for c in choices):
            raise TuneError(f"--space {item}: expected choice:A,B,C with no empty choice")
        if len(set(choices)) != len(choices):
            raise TuneError(f"--space {item}: a choice is listed twice")
        return Param(key, spec, "choice", choices=choices)
    if kind not in ("float", "int"):
        raise TuneError(f"--space {item}: unknown kind {kind!r} (expected {SPEC_HELP})")
    parts = rest.split(":")
    if len(parts) not in (2, 3):
        raise TuneError(f"--space {item}: expected {kind}:LOW:HIGH"
                        f"{'[:log]' if kind == 'float' else '[:STEP]'}")
    low, high = (_number(p.strip(), kind, item) for p in parts[:2])
    if not low < high:
        raise TuneError(f"--space {item}: LOW {parts[0]} must be below HIGH {parts[1]}")
    if kind == "float":
        log = len(parts) == 3
        if log and parts[2].strip() != "log":
            raise TuneError(f"--space {item}: expected float:LOW:HIGH or float:LOW:HIGH:log, "
                            f"got {parts[2]!r} after HIGH")
        if log and low <= 0:
            raise TuneError(f"--space {item}: a log range needs LOW > 0, got {parts[0]}")
        return Param(key, spec, "float", low, high, log=log)
    step = _number(parts[2].strip(), "int", item) if len(parts) == 3 else 1
    if step < 1:
        raise TuneError(f"--space {item}: STEP must be an integer >= 1, got {step}")
    if (high - low) % step:
        raise TuneError(f"--space {item}: HIGH - LOW = {high - low} is not a multiple "
                        f"of STEP {step}")
    return Param(key, spec, "int", low, high, step=step)


def parse_space(items, recipe_config, recipe_name, sets):
    """The `--space` items as `Param`s, checked against the recipe.

    Every key must be a setting of the recipe and not also a `--set`; each
    range end and each choice must be a value the recipe accepts (checked
    as `--set` checks it).
    """
    if not items:
        raise TuneError("give at least one --space KEY=SPEC to search")
    space = {}
    for item in items:
        param = parse_spec(item)
        if param.key not in recipe_config:
            raise TuneError(
                f"--space {item}: {param.key!r} is not a setting of recipe "
                f"{recipe_name}; its settings are: {', '.join(sorted(recipe_config))}")
        if param.key in space:
            raise TuneError(f"--space {item}: {param.key} is searched twice")
        if param.key in sets:
            raise TuneError(f"--space {item}: {param.key} is also fixed by "
                            f"--set {param.key}={sets[param.key]}; give one or the other")
        for value in param.edge_values():
            try:
                kgen_config.apply_overrides(
                    recipe_config, {**sets, param.key: kgen_config.format_value(value)})
            except ConfigError as e:
                raise TuneError(f"--space {item}: {e}") from None
        space[param.key] = param
    return space


# === The study ===


def _storage(url):
    import optuna

    kwargs = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as e:  # SQLAlchemy: no such driver, host or database
        raise TuneError(f"--storage {url}: cannot open it ({first_line(e)})") from None


def make_pruner(name, n_startup_trials=None):
    """`median` (Optuna's MedianPruner), `hyperband` or `none`."""
    import optuna

    if name == "median":
        kwargs = {} if n_startup_trials is None else {"n_startup_trials": n_startup_trials}
        return optuna.pruners.MedianPruner(**kwargs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise TuneError(f"--pruner {name}: expected one of {', '.join(PRUNERS)}")


def _search_attrs(recipe, objective, space, sets):
    return {"kgen_recipe": recipe, "kgen_objective": objective,
            "kgen_space": {k: p.spec for k, p in sorted(space.items())},
            "kgen_sets": dict(sorted(sets.items()))}


def open_study(storage, name, direction, pruner, attrs):
    """Create the study, or load it and check it holds this search."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                pruner=pruner, load_if_exists=True)
    held = study.user_attrs
    if not held:
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        return study
    differences = [f"{key[5:]}: {held.get(key)} -> {value}"
                   for key, value in attrs.items() if held.get(key) != value]
    if study.direction.name.lower() != direction:
        differences.append(f"direction: {study.direction.name.lower()} -> {direction}")
    if differences:
        raise TuneError(
            f"study {name!r} holds another search ({'; '.join(differences)}); "
            f"pass another --dir (or --study) for a new search")
    return study


def _retried(trials):
    """The numbers of the trials that were enqueued again (`retry_of`)."""
    return {t.user_attrs["retry_of"] for t in trials
            if t.user_attrs.get("retry_of") is not None}


def count_trials(trials):
    """The trials that count towards --trials: finished or running, but not
    one that was killed and enqueued again."""
    from optuna.trial import TrialState

    retried = _retried(trials)
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
               or (t.state == TrialState.FAIL and t.number not in retried)
               for t in trials)


def retry_stale_trials(study):
    """Fail and enqueue again the RUNNING trials of dead processes of this
    machine; returns their numbers."""
    from optuna.trial import TrialState

    host, retried = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        pid = attrs.get("pid")
        if attrs.get("host") != host or not isinstance(pid, int) or pid == os.getpid():
            continue
        if kgen_io.process_alive(pid):
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.params, user_attrs={
            "run_dir": attrs.get("run_dir") or _run_dir_name(trial.number),
            "retry_of": trial.number})
        retried.append(trial.number)
    return retried


def _run_dir_name(number):
    return f"trial-{number:04d}"


@contextlib.contextmanager
def _file_lock(path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# === One trial ===


def _objective_callback(trial, objective):
    import keras

    class ReportObjective(keras.callbacks.Callback):
        """Reports `logs[objective]` to the trial each epoch; stops the run
        when the pruner says so."""

        def __init__(self):
            super().__init__()
            self.pruned_at = None

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if objective not in logs:
                raise TuneError(
                    f"--objective {objective}: not logged by this recipe; the logged "
                    f"values are: {', '.join(sorted(logs)) or '(none)'}")
            with kgen_lock.termination_deferred():  # a database write
                trial.report(float(logs[objective]), epoch)
                prune = trial.should_prune()
            if prune:
                self.pruned_at = epoch
                self.model.stop_training = True

    return ReportObjective()


def _history(run_dir):
    import csv

    try:
        with open(run_dir / "history.csv", newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def _values(rows, objective):
    found = []
    for row in rows:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            found.append((int(row["epoch"]), float(row[objective])))
    return found


def run_trial(study, trial, search, verbose):
    """Train one trial; tells the study how it ended. Returns its state."""
    from optuna.trial import TrialState

    sets = {**search["sets"], **{k: kgen_config.format_value(v)
                                 for k, v in trial.params.items()}}
    run_dir = search["dir"] / trial.user_attrs["run_dir"]
    # The trial's run directory is this process's from its first epoch to
    # its recorded end (a pruned trial's state.json included).
    try:
        with kgen_lock.hold(run_dir):
            return _train_trial(study, trial, search, verbose, sets, run_dir)
    except kgen_lock.RunLockedError as e:
        trial.set_user_attr("error", first_line(e))
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise


def _train_trial(study, trial, search, verbose, sets, run_dir):
    """`run_trial` once it holds the trial's run directory."""
    from optuna.trial import TrialState

    from kgen import training

    # A retried trial's run resumes: the pruner sees its earlier epochs too.
    with kgen_lock.termination_deferred():
        for epoch, value in _values(_history(run_dir), search["objective"]):
            trial.report(value, epoch)
    callback = _objective_callback(trial, search["objective"])
    try:
        training.train(search["recipe"], sets=sets, run_dir=run_dir, export_to=None,
                       verbose=verbose, callbacks=[callback])
    except KeyboardInterrupt:
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={
            "run_dir": trial.user_attrs["run_dir"], "retry_of": trial.number})
        raise
    except training.NonFiniteError as e:
        trial.set_user_attr("error", str(e))
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    except BaseException as e:
        trial.set_user_attr("error", first_line(e))
        study.tell(trial, state=TrialState.FAIL)
        raise
    with kgen_lock.termination_deferred():
        return _record_trial(study, trial, search, run_dir, callback)


def _record_trial(study, trial, search, run_dir, callback):
    """Tell the study how a trained trial ended; returns its state."""
    import json

    from optuna.trial import TrialState

    values = _values(_history(run_dir), search["objective"])
    trial.set_user_attr("epochs", len(values))
    if callback.pruned_at is not None:
        kgen_io.write_text(run_dir / "state.json", json.dumps({
            "status": "pruned", "epoch": callback.pruned_at + 1,
            "objective": search["objective"], "value": values[-1][1] if values else None,
            "exported": None}, indent=2))
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    pick = min if study.direction.name == "MINIMIZE" else max
    study.tell(trial, pick(v for _, v in values))
    return TrialState.COMPLETE


def write_hparams(search, trial):
    """One HParams session for a finished trial under `DIR/hparams/`."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    name = _run_dir_name(trial.number)
    writer = tf.summary.create_file_writer(str(search["dir"] / "hparams" / name))
    params = {k: (str(v) if search["space"][k].kind == "choice" else v)
              for k, v in trial.params.items()}
    with writer.as_default():
        hp.hparams(params, trial_id=name)
        for epoch, value in sorted(trial.intermediate_values.items()):
            tf.summary.scalar(search["objective"], value, step=epoch)
        if trial.value is not None:
            tf.summary.scalar(f"{search['objective']}_best", trial.value,
                              step=trial.user_attrs.get("epochs", 0))
    writer.close()


def write_hparams_config(search):
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    writer = tf.summary.create_file_writer(str(search["dir"] / "hparams"))
    with writer.as_default():
        hp.hparams_config(
            hparams=[p.hparam() for p in search["space"].values()],
            metrics=[hp.Metric(search["objective"], display_name=search["objective"]),
                     hp.Metric(f"{search['objective']}_best")])
    writer.close()


# === Results ===


def _format(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return kgen_config.format_value(value)


def _state_name(trial, retried):
    name = trial.state.name
    if trial.number in retried:
        return f"{name} (stopped, retried)"
    if trial.user_attrs.get("retry_of") is not None:
        return f"{name} (retry of #{trial.user_attrs['retry_of']})"
    return name


def results_table(study, objective):
    """The trials as a text table: trial, state, params, objective, epochs,
    seconds."""
    header = ("trial", "state", "params", objective, "epochs", "seconds")
    rows, trials = [], study.get_trials(deepcopy=False)
    retried = _retried(trials)
    for t in trials:
        params = " ".join(f"{k}={_format(v)}" for k, v in sorted(t.params.items()))
        seconds = t.duration.total_seconds() if t.duration else None
        if t.number in retried:
            seconds = None  # it ended when a later run found it, not when it stopped
        rows.append((str(t.number), _state_name(t, retried), params,
                     "" if t.value is None else _format(t.value),
                     str(t.user_attrs.get("epochs", "")),
                     "" if seconds is None else f"{seconds:.1f}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def best_trial(study):
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None]
    if not done:
        return None
    pick = min if study.direction.name == "MINIMIZE" else max
    return pick(done, key=lambda t: (t.value, -t.number) if pick is max else (t.value, t.number))


def best_line(study, sets):
    """The best trial's settings, with the fixed ones, as `--set` options."""
    best = best_trial(study)
    if best is None:
        return None
    merged = {**sets, **{k: kgen_config.format_value(v) for k, v in best.params.items()}}
    return " ".join(f"--set {k}={v}" for k, v in merged.items())


# === The search ===


def check_against_recipe(loaded, space, sets, objective):
    """Build the recipe's model (not train it) with each range end and each
    choice of `space` in turn, the other settings at `sets` and the
    recipe's defaults, so that a value the recipe refuses is named before
    trial 1; and check that every one of these models logs `objective`.

    Raises:
        TuneError: naming the `--space` item and its value, or the
            objective with the values the recipe logs.
    """
    import gc

    import keras

    from kgen import training

    def build(item, values):
        config = kgen_config.apply_overrides(loaded.CONFIG, values)
        try:
            # A range end too large to build is named before it is built.
            memory.check(config, None if item else values, loaded.CONFIG,
                         where=f"--space {item} at {values[item.partition('=')[0]]}"
                         if item else f"recipe {loaded.name}")
        except memory.MemoryTooSmallError as e:
            raise TuneError(first_line(e)) from None
        try:
            config = training._resolve_precision(config, verbose=0)
            keras.utils.set_random_seed(config.get("seed", 0))
            model, data = loaded.build(config)
        except ConfigError as e:
            if not item:
                raise
            key = item.partition("=")[0]
            # The settings without this value built: the value is the culprit.
            reason = first_line(e.__cause__) if e.__cause__ is not None else first_line(e)
            raise TuneError(f"--space {item}: {key}={values[key]} is refused by recipe "
                            f"{loaded.name} ({reason})") from None
        logged = training.logged_values(model, data, config)
        del model, data
        gc.collect()
        if objective not in logged:
            where = (f"with --space {item} at {values[item.partition('=')[0]]}"
                     if item else f"by recipe {loaded.name}")
            raise TuneError(
                f"--objective {objective}: not logged {where}; the logged values "
                f"are: {', '.join(logged) or '(none)'}")

    build(None, sets)
    for param in space.values():
        for value in param.edge_values():
            build(f"{param.key}={param.spec}",
                  {**sets, param.key: kgen_config.format_value(value)})


def _search(recipe, space, objective, direction, sets, directory, storage, study):
    loaded = kgen_recipe.load(recipe)
    params = parse_space(space, kgen_config.with_common(loaded.CONFIG), loaded.name, sets)
    kgen_config.apply_overrides(loaded.CONFIG, sets)  # a bad --set is named now
    directory = pathlib.Path(directory or pathlib.Path("tunes") / loaded.name)
    storage = storage or f"sqlite:///{directory.resolve() / 'study.db'}"
    return {"recipe": str(recipe), "recipe_name": loaded.name, "loaded": loaded, "sets": sets,
            "space": params, "dir": directory, "storage": storage,
            "study": study or directory.name, "objective": objective,
            "direction": direction}


def tune(recipe, space, objective, trials, *, direction="minimize", sets=None,
         directory=None, storage=None, study=None, pruner="median",
         pruner_startup=None, workers=1, timeout=None, worker_index=None):
    """Run a search over a recipe's settings and print its results.

    Each trial is a `kgen.training.train` run in `DIRECTORY/trial-NNNN/`
    (see the module docstring); the best settings are printed and written
    to `DIRECTORY/best.txt` as a `--set` line. `kgen tune` calls this with
    its arguments.

    Args:
        recipe: a recipe name or path (`kgen.recipe.load`).
        space: the settings to search: `"KEY=SPEC"` items (`parse_spec`),
            e.g. `["learning_rate=float:1e-4:1e-2:log"]`, or a dict
            `{KEY: SPEC}`.
        objective: the logged value to optimize (`"val_loss"`).
        trials: trials in the whole search, those of an earlier run of the
            same search included (>= 1).
        direction: `"minimize"` or `"maximize"` the objective.
        sets: `{key: value}` fixed settings for every trial; a string is
            read as `--set` reads it.
        directory: the search's directory (default `tunes/<recipe name>`).
        storage: an Optuna database URL (default
            `sqlite:///DIRECTORY/study.db`).
        study: the study's name in the storage (default: the directory's).
        pruner: `"median"`, `"hyperband"` or `"none"`.
        pruner_startup: the median pruner's startup trials (Optuna's
            `n_startup_trials`); `None` for Optuna's default.
        workers: processes on this machine sharing the study; this one is
            worker 0 and starts the others as `kgen tune` processes with
            the same arguments.
        timeout: start no new trial after this many seconds (`None`: no
            limit).
        worker_index: set in the processes that `workers` starts: run
            trials only, without the header and the results.

    Raises:
        TuneError: an argument is wrong (named), Optuna is not installed, or
            a worker process failed.
        ConfigError: a `sets` value the recipe refuses.
    """
    try:
        import optuna
    except ImportError:
        raise TuneError("kgen tune needs Optuna: pip install 'kgen[tune]'") from None

    if isinstance(space, str):
        space = [space]
    elif isinstance(space, dict):
        space = [f"{key}={spec}" for key, spec in space.items()]
    space = list(space or ())
    sets = {key: value if isinstance(value, str) else kgen_config.format_value(value)
            for key, value in (sets or {}).items()}
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise TuneError(f"--trials {trials}: expected an integer >= 1")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise TuneError(f"--workers {workers}: expected an integer >= 1")
    if direction not in DIRECTIONS:
        raise TuneError(f"--direction {direction}: expected one of {', '.join(DIRECTIONS)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # kgen prints its own lines
    if worker_index is not None:
        _die_with_parent()
    search = _search(recipe, space, objective, direction, sets, directory, storage, study)
    if not objective or not objective.strip():
        raise TuneError("--objective: give the logged value to optimize, e.g. val_loss")
    if worker_index is None:  # the workers it starts run the search it checked
        check_against_recipe(search["loaded"], search["space"], sets, objective)
    search["dir"].mkdir(parents=True, exist_ok=True)
    if pruner_startup is not None and pruner != "median":
        raise TuneError(f"--pruner-startup {pruner_startup}: only the median pruner "
                        f"has startup trials (got --pruner {pruner})")
    made_pruner = make_pruner(pruner, pruner_startup)
    attrs = _search_attrs(search["recipe_name"], search["objective"], search["space"],
                          search["sets"])
    opened = open_study(_storage(search["storage"]), search["study"], search["direction"],
                        made_pruner, attrs)
    if worker_index is None:
        write_hparams_config(search)
        print(f"study {search['study']!r} in {search['storage']}: {trials} trials "
              f"of {search['recipe_name']}, {search['direction']} {search['objective']}, "
              f"run directories under {search['dir']}/", flush=True)
    try:
        if workers > 1:
            # This process is worker 0; the others are started beside it.
            command = _worker_command(search, space, trials, pruner, pruner_startup, timeout)
            _run_workers(command, workers, lambda: worker(opened, search, trials,
                                                          timeout, index=0))
        else:
            worker(opened, search, trials, timeout, worker_index)
    except KeyboardInterrupt:
        if worker_index is None:
            print(f"\nstopped: the trial in progress is enqueued again; run the same "
                  f"command to continue the search in {search['dir']}", file=sys.stderr)
        raise
    if worker_index is None:
        _report(opened, search)


def _worker_command(search, space, trials, pruner, pruner_startup, timeout):
    """The `kgen tune` command line of one more worker of this search
    (without `--worker-index`)."""
    command = [sys.executable, "-m", "kgen", "tune", search["recipe"],
               "--objective", search["objective"], "--direction", search["direction"],
               "--trials", str(trials), "--dir", str(search["dir"]),
               "--storage", search["storage"], "--study", search["study"],
               "--pruner", pruner, "--workers", "1"]
    for item in space:
        command += ["--space", item]
    for key, value in search["sets"].items():
        command += ["--set", f"{key}={value}"]
    if pruner_startup is not None:
        command += ["--pruner-startup", str(pruner_startup)]
    if timeout is not None:
        command += ["--timeout", repr(float(timeout))]
    return command


def _run_workers(command, workers, run_here):
    """Start workers 1..N-1 (`command` with `--worker-index i`) with this
    process's Keras backend, run `run_here()` as worker 0, and wait for the
    others."""
    import keras

    # A worker dies with this process (`_die_with_parent`), killed or not.
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(),
           _PARENT_ENV: str(os.getpid())}
    processes = [subprocess.Popen([*command, "--worker-index", str(i)], env=env)
                 for i in range(1, workers)]
    try:
        run_here()
        codes = [p.wait() for p in processes]
    except BaseException as e:
        # A Ctrl-C at the terminal reached the workers too: they are given a
        # moment to record their trial. Otherwise (SIGTERM, a SIGINT sent to
        # this process alone, a failure) they are stopped with SIGTERM, on
        # which they record it too; their running trials are retried when
        # the search runs again.
        _stop_workers(processes, grace=_CTRL_C_GRACE_S if type(e) is KeyboardInterrupt else 0)
        raise
    bad = [f"worker {i} exited {c}" for i, c in enumerate(codes, start=1) if c]
    if bad:
        raise TuneError(f"{'; '.join(bad)} (its message is above)")


# The environment variable that tells a worker its parent's process id.
_PARENT_ENV = "KGEN_TUNE_PARENT"
# How long workers that a Ctrl-C reached are given to stop by themselves.
_CTRL_C_GRACE_S = 5.0
# How long a stopped worker is given to record its trial before it is killed.
_STOP_WAIT_S = 60.0


def _stop_workers(processes, grace):
    """Stop the worker processes: wait `grace` seconds for them to end by
    themselves, then SIGTERM, then kill (`kill -9`) those still running after
    `_STOP_WAIT_S`."""
    deadline = time.monotonic() + grace
    for p in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.poll() is None:
            p.terminate()
    for p in processes:
        try:
            p.wait(timeout=_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _die_with_parent():
    """In a worker process: receive SIGTERM when the `kgen tune` process
    that started it ends, even by `kill -9` (Linux's PR_SET_PDEATHSIG; the
    `kgen` command turns SIGTERM into an interruption that records the
    trial). A parent already gone ends the worker at once."""
    parent = os.environ.get(_PARENT_ENV, "")
    if not sys.platform.startswith("linux") or not parent.isdigit():
        return
    import ctypes
    import ctypes.util
    import signal

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
        return
    if os.getppid() != int(parent):  # it ended before the call above
        raise TuneError(f"the kgen tune process {parent} that started this worker "
                        f"has ended; worker stopped")


def worker(study, search, n_trials, timeout=None, index=None):
    """Run trials until the study counts `n_trials` (or `timeout` seconds
    have passed); returns the number this process ran."""
    from optuna.trial import TrialState

    lock = search["dir"] / "tune.lock"
    prefix = "" if index is None else f"[worker {index}] "
    start, ran = time.time(), 0
    host = socket.gethostname()
    while True:
        if timeout is not None and time.time() - start >= timeout:
            print(f"{prefix}--timeout {timeout:g}s reached: no new trial started", flush=True)
            break
        # A SIGTERM waits for the database writes of these blocks to end.
        with _file_lock(lock), kgen_lock.termination_deferred():
            retried = retry_stale_trials(study)
            for number in retried:
                print(f"{prefix}trial #{number} was left running by a process that is "
                      f"gone: enqueued again to resume from its run directory", flush=True)
            trials = study.get_trials(deepcopy=False)
            if count_trials(trials) >= n_trials:
                break
            trial = study.ask()
            run_dir = trial.user_attrs.get("run_dir") or _run_dir_name(trial.number)
            for key, value in (("host", host), ("pid", os.getpid()), ("run_dir", run_dir)):
                trial.set_user_attr(key, value)
            for param in search["space"].values():
                param.suggest(trial)
            position = count_trials(trials) + 1
        params = " ".join(f"{k}={_format(v)}" for k, v in sorted(trial.params.items()))
        print(f"{prefix}trial {position} of {n_trials} (#{trial.number}, "
              f"{search['dir'] / run_dir}): {params}", flush=True)
        ran += 1
        state = run_trial(study, trial, search, verbose=2 if index is None else 0)
        with kgen_lock.termination_deferred():
            frozen = study.get_trials(deepcopy=False)[trial.number]
            write_hparams(search, frozen)
            best = best_trial(study)
        value = "" if frozen.value is None else f" {search['objective']}={frozen.value:.4g}"
        if state == TrialState.PRUNED and frozen.intermediate_values:
            last = max(frozen.intermediate_values)
            value = (f" at epoch {last + 1} ({search['objective']}="
                     f"{frozen.intermediate_values[last]:.4g})")
        if state == TrialState.FAIL:
            value = f": {frozen.user_attrs.get('error', '')}"
        seconds = frozen.duration.total_seconds() if frozen.duration else 0.0
        best_text = ("none yet" if best is None else
                     f"#{best.number} {search['objective']}={best.value:.4g}")
        print(f"{prefix}trial #{trial.number} {state.name}{value} in {seconds:.1f}s; "
              f"best: {best_text}", flush=True)
    return ran


def _report(study, search):
    print()
    print(results_table(study, search["objective"]))
    line = best_line(study, search["sets"])
    if line is None:
        print("\nno trial completed: no best settings")
        return
    best = best_trial(study)
    kgen_io.write_text(search["dir"] / "best.txt", line + "\n")
    print(f"\nbest: trial #{best.number}, {search['objective']}={best.value:.4g}")
    print(f"best settings ({search['dir'] / 'best.txt'}): {line}")
    print(f"train with them: kgen train {search['recipe']} {line}")
    print(f"TensorBoard HParams: tensorboard --logdir {search['dir'] / 'hparams'}")

