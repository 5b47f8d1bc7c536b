"""Every use of a Keras or KServe member that is not public API, fenced.

kgen reaches past a library's public API only where that API has no way to
do what kgen needs. Each such use is one small named function or class in
this package, whose docstring says which versions it is written for and why
no public API serves; each is pinned by a test in `tests/compat/` that fails,
naming the member and the installed version, when a release changes it.
The versions those tests were run against are `SUPPORTED` (one place; the
tests read it).

Members still used:

Keras (`kgen.compat.keras`, pinned in `tests/compat/test_keras_members.py`):

- `TensorFlowTrainer._make_function(step_function)`: the one place Keras'
  TensorFlow trainer hands a train or test step to `strategy.run`; kgen
  wraps the step there (`TensorFlowTrainerHooks.wrap_step_function`) so
  BatchNormalization uses the global batch and scalar logs reduce under
  `MultiWorkerMirroredStrategy` (`kgen.trainers.tensorflow`).
- `TensorFlowTrainer._maybe_symbolic_build(iterator, data_batch)` and the
  `(begin, end, iterator)` triples its epoch iterator yields: kgen builds the
  model from this worker's first replica's batch under a multi-worker
  strategy (`TensorFlowTrainerHooks.build_from_local_batch`). With no
  strategy (`TensorFlowTrainer._distribute_strategy` is None) it builds the
  model and its optimizer there with `Trainer._symbolic_build(data_batch=)`
  before the first trace, which Keras leaves to the trace itself (each step
  was then traced twice).
  `kgen.trainers.tensorflow` also checks both methods when it is imported
  and warns, naming the method and the Keras version, when either changed
  (`warn_on_trainer_changes`).
- `Trainer._initial_epoch`: the epoch a starting `fit()` begins at when a
  callback restores a backup in `on_train_begin` (`set_initial_epoch`, as
  Keras' own `BackupAndRestore` does).
- `TFLayer._default_save_signature` (TensorFlow backend): a property that
  makes a new `tf.function` of a model's forward pass at each read, which
  TensorFlow's SavedModel writer traces at each of its walks; kgen's exports
  name their own signatures and turn it off while writing
  (`without_default_save_signatures`).

KServe (`kgen.compat.kserve`, pinned in `tests/compat/test_kserve_members.py`):

- `kserve.model_server.parser` and `kserve.model_server.args`: the
  command-line flags KServe reads from `sys.argv` when it is imported;
  `reset_model_server_arguments` puts KServe's defaults back when a server is
  built, so the process's command line never configures `kgen serve`.

Everything else kgen takes from KServe is public: `ModelServer`'s
constructor, `register_model`, `register_signal_handler`, `dataplane`,
`model_repository_extension`, `max_threads`; `RESTServer`'s
`create_application` and `config`; the FastAPI app
`kserve.model_server.app`; `InferenceServicer` and
`ExceptionToStatusInterceptor` (`kgen.serving.server`). TensorFlow's
multi-worker test (`strategy.extended._in_multi_worker_mode()`) is replaced
by the public cluster resolver (`kgen.trainers.tensorflow.in_multi_worker_mode`).
"""

import importlib.metadata

# The releases each package's members were verified on: [lowest, first
# release not yet verified). The tests in tests/compat/ read this.
SUPPORTED = {
    "keras": ("3.15", "3.16"),
    "kserve": ("0.21", "0.22"),
}


def _release(version):
    """The numeric release of a version string: `"3.15.1rc0"` -> `(3, 15, 1)`."""
    parts = []
    for piece in version.split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def installed_version(package):
    """The installed version of `package` (a distribution name), or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def supported_range(package):
    """`SUPPORTED[package]` as text, e.g. `"keras >=3.15,<3.16"`."""
    low, high = SUPPORTED[package]
    return f"{package} >={low},<{high}"


def is_supported(package, version=None):
    """Whether `version` (default: the installed one) of `package` is in
    its `SUPPORTED` range."""
    version = installed_version(package) if version is None else version
    if version is None:
        return False
    low, high = SUPPORTED[package]
    return _release(low) <= _release(version) < _release(high)


def changed(package, member, detail):
    """The one-line message of a member that no longer is what kgen needs."""
    return (f"{member} changed in {package} {installed_version(package)} "
            f"(kgen.compat is verified on {supported_range(package)}): {detail}")
