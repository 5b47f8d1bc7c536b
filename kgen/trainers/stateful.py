"""Train steps shared by the backends whose variables update in place
(TensorFlow and PyTorch): the GAN's (each backend supplies
`discriminator_phase` and `generator_phase`) and the EMA update after
Keras' own step."""


class EMATrainer:
    """Keras' own train step, then `update_ema()` (the models' EMA of their
    sampling weights, `kgen.models.ema`), inside the same compiled step."""

    def train_step(self, data):
        logs = super().train_step(data)
        self.update_ema()
        return logs


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

    def test_step(self, data):
        return self.evaluation_logs(data)

    def train_phase(self, phase, data):
        """Run one `"discriminator"` or `"generator"` update on `data`."""
        real, labels = self.unpack(data)
        if self._check_phase(phase) == "discriminator":
            self.discriminator_phase(real, labels)
        else:
            self.generator_phase(real, labels)
