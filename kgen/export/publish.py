"""Versioned, atomic publishing into `saved_models/<name>/<int version>/`.

TensorFlow Serving watches a model's base path and loads the highest whole
number directory it finds. A half-written version must never be visible, so
a version is written to a hidden temporary sibling and then renamed into
place; a rename within one file system is atomic (`kgen.io.atomic_directory`,
kgen's one atomic writer). The temporary's name holds the writer's process
id: temporaries whose writer has exited (a killed export) are removed by
the next export to the same base path.
"""

import pathlib

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

    The version number is taken at the rename: when another publisher took
    it meanwhile, the next one is used.

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
    return kgen_io.atomic_directory(base, write, lambda: next_version(base))
