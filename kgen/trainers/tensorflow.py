"""TensorFlow-only pieces of training: the GAN phases (one `tf.GradientTape`
per phase; the gradient is taken of `optimizer.scale_loss(loss)`, which a
`LossScaleOptimizer` under `mixed_float16` scales and its `apply` unscales),
what a step needs under `tf.distribute` (the replica it runs on, the loss
scaled for the gradients' sum across replicas, batch statistics over the
global batch) and Keras' `fit()` under `MultiWorkerMirroredStrategy`
(`DistributedTrainer`)."""

import contextlib

import keras
import tensorflow as tf

from kgen.compat.keras import TensorFlowTrainerHooks
from kgen.compat.keras import warn_on_trainer_changes
from kgen.trainers.stateful import StatefulGANTrainer


def replica_position():
    """`(index, count)` of the replica whose step is being traced: under a
    `tf.distribute` strategy's `run`, this replica's id in the sync group
    (a Python int or an int32 tensor) and the number of replicas; `(0, 1)`
    with no strategy or in a cross-replica context.

    Replica `index` holds rows `index * rows ... (index + 1) * rows - 1` of
    the global batch (`experimental_distribute_dataset` splits each global
    batch in order).
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return 0, 1
    return context.replica_id_in_sync_group, context.num_replicas_in_sync


def scale_loss(loss):
    """A loss averaged over this replica's rows, divided by the replica
    count: `tf.distribute` sums the replicas' gradients (and Keras' trainer
    multiplies the logged loss back), so the sum is the gradient of the
    global batch's mean, as on one device."""
    _, count = replica_position()
    if count == 1:
        return loss
    return loss * tf.cast(1.0 / count, loss.dtype)


def _batch_norm_layers(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        yield layer
    for child in getattr(layer, "layers", ()):
        yield from _batch_norm_layers(child)


@contextlib.contextmanager
def synchronized_batch_norm(*networks):
    """While a replica's step is traced, make the networks' BatchNormalization
    layers take their statistics over the global batch (Keras'
    `synchronized=True`), as one device does; their configs are left as
    they were, so a saved model loads on every backend."""
    _, count = replica_position()
    layers = [] if count == 1 else [
        layer for net in networks for layer in _batch_norm_layers(net)
        if not layer.synchronized]
    for layer in layers:
        layer.synchronized = True
    try:
        yield
    finally:
        for layer in layers:
            layer.synchronized = False


class GANTrainer(StatefulGANTrainer):
    """Mixin giving `kgen.models.GAN` its TensorFlow gradient steps."""

    def input_gradients(self, fn, x):
        """d sum(fn(x)) / dx, differentiable again (for gradient penalties)."""
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return tape.gradient(y, x)

    def train_step(self, data):
        with synchronized_batch_norm(self.generator, self.discriminator):
            return super().train_step(data)

    def discriminator_phase(self, real, labels):
        variables = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            loss, aux = self.discriminator_loss(real, labels)
            # Per global batch under tf.distribute, then the float16 loss scale.
            scaled = self.d_optimizer.scale_loss(scale_loss(loss))
        self.d_optimizer.apply(tape.gradient(scaled, variables), variables)
        return aux

    def generator_phase(self, real, labels):
        variables = self.generator.trainable_variables
        with tf.GradientTape() as tape:
            loss = self.generator_loss(real, labels)
            scaled = self.g_optimizer.scale_loss(scale_loss(loss))
        self.g_optimizer.apply(tape.gradient(scaled, variables), variables)
        return loss


def in_multi_worker_mode(strategy):
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` spanning more
    than one worker, read from its public cluster resolver (as TensorFlow
    counts workers: the chief and the workers, or the evaluators for an
    evaluator task)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not spec:
        return False
    if resolver.task_type == "evaluator":
        return len(spec.get("evaluator", ())) > 1
    return len(spec.get("chief", ())) + len(spec.get("worker", ())) > 1


class DistributedTrainer(TensorFlowTrainerHooks):
    """Mixin that lets Keras' TensorFlow `fit()` run under
    `tf.distribute.MultiWorkerMirroredStrategy` (`--strategy multi_worker`).

    Keras 3's TensorFlow trainer fails there in two places, both only when
    the strategy spans more than one worker:

    - it builds the model from one distributed batch reduced with
      `strategy.reduce("MEAN", batch)`. The batch is a structure (`(x, y)`)
      of `PerReplica` values; the multi-worker strategy hands the whole
      structure to a cross-worker all-reduce, which calls
      `convert_to_tensor` on it: "Attempt to convert a value (PerReplica:
      ...) to a Tensor". Only the shapes matter there, so this mixin builds
      from this worker's first replica's batch instead (no collective at
      all; `build_from_local_batch`).
    - `reduce_per_replica(..., "auto")` then reduces every logged value with
      `strategy.reduce("MEAN", value, axis=0)`, which for a scalar metric
      asks for axis 0 of a rank-0 tensor ("Invalid reduction dimension 0").
      This mixin gives each replica's scalar logs a leading axis of one, so
      the same reduction averages them over the replicas.

    Under every strategy with more than one replica (mirrored, multi-worker,
    TPU) it also traces the train step with every `BatchNormalization`
    layer synchronized: each replica normalizes with the statistics of the
    global batch, as one device would, and the moving averages stay the
    same on every replica (unsynchronized, each worker keeps its own). The
    layers' saved config is left as it is (`synchronized=False`), so the
    `.keras` file still loads on JAX and PyTorch.

    With one replica it changes nothing. The hooks into Keras' trainer are
    `kgen.compat.keras.TensorFlowTrainerHooks`.
    """

    def build_from_local_batch(self):
        return in_multi_worker_mode(self.distribute_strategy)

    def wrap_step_function(self, step_function):
        strategy = self.distribute_strategy
        multi_worker = in_multi_worker_mode(strategy)
        if strategy.num_replicas_in_sync == 1 and not multi_worker:
            return step_function

        def distributed_step(data):
            with synchronized_batch_norm(self):
                outputs = step_function(data)
            if not multi_worker:
                return outputs
            return tf.nest.map_structure(
                lambda v: tf.reshape(v, [1]) if isinstance(v, tf.Tensor) and v.shape.rank == 0
                else v,
                outputs,
            )

        return distributed_step


warn_on_trainer_changes(keras.Model)
