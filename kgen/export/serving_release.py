"""Which TF Serving release loads an export.

A TF Serving release `X.Y.Z` is built on TensorFlow `X.Y` (TF Serving's
release notes; its Docker tags, `tensorflow/serving:X.Y.Z`, name the
release). A SavedModel written by a newer TensorFlow may use ops an older
server does not know (`DisableCopyOnRead`, for one), so an export records
the TensorFlow that wrote it and the TF Serving release proven to load it,
and `kgen deploy` pins that release, never `latest`.

`PROVEN` is the proof's record: for the TensorFlow minor version that
writes an export, the TF Serving release whose TensorFlow loaded an export
of every kgen family and answered every signature. The job that proves it,
`python tests/tfserving_compat.py` (run by `.ci/run`), exports each family
here, then in a separate virtual environment holding only that release's
`tensorflow-cpu` loads each export with `tf.saved_model.load` and
`saved_model_cli run`, with no kgen installed.

This module imports neither Keras nor TensorFlow.
"""

import importlib.metadata

# TensorFlow minor version that writes the export -> the TF Serving release
# proven to load it (the newest release at the time of the proof; TF
# Serving 2.20.0 is built on TensorFlow 2.20).
PROVEN = {"2.21": "2.20.0"}
IMAGE = "tensorflow/serving"


def tensorflow_version():
    """The installed TensorFlow's version (`"2.21.0"`), read without
    importing it; None when none is installed."""
    for name in ("tensorflow", "tensorflow-cpu"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _minor(version):
    parts = str(version).split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else None


def release_for(tensorflow):
    """The TF Serving release proven to load exports written by TensorFlow
    `tensorflow` (a version string); None when none is known."""
    return PROVEN.get(_minor(tensorflow)) if tensorflow else None


def image(release):
    """TF Serving's Docker image of `release`: `tensorflow/serving:2.20.0`."""
    return f"{IMAGE}:{release}"


def tensorflow_requirement(release):
    """The pip requirement of the TensorFlow that `release` is built on:
    `tensorflow-cpu==2.20.*` for TF Serving 2.20.0."""
    return f"tensorflow-cpu=={_minor(release)}.*"


def export_record():
    """What `kgen.json` records about the runtime: the TensorFlow that
    writes the export, and the TF Serving release proven to load it."""
    tensorflow = tensorflow_version()
    return {"tensorflow_version": tensorflow, "tf_serving_release": release_for(tensorflow)}
