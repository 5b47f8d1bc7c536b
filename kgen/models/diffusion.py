"""Denoising diffusion (Ho et al., 2020) with classifier-free guidance
(Ho & Salimans, 2022) and an EMA of the denoiser's weights."""

import json

import keras
import numpy as np
from keras import ops

from kgen import networks  # noqa: F401  (registers the U-Net's layers for .keras files)
from kgen import random as kgen_random
from kgen import schedulers as kgen_schedulers
from kgen.api import kgen_export
from kgen.family import Family
from kgen.family import declare_family
from kgen.models import ema
from kgen.models.base import GenerativeModel
from kgen.models.base import batch_images
from kgen.models.base import global_rows
from kgen.precision import to_float32
from kgen.trainers import EMATrainer
from kgen.trainers import scale_loss

LOSSES = ("mse", "mae")


@declare_family(Family(
    name="diffusion",
    output_kind="images",
    signatures="kgen.export.diffusion:diffusion_signatures",
    options={"num_steps": "int32", "guidance_scale": "float32"},
    # One sampling loop runs per call, for every row alike.
    uniform_inputs=("num_steps",),
    served_defaults="kgen.export.diffusion:served_defaults",
))
@kgen_export("kgen.models.DiffusionModel")
class DiffusionModel(EMATrainer, GenerativeModel):
    """A diffusion model trained with `fit()` on every backend.

    `call(images)` (or `call({"images": ..., "labels": ...})` for a
    class-conditional model) scales images from [0, 1] to [-1, 1], draws
    integer timesteps and noise, noises the images with
    `scheduler.add_noise` (`q_sample`) and returns `{"prediction",
    "target"}`; `compute_loss()` is the simple loss of Ho et al. (MSE, or
    MAE), all in `keras.ops` (`p_losses`).

    Training (`training=True`) runs the trained denoiser on timesteps, noise
    and label dropout drawn from the model's `SeedGenerator`. Evaluation
    (`training=False`, Keras' `test_step`, hence `val_loss`) runs the
    sampling denoiser (the EMA copy) on timesteps and noise fixed by each
    row's index in the batch (`kgen.random`, `validation_draws`), so the
    validation loss of successive epochs compares, and `best.keras` is
    picked by the weights that sample and export.

    EMA: `ema_denoiser` is a copy of the denoiser whose weights follow an
    exponential moving average of the trained weights (`kgen.models.ema`,
    shared with the GAN): updated once per train step after Keras' own
    step (`kgen.trainers.EMATrainer`), never by calling the model, with the
    decay warmed up as `min(ema_decay, (1 + n) / (10 + n))` after `n`
    updates. `generate()` and the SavedModel export sample with the EMA
    weights; `ema_decay=None` samples with the trained weights.

    Guidance: a conditional model replaces a `label_dropout` share of the
    labels by the "no label" class `num_classes` while training; sampling
    mixes `uncond + guidance_scale * (cond - uncond)`. Without labels a
    conditional model samples the "no label" class (unguided).

    Args:
        denoiser: a model mapping `[images, timesteps(, labels)]` to a tensor
            shaped like images (e.g. `kgen.networks.unet`).
        scheduler: the training scheduler (its noise schedule and
            `prediction_type` are the model's); a `kgen.schedulers` instance
            or a name.
        num_classes: number of classes of a conditional model, else `None`.
        label_dropout: probability of dropping a label while training.
        loss: `"mse"` or `"mae"`.
        min_snr_gamma: `None` (every timestep counts alike, Ho et al.) or
            gamma > 0: Min-SNR-gamma weighting (Hang et al., 2023), each
            row's loss times `min(SNR_t, gamma) / SNR_t` for epsilon
            prediction (`/ (SNR_t + 1)` for v, `min(SNR_t, gamma)` for the
            sample), so the nearly clean timesteps, whose targets are easy
            and whose gradients conflict with the noisy ones, weigh less;
            the paper's gamma is 5. The validation loss is weighted alike.
        ema_decay: EMA decay of the sampling weights in [0, 1), or `None`.
        sampler: name of the scheduler `generate()` and the export use by
            default, built from `scheduler`'s config (`"ddpm"`, `"ddim"`,
            `"dpm_solver"`).
        guidance_scale: the classifier-free guidance weight of labelled
            samples when none is asked for: `generate()`'s default, and the
            one `kgen sample`, `kgen evaluate` and the export's `kgen.json`
            use. The larger, the more class-typical (and the less varied)
            the samples.
        distilled: `None`, or what `kgen distill` records in a few-step
            student (`kgen.distill`): `{"steps", "teacher_steps", "method",
            "guidance_scale"}`. The student samples with `steps` steps by
            default (in `generate()` and the export's `kgen.json`), and a
            conditional student, trained on its teacher's guided prediction
            at `guidance_scale`, takes one denoiser pass per step: its own
            `guidance_scale` argument is ignored (`denoise`).
        seed: seed of the training randomness.

    Example:

    ```python
    from kgen import models, networks, schedulers
    model = models.DiffusionModel(
        networks.unet((16, 16, 1), (32, 64), num_classes=10),
        schedulers.DDPMScheduler(1000, "cosine"), num_classes=10)
    model.compile(optimizer="adam")
    model.fit(dataset.map(lambda x, y: {"images": x, "labels": y}), epochs=5)
    images = model.generate(16, seed=0, labels=[i % 10 for i in range(16)],
                            num_steps=20, scheduler="dpm_solver",
                            guidance_scale=2.0)
    ```
    """

    nested_config_keys = ("denoiser", "scheduler")

    def __init__(self, denoiser, scheduler="ddpm", num_classes=None,
                 label_dropout=0.1, loss="mse", ema_decay=0.999,
                 sampler="ddim", guidance_scale=2.0, min_snr_gamma=None, seed=None,
                 distilled=None, **kwargs):
        if isinstance(scheduler, str):
            scheduler = kgen_schedulers.get(scheduler)()
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: expected one of {LOSSES}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout={label_dropout}: must be in [0, 1)")
        ema_decay = ema.check_decay(ema_decay)
        expected_inputs = 2 if num_classes is None else 3
        if len(denoiser.inputs) != expected_inputs:
            raise ValueError(
                f"denoiser takes {len(denoiser.inputs)} inputs; a model with "
                f"num_classes={num_classes} needs {expected_inputs} "
                "([images, timesteps] or [images, timesteps, labels])"
            )
        kgen_schedulers.get(sampler)  # fail early on a bad name
        guidance_scale = _check_guidance(guidance_scale)
        min_snr_gamma = _check_min_snr_gamma(min_snr_gamma)
        distilled = _check_distilled(distilled, scheduler.num_train_timesteps)
        super().__init__(seed=seed, **kwargs)
        # === Layers ===
        self.denoiser = denoiser
        self.ema_denoiser = ema.average_copy(denoiser, ema_decay)
        # === Config ===
        self.scheduler = scheduler
        self.num_classes = None if num_classes is None else int(num_classes)
        self.label_dropout = float(label_dropout)
        self.loss_name = loss
        self.ema_decay = ema_decay
        self.sampler = sampler
        self.guidance_scale = guidance_scale
        self.min_snr_gamma = min_snr_gamma
        self.distilled = distilled
        self.image_shape = tuple(denoiser.inputs[0].shape[1:])
        # === State ===
        self.ema_updates = ema.update_counter(self) if ema_decay is not None else None
        # What Keras records here is the input of the default SavedModel
        # signature the TensorFlow backend traces when a model is tracked.
        self.build(self.batch_shapes())

    def batch_shapes(self):
        """The shapes of one training batch (what `call()` takes)."""
        if self.num_classes is None:
            return (None, *self.image_shape)
        return {"images": (None, *self.image_shape), "labels": (None,)}

    def build(self, input_shape):
        # The denoiser arrives built; the EMA copy is built by clone_model.
        pass

    @property
    def sampling_denoiser(self):
        """The denoiser `generate()`, the export and the validation loss run
        (the EMA copy when there is one)."""
        return self.ema_denoiser if self.ema_denoiser is not None else self.denoiser

    def update_ema(self):
        """One EMA step of `ema_denoiser` (called by the train step)."""
        ema.update(self.ema_denoiser, self.denoiser, self.ema_decay, self.ema_updates)

    # --- training (q_sample, p_losses) -------------------------------------

    def _unpack(self, inputs):
        """A `{"images", "labels"}` batch (images alone for an
        unconditional model) -> images, labels or None."""
        labels = inputs.get("labels") if isinstance(inputs, dict) else None
        if self.num_classes is not None and labels is None:
            raise ValueError(
                "a conditional DiffusionModel needs {'images', 'labels'} batches")
        return batch_images(inputs), labels

    def q_sample(self, x0, noise, timesteps):
        """Noise clean samples (in [-1, 1]) to `timesteps`."""
        return self.scheduler.add_noise(x0, noise, timesteps)

    def training_draws(self, x0):
        """Random timesteps `(batch,)` and noise for a training batch."""
        rows = ops.shape(x0)[0]
        timesteps = self.batch_noise(
            keras.random.randint, rows, minval=0,
            maxval=self.scheduler.num_train_timesteps, dtype="int32")
        return timesteps, self.batch_noise(keras.random.normal, rows, x0.shape[1:])

    def validation_draws(self, x0):
        """Timesteps `(batch,)` and noise fixed by each row's index in the
        (global) batch (`kgen.random` with seed = index), the same at every
        epoch."""
        index = global_rows(ops.shape(x0)[0])
        pairs = ops.stack([index, ops.zeros_like(index)], axis=-1)
        T = self.scheduler.num_train_timesteps
        u = kgen_random.uniform(pairs, (), stream=2)
        timesteps = ops.minimum(ops.cast(u * T, "int32"), T - 1)
        return timesteps, kgen_random.normal(pairs, self.image_shape, stream=0)

    def call(self, inputs, training=False):
        images, labels = self._unpack(inputs)
        x0 = ops.cast(images, "float32") * 2.0 - 1.0
        if training:
            timesteps, noise = self.training_draws(x0)
            denoiser = self.denoiser
        else:
            timesteps, noise = self.validation_draws(x0)
            denoiser = self.sampling_denoiser
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
                drop = self.batch_noise(keras.random.uniform, ops.shape(x0)[0])
                labels = ops.where(drop < self.label_dropout,
                                   ops.full_like(labels, self.num_classes), labels)
            denoiser_inputs.append(labels)
        prediction = to_float32(denoiser(denoiser_inputs, training=training))
        outputs = {
            "prediction": prediction,
            "target": self.scheduler.training_target(x0, noise, timesteps),
        }
        if self.min_snr_gamma is not None:
            outputs["weight"] = self.loss_weights(timesteps)
        return outputs

    def loss_weights(self, timesteps):
        """Min-SNR-gamma weights `(batch,)` of `timesteps` for the model's
        `prediction_type` (see `min_snr_gamma`)."""
        a = self.scheduler.alpha_bar(timesteps)
        snr = a / ops.maximum(1.0 - a, 1e-12)
        gamma = ops.cast(self.min_snr_gamma, snr.dtype)
        kind = self.scheduler.prediction_type
        if kind == "epsilon":  # min(snr, gamma) / snr, safe at snr -> 0
            return ops.minimum(gamma / ops.maximum(snr, 1e-12), 1.0)
        if kind == "v_prediction":
            return ops.minimum(snr, gamma) / (snr + 1.0)
        return ops.minimum(snr, gamma)

    def p_losses(self, outputs):
        diff = outputs["prediction"] - ops.cast(outputs["target"], outputs["prediction"].dtype)
        error = ops.abs(diff) if self.loss_name == "mae" else ops.square(diff)
        if "weight" not in outputs:
            return ops.mean(error)
        per_row = ops.mean(error, axis=tuple(range(1, len(error.shape))))
        return ops.mean(per_row * ops.cast(outputs["weight"], per_row.dtype))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        loss = self.p_losses(y_pred)
        for extra in self.losses:
            loss = loss + ops.cast(extra, loss.dtype)
        return scale_loss(loss)

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

    @property
    def default_num_steps(self):
        """The step count `generate()` samples with when not asked: a
        distilled student's own (`distilled["steps"]`), else 50."""
        return self.distilled["steps"] if self.distilled else 50

    @property
    def guidance_distilled(self):
        """True for a conditional student trained on its teacher's guided
        prediction: one conditional pass a step, `guidance_scale` unused."""
        return bool(self.distilled) and self.num_classes is not None

    def default_labels(self, seeds):
        """No labels given: the "no label" class, unguided (see `sample`)."""
        return None

    def denoise(self, x, timestep, labels=None, guidance_scale=1.0):
        """The sampling denoiser's output at `(x, timestep)`.

        An unconditional model, or a conditional one with `labels=None`
        (the "no label" class), takes one pass; with `labels` the output is
        guided, `uncond + guidance_scale * (cond - uncond)` (a label equal
        to `num_classes` gives `uncond` whatever the scale), with
        `guidance_scale` a scalar or one value per row.
        """
        batch = ops.shape(x)[0]
        denoiser = lambda inputs, training: to_float32(  # noqa: E731
            self.sampling_denoiser(inputs, training=training))
        if self.num_classes is None:
            t = ops.full((batch,), timestep, dtype="int32")
            return denoiser([x, t], training=False)
        if labels is None:
            labels = ops.full((batch,), self.num_classes, dtype="int32")
            t = ops.full((batch,), timestep, dtype="int32")
            return denoiser([x, t, labels], training=False)
        if self.guidance_distilled:  # the guidance is in the weights
            t = ops.full((batch,), timestep, dtype="int32")
            return denoiser([x, t, ops.cast(labels, "int32")], training=False)
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

    def sample(self, seeds, labels=None, guidance_scale=1.0, num_steps=50,
               scheduler=None):
        """The sampling loop in `keras.ops`: `generate()` compiles it, the
        export traces it. Returns images in [0, 1].

        Row `r` reads only its own seed pair: `x_T` is
        `kgen.random.normal(seeds, image_shape, stream=0)` and step `i`'s
        noise (stochastic schedulers) is drawn inside the loop from stream
        `i + 1`; the whole loop is one `keras.ops.fori_loop`.

        Args:
            seeds: int32 `(batch, 2)` seed pairs (`kgen.random.seed_pairs`).
            labels: int `(batch,)` for guided sampling of a conditional
                model (`num_classes` = "no label"), or `None`.
            guidance_scale: scalar or float `(batch,)`.
            num_steps: int (or int32 scalar tensor), 1 to
                `num_train_timesteps`.
            scheduler: a scheduler instance or name (default `sampler`).
        """
        scheduler = self.get_scheduler(scheduler)
        x = kgen_random.normal(seeds, self.image_shape, stream=0)
        if self.num_classes is None:
            labels = None

        def body(i, carry):
            x, x0_last, t_last = carry
            t = scheduler.timestep(i, num_steps)
            t_prev = scheduler.timestep(i + 1, num_steps)
            output = self.denoise(x, t, labels, guidance_scale)
            noise = None
            if scheduler.stochastic:
                noise = kgen_random.normal(seeds, self.image_shape, stream=i + 1)
            x, (x0_last, t_last) = scheduler.step(
                output, t, t_prev, x, (x0_last, t_last), noise=noise
            )
            return x, x0_last, t_last

        x, _, _ = ops.fori_loop(0, num_steps, body, (x, *scheduler.initial_state(x)))
        return ops.clip((x + 1.0) / 2.0, 0.0, 1.0)

    def generate(self, n, *, seed=None, labels=None, num_steps=None, scheduler=None,
                 guidance_scale=None):
        """Draw `n` images; returns numpy `(n, h, w, c)` in [0, 1].

        Row `i` comes from seed `seed + i` alone (`GenerativeModel`), and
        equals the exported `generate` signature's row for that seed, label,
        `num_steps` and `guidance_scale`.

        Args:
            n: number of images.
            seed: int (64-bit); `None` draws one.
            labels: for a conditional model, an int or `n` ints (guided
                sampling), or `None` for unconditional samples (the "no
                label" class; `guidance_scale` is then not used).
            num_steps: sampling steps, 1 to `num_train_timesteps`; `None`:
                `default_num_steps` (50, or a distilled student's own).
            scheduler: a scheduler name or instance (default `sampler`).
            guidance_scale: classifier-free guidance weight (1: plain
                conditional; larger: more class-typical); `None`: the
                model's `guidance_scale`. A distilled conditional student
                ignores it (`guidance_distilled`).
        """
        scheduler = self.get_scheduler(scheduler)
        if num_steps is None:
            num_steps = self.default_num_steps
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
            raise ValueError(f"num_steps={num_steps!r}: must be an int")
        scheduler.check_num_steps(num_steps)
        guidance_scale = _check_guidance(
            self.guidance_scale if guidance_scale is None else guidance_scale)
        return super().generate(n, seed=seed, labels=labels, num_steps=int(num_steps),
                                scheduler=scheduler, guidance_scale=guidance_scale)

    def generate_rows(self, pairs, labels, num_steps, scheduler, guidance_scale):
        """Run `sample()` compiled (once per scheduler, and per labelled or
        unlabelled rows: the unlabelled loop takes one denoiser pass a step)
        on seed pairs."""
        key = ("sample", labels is not None, type(scheduler).__name__,
               json.dumps(scheduler.get_config(), sort_keys=True))
        n = pairs.shape[0]
        steps = np.asarray(num_steps, "int32")

        def compiled(fn):
            return self.compiled_function(key, fn, self.sampling_denoiser.weights)

        if labels is None:
            fn = compiled(lambda seeds, num_steps: self.sample(
                seeds, None, 1.0, num_steps, scheduler))
            return ops.convert_to_numpy(fn(pairs, steps))
        fn = compiled(lambda seeds, labels, guidance_scale, num_steps: self.sample(
            seeds, labels, guidance_scale, num_steps, scheduler))
        return ops.convert_to_numpy(
            fn(pairs, labels, np.full((n,), guidance_scale, "float32"), steps))

    # --- config ------------------------------------------------------------

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "label_dropout": self.label_dropout,
            "loss": self.loss_name,
            "ema_decay": self.ema_decay,
            "sampler": self.sampler,
            "guidance_scale": self.guidance_scale,
            "min_snr_gamma": self.min_snr_gamma,
            "distilled": self.distilled,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "ema_momentum" in config:  # the name of `ema_decay` in earlier files
            config["ema_decay"] = config.pop("ema_momentum")
        return super().from_config(config)


def _finite_number(name, value, requirement="must be a finite number"):
    """`value` as a float if it is a finite number, or a ValueError naming
    `name`, the value and `requirement`."""
    if isinstance(value, bool) \
            or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise ValueError(f"{name}={value!r}: {requirement}")
    return float(value)


def _check_guidance(guidance_scale):
    """A finite guidance weight as a float, or a ValueError naming it."""
    return _finite_number("guidance_scale", guidance_scale)


DISTILLED_KEYS = ("steps", "teacher_steps", "method", "guidance_scale")


def _check_distilled(distilled, num_train_timesteps):
    """`None`, or a distilled student's record as a plain dict; else a
    ValueError naming it."""
    if distilled is None:
        return None
    if not isinstance(distilled, dict) or set(distilled) != set(DISTILLED_KEYS):
        raise ValueError(f"distilled={distilled!r}: expected None or a dict with "
                         f"keys {DISTILLED_KEYS}")
    steps, teacher_steps = distilled["steps"], distilled["teacher_steps"]
    for name, value in (("steps", steps), ("teacher_steps", teacher_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or not 1 <= value <= num_train_timesteps:
            raise ValueError(f"distilled[{name!r}]={value!r}: must be an int in "
                             f"[1, {num_train_timesteps}]")
    return {"steps": int(steps), "teacher_steps": int(teacher_steps),
            "method": str(distilled["method"]),
            "guidance_scale": _finite_number("distilled['guidance_scale']",
                                             distilled["guidance_scale"])}


def _check_min_snr_gamma(gamma):
    """`None`, or a finite gamma > 0 as a float; else a ValueError naming it."""
    if gamma is None:
        return None
    requirement = "must be a number > 0, or None"
    value = _finite_number("min_snr_gamma", gamma, requirement)
    if value <= 0:
        raise ValueError(f"min_snr_gamma={gamma!r}: {requirement}")
    return value
