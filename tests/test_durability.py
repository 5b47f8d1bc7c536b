"""Nothing lost: `kgen train` killed at each write point, then run again.

Real tiny runs of the `vae_digits` recipe (embedded data) through the
`kgen` command in a subprocess. The kill comes from the test runner
`python -m tests.faults POINT:N -m kgen ...` (see `tests/faults.py`): the
process is sent SIGKILL at that write point, after the temporary has been
partly written and before the rename. The same command is then run again, and the run must
end exactly as a run that was never killed: the same `best.keras` weights,
the same validation loss per epoch, each epoch once in `history.csv`, and
(when exported) one complete export version with no temporaries left.
"""

import csv
import io
import json
import re
import shutil
import signal
import subprocess
import zipfile

import h5py
import numpy as np
import pytest

from tests import faults
from tests.conftest import backend
from tests.conftest import kgen_env
from tests.conftest import run_kgen

pytestmark = pytest.mark.slow

SETTINGS = ("--set", "epochs=3", "--set", "steps_per_epoch=2", "--set", "latent_dim=2")


def train_args(run, export=None, settings=SETTINGS, extra=()):
    args = ["train", "vae_digits", *settings, "--backend", backend(),
            "--run-dir", run, *extra]
    return args + (["--export", export] if export else ["--no-export"])


def kill_at(fault, args, cwd):
    """Run `kgen` with `fault` (`POINT:N`, see `tests/faults.py`) armed."""
    return subprocess.run(faults.command(fault, "-m", "kgen", *args), cwd=cwd,
                          env=faults.environment(kgen_env()), capture_output=True,
                          text=True, timeout=900)


def history(run):
    with (run / "history.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def weights(keras_file):
    """Every array of a `.keras` file's weights, read without Keras."""
    with zipfile.ZipFile(keras_file) as archive:
        raw = archive.read("model.weights.h5")
    arrays = {}
    with h5py.File(io.BytesIO(raw), "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays


def temporaries(*directories):
    return [p for d in directories if d.exists() for p in d.rglob("*.tmp-*")]


def export_versions(base):
    return sorted(p.name for p in base.iterdir()) if base.exists() else []


def assert_like_clean(run, clean_run):
    rows, clean_rows = history(run), history(clean_run)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"], "an epoch was lost or repeated"
    for row, clean_row in zip(rows, clean_rows):
        assert float(row["val_loss"]) == pytest.approx(float(clean_row["val_loss"]), rel=1e-5)
    got, want = weights(run / "best.keras"), weights(clean_run / "best.keras")
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    assert json.loads((run / "state.json").read_text())["status"] == "trained"
    assert not (run / "backup").exists()
    assert not temporaries(run)


def assert_one_complete_export(base):
    assert export_versions(base) == ["1"], export_versions(base)
    version = base / "1"
    assert (version / "saved_model.pb").is_file()
    assert json.loads((version / "assets.extra" / "kgen.json").read_text())["family"] == "VAE"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A run never killed: what every killed run must end as."""
    root = tmp_path_factory.mktemp("clean")
    run_kgen(*train_args(root / "run", root / "export"), cwd=root)
    return root


# The same command run again after each kill, each run killed at the next
# write point (and a backup damaged between two runs): (fault, the epoch the
# run resumes after, or None when it starts with no backup / trains nothing).
CHAIN = [
    ("epoch:2", None),       # in the middle of epoch 2's batches
    ("checkpoint:2", 1),     # best.keras of epoch 2 half written
    ("backup:2", 1),         # the epoch-2 backup weights half written
    ("history:2", 1),        # history.csv with epoch 2 half written
    ("backup:3", 2),         # the epoch-3 backup half written; then the
                             # epoch-2 backup is cut to 0 bytes
    ("state:1", 1),          # training done, "trained" not yet recorded
    ("export:1", 3),         # the SavedModel half written
]


def test_killed_at_every_write_point_then_rerun_ends_as_a_clean_run(tmp_path, clean):
    run, base = tmp_path / "run", tmp_path / "export"
    args = train_args(run, base)
    for fault, resume_after in CHAIN:
        best_before = (run / "best.keras").read_bytes() if (run / "best.keras").exists() else None
        killed = kill_at(fault, args, tmp_path)
        where = f"{fault}: {killed.stdout[-1500:]}\n{killed.stderr[-1500:]}"
        if fault == "export:1" and backend() != "tensorflow":
            # The export runs in a TensorFlow-backend child process: the
            # child is killed and `kgen train` reports the failed export.
            assert killed.returncode not in (0, 2), where
        else:
            assert killed.returncode == -signal.SIGKILL, where
        if resume_after is None:
            assert "resuming" not in killed.stdout, where
        else:
            assert f"resuming {run} after epoch {resume_after} " in killed.stdout, where
        if fault != "epoch:2":
            assert temporaries(run, base), f"{fault}: the kill comes mid-write"
        if fault == "checkpoint:2":
            assert (run / "best.keras").read_bytes() == best_before  # epoch 1's, whole
        if fault == "backup:3":
            damaged = run / "backup" / "epoch-0002.weights.h5"
            damaged.write_bytes(b"")  # as a copy cut short leaves it
        if fault == "state:1":
            assert f"backup {damaged} is damaged (0 bytes)" in killed.stderr, where
        if fault == "export:1":
            assert "Epoch" not in killed.stdout, where  # no epoch was left to train

    again = run_kgen(*args, cwd=tmp_path)
    assert "Epoch" not in again.stdout and "resuming" not in again.stdout
    # Its training ended in a resumed run, whose time is not the whole's.
    assert "\ntrained earlier (this run only exported it): " in again.stdout
    assert f"exported:    {base / '1'}" in again.stdout
    assert_like_clean(run, clean / "run")
    assert_one_complete_export(base)
    assert not temporaries(base)
    assert json.loads((run / "state.json").read_text())["exported"] == str(base / "1")


def test_rerun_of_a_finished_run_does_nothing(clean):
    run, base = clean / "run", clean / "export"
    before = (run / "best.keras").read_bytes(), (run / "best.keras").stat().st_mtime_ns
    again = run_kgen(*train_args(run, base), cwd=clean)
    assert "nothing to do" in again.stdout
    assert f"model:       {run / 'best.keras'}" in again.stdout
    assert "Epoch" not in again.stdout
    assert ((run / "best.keras").read_bytes(), (run / "best.keras").stat().st_mtime_ns) == before
    assert export_versions(base) == ["1"]


def test_rerun_with_other_settings_is_refused_unless_overwrite(tmp_path, clean):
    run = tmp_path / "run"
    shutil.copytree(clean / "run", run)
    best = (run / "best.keras").read_bytes()
    other = ("--set", "epochs=1", "--set", "steps_per_epoch=2", "--set", "latent_dim=3")

    refused = run_kgen(*train_args(run, settings=other), cwd=tmp_path, check=False)
    assert refused.returncode == 2, refused.stderr[-2000:]
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith("kgen: error: ")
    assert "epochs: 3 -> 1" in message and "latent_dim: 2 -> 3" in message
    assert f"--run-dir {tmp_path / 'run-2'}" in message and "--overwrite" in message
    assert (run / "best.keras").read_bytes() == best
    assert len(history(run)) == 3

    run_kgen(*train_args(run, settings=other, extra=["--overwrite"]), cwd=tmp_path)
    assert [r["epoch"] for r in history(run)] == ["0"]
    assert json.loads((run / "config.json").read_text())["config"]["latent_dim"] == 3
    assert (run / "best.keras").read_bytes() != best


def test_diverging_run_fails_named_and_exports_nothing(tmp_path):
    run, base = tmp_path / "run", tmp_path / "export"
    settings = (*SETTINGS, "--set", "learning_rate=1e30")
    failed = run_kgen(*train_args(run, base, settings=settings), cwd=tmp_path, check=False)
    assert failed.returncode != 0
    assert "NonFiniteError" in failed.stderr or "kgen: error:" in failed.stderr
    assert "training diverged: " in failed.stderr and " at epoch 1, batch " in failed.stderr
    assert not (run / "best.keras").exists()  # no epoch ever ended finite
    assert export_versions(base) == []


def test_non_finite_weights_keep_the_last_finite_checkpoint(tmp_path, clean):
    run, base = tmp_path / "run", tmp_path / "export"
    args = train_args(run, base)
    # A weight is set to NaN as epoch 2 begins, as a diverged step would.
    failed = kill_at("nonfinite:2", args, tmp_path)
    assert failed.returncode != 0
    # A NaN weight shows in the next batch's losses, or else in the weight
    # check at the epoch's end (a ReLU may hide it from the losses).
    assert re.search(r"training diverged: (\w+ is nan at epoch 2, batch 1|weight "
                     r"\S+ holds nan at the end of epoch 2)", failed.stderr), failed.stderr[-2000:]
    assert [r["epoch"] for r in history(run)] == ["0"]
    assert float(history(run)[0]["val_loss"]) == pytest.approx(
        float(history(clean / "run")[0]["val_loss"]), rel=1e-5)
    assert all(np.isfinite(w).all() for w in weights(run / "best.keras").values()
               if w.dtype.kind == "f")
    assert export_versions(base) == []


def _poisoned_copy(source, target):
    """A copy of a `.keras` file with one weight array set to NaN."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as f:
        found = []
        f.visititems(lambda name, obj: found.append(obj)
                     if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f"
                     and obj.ndim == 4 else None)
        found[0][...] = np.nan
    members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def EXPORT_ENV():
    # Exports are written by the TensorFlow backend whatever trained the
    # model: asking for it directly spares a second process.
    return kgen_env(KERAS_BACKEND="tensorflow")


def test_export_refuses_non_finite_and_damaged_models(tmp_path, clean):
    base = tmp_path / "export"
    poisoned = _poisoned_copy(clean / "run" / "best.keras", tmp_path / "nan.keras")
    refused = run_kgen("export", poisoned, "--to", base, cwd=tmp_path, check=False,
                       env=EXPORT_ENV())
    assert refused.returncode != 0
    assert f"{poisoned}: weight " in refused.stderr and " holds nan" in refused.stderr
    assert "kernel" in refused.stderr  # the first bad variable, by its path

    cut = tmp_path / "cut.keras"
    data = (clean / "run" / "best.keras").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    refused = run_kgen("export", cut, "--to", base, cwd=tmp_path, check=False,
                       env=EXPORT_ENV())
    assert refused.returncode != 0
    assert f"{cut}: damaged .keras file" in refused.stderr
    assert export_versions(base) == []


# === The one atomic writer (kgen.io) and the fault runner (tests/faults.py) ===


def test_a_directory_replaces_another_whole_or_not_at_all(tmp_path):
    from kgen import io as kgen_io

    out = tmp_path / "deploy"
    for name in ("a", "b"):
        with kgen_io.atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / name).write_text(name)
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    with pytest.raises(RuntimeError, match="cut short"):
        with kgen_io.atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / "c").write_text("c")
            raise RuntimeError("cut short")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]


def test_a_new_directory_takes_the_next_name_when_one_is_taken(tmp_path):
    from kgen import io as kgen_io

    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"another writer's")
    names = iter(["1", "2"])
    made = kgen_io.atomic_directory(
        tmp_path, lambda d: (d.mkdir(), (d / "saved_model.pb").write_bytes(b"mine")),
        lambda: next(names))
    assert made == tmp_path / "2"
    assert (made / "saved_model.pb").read_bytes() == b"mine"
    assert (tmp_path / "1" / "saved_model.pb").read_bytes() == b"another writer's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]


def _killed(fault, code, cwd):
    return subprocess.run(faults.command(fault, "-c", code), cwd=cwd,
                          env=faults.environment(kgen_env()), capture_output=True,
                          text=True, timeout=120)


def test_a_writer_killed_before_its_rename_leaves_the_old_file_and_a_stale_temporary(tmp_path):
    from kgen import io as kgen_io

    state = tmp_path / "state.json"
    kgen_io.write_text(state, json.dumps({"status": "training"}))
    code = ("from kgen import io; "
            "io.write_text('state.json', '{\"status\": \"trained\", \"pad\": \"%s\"}')"
            % ("x" * 1000))
    killed = _killed("state:1", code, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert json.loads(state.read_text()) == {"status": "training"}
    [left] = temporaries(tmp_path)
    assert left.name.startswith("state.json.tmp-") and 0 < left.stat().st_size < 1000
    assert kgen_io.clean_stale_temporaries(tmp_path) == [left]
    assert not temporaries(tmp_path)


def test_an_export_killed_before_its_rename_is_cleaned_by_the_next(tmp_path):
    from kgen.export.publish import publish
    from kgen.export.publish import versions

    base = tmp_path / "export"
    code = ("from kgen.export.publish import publish; "
            "publish('export', lambda d: (d.mkdir(), (d / 'saved_model.pb')"
            ".write_bytes(b'x' * 1000)))")
    killed = _killed("export:1", code, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert versions(base) == []
    [left] = temporaries(base)
    assert (left / "saved_model.pb").stat().st_size == 500  # cut mid-write
    made = publish(base, lambda d: (d.mkdir(), (d / "saved_model.pb").write_bytes(b"whole")))
    assert made == base / "1" and not temporaries(base)


def test_production_code_holds_no_fault_injection():
    """Faults come from tests/faults.py through real seams; kgen itself
    never kills its own process or poisons its weights."""
    from tests.conftest import REPO

    for path in sorted((REPO / "kgen").rglob("*.py")):
        text = path.read_text()
        for word in ("SIGKILL", "KGEN_FAULT", "fault_point", "poison"):
            assert word not in text, f"{path.relative_to(REPO)} holds {word!r}"
