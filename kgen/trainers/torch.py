"""GAN phases on PyTorch: `zero_grad()` / `backward()` per phase (of
`optimizer.scale_loss(loss)`, which a `LossScaleOptimizer` under
`mixed_float16` scales and its `apply` unscales); the discriminator loss
detaches the fakes (`ops.stop_gradient`)."""

import torch

from kgen.trainers.stateful import StatefulGANTrainer


class GANTrainer(StatefulGANTrainer):
    """Mixin giving `kgen.models.GAN` its PyTorch gradient steps."""

    def input_gradients(self, fn, x):
        """d sum(fn(x)) / dx, differentiable again (for gradient penalties)."""
        x = x.detach().requires_grad_(True)
        (grads,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
        return grads

    def _apply(self, optimizer, loss, variables):
        self.zero_grad()
        optimizer.scale_loss(loss).backward()
        grads = [v.value.grad for v in variables]
        with torch.no_grad():
            optimizer.apply(grads, variables)

    def discriminator_phase(self, real, labels):
        loss, aux = self.discriminator_loss(real, labels)
        self._apply(self.d_optimizer, loss, self.discriminator.trainable_variables)
        return aux

    def generator_phase(self, real, labels):
        loss = self.generator_loss(real, labels)
        self._apply(self.g_optimizer, loss, self.generator.trainable_variables)
        return loss
