"""Class-conditional audio: diffusion over log-mel spectrograms, back to a
waveform with Griffin-Lim."""

import dataclasses

import numpy as np

from kgen.api import kgen_export
from kgen.family import declare_family
from kgen.family import family_of
from kgen.audio import LogMel
from kgen.models.diffusion import DiffusionModel


# The image model's declaration (its options, uniform inputs and served
# defaults), with audio out and the audio export's signatures.
@declare_family(dataclasses.replace(
    family_of(DiffusionModel),
    name="audio diffusion",
    output_kind="audio",
    signatures="kgen.export.audio:audio_diffusion_signatures",
    evaluation="audio",
))
@kgen_export("kgen.models.AudioDiffusionModel")
class AudioDiffusionModel(DiffusionModel):
    """A `DiffusionModel` whose samples are one-second clips.

    Training batches are `{"audio": float (batch, length) in [-1, 1],
    "labels": int (batch,)}` (the audio alone for an unconditional model),
    as `kgen.data.load_audio_data` gives them. `call()` turns the audio
    into normalised log-mel images with `spectrogram` (`kgen.audio.LogMel`,
    in `keras.ops`, so every backend trains on the same features) and runs
    the diffusion model's own `q_sample` / `p_losses` on them: the U-Net,
    schedulers, EMA, classifier-free guidance and validation loss are the
    image model's.

    `sample()` runs the image model's sampling loop and then
    `spectrogram.decode` (mel pseudo-inverse and Griffin-Lim, phase drawn
    from each row's seed), so `generate()` and the exported graph both
    return float32 waveforms `(rows, length)` in [-1, 1], at
    `spectrogram.sample_rate`.

    Args:
        denoiser: a model mapping `[images, timesteps(, labels)]` to a
            tensor shaped like images, whose images are
            `spectrogram.image_shape` (e.g. `kgen.networks.unet`).
        spectrogram: a `kgen.audio.LogMel` (default: 8 kHz one-second
            clips, 32 mel bands x 64 frames).
        scheduler, num_classes, label_dropout, loss, ema_decay, sampler,
            seed: as `DiffusionModel`.

    Example:

    ```python
    from kgen import audio, models, networks
    codec = audio.LogMel(8000, 8000, num_mels=32)
    model = models.AudioDiffusionModel(
        networks.unet(codec.image_shape, (16, 32, 64), num_classes=10),
        codec, "ddpm", num_classes=10, sampler="dpm_solver")
    model.compile(optimizer="adam")
    model.fit(fsdd.train, epochs=10)
    clips = model.generate(10, seed=0, labels=list(range(10)), num_steps=25,
                           guidance_scale=2.0)      # (10, 8000) in [-1, 1]
    ```
    """

    nested_config_keys = ("denoiser", "scheduler", "spectrogram")

    def __init__(self, denoiser, spectrogram=None, scheduler="ddpm", num_classes=None,
                 **kwargs):
        if spectrogram is None:
            spectrogram = LogMel()
        if not isinstance(spectrogram, LogMel):
            raise ValueError(
                f"spectrogram={spectrogram!r}: expected a kgen.audio.LogMel")
        image_shape = tuple(denoiser.inputs[0].shape[1:])
        if image_shape != spectrogram.image_shape:
            raise ValueError(
                f"denoiser takes images {image_shape}; the spectrogram makes "
                f"{spectrogram.image_shape} (num_mels, num_frames, 1)")
        # Set before the base constructor, which builds from batch_shapes().
        self.spectrogram = spectrogram
        super().__init__(denoiser, scheduler=scheduler, num_classes=num_classes,
                         **kwargs)

    @property
    def sample_rate(self):
        return self.spectrogram.sample_rate

    @property
    def length(self):
        """Samples per generated clip."""
        return self.spectrogram.length

    def batch_shapes(self):
        if self.num_classes is None:
            return (None, self.length)
        return {"audio": (None, self.length), "labels": (None,)}

    def _audio_batch(self, inputs):
        if isinstance(inputs, dict):
            if "audio" not in inputs:
                raise ValueError(
                    f"batch has keys {sorted(inputs)}; AudioDiffusionModel expects "
                    "{'audio': ..., 'labels': ...}")
            return inputs["audio"], inputs.get("labels")
        if isinstance(inputs, (tuple, list)):
            raise ValueError("batches are {'audio': ..., 'labels': ...} dicts, not tuples")
        return inputs, None

    def call(self, inputs, training=False):
        audio, labels = self._audio_batch(inputs)
        images = self.spectrogram.encode(audio)
        batch = {"images": images}
        if labels is not None:
            batch["labels"] = labels
        return super().call(batch, training=training)

    def sample(self, seeds, labels=None, guidance_scale=1.0, num_steps=50,
               scheduler=None):
        """The diffusion loop over spectrograms, then Griffin-Lim: float32
        waveforms `(batch, length)` in [-1, 1]. Row `r` reads only its own
        seed pair (the loop's noise and Griffin-Lim's initial phase)."""
        images = super().sample(seeds, labels, guidance_scale, num_steps, scheduler)
        return self.spectrogram.decode(images, seeds)

    def generate(self, n, *, seed=None, labels=None, num_steps=50, scheduler=None,
                 guidance_scale=None):
        """Draw `n` clips; numpy float32 `(n, length)` in [-1, 1] at
        `sample_rate`.

        Row `i` comes from seed `seed + i` alone and equals the exported
        `generate` signature's row for that seed, label, `num_steps` and
        `guidance_scale`. Arguments as `DiffusionModel.generate` (`labels`:
        the digit, or word class, each row says).
        """
        clips = super().generate(n, seed=seed, labels=labels, num_steps=num_steps,
                                 scheduler=scheduler, guidance_scale=guidance_scale)
        return np.asarray(clips, "float32")
