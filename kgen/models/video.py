"""Class-conditional video diffusion that both generates a clip and extends
one from its first frames: one denoiser, told by a mask which frames are
known."""

import json

import keras
import numpy as np
from keras import ops

from kgen import random as kgen_random
from kgen.api import kgen_export
from kgen.family import Family
from kgen.family import declare_family
from kgen.models.base import global_rows
from kgen.models.diffusion import DiffusionModel


@declare_family(Family(
    name="video diffusion",
    output_kind="video",
    signatures="kgen.export.video:video_signatures",
    options={"num_steps": "int32", "guidance_scale": "float32"},
    # One sampling loop runs per call, for every row alike.
    uniform_inputs=("num_steps",),
    evaluation="video",
    evaluator="kgen.metrics.video:evaluate_video",
    writer="kgen.video:VIDEO_WRITER",
    served_defaults="kgen.export.diffusion:served_defaults",
))
@kgen_export("kgen.models.VideoDiffusionModel")
class VideoDiffusionModel(DiffusionModel):
    """A `DiffusionModel` over short clips `(frames, h, w, c)` that also
    continues a clip from its first frames.

    Training batches are `{"videos": float (batch, frames, h, w, c) in
    [0, 1], "labels": int (batch,)}` (the clips alone for an unconditional
    model). The schedulers, EMA, Min-SNR weighting, label dropout and
    classifier-free guidance, and the fixed validation draws are the image
    model's.

    Extension by masking: the denoiser takes, beside the noisy clip, the
    known frames and their mask (`2 * c + 1` channels: the noisy clip with
    its known frames clean, the known frames times the mask, the mask).
    While training, each row has, with probability `extend_fraction`, a
    known prefix of `k` frames (`k` uniform in `[1, frames - 1]`), else none;
    the loss counts only the unknown frames (the mean over their elements,
    per row), and a row with a known prefix also drops its label with
    probability 0.5, so that the model continues a clip without one. The
    draws come from the model's `SeedGenerator` while training and are
    fixed by each row's index in the batch for the validation loss.

    `generate()` samples whole clips (no frame known); `extend(frames)`
    samples the rest of each clip with its first frames given (the "no
    label" class, unguided), and returns those frames exactly as given.
    Both follow the generate contract: row `i` comes from seed `seed + i`
    alone, and equals the export's row for that seed.

    Args:
        denoiser: a model mapping `[inputs, timesteps(, labels)]` to clips,
            whose inputs have `2 * c + 1` channels for clips of `c`
            (e.g. `kgen.networks.video_unet(..., context=True)`).
        scheduler, num_classes, label_dropout, loss, min_snr_gamma,
            ema_decay, sampler, guidance_scale, seed: as `DiffusionModel`.
        clip_settings: what the clips are (e.g. `{"frames": 10, "size": 32,
            "digit_size": 14, "num_digits": 1}` for Moving MNIST), kept in
            the config and recorded by the export.
        extend_fraction: share of training rows given a known prefix, in
            [0, 1].

    Example:

    ```python
    from kgen import models, networks, schedulers
    model = models.VideoDiffusionModel(
        networks.video_unet((10, 32, 32, 1), (32, 64), num_classes=10),
        schedulers.DDPMScheduler(1000, "cosine"), num_classes=10)
    model.compile(optimizer="adam")
    model.fit(clips, epochs=5)     # {"videos": ..., "labels": ...} batches
    videos = model.generate(4, seed=0, labels=[1, 2, 3, 4], num_steps=50)
    more = model.extend(videos[:, :3], seed=0)   # first 3 frames kept
    ```
    """

    def __init__(self, denoiser, scheduler="ddpm", num_classes=None, clip_settings=None,
                 extend_fraction=0.5, **kwargs):
        in_shape = tuple(denoiser.inputs[0].shape[1:])
        out_shape = tuple(denoiser.outputs[0].shape[1:])
        if len(out_shape) != 4 or len(in_shape) != 4:
            raise ValueError(
                f"denoiser maps {in_shape} to {out_shape}: expected clips "
                "(frames, height, width, channels)")
        if in_shape != (*out_shape[:3], 2 * out_shape[3] + 1):
            raise ValueError(
                f"denoiser takes {in_shape} for clips {out_shape}: the input needs "
                f"2 * {out_shape[3]} + 1 channels (noisy clip, known frames, mask); "
                "build it with context=True")
        if out_shape[0] < 2:
            raise ValueError(f"denoiser makes clips {out_shape}: at least 2 frames")
        if isinstance(extend_fraction, bool) or not isinstance(
                extend_fraction, (int, float)) or not 0.0 <= extend_fraction <= 1.0:
            raise ValueError(f"extend_fraction={extend_fraction!r}: must be in [0, 1]")
        if clip_settings is not None and not isinstance(clip_settings, dict):
            raise ValueError(f"clip_settings={clip_settings!r}: expected a dict or None")
        # Set before the base constructor, which builds from batch_shapes().
        self.video_shape = tuple(int(d) for d in out_shape)
        super().__init__(denoiser, scheduler=scheduler, num_classes=num_classes, **kwargs)
        # The shape of what the denoiser predicts (the base took its input's).
        self.image_shape = self.video_shape
        self.clip_settings = dict(clip_settings or {})
        self.extend_fraction = float(extend_fraction)

    @property
    def frames(self):
        """Frames per clip."""
        return self.video_shape[0]

    def batch_shapes(self):
        if self.num_classes is None:
            return (None, *self.video_shape)
        return {"videos": (None, *self.video_shape), "labels": (None,)}

    def _unpack(self, inputs):
        """A `{"videos", "labels"}` batch (the clips alone for an
        unconditional model) -> videos, labels or None."""
        if isinstance(inputs, dict):
            if "videos" not in inputs:
                raise ValueError(f"batch has keys {sorted(inputs)}; VideoDiffusionModel "
                                 "expects {'videos': ..., 'labels': ...}")
            videos, labels = inputs["videos"], inputs.get("labels")
        elif isinstance(inputs, (tuple, list)):
            raise ValueError("batches are {'videos': ..., 'labels': ...} dicts, not tuples")
        else:
            videos, labels = inputs, None
        if self.num_classes is not None and labels is None:
            raise ValueError(
                "a conditional VideoDiffusionModel needs {'videos', 'labels'} batches")
        return videos, labels

    # --- the known frames --------------------------------------------------

    def training_context(self, rows):
        """Known-prefix lengths `(batch,)` (0: none) and uniforms `(batch,)`
        deciding which of those rows drop their label, for a training batch
        (from the model's `SeedGenerator`)."""
        extend = self.batch_noise(keras.random.uniform, rows)
        length = self.batch_noise(keras.random.randint, rows, minval=1,
                                  maxval=self.frames, dtype="int32")
        known = ops.where(extend < self.extend_fraction, length, ops.zeros_like(length))
        return known, self.batch_noise(keras.random.uniform, rows)

    def validation_context(self, rows):
        """As `training_context`, fixed by each row's index in the (global)
        batch (`kgen.random`, streams apart from `validation_draws`')."""
        index = global_rows(rows)
        pairs = ops.stack([index, ops.zeros_like(index)], axis=-1)
        extend = kgen_random.uniform(pairs, (), stream=3)
        span = self.frames - 1
        length = ops.minimum(ops.cast(kgen_random.uniform(pairs, (), stream=4) * span,
                                      "int32"), span - 1) + 1
        known = ops.where(extend < self.extend_fraction, length, ops.zeros_like(length))
        return known, kgen_random.uniform(pairs, (), stream=5)

    def frame_mask(self, num_known):
        """float32 `(batch, frames, 1, 1, 1)`: 1 on each row's first
        `num_known` frames."""
        frame = ops.arange(self.frames, dtype="int32")[None, :]
        known = ops.cast(ops.reshape(num_known, (-1, 1)), "int32")
        return ops.reshape(ops.cast(frame < known, "float32"), (-1, self.frames, 1, 1, 1))

    def model_input(self, noisy, clean, mask):
        """The denoiser's input `(batch, frames, h, w, 2c + 1)`: the noisy
        clip with its known frames clean, the known frames (zero
        elsewhere), the mask."""
        noisy, clean, mask = (ops.convert_to_tensor(t, "float32")
                              for t in (noisy, clean, mask))
        known = clean * mask
        return ops.concatenate([
            ops.where(mask > 0, clean, noisy), known,
            mask * ops.ones_like(noisy[..., :1]),
        ], axis=-1)

    # --- training ----------------------------------------------------------

    def call(self, inputs, training=False):
        videos, labels = self._unpack(inputs)
        x0 = ops.cast(videos, "float32") * 2.0 - 1.0
        rows = ops.shape(x0)[0]
        if training:
            timesteps, noise = self.training_draws(x0)
            num_known, drop_known = self.training_context(rows)
            denoiser = self.denoiser
        else:
            timesteps, noise = self.validation_draws(x0)
            num_known, drop_known = self.validation_context(rows)
            denoiser = self.sampling_denoiser
        mask = self.frame_mask(num_known)
        noisy = self.q_sample(x0, noise, timesteps)
        denoiser_inputs = [self.model_input(noisy, x0, mask), timesteps]
        if self.num_classes is not None:
            labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
            drop = (num_known > 0) & (drop_known < 0.5)
            if training and self.label_dropout > 0:
                dropout = self.batch_noise(keras.random.uniform, rows)
                drop = drop | (dropout < self.label_dropout)
            labels = ops.where(drop, ops.full_like(labels, self.num_classes), labels)
            denoiser_inputs.append(labels)
        prediction = ops.cast(denoiser(denoiser_inputs, training=training), "float32")
        outputs = {
            "prediction": prediction,
            "target": self.scheduler.training_target(x0, noise, timesteps),
            "loss_mask": 1.0 - mask,
        }
        if self.min_snr_gamma is not None:
            outputs["weight"] = self.loss_weights(timesteps)
        return outputs

    def p_losses(self, outputs):
        """The mean error over each row's unknown frames, then the rows'
        mean (Min-SNR-weighted as `DiffusionModel`)."""
        if "loss_mask" not in outputs:
            return super().p_losses(outputs)
        prediction = outputs["prediction"]
        diff = prediction - ops.cast(outputs["target"], prediction.dtype)
        error = ops.abs(diff) if self.loss_name == "mae" else ops.square(diff)
        keep = ops.cast(outputs["loss_mask"], error.dtype)
        axes = tuple(range(1, len(error.shape)))
        per_frame = float(np.prod(error.shape[2:]))
        per_row = ops.sum(error * keep, axis=axes) / ops.maximum(
            ops.sum(keep, axis=axes) * per_frame, 1.0)
        if "weight" in outputs:
            per_row = per_row * ops.cast(outputs["weight"], per_row.dtype)
        return ops.mean(per_row)

    # --- sampling ----------------------------------------------------------

    def known_frames(self, known, num_known=None):
        """Clean clips in [-1, 1] `(batch, frames, h, w, c)` (zero past the
        given frames) and their mask `(batch, frames, 1, 1, 1)`, from
        `known` `(batch, k, h, w, c)` in [0, 1] (k static, at most
        `frames`) and `num_known` int `(batch,)` (`k` when None)."""
        k = int(known.shape[1])
        known = ops.cast(known, "float32")
        clean = ops.pad(known * 2.0 - 1.0, [[0, 0], [0, self.frames - k], [0, 0], [0, 0],
                                            [0, 0]])
        if num_known is None:
            num_known = ops.cast(ops.zeros_like(known[:, 0, 0, 0, 0]), "int32") + k
        return clean, self.frame_mask(num_known)

    def sample(self, seeds, labels=None, guidance_scale=1.0, num_steps=50,
               scheduler=None, known=None, num_known=None):
        """The sampling loop in `keras.ops`: `generate()` and `extend()`
        compile it, the export traces it. Returns clips in [0, 1].

        Row `r` reads only its own seed pair: `x_T` is
        `kgen.random.normal(seeds, video_shape, stream=0)` and step `i`'s
        noise (stochastic schedulers) comes from stream `i + 1`.

        Args:
            seeds: int32 `(batch, 2)` seed pairs (`kgen.random.seed_pairs`).
            labels: int `(batch,)` for guided sampling of a conditional
                model (`num_classes` = "no label"), or `None`.
            guidance_scale: scalar or float `(batch,)`.
            num_steps: int (or int32 scalar tensor), 1 to
                `num_train_timesteps`.
            scheduler: a scheduler instance or name (default `sampler`).
            known: `None` (whole clips), or float `(batch, k, h, w, c)` in
                [0, 1] with `k` static, at most `frames`: each row's first
                frames, given to the denoiser at every step and returned as
                they are.
            num_known: int `(batch,)`: how many of `known`'s frames each row
                keeps (the rest are ignored); `None`: all `k`.
        """
        scheduler = self.get_scheduler(scheduler)
        x = kgen_random.normal(seeds, self.video_shape, stream=0)
        if self.num_classes is None:
            labels = None
        if known is None:
            clean = ops.zeros_like(x)
            mask = ops.zeros_like(x[:, :, :1, :1, :1])
        else:
            clean, mask = self.known_frames(known, num_known)

        def body(i, carry):
            x, x0_last, t_last = carry
            t = scheduler.timestep(i, num_steps)
            t_prev = scheduler.timestep(i + 1, num_steps)
            output = self.denoise(self.model_input(x, clean, mask), t, labels,
                                  guidance_scale)
            noise = None
            if scheduler.stochastic:
                noise = kgen_random.normal(seeds, self.video_shape, stream=i + 1)
            x, (x0_last, t_last) = scheduler.step(
                output, t, t_prev, x, (x0_last, t_last), noise=noise)
            return x, x0_last, t_last

        x, _, _ = ops.fori_loop(0, num_steps, body, (x, *scheduler.initial_state(x)))
        videos = ops.clip((x + 1.0) / 2.0, 0.0, 1.0)
        if known is None:
            return videos
        # The given frames exactly (not through [-1, 1] and back).
        k = int(known.shape[1])
        given = ops.pad(ops.cast(known, "float32"),
                        [[0, 0], [0, self.frames - k], [0, 0], [0, 0], [0, 0]])
        return ops.where(mask > 0, given, videos)

    def generate(self, n, *, seed=None, labels=None, num_steps=None, scheduler=None,
                 guidance_scale=None):
        """Draw `n` clips; returns numpy `(n, frames, h, w, c)` in [0, 1].

        Row `i` comes from seed `seed + i` alone and equals the exported
        `generate` signature's row. Arguments as `DiffusionModel.generate`.
        """
        return super().generate(n, seed=seed, labels=labels, num_steps=num_steps,
                                scheduler=scheduler, guidance_scale=guidance_scale)

    def check_frames(self, frames):
        """`frames` as float32 numpy `(n, k, h, w, c)` with `1 <= k <
        frames`, finite and in [0, 1]; else a ValueError naming it."""
        array = np.asarray(frames)
        F, h, w, c = self.video_shape
        where = f"frames with shape {array.shape}"
        if array.dtype.kind not in "fiub" or array.dtype.kind == "b":
            raise ValueError(f"{where} ({array.dtype}): expected floats in [0, 1]")
        if array.ndim != 5 or array.shape[2:] != (h, w, c) or array.shape[0] < 1:
            raise ValueError(f"{where}: expected (n, k, {h}, {w}, {c}) with n >= 1")
        if not 1 <= array.shape[1] <= F - 1:
            raise ValueError(f"{where}: k={array.shape[1]} known frames; expected "
                             f"1 to {F - 1} (clips have {F} frames)")
        array = array.astype("float32")
        if not np.isfinite(array).all():
            raise ValueError(f"{where}: holds non-finite values")
        if array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(f"{where}: values in [{array.min():g}, {array.max():g}]; "
                             "expected [0, 1]")
        return array

    def extend(self, frames, *, seed=None, num_steps=None, scheduler=None):
        """Continue clips from their first frames; numpy `(n, frames, h, w,
        c)` in [0, 1] whose first `k` frames are `frames` exactly.

        The rest is sampled with the "no label" class (unguided). Row `i`
        comes from seed `seed + i` (and its own frames) alone and equals the
        exported `extend` signature's row. One compiled loop serves every
        `k`: the frames are padded to `frames - 1` and `k` is an input.

        Args:
            frames: float `(n, k, h, w, c)` in [0, 1], `1 <= k <= frames - 1`.
            seed: int (64-bit); `None` draws one.
            num_steps: sampling steps, 1 to `num_train_timesteps`; `None`:
                `default_num_steps`.
            scheduler: a scheduler name or instance (default `sampler`).
        """
        frames = self.check_frames(frames)
        scheduler = self.get_scheduler(scheduler)
        if num_steps is None:
            num_steps = self.default_num_steps
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
            raise ValueError(f"num_steps={num_steps!r}: must be an int")
        scheduler.check_num_steps(num_steps)
        n, k = frames.shape[:2]
        pairs = kgen_random.seed_pairs(self.row_seeds(n, seed))
        padded = np.zeros((n, self.frames - 1, *self.video_shape[1:]), "float32")
        padded[:, :k] = frames
        key = ("extend", type(scheduler).__name__,
               json.dumps(scheduler.get_config(), sort_keys=True))
        fn = self.compiled_function(
            key, lambda seeds, known, num_known, num_steps: self.sample(
                seeds, None, 1.0, num_steps, scheduler, known=known, num_known=num_known),
            self.sampling_denoiser.weights)
        return ops.convert_to_numpy(fn(pairs, padded, np.full((n,), k, "int32"),
                                       np.asarray(num_steps, "int32")))

    def preview_images(self, videos):
        """Each clip as a horizontal strip of its frames: float `(n, h,
        frames * w, c)` (a TensorBoard image)."""
        from kgen.video import frame_strips

        return frame_strips(np.asarray(ops.convert_to_numpy(videos), "float32"))

    # --- config ------------------------------------------------------------

    def get_config(self):
        return {
            **super().get_config(),
            "clip_settings": dict(self.clip_settings),
            "extend_fraction": self.extend_fraction,
        }
