"""What every kgen model shares: a seed generator, `generate()`, config."""

import keras


class GenerativeModel(keras.Model):
    """Base class of kgen's model families.

    Holds the model's own `keras.random.SeedGenerator`, so randomness inside
    a training step is seeded state that every backend can trace (an
    unseeded `keras.random.*` call fails under `tf.function`).

    Subclasses implement `call()` (so Keras can build them in `fit()`) and
    `generate()`, and name what they produce in `output_kind` (`"images"`,
    `"audio"` or `"text"`) so callbacks and the command line know how to show
    it.

    Args:
        seed: optional int seed of the model's training randomness.
    """

    output_kind = "images"
    # The logged value that ranks epochs for the best checkpoint; None keeps
    # the last epoch (and trains without a validation pass).
    checkpoint_monitor = "val_loss"

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def generate(self, n, seed=None):
        """Draw `n` samples; the same int `seed` gives the same samples."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement generate()"
        )

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}
