"""What every kgen model shares: a seed generator, the `generate` contract,
config."""

import keras
import numpy as np
from keras import ops

from kgen import random as kgen_random
from kgen.precision import global_policy
from kgen.trainers import DistributedTrainer
from kgen.trainers import replica_position


class _FunctionCache:
    """Compiled functions by key, in a plain object that TensorFlow's
    attribute tracking leaves alone (a dict attribute would be wrapped and
    tracked, and a model that has sampled could not be exported)."""

    def __init__(self):
        self.functions = {}


class GenerativeModel(DistributedTrainer, keras.Model):
    """Base class of kgen's model families.

    Holds the model's own `keras.random.SeedGenerator`, so randomness inside
    a training step is seeded state that every backend can trace (an
    unseeded `keras.random.*` call fails under `tf.function`).

    The generate contract, kept by every family:
    `generate(n, *, seed=None, labels=None, **family_options)` returns `n`
    samples, row `i` drawn from the 64-bit seed `seed + i` alone by the
    stateless generator of `kgen.random`, so
    `generate(3, seed=5)[1] == generate(1, seed=6)[0]` on every backend, and
    the exported SavedModel's row for seed 6 is the same sample. A row never
    depends on `n` or on the other rows.

    Subclasses implement `call()` (so Keras can build them in `fit()`),
    `sample(seeds, labels, ...)` in `keras.ops` (the one implementation that
    `generate()` compiles and the export traces), and name what they produce
    in `output_kind` (`"images"`, `"text"` or `"audio"`) so callbacks and the
    command line know how to show it. Conditional families set
    `num_classes` to an int; unconditional ones leave it `None`.

    Args:
        seed: optional int seed of the model's training randomness.
    """

    output_kind = "images"
    # The constructor arguments that are Keras objects (networks, schedulers,
    # tokenizers), held under the same attribute names: `get_config()`
    # serializes them and `from_config()` rebuilds them.
    nested_config_keys = ()
    # The logged value that ranks epochs for the best checkpoint; None keeps
    # the last epoch (and trains without a validation pass).
    checkpoint_monitor = "val_loss"
    num_classes = None

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._compiled_functions = _FunctionCache()

    # --- the generate contract ---------------------------------------------

    def generate(self, n, *, seed=None, labels=None, **options):
        """`n` samples; row `i` comes from seed `seed + i` alone.

        Args:
            n: number of samples (rows).
            seed: int (64-bit); `None` draws one from the model's seed
                generator.
            labels: for a conditional model, an int or `n` ints in
                `[0, num_classes)`; `None` gives the family's default.
            **options: the family's sampling options (the same names as
                its export signature's inputs).
        """
        n = check_count(n)
        seeds = self.row_seeds(n, seed)
        labels = self.check_labels(labels, n, seeds)
        return self.generate_rows(kgen_random.seed_pairs(seeds), labels, **options)

    def generate_rows(self, pairs, labels, **options):
        """Run `sample()` compiled on int32 seed pairs `(n, 2)`; numpy out."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement generate_rows()"
        )

    def sample(self, seeds, labels=None, **options):
        """The sampling computation in `keras.ops`: int32 seed pairs
        `(batch, 2)` (and labels) -> samples. Traced by the export too."""
        raise NotImplementedError(f"{type(self).__name__} does not implement sample()")

    # --- training noise ------------------------------------------------------

    def batch_noise(self, draw, rows, shape=(), **kwargs):
        """Training noise for a batch of `rows` rows, one `shape` draw per row:
        `draw((rows, *shape), seed=self.seed_generator, **kwargs)` with
        `draw` a `keras.random` function (`normal`, `uniform`, `randint`).

        Under data parallelism a row's noise does not depend on the replica
        that holds it: each replica draws the noise of the whole global
        batch from the same seed and keeps its own rows
        (`kgen.trainers.replica_position`), so two replicas train on the
        noise one device draws for the same batch.
        """
        index, count = replica_position()
        if count == 1:
            return draw((rows, *shape), seed=self.seed_generator, **kwargs)
        noise = draw((rows * count, *shape), seed=self.seed_generator, **kwargs)
        start = ops.cast(index, "int32") * ops.cast(rows, "int32")
        return ops.slice(noise, [start] + [0] * len(shape), [rows, *shape])

    def row_seeds(self, n, seed=None):
        """int64 seeds `seed, ..., seed + n - 1` (a drawn `seed` when None)."""
        if seed is None:
            seed = self.draw_seed()
        return kgen_random.row_seeds(seed, n)

    def draw_seed(self):
        """A fresh int seed from the model's seed generator."""
        return int(keras.ops.convert_to_numpy(keras.random.randint(
            (), 0, 2**31 - 1, seed=self.seed_generator)))

    def check_labels(self, labels, n, seeds):
        """int32 `(n,)` labels of a conditional model, or `None`.

        Unconditional models refuse labels; conditional ones take an int or
        `n` ints in `[0, num_classes)`, and `None` becomes
        `default_labels(seeds)`.
        """
        if self.num_classes is None:
            if labels is not None:
                raise ValueError(
                    f"labels={_short(labels)}: {type(self).__name__} is "
                    "unconditional (num_classes=None)"
                )
            return None
        if labels is None:
            return self.default_labels(seeds)
        array = np.asarray(labels)
        if array.dtype.kind not in "iu":
            raise ValueError(f"labels={_short(labels)}: must be ints")
        if array.ndim > 1 or (array.ndim == 1 and array.shape[0] != n):
            raise ValueError(
                f"labels={_short(labels)}: expected one int or {n} ints (one per row)"
            )
        if array.size and (array.min() < 0 or array.max() >= self.num_classes):
            raise ValueError(
                f"labels={_short(labels)}: must be in [0, {self.num_classes})"
            )
        return np.broadcast_to(array.astype("int32"), (n,)).copy()

    def default_labels(self, seeds):
        """Labels of a conditional model's rows when none are given: a
        function of each row's own seed (`seed mod num_classes`), so a row
        does not depend on its position."""
        return np.mod(np.asarray(seeds, np.int64), self.num_classes).astype("int32")

    def compiled_function(self, key, fn, variables, **kwargs):
        """`kgen.inference.compile_inference(fn, variables)`, built once per
        `key` and cached."""
        cache = self._compiled_functions.functions
        if key not in cache:
            from kgen.inference import compile_inference

            cache[key] = compile_inference(fn, variables, **kwargs)
        return cache[key]

    def get_config(self):
        return {
            **super().get_config(),
            "seed": self.seed,
            **{key: keras.saving.serialize_keras_object(getattr(self, key))
               for key in self.nested_config_keys},
        }

    @classmethod
    def from_config(cls, config):
        """Rebuild the model under its own saved dtype policy
        (`kgen.precision`), so layers its networks create in their
        constructors get the policy they trained with."""
        config = dict(config)
        with global_policy(config.get("dtype")):
            for key in cls.nested_config_keys:
                if isinstance(config.get(key), dict):
                    config[key] = keras.saving.deserialize_keras_object(config[key])
            return cls(**config)


def global_rows(rows):
    """int32 `(rows,)`: the positions in the global batch of the rows this
    replica holds (`arange(rows)` on one device)."""
    index, count = replica_position()
    positions = ops.arange(rows, dtype="int32")
    if count == 1:
        return positions
    return positions + ops.cast(index, "int32") * ops.cast(rows, "int32")


def batch_images(batch):
    """The images of a batch: a `{"images": ...}` dict (kgen's one batch
    format) or, for models that need nothing else, the images alone."""
    if isinstance(batch, dict):
        if "images" not in batch:
            raise ValueError(f"batch has keys {sorted(batch)}; expected 'images'")
        return batch["images"]
    if isinstance(batch, (tuple, list)):
        raise ValueError(
            "batches are {'images': ..., 'labels': ...} dicts, not tuples"
        )
    return batch


def check_count(n, name="n"):
    """`n` as a positive int, or a ValueError naming it."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 1:
        raise ValueError(f"{name}={n!r}: must be an int >= 1")
    return int(n)


def _short(value):
    text = repr(value if not isinstance(value, np.ndarray) else value.tolist())
    return text if len(text) <= 60 else text[:57] + "..."
