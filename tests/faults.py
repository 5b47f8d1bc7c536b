"""Faults injected into a real `kgen` process, for the durability tests.

A runner in the manner of `python -m`: it arms one fault in this process,
then runs the module (or the code) as `python` would:

```
python -m tests.faults POINT:N -m kgen train vae_digits --run-dir runs/x
python -m tests.faults POINT:N -c CODE [ARG ...]
```

The fault fires the N-th time POINT is reached in the process. A Python
child process that kgen starts (the TensorFlow-backend `kgen export` of a
JAX or PyTorch run, the workers of `kgen tune --workers`) runs under the
same fault, as it would inherit an environment variable.

Points (a kill is SIGKILL to this process; at a file write point the
temporary has been written and is cut to half its size first, so the kill
leaves what a kill in the middle of the write would leave):

- `epoch:N`: kill after the first batch of epoch N.
- `checkpoint:N`: kill at the rename of the checkpoint (`best.keras` or
  `last.keras`) written at the end of epoch N.
- `backup:N`: the same for the backup weights of epoch N
  (`backup/epoch-000N.weights.h5`).
- `history:N`: the same for `history.csv` written at the end of epoch N.
- `state:N`: the same for the N-th `state.json` that records a trained run.
- `export:N`: the same for the N-th export version directory (its largest
  file cut).
- `trial:N`: kill after the first epoch (its checkpoint, backup and history
  row written) of the N-th training this process runs (`kgen tune`: its
  N-th trial).
- `nonfinite:N`: no kill; the first trainable weight is set to NaN as each
  training's epoch N begins, as a diverged update would leave it.

kgen's code is not told: the fault comes through two real seams, the rename
of every atomic write (`kgen.io.move_into_place`) and one more Keras
callback given to `kgen.training.train` (which `kgen train` and `kgen tune`
call). In a test process, `arm(fault, monkeypatch)` installs the same
patches.
"""

import importlib.util
import json
import os
import pathlib
import re
import runpy
import signal
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
POINTS = ("epoch", "checkpoint", "backup", "history", "state", "export", "trial",
          "nonfinite")
_BACKUP_WEIGHTS = re.compile(r"^epoch-(\d+)\.weights\.h5$")


class Fault:
    """One armed fault, `POINT:N`, and what this process has reached."""

    def __init__(self, spec):
        point, _, number = str(spec).partition(":")
        if point not in POINTS or not number.isdigit() or int(number) < 1:
            raise ValueError(f"fault {spec!r}: expected POINT:N with POINT one of "
                             f"{', '.join(POINTS)} and N >= 1")
        self.spec, self.point, self.number = spec, point, int(number)
        self.epoch = None  # the 1-based epoch being trained, None between fits
        self.counts = {}

    def reached(self, point, index=None):
        """Whether reaching `point` (the `index`-th time, or counted here
        when `None`) is the armed fault."""
        if point != self.point:
            return False
        if index is None:
            index = self.counts[point] = self.counts.get(point, 0) + 1
        return index == self.number

    # === Seam: the rename of every atomic write ===

    def write_point(self, tmp, path):
        """The write point that renaming `tmp` to `path` is, if any, and
        whether it is the armed one."""
        name = path.name
        if name in ("best.keras", "last.keras") and self.epoch is not None:
            return self.reached("checkpoint", self.epoch)
        match = _BACKUP_WEIGHTS.match(name)
        if match and path.parent.name == "backup":
            return self.reached("backup", int(match.group(1)))
        if name == "history.csv" and self.epoch is not None:
            return self.reached("history", self.epoch)
        if name == "state.json" and _records_trained(tmp):
            return self.reached("state")
        if tmp.is_dir() and (tmp / "saved_model.pb").is_file():
            return self.reached("export")
        return False

    def patch_move_into_place(self, original):
        def move_into_place(tmp, path, *args, **kwargs):
            if self.write_point(pathlib.Path(tmp), pathlib.Path(path)):
                truncate_half(pathlib.Path(tmp))
                kill()
            return original(tmp, path, *args, **kwargs)

        return move_into_place

    # === Seam: one more callback of every training ===

    def patch_train(self, original):
        import keras

        fault = self

        class InjectFault(keras.callbacks.Callback):
            """Tracks the epoch for the write points; kills or poisons."""

            def __init__(self, trial):
                super().__init__()
                self.trial = trial
                self.killed_after_first_epoch = False

            def on_train_begin(self, logs=None):
                fault.epoch = None

            def on_epoch_begin(self, epoch, logs=None):
                fault.epoch = epoch + 1
                if fault.reached("nonfinite", epoch + 1):
                    variable = self.model.trainable_variables[0]
                    variable.assign(keras.ops.full(variable.shape, float("nan"),
                                                   variable.dtype))

            def on_train_batch_end(self, batch, logs=None):
                if batch == 0 and fault.reached("epoch", fault.epoch):
                    kill()

            def on_epoch_end(self, epoch, logs=None):
                if self.trial:
                    kill()

            def on_train_end(self, logs=None):
                fault.epoch = None

        def train(*args, callbacks=(), **kwargs):
            callback = InjectFault(trial=self.reached("trial"))
            fault.epoch = None
            try:
                return original(*args, callbacks=[callback, *callbacks], **kwargs)
            finally:
                fault.epoch = None

        return train


def _records_trained(tmp):
    try:
        return json.loads(tmp.read_text()).get("status") == "trained"
    except (OSError, ValueError, AttributeError):
        return False


def truncate_half(path):
    """Cut `path` (or the largest file under that directory) to half its size."""
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        if not files:
            return
        path = max(files, key=lambda p: p.stat().st_size)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def kill():
    """SIGKILL this process, as a power cut or the OOM killer would."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


# === Arming ===


def arm(spec, monkeypatch=None):
    """Arm fault `spec` (`POINT:N`) in this process; returns the `Fault`.

    With a pytest `monkeypatch`, the patches are undone after the test (and
    `kgen.training` is imported now); without one (the runner), they stay,
    and `kgen.training` is patched when it is first imported, so the Keras
    backend is chosen first, as `kgen` chooses it.
    """
    fault = Fault(spec)
    from kgen import io as kgen_io

    setter = monkeypatch.setattr if monkeypatch is not None else setattr
    setter(kgen_io, "move_into_place", fault.patch_move_into_place(kgen_io.move_into_place))
    patch_training = (lambda module: setter(module, "train",
                                            fault.patch_train(module.train)))
    if monkeypatch is not None or "kgen.training" in sys.modules:
        import kgen.training

        patch_training(kgen.training)
    else:
        sys.meta_path.insert(0, _AfterImport("kgen.training", patch_training))
    setter(subprocess, "Popen", _popen_under(spec))
    return fault


class _AfterImport:
    """A `sys.meta_path` finder that runs `patch(module)` right after module
    `name` is first executed, then steps aside."""

    def __init__(self, name, patch):
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        execute, patch = spec.loader.exec_module, self.patch

        def exec_module(module):
            execute(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def _popen_under(spec):
    """`subprocess.Popen` that starts `python -m ...` / `python -c ...`
    children under this runner and `spec`."""
    base = subprocess.Popen

    class Popen(base):
        def __init__(self, args, *rest, **kwargs):
            if (isinstance(args, (list, tuple)) and len(args) > 2
                    and str(args[0]) == sys.executable and args[1] in ("-m", "-c")):
                args = command(spec, *args[1:])
                kwargs["env"] = environment(kwargs.get("env"))
            super().__init__(args, *rest, **kwargs)

    return Popen


def command(spec, *args):
    """The argv that runs `python ARGS...` (`-m MODULE ...` or `-c CODE ...`)
    with fault `spec` armed."""
    return [sys.executable, "-m", "tests.faults", str(spec), *map(str, args)]


def environment(env=None):
    """`env` (default: this process's) with this repository importable, so
    `python -m tests.faults` runs from any directory."""
    env = dict(os.environ if env is None else env)
    paths = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def main(argv):
    if len(argv) < 3 or argv[1] not in ("-m", "-c"):
        sys.exit("usage: python -m tests.faults POINT:N (-m MODULE | -c CODE) [ARG ...]")
    spec, how, what, rest = argv[0], argv[1], argv[2], argv[3:]
    try:
        arm(spec)
    except ValueError as e:
        sys.exit(f"tests.faults: {e}")
    os.environ["PYTHONPATH"] = environment()["PYTHONPATH"]
    if how == "-m":
        sys.argv = [what, *rest]
        runpy.run_module(what, run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *rest]
        exec(compile(what, "<string>", "exec"), {"__name__": "__main__"})


if __name__ == "__main__":
    main(sys.argv[1:])
