"""Denoising diffusion (Ho et al., 2020) with classifier-free guidance
(Ho & Salimans, 2022) and an EMA of the denoiser's weights."""

import json

import keras
import numpy as np
from keras import ops

from kgen import networks  # noqa: F401  (registers the U-Net's layers for .keras files)
from kgen import schedulers as kgen_schedulers
from kgen.api import kgen_export
from kgen.models.base import GenerativeModel

LOSSES = ("mse", "mae")


class _FunctionCache:
    """Compiled sampling functions by scheduler, in a plain object that
    TensorFlow's attribute tracking leaves alone (a dict attribute would be
    wrapped and tracked, and a model that has sampled could not be exported)."""

    def __init__(self):
        self.functions = {}

    def __contains__(self, key):
        return key in self.functions

    def __getitem__(self, key):
        return self.functions[key]

    def __setitem__(self, key, fn):
        self.functions[key] = fn

    def __len__(self):
        return len(self.functions)


@kgen_export("kgen.models.DiffusionModel")
class DiffusionModel(GenerativeModel):
    """A diffusion model trained with `fit()` on every backend.

    `call(images)` (or `call({"images": ..., "labels": ...})` for a
    class-conditional model) scales images from [0, 1] to [-1, 1], draws
    integer timesteps, noise and label dropout from the model's
    `SeedGenerator`, noises the images with `scheduler.add_noise` (`q_sample`)
    and returns `{"prediction", "target"}`; `compute_loss()` is the simple
    loss of Ho et al. (MSE, or MAE), all in `keras.ops` (`p_losses`).

    EMA: `ema_denoiser` is a copy of the denoiser whose weights follow an
    exponential moving average of the trained weights, updated inside
    `call(training=True)` like BatchNorm's moving statistics (non-trainable
    variables, so Keras' own trainers carry the update on TensorFlow, JAX and
    torch). The decay warms up as `min(ema_momentum, (1 + n) / (10 + n))`
    after `n` updates. `generate()` and the SavedModel export sample with the
    EMA weights; `ema_momentum=None` samples with the trained weights.

    Guidance: a conditional model replaces a `label_dropout` share of the
    labels by the "no label" class `num_classes` while training; sampling
    mixes `uncond + guidance_scale * (cond - uncond)`.

    Args:
        denoiser: a model mapping `[images, timesteps(, labels)]` to a tensor
            shaped like images (e.g. `kgen.networks.unet`).
        scheduler: the training scheduler (its noise schedule and
            `prediction_type` are the model's); a `kgen.schedulers` instance
            or a name.
        num_classes: number of classes of a conditional model, else `None`.
        label_dropout: probability of dropping a label while training.
        loss: `"mse"` or `"mae"`.
        ema_momentum: EMA decay of the sampling weights, or `None`.
        sampler: name of the scheduler `generate()` and the export use by
            default, built from `scheduler`'s config (`"ddpm"`, `"ddim"`,
            `"dpm_solver"`).
        seed: seed of the training randomness.

    Example:

    ```python
    from kgen import models, networks, schedulers
    model = models.DiffusionModel(
        networks.unet((16, 16, 1), (32, 64), num_classes=10),
        schedulers.DDPMScheduler(1000, "cosine"), num_classes=10)
    model.compile(optimizer="adam")
    model.fit(dataset.map(lambda x, y: {"images": x, "labels": y}), epochs=5)
    images = model.generate(16, seed=0, num_steps=20, scheduler="dpm_solver",
                            label=list(range(10)) * 2, guidance_scale=2.0)
    ```
    """

    def __init__(self, denoiser, scheduler="ddpm", num_classes=None,
                 label_dropout=0.1, loss="mse", ema_momentum=0.999,
                 sampler="ddim", seed=None, **kwargs):
        if isinstance(scheduler, str):
            scheduler = kgen_schedulers.get(scheduler)()
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: expected one of {LOSSES}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout={label_dropout}: must be in [0, 1)")
        if ema_momentum is not None and not 0.0 <= ema_momentum < 1.0:
            raise ValueError(f"ema_momentum={ema_momentum}: must be in [0, 1) or None")
        expected_inputs = 2 if num_classes is None else 3
        if len(denoiser.inputs) != expected_inputs:
            raise ValueError(
                f"denoiser takes {len(denoiser.inputs)} inputs; a model with "
                f"num_classes={num_classes} needs {expected_inputs} "
                "([images, timesteps] or [images, timesteps, labels])"
            )
        kgen_schedulers.get(sampler)  # fail early on a bad name
        super().__init__(seed=seed, **kwargs)
        # === Layers ===
        self.denoiser = denoiser
        self.ema_denoiser = None
        if ema_momentum is not None:
            self.ema_denoiser = keras.models.clone_model(denoiser)
            self.ema_denoiser.trainable = False
            for ema, weight in zip(self.ema_denoiser.weights, denoiser.weights):
                ema.assign(ops.convert_to_numpy(weight))  # a copy, not a shared buffer
        # === Config ===
        self.scheduler = scheduler
        self.num_classes = None if num_classes is None else int(num_classes)
        self.label_dropout = float(label_dropout)
        self.loss_name = loss
        self.ema_momentum = None if ema_momentum is None else float(ema_momentum)
        self.sampler = sampler
        self.image_shape = tuple(denoiser.inputs[0].shape[1:])
        # === State ===
        self.ema_updates = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="ema_updates"
        )
        self._sample_functions = _FunctionCache()
        # What Keras records here is the input of the default SavedModel
        # signature the TensorFlow backend traces when a model is tracked.
        if self.num_classes is None:
            self.build((None, *self.image_shape))
        else:
            self.build({"images": (None, *self.image_shape), "labels": (None,)})

    def build(self, input_shape):
        # The denoiser arrives built; the EMA copy is built by clone_model.
        pass

    @property
    def sampling_denoiser(self):
        """The denoiser `generate()` and the export run (the EMA copy)."""
        return self.ema_denoiser if self.ema_denoiser is not None else self.denoiser

    # --- training (q_sample, p_losses) -------------------------------------

    def _unpack(self, inputs):
        if isinstance(inputs, dict):
            return inputs["images"], inputs.get("labels")
        if isinstance(inputs, (tuple, list)):
            return inputs[0], (inputs[1] if len(inputs) > 1 else None)
        return inputs, None

    def q_sample(self, x0, noise, timesteps):
        """Noise clean samples (in [-1, 1]) to `timesteps`."""
        return self.scheduler.add_noise(x0, noise, timesteps)

    def call(self, inputs, training=False):
        images, labels = self._unpack(inputs)
        x0 = ops.cast(images, "float32") * 2.0 - 1.0
        batch = ops.shape(x0)[0]
        timesteps = keras.random.randint(
            (batch,), 0, self.scheduler.num_train_timesteps, dtype="int32",
            seed=self.seed_generator,
        )
        noise = keras.random.normal(ops.shape(x0), seed=self.seed_generator)
        noisy = self.q_sample(x0, noise, timesteps)
        denoiser_inputs = [noisy, timesteps]
        if self.num_classes is not None:
            if labels is None:
                raise ValueError(
                    "a conditional DiffusionModel needs labels: call it with "
                    '{"images": ..., "labels": ...}'
                )
            labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
            if training and self.label_dropout > 0:
                drop = keras.random.uniform((batch,), seed=self.seed_generator)
                labels = ops.where(drop < self.label_dropout,
                                   ops.full_like(labels, self.num_classes), labels)
            denoiser_inputs.append(labels)
        prediction = self.denoiser(denoiser_inputs, training=training)
        if training:
            self.update_ema()
        return {
            "prediction": prediction,
            "target": self.scheduler.training_target(x0, noise, timesteps),
        }

    def update_ema(self):
        """Move the EMA weights towards the trained ones (one update)."""
        if self.ema_denoiser is None:
            return
        n = self.ema_updates
        decay = ops.minimum(self.ema_momentum, (1.0 + n) / (10.0 + n))
        for ema, weight in zip(self.ema_denoiser.weights, self.denoiser.weights):
            value = ops.stop_gradient(ops.cast(weight, ema.dtype))
            ema.assign(decay * ema + (1.0 - decay) * value)
        self.ema_updates.assign(n + 1.0)

    def p_losses(self, outputs):
        diff = outputs["prediction"] - ops.cast(outputs["target"], outputs["prediction"].dtype)
        if self.loss_name == "mae":
            return ops.mean(ops.abs(diff))
        return ops.mean(ops.square(diff))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        loss = self.p_losses(y_pred)
        for extra in self.losses:
            loss = loss + ops.cast(extra, loss.dtype)
        return loss

    # --- sampling ----------------------------------------------------------

    def get_scheduler(self, scheduler=None):
        """A sampling scheduler sharing the training schedule.

        `None` gives the model's `sampler`; a name or class is built from the
        training scheduler's config; an instance is used as it is.
        """
        if isinstance(scheduler, kgen_schedulers.Scheduler):
            return scheduler
        cls = kgen_schedulers.get(self.sampler if scheduler is None else scheduler)
        return cls.from_config(self.scheduler.get_config())

    def denoise(self, x, timestep, labels=None, guidance_scale=None):
        """The sampling denoiser's output at `(x, timestep)`, guided when
        `labels` is given: `uncond + guidance_scale * (cond - uncond)`
        (`guidance_scale` a scalar or one value per row)."""
        batch = ops.shape(x)[0]
        denoiser = self.sampling_denoiser
        if self.num_classes is None:
            t = ops.full((batch,), timestep, dtype="int32")
            return denoiser([x, t], training=False)
        if labels is None:
            labels = ops.full((batch,), self.num_classes, dtype="int32")
            t = ops.full((batch,), timestep, dtype="int32")
            return denoiser([x, t, labels], training=False)
        t = ops.full((2 * batch,), timestep, dtype="int32")
        both = denoiser([
            ops.concatenate([x, x], axis=0), t,
            ops.concatenate([ops.cast(labels, "int32"),
                             ops.full((batch,), self.num_classes, dtype="int32")], axis=0),
        ], training=False)
        cond, uncond = both[:batch], both[batch:]
        w = ops.cast(guidance_scale, x.dtype)
        if len(ops.shape(w)) == 1:
            w = ops.reshape(w, (-1,) + (1,) * (len(x.shape) - 1))
        return uncond + w * (cond - uncond)

    def sample_loop(self, x, num_steps, scheduler, labels=None,
                    guidance_scale=1.0, noise_fn=None):
        """Run `num_steps` reverse steps from noise `x` (the whole loop is one
        `keras.ops.fori_loop`); returns images in [0, 1].

        Args:
            x: `x_T`, standard normal `[batch, h, w, c]`.
            num_steps: int (or int tensor) number of steps.
            scheduler: a `kgen.schedulers` instance.
            labels: int `[batch]` for guided sampling of a conditional model.
            guidance_scale: scalar or `[batch]`.
            noise_fn: `noise_fn(i)` -> the standard normal noise of step `i`
                (stochastic schedulers); `None` for deterministic ones.
        """
        x0_last, t_last = scheduler.initial_state(x)

        def body(i, carry):
            x, x0_last, t_last = carry
            t = scheduler.timestep(i, num_steps)
            t_prev = scheduler.timestep(i + 1, num_steps)
            output = self.denoise(x, t, labels, guidance_scale)
            noise = noise_fn(i) if (noise_fn is not None and scheduler.stochastic) else None
            x, (x0_last, t_last) = scheduler.step(
                output, t, t_prev, x, (x0_last, t_last), noise=noise
            )
            return x, x0_last, t_last

        x, _, _ = ops.fori_loop(0, num_steps, body, (x, x0_last, t_last))
        return ops.clip((x + 1.0) / 2.0, 0.0, 1.0)

    def make_sample_function(self, scheduler):
        """The compiled sampling loop for `scheduler`, built once and cached:
        `fn(x_T, noises, labels, guidance_scale, num_steps)`."""
        key = (type(scheduler).__name__,
               json.dumps(scheduler.get_config(), sort_keys=True))
        if key in self._sample_functions:
            return self._sample_functions[key]
        from kgen.inference import compile_inference

        def sample(x, noises, labels, guidance_scale, num_steps):
            def noise_fn(i):
                return ops.take(noises, i, axis=0)

            return self.sample_loop(
                x, num_steps, scheduler,
                labels=labels if self.num_classes is not None else None,
                guidance_scale=guidance_scale, noise_fn=noise_fn,
            )

        fn = compile_inference(sample, self.sampling_denoiser.weights)
        self._sample_functions[key] = fn
        return fn

    def generate(self, n, seed=None, num_steps=50, scheduler=None, label=None,
                 guidance_scale=1.0):
        """Draw `n` images; returns numpy `(n, h, w, c)` in [0, 1].

        Args:
            n: number of images.
            seed: int; the same seed (and arguments) gives the same images.
            num_steps: sampling steps, 1 to `num_train_timesteps`.
            scheduler: a scheduler name or instance (default `sampler`).
            label: for a conditional model, an int or `n` ints (guided
                sampling), or `None` for unconditional samples.
            guidance_scale: classifier-free guidance weight (1: plain
                conditional; larger: more class-typical).
        """
        n = int(n)
        if n < 1:
            raise ValueError(f"n={n}: must be at least 1")
        scheduler = self.get_scheduler(scheduler)
        scheduler.check_num_steps(num_steps)
        num_steps = int(num_steps)
        if seed is None:
            seed = int(ops.convert_to_numpy(keras.random.randint(
                (), 0, 2**31 - 1, seed=self.seed_generator)))
        if self.num_classes is None:
            if label is not None:
                raise ValueError("label given, but the model is unconditional")
            labels = np.zeros((n,), "int32")  # unused
        elif label is None:
            # The "no label" class with guidance 1: unconditional samples.
            labels, guidance_scale = np.full((n,), self.num_classes, "int32"), 1.0
        else:
            labels = np.broadcast_to(np.asarray(label, "int32"), (n,)).copy()
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise ValueError(f"label={label}: must be in [0, {self.num_classes})")
        generator = keras.random.SeedGenerator(int(seed))
        x = keras.random.normal((n, *self.image_shape), seed=generator)
        noise_steps = num_steps if scheduler.stochastic else 1
        noises = keras.random.normal((noise_steps, n, *self.image_shape), seed=generator)
        fn = self.make_sample_function(scheduler)
        out = fn(x, noises, labels,
                 np.full((n,), guidance_scale, "float32"),
                 np.asarray(num_steps, "int32"))
        return ops.convert_to_numpy(out)

    # --- config ------------------------------------------------------------

    def get_config(self):
        return {
            **super().get_config(),
            "denoiser": keras.saving.serialize_keras_object(self.denoiser),
            "scheduler": keras.saving.serialize_keras_object(self.scheduler),
            "num_classes": self.num_classes,
            "label_dropout": self.label_dropout,
            "loss": self.loss_name,
            "ema_momentum": self.ema_momentum,
            "sampler": self.sampler,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("denoiser", "scheduler"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
