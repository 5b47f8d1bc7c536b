"""Versioned, atomic publishing into `saved_models/<name>/<int version>/`.

TensorFlow Serving watches a model's base path and loads the highest whole
number directory it finds. A half-written version must never be visible, so
a version is written to a hidden temporary sibling and then renamed into
place; a rename within one file system is atomic. The temporary's name
holds the writer's process id: temporaries whose writer has exited (a
killed export) are removed by the next export to the same base path.
"""

import os
import pathlib
import shutil
import uuid

from kgen import io as kgen_io


def versions(base):
    """The whole-number version directories under `base`, ascending."""
    base = pathlib.Path(base)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir()
                  if p.is_dir() and p.name.isdigit())


def next_version(base):
    """Highest existing version + 1, or 1 for a new base path."""
    existing = versions(base)
    return existing[-1] + 1 if existing else 1


def latest_version_dir(base, version=None):
    """The directory of `version`, or of the newest version when `None`."""
    base = pathlib.Path(base)
    found = versions(base)
    if not found:
        raise FileNotFoundError(
            f"{base}: no exported versions (expected directories named 1, 2, ...)"
        )
    if version is None:
        return base / str(found[-1])
    if int(version) not in found:
        raise FileNotFoundError(
            f"{base}: no version {version} (found {', '.join(map(str, found))})"
        )
    return base / str(int(version))


def publish(base, write):
    """Write a new version with `write(tmp_dir)`, then rename it into place.

    Args:
        base: the model's base path, `saved_models/<name>`.
        write: a callable that writes a complete SavedModel into the
            directory it is given (which does not exist yet).

    Returns:
        The published version directory.
    """
    base = pathlib.Path(base)
    base.mkdir(parents=True, exist_ok=True)
    kgen_io.clean_stale_temporaries(base)
    tmp = base / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        write(tmp)
        kgen_io.fault_point("export", 1, partial=tmp)
        while True:
            target = base / str(next_version(base))
            try:
                # Fails if another publisher took this number meanwhile
                # (its directory is not empty): take the next one.
                os.rename(tmp, target)
                return target
            except OSError:
                if not target.exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
