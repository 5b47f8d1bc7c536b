"""The GAN step shared by the backends whose variables update in place
(TensorFlow and PyTorch); each supplies `discriminator_phase` and
`generator_phase`."""


class StatefulGANTrainer:
    """`d_steps` discriminator phases, one generator phase, then the EMA."""

    def train_step(self, data):
        real, labels = self.unpack(data)
        for _ in range(self.d_steps):
            d_aux = self.discriminator_phase(real, labels)
        g_loss = self.generator_phase(real, labels)
        self.update_ema()
        self.optimizer.iterations.assign_add(1)
        return self.update_metrics(d_aux, g_loss)

    def train_phase(self, phase, data):
        """Run one `"discriminator"` or `"generator"` update on `data`."""
        real, labels = self.unpack(data)
        if self._check_phase(phase) == "discriminator":
            self.discriminator_phase(real, labels)
        else:
            self.generator_phase(real, labels)
