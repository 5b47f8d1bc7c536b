"""`kgen distill`: a few-step student of a trained diffusion model, by
progressive distillation (Salimans & Ho, 2022).

Starting from the teacher's `start_steps`-step DDIM sampler, each round
trains a student (initialised from its teacher) to take in one step what
the teacher takes in two (`kgen.models.distill.ProgressiveDistillation`),
then the student becomes the teacher and the step count halves, down to
`steps`. The result is a plain `DiffusionModel` whose default sampler is
DDIM at `steps` steps (`DiffusionModel.distilled`), exported, sampled,
served and evaluated like any diffusion model.

A distillation run directory (default `runs/<teacher run>-distill<steps>`):

```
RUN/config.json          the teacher, the settings and the backend
RUN/state.json           "training" or "trained", rounds done, the export
RUN/teacher.keras        a copy of the teacher's model (its run is only read)
RUN/round-K/backup/      the round's training state, per epoch, while unfinished
RUN/round-K/history.csv  one row per epoch of round K
RUN/round-K/student.keras  round K's student, once the round is done
RUN/logs/round-K/        TensorBoard scalars
RUN/best.keras           the final student
RUN/kgen.lock            while a process works in it (`kgen.lock`)
```

Every file is written to a temporary sibling and renamed. Run again with
the same settings, a killed run resumes in the round it stopped in, from
its last epoch's backup; a finished round is not trained again. A run with
other settings is refused unless `overwrite`.
"""

import json
import math
import pathlib
import shutil
import time

from kgen import config as kgen_config
from kgen import io as kgen_io
from kgen import lock as kgen_lock
from kgen.config import ConfigError
from kgen.errors import UserError

METHOD = "progressive"

# The settings `--set KEY=VALUE` changes; None: the teacher run's own.
DEFAULTS = dict(
    steps=4,                # the student's step count (--steps)
    start_steps=32,         # the teacher's DDIM steps that round 1 halves; steps x 2**k
    epochs_per_round=6,     # epochs of each round (halving)
    steps_per_epoch=100,    # training steps per epoch (a backup after each)
    batch_size=None,        # none: the teacher run's
    learning_rate=3e-4,     # Adam's, decayed linearly to 0 over each round
    guidance_scale=None,    # the teacher's guidance distilled into the student; none: its own
    label_dropout=0.1,      # share of rows distilled on the "no label" class
    ema_decay=0.995,        # the student's EMA (it samples and exports with it)
    data=None,              # none: the teacher run's training data
    seed=0,
)

# One line for each setting (`kgen distill --help`, the docs).
SETTINGS_HELP = {
    "steps": "the student's step count (also --steps)",
    "start_steps": "the teacher's DDIM step count round 1 halves: steps times a power of two",
    "epochs_per_round": "epochs of each halving round",
    "steps_per_epoch": "training steps per epoch; the run is backed up after each epoch",
    "batch_size": "rows per step (none: the teacher run's)",
    "learning_rate": "Adam's learning rate, decayed linearly to 0 over each round",
    "guidance_scale": "the teacher's guidance the student learns (none: the teacher's own)",
    "label_dropout": "share of rows distilled on the unconditional (no label) class",
    "ema_decay": "decay of the student's EMA weights, which sample and export",
    "data": "the training images (none: the teacher run's data)",
    "seed": "seeds the noise, the timesteps and the data order",
}


class DistillError(UserError, ValueError):
    """A teacher that cannot be distilled, or a bad distillation setting."""


# --- settings -----------------------------------------------------------


def resolve_settings(sets):
    """`DEFAULTS` with `sets` (`{key: text}`) coerced to their types and
    checked; a `ConfigError` naming the bad `--set`."""
    config = dict(DEFAULTS)
    for key, text in (sets or {}).items():
        if key not in DEFAULTS:
            raise ConfigError(f"--set {key}={text}: unknown setting {key!r}; kgen distill's "
                              f"settings are: {', '.join(sorted(DEFAULTS))}")
        config[key] = kgen_config._coerce(key, text, DEFAULTS[key])
    return check_settings(config)


def _int(config, key, low=1):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"--set {key}={value}: {key} must be an integer >= {low}")
    return value


def _number(config, key, low, high, what):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not low <= value < high:
        raise ConfigError(f"--set {key}={value}: {key} must be {what}")
    return float(value)


def check_settings(config):
    steps = config["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps {steps}: must be an integer >= 1")
    start = _int(config, "start_steps", 2)
    ratio = start // steps
    if start % steps or ratio < 2 or ratio & (ratio - 1):
        options = ", ".join(str(steps * 2**k) for k in range(1, 5))
        raise ConfigError(
            f"--set start_steps={start}: must be --steps ({steps}) times a power of "
            f"two >= 2 ({options}, ...), so each round halves the step count")
    _int(config, "epochs_per_round")
    _int(config, "steps_per_epoch")
    if config["batch_size"] is not None:
        _int(config, "batch_size")
    _number(config, "learning_rate", 1e-12, math.inf, "a finite number > 0")
    if config["guidance_scale"] is not None:
        _number(config, "guidance_scale", -math.inf, math.inf, "a finite number")
    _number(config, "label_dropout", 0.0, 1.0, "in [0, 1)")
    _number(config, "ema_decay", 0.0, 1.0, "in [0, 1)")
    seed = config["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"--set seed={seed}: seed must be an integer in [0, 2**32)")
    if config["data"] is not None and not isinstance(config["data"], str):
        config["data"] = str(config["data"])
    return config


def rounds(config):
    """`[(teacher_steps, student_steps), ...]`, one per round."""
    out, n = [], config["start_steps"]
    while n > config["steps"]:
        out.append((n, n // 2))
        n //= 2
    return out


# --- the teacher --------------------------------------------------------


def find_teacher_run(run_or_recipe):
    """The run directory `RUN_OR_RECIPE` names: a directory, or a recipe
    name whose `runs/RECIPE` exists; a `DistillError` naming it otherwise."""
    from kgen import recipe as kgen_recipe

    path = pathlib.Path(run_or_recipe)
    if path.is_dir():
        return path
    if path.exists():
        raise DistillError(f"{run_or_recipe}: not a run directory (expected the directory "
                           f"of a `kgen train` run, holding config.json and best.keras)")
    text = str(run_or_recipe)
    if "/" not in text and text in kgen_recipe.names():
        default = pathlib.Path("runs") / text
        if default.is_dir():
            return default
        raise DistillError(f"{text}: recipe {text}'s run directory {default} does not "
                           f"exist; train it first (kgen train {text}) or give the run "
                           f"directory")
    raise DistillError(f"{run_or_recipe}: no such run directory or recipe (give the "
                       f"directory of a trained diffusion run, or a recipe whose "
                       f"runs/RECIPE holds one)")


def _read_json(path):
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise kgen_io.DamagedFileError(f"{path} is damaged ({e})") from None
    if not isinstance(value, dict):
        raise kgen_io.DamagedFileError(f"{path} is damaged (not a JSON object)")
    return value


def teacher_checkpoint(run_dir):
    """`(settings, checkpoint path, finished)` of a `kgen train` run.

    Call it holding the run's lock (`kgen.lock.hold`), so that no live
    `kgen train` writes the run meanwhile: a run whose `state.json` still
    says "training" then stopped before its last epoch (killed or
    interrupted), and its best epoch so far (`best.keras`, written whole
    after every epoch) is the teacher (`finished` is False).
    """
    settings = _read_json(run_dir / "config.json")
    if settings is None or "recipe" not in settings:
        raise DistillError(f"{run_dir}: not a kgen train run directory (no config.json "
                           f"naming its recipe)")
    state = _read_json(run_dir / "state.json") or {}
    finished = state.get("status") != "training"
    name = state.get("checkpoint") or "best.keras"
    path = run_dir / name
    if not path.is_file():
        stopped = "" if finished else " (its training stopped before its first epoch ended)"
        raise DistillError(f"{run_dir}: holds no trained model ({name} is missing){stopped}")
    return settings, path, finished


def load_model(path):
    """A `.keras` file as a model; a `DamagedFileError` naming it."""
    import keras

    import kgen.models  # noqa: F401  (registers the classes)

    try:
        return keras.saving.load_model(path)
    except Exception as e:  # zipfile, h5py and Keras raise many kinds
        raise kgen_io.DamagedFileError(
            f"{path}: cannot be read as a .keras model ({type(e).__name__}: {e})") from None


def check_teacher(model, where):
    """Refuse a model that is not an image `DiffusionModel`, naming it."""
    from kgen.models.diffusion import DiffusionModel

    if not isinstance(model, DiffusionModel) or model.output_kind != "images" \
            or type(model).sample is not DiffusionModel.sample:
        raise DistillError(
            f"{where}: a {type(model).__name__}, not an image diffusion model; kgen "
            f"distill takes the run of a diffusion recipe (e.g. ddpm_mnist)")
    return model


def make_student(teacher, config, student_steps):
    """A `DiffusionModel` like `teacher`, its weights the teacher's sampling
    weights, sampling with DDIM at `student_steps` steps."""
    import keras

    guidance = teacher_guidance(teacher, config)
    student_config = {
        **teacher.get_config(), "sampler": "ddim", "ema_decay": config["ema_decay"],
        "guidance_scale": guidance, "label_dropout": config["label_dropout"],
        "distilled": {"steps": int(student_steps), "teacher_steps": config["start_steps"],
                      "method": METHOD, "guidance_scale": guidance},
    }
    student = type(teacher).from_config(student_config)
    source = [keras.ops.convert_to_numpy(w) for w in teacher.sampling_denoiser.weights]
    for network in (student.denoiser, student.ema_denoiser):
        if network is not None:
            for weight, value in zip(network.weights, source):
                weight.assign(value)  # copies: no buffer shared with the teacher
    return student


def teacher_guidance(teacher, config):
    """The guidance distilled: the setting, else the (first) teacher's own;
    1 for an unconditional model."""
    if teacher.num_classes is None:
        return 1.0
    if teacher.distilled:
        return teacher.distilled["guidance_scale"]
    if config["guidance_scale"] is not None:
        return float(config["guidance_scale"])
    return float(teacher.guidance_scale)


# --- the run ------------------------------------------------------------


_RUN_FILES = ("state.json", "best.keras", "teacher.keras")


def _clear(run_dir):
    for name in _RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for path in run_dir.glob("round-*"):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(run_dir / "logs", ignore_errors=True)


def default_run_dir(teacher_dir, steps):
    return teacher_dir.parent / f"{teacher_dir.name}-distill{steps}"


def distill(run_or_recipe, sets=None, run_dir=None, export_to="default", overwrite=False,
            verbose="auto", log=None):
    """Distil a trained diffusion run into a `steps`-step student.

    Args:
        run_or_recipe: the teacher's run directory, or a recipe name whose
            `runs/RECIPE` is one.
        sets: `{key: text}` overrides of `DEFAULTS`.
        run_dir: the distillation's run directory (default
            `runs/<teacher run>-distill<steps>`).
        export_to: base path of the export; `"default"`:
            `saved_models/<run_dir name>`; `None`: no export.
        overwrite: replace an earlier distillation with other settings.
        verbose: Keras' `fit()` verbosity.
        log: where progress lines go (default: standard output).

    Returns:
        A dict: `run_dir`, `best` (the student's `.keras`), `exported`,
        `rounds` (`[(teacher_steps, student_steps), ...]`), `wall_s`,
        `up_to_date` (nothing was trained).
    """
    say = log or (lambda line: print(line, flush=True))
    config = resolve_settings(sets)
    teacher_dir = find_teacher_run(run_or_recipe)
    run_dir = pathlib.Path(run_dir or default_run_dir(teacher_dir, config["steps"]))
    if run_dir.resolve() == teacher_dir.resolve():
        raise DistillError(f"--run-dir {run_dir}: is the teacher's run; the "
                           f"distillation writes its own run directory")
    if export_to == "default":
        export_to = pathlib.Path("saved_models") / run_dir.name
    with kgen_lock.hold(teacher_dir, command="kgen distill (reading the teacher)"):
        teacher_settings, teacher_path, finished = teacher_checkpoint(teacher_dir)
    if not finished:
        say(f"{teacher_dir}: its training stopped before its last epoch; distilling its "
            f"best epoch so far ({teacher_path.name}); `kgen train` with the same "
            f"settings resumes it")
    import keras

    settings = json.loads(json.dumps({
        "command": "distill", "teacher": str(teacher_dir.resolve()),
        "recipe": teacher_settings.get("recipe"), "backend": keras.backend.backend(),
        "config": config}, default=str))
    with kgen_lock.hold(run_dir):
        return _distill(run_dir, teacher_dir, teacher_path, teacher_settings, settings,
                        config, export_to, overwrite, verbose, say)


def _distill(run_dir, teacher_dir, teacher_path, teacher_settings, settings, config,
             export_to, overwrite, verbose, say):
    previous = _read_json(run_dir / "config.json")
    if previous is not None and previous != settings:
        if not overwrite:
            diffs = [f"{k}: {previous.get('config', {}).get(k)} -> {v}"
                     for k, v in settings["config"].items()
                     if previous.get("config", {}).get(k) != v]
            diffs += [f"{k}: {previous.get(k)} -> {settings[k]}"
                      for k in ("teacher", "backend") if previous.get(k) != settings[k]]
            raise ConfigError(f"{run_dir} holds a distillation with other settings "
                              f"({'; '.join(diffs)}); pass another --run-dir, or "
                              f"--overwrite to replace it")
        _clear(run_dir)
        previous = None
    elif previous is None and any((run_dir / n).exists() for n in _RUN_FILES):
        if not overwrite:
            raise ConfigError(f"{run_dir} holds files of another run but no config.json; "
                              f"pass another --run-dir, or --overwrite to replace them")
        _clear(run_dir)
    kgen_io.clean_stale_temporaries(run_dir)
    plan = rounds(config)
    state = _read_json(run_dir / "state.json") or {"status": "training"}
    if state.get("status") == "trained" and (run_dir / "best.keras").is_file():
        return _finish(run_dir, state, export_to, plan, None, say)

    # Checked before the run directory records anything.
    teacher = check_teacher(load_model(teacher_path), f"{teacher_dir} ({teacher_path.name})")
    if 2 * plan[0][1] > teacher.scheduler.num_train_timesteps:
        raise ConfigError(f"--set start_steps={config['start_steps']}: more than the "
                          f"teacher's num_train_timesteps "
                          f"({teacher.scheduler.num_train_timesteps})")
    data = _training_data(teacher_settings, config, teacher)
    local_teacher = run_dir / "teacher.keras"
    if previous is None:
        kgen_io.write_text(run_dir / "config.json", json.dumps(settings, indent=2))
        _write_state(run_dir, {"status": "training", "rounds_done": 0,
                               "rounds": len(plan)})
    if not local_teacher.is_file():
        with kgen_lock.hold(teacher_dir, command="kgen distill (copying the teacher)"):
            with kgen_io.atomic_path(local_teacher, suffix=".keras") as tmp:
                shutil.copyfile(teacher_path, tmp)

    start = time.time()
    trained = False
    for k, (teacher_steps, student_steps) in enumerate(plan, start=1):
        student_path = run_dir / f"round-{k}" / "student.keras"
        if student_path.is_file():
            continue
        source = local_teacher if k == 1 else run_dir / f"round-{k - 1}" / "student.keras"
        round_teacher = check_teacher(load_model(source), str(source))
        say(f"round {k} of {len(plan)}: {teacher_steps} teacher steps -> "
            f"{student_steps} student steps ({config['epochs_per_round']} epochs of "
            f"{config['steps_per_epoch']} steps, batch {config['batch_size']})")
        _train_round(run_dir / f"round-{k}", round_teacher, data, config, k,
                     student_steps, verbose, say)
        _write_state(run_dir, {"status": "training", "rounds_done": k,
                               "rounds": len(plan)})
        trained = True
    final = run_dir / f"round-{len(plan)}" / "student.keras"
    with kgen_io.atomic_path(run_dir / "best.keras", suffix=".keras") as tmp:
        shutil.copyfile(final, tmp)
    wall = time.time() - start
    state = {"status": "trained", "checkpoint": "best.keras", "rounds_done": len(plan),
             "rounds": len(plan), "steps": config["steps"],
             "teacher_steps": config["start_steps"], "wall_s": wall if trained else None,
             "exported": None}
    _write_state(run_dir, state)
    return _finish(run_dir, state, export_to, plan, wall if trained else None, say)


def _training_data(teacher_settings, config, teacher):
    """The teacher recipe's training stream at the distillation's batch size
    (an endless stream of `steps_per_epoch`-step epochs)."""
    import keras

    from kgen import recipe as kgen_recipe

    recipe = kgen_recipe.load(teacher_settings["recipe"])
    recipe_config = dict(teacher_settings.get("config") or {})
    if config["data"] is not None:
        recipe_config["data"] = config["data"]
    if config["batch_size"] is None:
        config["batch_size"] = int(recipe_config.get("batch_size", 64))
    recipe_config.update(batch_size=config["batch_size"],
                         steps_per_epoch=config["steps_per_epoch"], seed=config["seed"],
                         val_kid=None)
    recipe_config = {k: v for k, v in recipe_config.items() if k in recipe.CONFIG
                     or k in kgen_config.COMMON}
    keras.utils.set_random_seed(config["seed"])
    try:
        _, data = recipe.build(recipe_config)
    except ConfigError as e:
        if config["data"] is None and "data" in str(e):
            raise ConfigError(f"{e} (the teacher run's data; pass --set data=DIR)") from None
        raise
    return data


def _train_round(round_dir, teacher, data, config, k, student_steps, verbose, say):
    """Round `k`: train a student, resumed from the round's backup; write
    `round_dir/student.keras`."""
    import keras

    from kgen import callbacks as kgen_callbacks
    from kgen.models.distill import ProgressiveDistillation
    from kgen.training import _resume_stream

    keras.utils.set_random_seed(config["seed"] + k)
    student = make_student(teacher, config, student_steps)
    distiller = ProgressiveDistillation(
        teacher, student, student_steps, guidance_scale=teacher_guidance(teacher, config),
        label_dropout=config["label_dropout"], seed=config["seed"] * 1000 + k)
    epochs, steps = config["epochs_per_round"], config["steps_per_epoch"]
    schedule = keras.optimizers.schedules.PolynomialDecay(
        config["learning_rate"], decay_steps=epochs * steps, end_learning_rate=0.0)
    distiller.compile(optimizer=keras.optimizers.Adam(schedule))
    round_dir.mkdir(parents=True, exist_ok=True)
    kgen_io.clean_stale_temporaries(round_dir)
    backup = kgen_callbacks.TrainingBackup(round_dir / "backup")
    restored = backup.select()
    initial_epoch = int(restored["epoch"]) if restored else 0
    if restored:
        say(f"resuming round {k} after epoch {initial_epoch} "
            f"(backup {backup.weights_path(initial_epoch)})")
    history = kgen_callbacks.HistoryLog(round_dir / "history.csv",
                                        rows=(restored or {}).get("history") or ())
    backup.history = history
    train, steps = _resume_stream(data.train, steps, initial_epoch)
    if initial_epoch < epochs:
        distiller.fit(
            train, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
            callbacks=[kgen_callbacks.FiniteCheck(), backup, history,
                       keras.callbacks.TensorBoard(round_dir.parent / "logs" / round_dir.name)],
            shuffle=False, verbose=verbose)
    elif restored:  # every epoch ran before the kill: the backup holds the student
        distiller.optimizer.build(distiller.trainable_variables)
        distiller.load_weights(backup.weights_path(initial_epoch))
    with kgen_io.atomic_path(round_dir / "student.keras", suffix=".keras") as tmp:
        student.save(tmp)
    shutil.rmtree(round_dir / "backup", ignore_errors=True)


def _write_state(run_dir, state):
    kgen_io.write_text(run_dir / "state.json", json.dumps(state, indent=2))


def _finish(run_dir, state, export_to, plan, wall, say):
    best = run_dir / "best.keras"
    result = {"run_dir": run_dir, "best": best, "exported": None, "rounds": plan,
              "wall_s": wall, "up_to_date": wall is None}
    exported = state.get("exported")
    if export_to:
        base = pathlib.Path(export_to)
        if exported and pathlib.Path(exported).parent == base and pathlib.Path(exported).is_dir():
            result["exported"] = pathlib.Path(exported)
        else:
            from kgen.export import export_model

            result["exported"] = export_model(best, base)
            _write_state(run_dir, {**state, "exported": str(result["exported"])})
            result["up_to_date"] = False
    return result

