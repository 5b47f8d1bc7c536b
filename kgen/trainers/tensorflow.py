"""TensorFlow-only pieces: the GAN phases (one `tf.GradientTape` per phase)
and keras-hub's KV-cache update with core ops for exportable sampling."""

import contextlib

import tensorflow as tf

from kgen.trainers.stateful import StatefulGANTrainer


class GANTrainer(StatefulGANTrainer):
    """Mixin giving `kgen.models.GAN` its TensorFlow gradient steps."""

    def input_gradients(self, fn, x):
        """d sum(fn(x)) / dx, differentiable again (for gradient penalties)."""
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return tape.gradient(y, x)

    def discriminator_phase(self, real, labels):
        variables = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            loss, aux = self.discriminator_loss(real, labels)
        self.d_optimizer.apply(tape.gradient(loss, variables), variables)
        return aux

    def generator_phase(self, real, labels):
        variables = self.generator.trainable_variables
        with tf.GradientTape() as tape:
            loss = self.generator_loss(real, labels)
        self.g_optimizer.apply(tape.gradient(loss, variables), variables)
        return loss


def core_slice_update(inputs, start_indices, updates):
    """`keras.ops.slice_update` with core ops instead of XLA's
    `XlaDynamicUpdateSlice`, which TF Serving's CPU build does not run (it
    has no XLA JIT unless started with `--xla_cpu_compilation_enabled`).

    One `TensorScatterUpdate` writes the updated rows in place where the
    runtime can reuse the input's buffer: the index grid covers the leading
    axes up to the last one the update does not span whole (for the KV
    cache: batch and position), the trailing axes go as whole slices.
    """
    inputs = tf.convert_to_tensor(inputs)
    updates = tf.cast(updates, inputs.dtype)
    rank = inputs.shape.rank
    starts = [tf.cast(s, tf.int32) for s in start_indices]
    last = -1  # the last axis the update does not cover from 0 to the end
    for axis in range(rank):
        start = tf.get_static_value(starts[axis])
        size, full = updates.shape[axis], inputs.shape[axis]
        if start is None or start != 0 or size is None or size != full:
            last = axis
    if last < 0:
        return tf.ensure_shape(updates, inputs.shape)
    update_shape = tf.shape(updates)
    grids = tf.meshgrid(
        *[tf.range(update_shape[axis]) + starts[axis] for axis in range(last + 1)],
        indexing="ij",
    )
    out = tf.tensor_scatter_nd_update(inputs, tf.stack(grids, axis=-1), updates)
    return tf.ensure_shape(out, inputs.shape)


@contextlib.contextmanager
def core_ops_only():
    """While tracing inside: `keras.ops.slice_update` (keras-hub's KV-cache
    update) emits core ops only, so the graph runs without XLA."""
    from keras.src.backend.tensorflow import core

    original = core.slice_update
    core.slice_update = core_slice_update
    try:
        yield
    finally:
        core.slice_update = original
