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
    """`keras.ops.slice_update` from `Pad` + `SelectV2` instead of XLA's
    `XlaDynamicUpdateSlice`, which TF Serving's CPU build does not run (it
    has no XLA JIT unless started with `--xla_cpu_compilation_enabled`)."""
    inputs = tf.convert_to_tensor(inputs)
    updates = tf.cast(updates, inputs.dtype)
    start = tf.stack([tf.cast(s, tf.int32) for s in start_indices])
    after = tf.shape(inputs) - start - tf.shape(updates)
    paddings = tf.stack([start, after], axis=1)
    mask = tf.pad(tf.ones_like(updates, tf.bool), paddings)
    out = tf.where(mask, tf.pad(updates, paddings), inputs)
    out.set_shape(inputs.shape)
    return out


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
