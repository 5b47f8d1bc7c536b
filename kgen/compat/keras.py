"""Keras members kgen uses that Keras does not make public.

Written for Keras 3.15 (`kgen.compat.SUPPORTED["keras"]`); each member is
pinned by `tests/compat/test_keras_members.py`.
"""

import contextlib
import inspect
import threading
import warnings

from kgen import compat

# The private methods of Keras' TensorFlow trainer that
# `TensorFlowTrainerHooks` overrides, with their parameters.
TRAINER_METHODS = {
    "_make_function": ("self", "step_function"),
    "_maybe_symbolic_build": ("self", "iterator", "data_batch"),
}


class TensorFlowTrainerHooks:
    """Mixin giving Keras' TensorFlow trainer two hooks it has no public
    form of: `wrap_step_function` and `build_from_local_batch`.

    For Keras 3.15's `keras.src.backend.tensorflow.trainer.TensorFlowTrainer`,
    through two of its private methods:

    - `_make_function(step_function)`: the one place where both
      `make_train_function` and `make_test_function` hand the step
      (`train_step` or `test_step`, whichever class defines it) to
      `strategy.run`. Overriding `train_step` instead would miss the steps
      of subclasses that define their own without calling `super()` (the
      GAN's), and Keras has no public hook around the distributed step.
    - `_maybe_symbolic_build(iterator, data_batch)`: under a
      `tf.distribute` strategy, `fit()` and `evaluate()` build the model
      from one batch of the epoch iterator (which yields
      `(begin_step, end_step, iterator)` triples) reduced with
      `strategy.reduce("MEAN", batch)`. Keras has no public way to give it
      another batch, and that reduction fails under a multi-worker strategy.
      With no strategy (`_distribute_strategy` is None) Keras builds nothing
      there and leaves the build to the first trace of the train function,
      which then creates the optimizer's variables, so TensorFlow traces
      every step twice; the hook builds it there instead
      (`Trainer._symbolic_build(data_batch=...)`), halving a small model's
      time to its first step.

    Mix it in before the Keras model class (the TensorFlow trainer); on
    JAX and PyTorch it is not used.
    """

    def wrap_step_function(self, step_function):
        """The step each replica runs (`strategy.run(step, (data,))`),
        given the model's `train_step` or `test_step`; default: as it is."""
        return step_function

    def build_from_local_batch(self):
        """Whether `fit()` and `evaluate()` build the model from this
        worker's first replica's batch instead of Keras' reduction of the
        whole distributed batch; default False (Keras' way)."""
        return False

    def _make_function(self, step_function):
        return super()._make_function(self.wrap_step_function(step_function))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            # Without a strategy Keras builds nothing here: the model, its
            # metrics and its optimizer are built while the train function
            # is first traced, and a tf.function that creates variables is
            # traced twice. Built here, every step is traced once.
            if data_batch is None and iterator is not None:
                data_batch = first_batch(iterator)
            if data_batch is not None:
                self._symbolic_build(data_batch=data_batch)
            return None
        if iterator is not None and self.build_from_local_batch():
            first = first_local_batch(self.distribute_strategy, iterator)
            data_batch = data_batch if first is None else first
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def trainer_changes(model_class):
    """What no longer matches `TRAINER_METHODS` in `model_class`'s
    trainer (`keras.Model` on the TensorFlow backend): one line per method,
    naming it and the installed Keras; empty when all match."""
    problems = []
    for name, expected in TRAINER_METHODS.items():
        method = getattr(model_class, name, None)
        if method is None:
            problems.append(compat.changed("keras", f"TensorFlowTrainer.{name}", "it is gone"))
            continue
        found = tuple(inspect.signature(method).parameters)
        if found != expected:
            problems.append(compat.changed(
                "keras", f"TensorFlowTrainer.{name}",
                f"its parameters are {found}, not {expected}"))
    return problems


def warn_on_trainer_changes(model_class):
    """Warn once per changed method (`trainer_changes`): kgen's
    multi-replica fixes would then silently not run."""
    for problem in trainer_changes(model_class):
        warnings.warn(f"{problem}; kgen's tf.distribute fixes are not applied",
                      RuntimeWarning, stacklevel=2)


def first_batch(iterator):
    """The next batch of a Keras 3.15 TensorFlow epoch iterator with no
    strategy (`(begin, end, iterator)` triples), or None when it is empty.
    Keras' `fit()` and `evaluate()` reset the iterator after the build."""
    for _, _, batches in iterator:
        return next(batches)
    return None


def first_local_batch(strategy, iterator):
    """This worker's first replica's part of the next batch of a Keras 3.15
    TensorFlow epoch iterator (`(begin, end, iterator)` triples, the
    iterator yielding distributed batches), or None when it is empty.

    Only its shapes are used: Keras then builds the model from it. Keras'
    `fit()` resets the epoch iterator after the build, so no batch is lost.
    """
    import tensorflow as tf

    batch = first_batch(iterator)
    if batch is None:
        return None
    return tf.nest.map_structure(
        lambda v: (strategy.experimental_local_results(v)[0]
                   if isinstance(v, tf.distribute.DistributedValues) else v),
        batch)


def set_initial_epoch(model, epoch):
    """Make the `fit()` that is starting begin at `epoch` (0-based).

    For Keras 3.15's trainers (TensorFlow, JAX, PyTorch), which read the
    private `Trainer._initial_epoch` right after `callbacks.on_train_begin()`
    and prefer it to `fit(initial_epoch=...)`. Keras' own
    `keras.callbacks.BackupAndRestore` sets it the same way; a callback that
    restores a backup in `on_train_begin` has no public way to move the
    starting epoch, since `fit()` has already read its argument.
    """
    model._initial_epoch = int(epoch)


_SAVE_SIGNATURE_LOCK = threading.Lock()


@contextlib.contextmanager
def without_default_save_signatures():
    """Within the block, Keras models have no default save signature.

    For Keras 3.15 on TensorFlow, whose `TFLayer._default_save_signature`
    (`keras.src.backend.tensorflow.layer`) is a property that makes a new
    `tf.function` of the model's forward pass at every read. TensorFlow's
    SavedModel writer reads every attribute of every object it saves and
    traces each `tf.function` it finds, so each Keras model inside an
    export is traced several times (once per walk) for a function no
    signature uses: a quarter to a third of a small export's time. kgen
    exports name their signatures (`keras.export.ExportArchive`), and no
    public API turns the property off. Not thread-safe against another
    thread saving a bare Keras model meanwhile; kgen exports one at a time
    per process.
    """
    from keras.src.backend.tensorflow.layer import TFLayer

    with _SAVE_SIGNATURE_LOCK:
        original = TFLayer.__dict__.get("_default_save_signature")
        if not isinstance(original, property):
            warnings.warn(compat.changed(
                "keras", "TFLayer._default_save_signature", "it is no longer a property")
                + "; exports trace each model's forward pass once more", RuntimeWarning,
                stacklevel=3)
            yield
            return
        TFLayer._default_save_signature = property(lambda self: None)
        try:
            yield
        finally:
            TFLayer._default_save_signature = original
