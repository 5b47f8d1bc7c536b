"""TensorFlow-only pieces of training: the GAN phases (one `tf.GradientTape`
per phase; the gradient is taken of `optimizer.scale_loss(loss)`, which a
`LossScaleOptimizer` under `mixed_float16` scales and its `apply` unscales)."""

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
            scaled = self.d_optimizer.scale_loss(loss)
        self.d_optimizer.apply(tape.gradient(scaled, variables), variables)
        return aux

    def generator_phase(self, real, labels):
        variables = self.generator.trainable_variables
        with tf.GradientTape() as tape:
            loss = self.generator_loss(real, labels)
            scaled = self.g_optimizer.scale_loss(loss)
        self.g_optimizer.apply(tape.gradient(scaled, variables), variables)
        return loss
