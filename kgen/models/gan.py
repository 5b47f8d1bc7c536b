"""Generative adversarial network, trained with `fit()` on every backend."""

import keras
from keras import ops

from kgen import random as kgen_random
from kgen.api import kgen_export
from kgen.family import Family
from kgen.family import declare_family
from kgen.models import ema
from kgen.models.base import GenerativeModel
from kgen.models.base import batch_images
from kgen.precision import to_float32
from kgen.precision import uses_loss_scaling
from kgen.trainers import GANTrainer

LOSSES = ("non_saturating", "hinge", "wasserstein")
PHASES = ("discriminator", "generator")


@declare_family(Family(
    name="GAN",
    output_kind="images",
    signatures="kgen.export.gan:gan_signatures",
))
@kgen_export("kgen.models.GAN")
class GAN(GANTrainer, GenerativeModel):
    """A generator and a discriminator with two optimizers.

    Each `fit()` step makes `d_steps` discriminator updates, then one
    generator update. The losses are written once in `keras.ops`; the
    gradient steps come from `kgen.trainers` for the backend Keras runs on.
    Images are in [0, 1] outside the model and [-1, 1] inside it.

    Args:
        generator: latents (or `[latents, labels]`) -> images in [-1, 1].
        discriminator: images (or `[images, labels]`) -> one logit each.
        num_classes: number of classes of a conditional GAN; `None` for an
            unconditional one.
        loss: `"non_saturating"`, `"hinge"` or `"wasserstein"`.
        gradient_penalty_weight: WGAN-GP weight on `(|grad D(x_hat)| - 1)^2`
            at random interpolates of real and fake (0: off).
        r1_weight: R1 penalty weight on `|grad D(real)|^2` (0: off).
        d_steps: discriminator updates per generator update.
        ema_decay: if set (in [0, 1)), keep an exponential moving average
            of the generator (`ema_generator`, `kgen.models.ema`: warmed-up
            decay, updated once per train step), used by `generate()` and
            export.
        seed: seed of the latent and interpolation noise in training.

    Example:

    ```python
    from kgen.networks import dcgan_generator, dcgan_discriminator
    gan = GAN(dcgan_generator(64, (28, 28, 1)), dcgan_discriminator((28, 28, 1)))
    gan.compile(g_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5),
                d_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5))
    gan.fit(images, epochs=1)
    samples = gan.generate(16, seed=0)  # (16, 28, 28, 1) in [0, 1]
    ```
    """

    nested_config_keys = ("generator", "discriminator")

    checkpoint_monitor = None  # GAN losses do not rank epochs: keep the last

    def __init__(
        self,
        generator,
        discriminator,
        num_classes=None,
        loss="non_saturating",
        gradient_penalty_weight=0.0,
        r1_weight=0.0,
        d_steps=1,
        ema_decay=None,
        seed=None,
        **kwargs,
    ):
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: expected one of {LOSSES}")
        if int(d_steps) < 1:
            raise ValueError(f"d_steps={d_steps}: must be at least 1")
        if gradient_penalty_weight < 0 or r1_weight < 0:
            raise ValueError(
                f"penalty weights must be >= 0, got gradient_penalty_weight="
                f"{gradient_penalty_weight}, r1_weight={r1_weight}"
            )
        ema_decay = ema.check_decay(ema_decay)
        if num_classes is not None and (
                isinstance(num_classes, bool) or int(num_classes) < 2):
            raise ValueError(
                f"num_classes={num_classes!r}: must be an int >= 2, or None "
                "for an unconditional GAN"
            )
        expected_inputs = 2 if num_classes else 1
        for name, net in (("generator", generator), ("discriminator", discriminator)):
            if len(net.inputs) != expected_inputs:
                raise ValueError(
                    f"num_classes={num_classes} needs a {name} with "
                    f"{expected_inputs} input(s), got {len(net.inputs)}"
                )
        super().__init__(seed=seed, **kwargs)
        # === Layers ===
        self.generator = generator
        self.discriminator = discriminator
        self.ema_generator = ema.average_copy(generator, ema_decay)
        # === Config ===
        self.num_classes = None if num_classes is None else int(num_classes)
        self.loss_name = loss
        self.gradient_penalty_weight = float(gradient_penalty_weight)
        self.r1_weight = float(r1_weight)
        self.d_steps = int(d_steps)
        self.ema_decay = ema_decay
        self.ema_updates = ema.update_counter(self) if ema_decay is not None else None
        self.latent_dim = int(generator.inputs[0].shape[-1])
        self.image_shape = tuple(discriminator.inputs[0].shape[1:])
        # === Metrics ===
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.real_score_tracker = keras.metrics.Mean(name="real_score")
        self.fake_score_tracker = keras.metrics.Mean(name="fake_score")
        self.penalty_trackers = {}
        if self.gradient_penalty_weight:
            self.gp_tracker = keras.metrics.Mean(name="gradient_penalty")
            self.penalty_trackers["gradient_penalty"] = self.gp_tracker
        if self.r1_weight:
            self.r1_tracker = keras.metrics.Mean(name="r1_penalty")
            self.penalty_trackers["r1_penalty"] = self.r1_tracker
        self.build((None, self.latent_dim))

    def build(self, input_shape):
        # The generator and discriminator arrive built.
        pass

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker, self.real_score_tracker,
                self.fake_score_tracker, *self.penalty_trackers.values()]

    # --- compile: two optimizers in one public MultiOptimizer --------------

    def compile(self, g_optimizer="adam", d_optimizer="adam", jit_compile=None,
                **kwargs):
        """Set the generator's and discriminator's optimizers.

        `jit_compile=None` compiles the step with XLA on JAX only: on CPU,
        TensorFlow and PyTorch run the GAN step faster without it
        (`bench/gan.py`), while JAX without it runs op by op.

        Both are built here, on the caller's distribution strategy scope, and
        carried as the sub-optimizers of one `keras.optimizers.MultiOptimizer`
        so checkpoints, `BackupAndRestore` and the JAX trainer state hold both.

        A GAN built under `mixed_float16` (`kgen.precision`) wraps each in a
        `keras.optimizers.LossScaleOptimizer` (each phase scales its own
        loss); the `MultiOptimizer` routes the variables to the inner
        optimizers (it refuses loss-scale ones) and then holds the two
        wrappers in their place, so their loss scales are saved and travel
        in the JAX trainer state as well.
        """
        g_optimizer = keras.optimizers.get(g_optimizer)
        d_optimizer = keras.optimizers.get(d_optimizer)
        if g_optimizer is d_optimizer:
            raise ValueError("g_optimizer and d_optimizer must be two optimizers")
        if uses_loss_scaling(self):
            g_optimizer, d_optimizer = (
                opt if isinstance(opt, keras.optimizers.LossScaleOptimizer)
                else keras.optimizers.LossScaleOptimizer(opt, name=f"{which}_loss_scale")
                for which, opt in (("generator", g_optimizer),
                                   ("discriminator", d_optimizer)))
        g_inner, d_inner = (getattr(opt, "inner_optimizer", opt)
                            for opt in (g_optimizer, d_optimizer))
        generator_ids = {id(v) for v in self.generator.trainable_variables}
        optimizer = keras.optimizers.MultiOptimizer(
            lambda v: g_inner if id(v) in generator_ids else d_inner
        )
        if jit_compile is None:
            jit_compile = keras.backend.backend() == "jax"
        # The phases scale their own losses: Keras must not wrap the whole.
        super().compile(optimizer=optimizer, jit_compile=jit_compile,
                        auto_scale_loss=False, **kwargs)
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self._compile_settings = {"jit_compile": jit_compile}
        optimizer.build(self.trainable_variables)
        for inner, outer, net in ((g_inner, g_optimizer, self.generator),
                                  (d_inner, d_optimizer, self.discriminator)):
            if outer is not inner:
                outer.build(net.trainable_variables)
                optimizer.optimizers[optimizer.optimizers.index(inner)] = outer
        self._index_state()

    def _index_state(self):
        """Where each network's variables sit in the trainer's state lists."""
        g_ids = {id(v) for v in self.generator.trainable_variables}
        d_ids = {id(v) for v in self.discriminator.trainable_variables}
        trainable = self.trainable_variables
        self._g_index = [i for i, v in enumerate(trainable) if id(v) in g_ids]
        self._d_index = [i for i, v in enumerate(trainable) if id(v) in d_ids]
        multi = self.optimizer
        own = len(multi.variables) - len(self.g_optimizer.variables) - len(self.d_optimizer.variables)
        n_g = len(self.g_optimizer.variables)
        self._g_opt_slice = slice(own, own + n_g)
        self._d_opt_slice = slice(own + n_g, len(multi.variables))
        self._iterations_index = next(
            i for i, v in enumerate(multi.variables) if v is multi.iterations
        )
        layout_ok = (
            multi.optimizers == [self.g_optimizer, self.d_optimizer]
            and all(a is b for a, b in zip(multi.variables[self._g_opt_slice],
                                           self.g_optimizer.variables))
            and all(a is b for a, b in zip(multi.variables[self._d_opt_slice],
                                           self.d_optimizer.variables))
        )
        if not layout_ok:
            raise RuntimeError(
                "keras.optimizers.MultiOptimizer no longer lists its variables "
                "as its own followed by each sub-optimizer's in order; the GAN "
                "trainer depends on that layout (kgen/trainers/jax.py)"
            )

    def get_compile_config(self):
        if not getattr(self, "g_optimizer", None):
            return None
        return {
            "g_optimizer": keras.saving.serialize_keras_object(self.g_optimizer),
            "d_optimizer": keras.saving.serialize_keras_object(self.d_optimizer),
            **self._compile_settings,
        }

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("g_optimizer", "d_optimizer"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        self.compile(**config)

    # --- the networks --------------------------------------------------------

    def call(self, inputs, training=False):
        """`latents` (or `(latents, labels)`) -> generated images in [-1, 1].

        A conditional GAN given latents alone cycles through the classes
        (what Keras builds the model with).
        """
        if self.num_classes and not isinstance(inputs, (list, tuple)):
            inputs = [inputs, self._cycle_labels(ops.shape(inputs)[0])]
        return self.generator(inputs, training=training)

    # Both networks' outputs are cast to float32 (`kgen.precision`): the
    # losses, penalties and samples are computed in float32.

    def _generate_raw(self, latents, labels, training, net=None):
        net = net or self.generator
        return to_float32(
            net([latents, labels] if self.num_classes else latents, training=training))

    def _discriminate(self, images, labels, training=True):
        return to_float32(self.discriminator(
            [images, labels] if self.num_classes else images, training=training
        ))

    def unpack(self, data):
        """A `{"images", "labels"}` batch (or images alone for an
        unconditional GAN) -> float images in [-1, 1], int32 labels."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        if y is not None:
            raise ValueError(
                "GAN batches are {'images': ..., 'labels': ...} dicts, not "
                "(images, labels) tuples"
            )
        labels = x.get("labels") if isinstance(x, dict) else None
        if self.num_classes and labels is None:
            raise ValueError("a conditional GAN needs {'images', 'labels'} batches")
        real = ops.cast(batch_images(x), "float32") * 2.0 - 1.0
        return real, (ops.cast(labels, "int32") if self.num_classes else None)

    def _latents(self, batch_size):
        return self.batch_noise(keras.random.normal, batch_size, (self.latent_dim,))

    # --- losses, in keras.ops, written once ------------------------------

    def discriminator_loss(self, real, labels, training=True):
        """The discriminator's loss on a real batch and fresh fakes (detached).

        `training=False` (evaluation) runs both networks in inference mode,
        so BatchNormalization statistics are read, not updated."""
        batch = ops.shape(real)[0]
        fake = ops.stop_gradient(
            self._generate_raw(self._latents(batch), labels, training))
        real_logits = self._discriminate(real, labels, training)
        fake_logits = self._discriminate(fake, labels, training)
        if self.loss_name == "non_saturating":
            loss = ops.mean(ops.softplus(-real_logits)) + ops.mean(ops.softplus(fake_logits))
        elif self.loss_name == "hinge":
            loss = ops.mean(ops.relu(1.0 - real_logits)) + ops.mean(ops.relu(1.0 + fake_logits))
        else:
            loss = ops.mean(fake_logits) - ops.mean(real_logits)
        aux = {"real_score": ops.mean(real_logits), "fake_score": ops.mean(fake_logits)}
        critic = lambda x: self._discriminate(x, labels, training)  # noqa: E731
        if self.gradient_penalty_weight:
            eps = self.batch_noise(keras.random.uniform, batch, (1, 1, 1))
            mixed = eps * real + (1.0 - eps) * fake
            grads = self.input_gradients(critic, mixed)
            norm = ops.sqrt(ops.sum(ops.square(grads), axis=(1, 2, 3)) + 1e-12)
            aux["gradient_penalty"] = ops.mean(ops.square(norm - 1.0))
            loss = loss + self.gradient_penalty_weight * aux["gradient_penalty"]
        if self.r1_weight:
            grads = self.input_gradients(critic, real)
            aux["r1_penalty"] = ops.mean(ops.sum(ops.square(grads), axis=(1, 2, 3)))
            loss = loss + 0.5 * self.r1_weight * aux["r1_penalty"]
        aux["d_loss"] = loss
        return loss, aux

    def generator_loss(self, real, labels, training=True):
        """The generator's loss on a batch of fakes the size of `real`."""
        fake = self._generate_raw(self._latents(ops.shape(real)[0]), labels, training)
        logits = self._discriminate(fake, labels, training)
        if self.loss_name == "non_saturating":
            return ops.mean(ops.softplus(-logits))
        return -ops.mean(logits)

    def update_ema(self):
        """One EMA step of `ema_generator` (called by the train step)."""
        ema.update(self.ema_generator, self.generator, self.ema_decay, self.ema_updates)

    def update_metrics(self, d_aux, g_loss):
        self.d_loss_tracker.update_state(ops.stop_gradient(d_aux["d_loss"]))
        self.g_loss_tracker.update_state(ops.stop_gradient(g_loss))
        self.real_score_tracker.update_state(ops.stop_gradient(d_aux["real_score"]))
        self.fake_score_tracker.update_state(ops.stop_gradient(d_aux["fake_score"]))
        for name, tracker in self.penalty_trackers.items():
            tracker.update_state(ops.stop_gradient(d_aux[name]))
        return {m.name: m.result() for m in self.metrics}

    def evaluation_logs(self, data):
        """Both losses and the scores on one batch, the networks in inference
        mode: what `evaluate()` and the validation pass log (each backend's
        `test_step` in `kgen.trainers` runs it); only the metrics change."""
        real, labels = self.unpack(data)
        _, d_aux = self.discriminator_loss(real, labels, training=False)
        return self.update_metrics(
            d_aux, self.generator_loss(real, labels, training=False))

    def _check_phase(self, phase):
        if phase not in PHASES:
            raise ValueError(f"phase={phase!r}: expected one of {PHASES}")
        return phase

    # --- inference -------------------------------------------------------

    def _cycle_labels(self, n):
        return ops.mod(ops.arange(n, dtype="int32"), self.num_classes)

    def sample(self, seeds, labels=None):
        """Images in [0, 1] from one latent draw per row (int32 seed pairs
        `(batch, 2)`), from the EMA generator when there is one; row `r`
        depends on `seeds[r]` (and `labels[r]`) alone."""
        latents = kgen_random.normal(seeds, (self.latent_dim,))
        if self.num_classes:
            labels = ops.cast(labels, "int32")
        images = self._generate_raw(latents, labels, False, net=self.ema_generator)
        return ops.clip((images + 1.0) / 2.0, 0.0, 1.0)

    def generate_rows(self, pairs, labels):
        net = self.ema_generator or self.generator
        if self.num_classes:
            fn = self.compiled_function("sample", self.sample, net.weights)
            return ops.convert_to_numpy(fn(pairs, labels))
        fn = self.compiled_function("sample", lambda s: self.sample(s), net.weights)
        return ops.convert_to_numpy(fn(pairs))

    # --- config ----------------------------------------------------------

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "loss": self.loss_name,
            "gradient_penalty_weight": self.gradient_penalty_weight,
            "r1_weight": self.r1_weight,
            "d_steps": self.d_steps,
            "ema_decay": self.ema_decay,
        }
