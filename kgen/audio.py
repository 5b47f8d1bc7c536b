"""Waveforms <-> normalised log-mel spectrograms, in `keras.ops`.

`LogMel` turns one-second clips into small spectrogram "images" that the
diffusion U-Net learns, and turns generated spectrograms back into
waveforms with Griffin-Lim (Griffin & Lim, 1984) and its fast variant
(Perraudin et al., 2013), all in `keras.ops`: the same code trains on
every backend and runs inside an exported TensorFlow graph
(`keras.ops.stft` / `istft` lower to `tf.signal`'s core ops: RFFT, IRFFT,
framing and overlap-add).

The way back is fixed arithmetic, no trained vocoder: the log-mel image is
un-normalised with the constants in the config, mapped to linear STFT
magnitudes by the mel filterbank's pseudo-inverse (negative values
clipped), and given a phase by `griffin_lim_iters` iterations whose
initial phase comes from each row's seed (`kgen.random`, stream
`PHASE_STREAM`), so the same seed gives the same waveform on every backend
(to float rounding) and in the export.

Example:

```python
codec = LogMel(sample_rate=8000, length=8000, fft_length=256,
               hop_length=128, num_mels=32)
images = codec.encode(audio)                       # (b, 32, 64, 1) in [0, 1]
audio2 = codec.decode(images, seed_pairs)          # (b, 8000) in [-1, 1]
```
"""

import math

import numpy as np
from keras import ops

from kgen import random as kgen_random
from kgen.api import kgen_export

# kgen.random uniform stream of Griffin-Lim's initial phase: far above the
# streams a diffusion loop draws (2 per step), so they never meet.
PHASE_STREAM = 1 << 24


def hz_to_mel(freq):
    """HTK mel scale (as `tf.signal.linear_to_mel_weight_matrix`)."""
    return 1127.0 * np.log1p(np.asarray(freq, "float64") / 700.0)


def mel_filterbank(sample_rate, fft_length, num_mels, min_freq=0.0, max_freq=None):
    """float32 `(fft_length // 2 + 1, num_mels)` triangular mel filters.

    Each filter rises from 0 at its lower mel edge to 1 at its centre and
    falls back to 0 at its upper edge (HTK mel scale, as
    `tf.signal.linear_to_mel_weight_matrix`, computed in numpy once).
    """
    max_freq = sample_rate / 2.0 if max_freq is None else float(max_freq)
    if not 0.0 <= min_freq < max_freq <= sample_rate / 2.0:
        raise ValueError(
            f"min_freq={min_freq}, max_freq={max_freq}: need 0 <= min_freq < "
            f"max_freq <= sample_rate / 2 = {sample_rate / 2}")
    bins = np.linspace(0.0, sample_rate / 2.0, fft_length // 2 + 1)
    mel_bins = hz_to_mel(bins)
    edges = np.linspace(hz_to_mel(min_freq), hz_to_mel(max_freq), num_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (mel_bins[:, None] - lower[None]) / (center - lower)[None]
    falling = (upper[None] - mel_bins[:, None]) / (upper - center)[None]
    return np.maximum(0.0, np.minimum(rising, falling)).astype("float32")


@kgen_export("kgen.audio.LogMel")
class LogMel:
    """Waveform <-> log-mel spectrogram scaled to [0, 1], in `keras.ops`.

    `encode(audio)`: float `(batch, length)` in [-1, 1] -> float32
    `(batch, num_mels, num_frames, 1)` in [0, 1], where a mel band's
    magnitude `m` maps to `(log(max(m, floor)) - log(floor)) /
    (log(ceiling) - log(floor))`, clipped (fixed constants, so a model's
    images mean the same thing at every epoch and in the export). The clip
    is zero-padded to a whole number of hops, `num_frames = 1 +
    ceil(length / hop_length)` (centred frames).

    `decode(images, seeds)`: the inverse map, the mel filterbank's
    pseudo-inverse to linear magnitudes, and `griffin_lim_iters` fast
    Griffin-Lim iterations (momentum `momentum`) from a phase drawn from
    each row's seed pair; returns float32 `(batch, length)` in [-1, 1]
    (divided by its peak when that exceeds 1).

    Args:
        sample_rate: samples per second.
        length: samples per clip.
        fft_length: STFT frame (and FFT) length in samples (Hann window).
        hop_length: samples between frames.
        num_mels: mel bands.
        min_freq: lowest mel edge in Hz.
        max_freq: highest mel edge in Hz (default `sample_rate / 2`).
        floor: mel magnitude mapped to 0 (quieter is clipped).
        ceiling: mel magnitude mapped to 1 (louder is clipped).
        griffin_lim_iters: Griffin-Lim iterations of `decode`.
        momentum: fast Griffin-Lim momentum (0: the original algorithm).

    Example:

    ```python
    codec = LogMel(8000, 8000, fft_length=256, hop_length=128, num_mels=32)
    codec.image_shape            # (32, 64, 1)
    ```
    """

    def __init__(self, sample_rate=8000, length=8000, fft_length=256, hop_length=128,
                 num_mels=32, min_freq=0.0, max_freq=None, floor=1e-3,
                 ceiling=100.0, griffin_lim_iters=32, momentum=0.99):
        for name, value in [("sample_rate", sample_rate), ("length", length),
                            ("fft_length", fft_length), ("hop_length", hop_length),
                            ("num_mels", num_mels)]:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                    or value < 1:
                raise ValueError(f"{name}={value!r}: must be an int >= 1")
        if hop_length > fft_length:
            raise ValueError(
                f"hop_length={hop_length}: must be at most fft_length={fft_length} "
                "(frames must overlap or touch for the inverse)")
        if not 0.0 < floor < ceiling:
            raise ValueError(f"floor={floor}, ceiling={ceiling}: need 0 < floor < ceiling")
        if isinstance(griffin_lim_iters, bool) or not isinstance(griffin_lim_iters, int) \
                or griffin_lim_iters < 0:
            raise ValueError(f"griffin_lim_iters={griffin_lim_iters!r}: must be an int >= 0")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum}: must be in [0, 1)")
        self.sample_rate = int(sample_rate)
        self.length = int(length)
        self.fft_length = int(fft_length)
        self.hop_length = int(hop_length)
        self.num_mels = int(num_mels)
        self.min_freq = float(min_freq)
        self.max_freq = None if max_freq is None else float(max_freq)
        self.floor = float(floor)
        self.ceiling = float(ceiling)
        self.griffin_lim_iters = int(griffin_lim_iters)
        self.momentum = float(momentum)
        self.filterbank = mel_filterbank(self.sample_rate, self.fft_length,
                                         self.num_mels, self.min_freq, self.max_freq)
        self.inverse_filterbank = np.linalg.pinv(self.filterbank).astype("float32")
        # Zero-padded to whole hops: centred frames then cover the clip evenly.
        self.padded_length = -(-self.length // self.hop_length) * self.hop_length
        self.num_frames = 1 + self.padded_length // self.hop_length

    @property
    def image_shape(self):
        """`(num_mels, num_frames, 1)`: the spectrogram image of one clip."""
        return (self.num_mels, self.num_frames, 1)

    # --- waveform -> spectrogram ------------------------------------------

    def _stft(self, audio):
        real, imag = ops.stft(audio, self.fft_length, self.hop_length, self.fft_length,
                              window="hann", center=True)
        return real, imag

    def _istft(self, real, imag):
        audio = ops.istft((real, imag), self.fft_length, self.hop_length,
                          self.fft_length, length=self.padded_length,
                          window="hann", center=True)
        return audio

    def magnitude(self, audio):
        """float32 `(batch, num_frames, fft_length // 2 + 1)` STFT magnitudes."""
        audio = ops.cast(audio, "float32")
        audio = ops.pad(audio, [(0, 0), (0, self.padded_length - self.length)])
        real, imag = self._stft(audio)
        return ops.sqrt(ops.square(real) + ops.square(imag))

    def encode(self, audio):
        """float `(batch, length)` waveforms -> `(batch, num_mels, num_frames, 1)`
        log-mel images in [0, 1]."""
        mel = ops.matmul(self.magnitude(audio), self.filterbank)  # (b, frames, mels)
        low, high = math.log(self.floor), math.log(self.ceiling)
        scaled = (ops.log(ops.maximum(mel, self.floor)) - low) / (high - low)
        scaled = ops.clip(scaled, 0.0, 1.0)
        return ops.expand_dims(ops.transpose(scaled, (0, 2, 1)), -1)

    # --- spectrogram -> waveform ------------------------------------------

    def mel_to_magnitude(self, images):
        """`(batch, num_mels, num_frames, 1)` images in [0, 1] -> linear
        magnitudes `(batch, num_frames, bins)` (pseudo-inverse, >= 0)."""
        low, high = math.log(self.floor), math.log(self.ceiling)
        scaled = ops.transpose(ops.squeeze(ops.cast(images, "float32"), -1), (0, 2, 1))
        mel = ops.exp(ops.clip(scaled, 0.0, 1.0) * (high - low) + low)
        # The floor is "silence": map it to zero so quiet frames stay quiet.
        mel = ops.maximum(mel - self.floor, 0.0)
        return ops.maximum(ops.matmul(mel, self.inverse_filterbank), 0.0)

    def griffin_lim(self, magnitude, seeds, iterations=None):
        """Waveforms `(batch, length)` whose STFT magnitude approaches
        `magnitude` `(batch, num_frames, bins)`.

        The initial phase is uniform in [0, 2 pi) from each row's seed pair
        (`seeds`, int32 `(batch, 2)`), stream `PHASE_STREAM`; the loop is
        one `keras.ops.fori_loop`, so it stays in the graph.
        """
        iterations = self.griffin_lim_iters if iterations is None else int(iterations)
        bins = self.fft_length // 2 + 1
        phase = (2.0 * math.pi) * kgen_random.uniform(
            seeds, (self.num_frames, bins), stream=PHASE_STREAM)
        angle_re, angle_im = ops.cos(phase), ops.sin(phase)
        prev_re, prev_im = ops.zeros_like(magnitude), ops.zeros_like(magnitude)
        beta = self.momentum / (1.0 + self.momentum)

        def body(i, carry):
            angle_re, angle_im, prev_re, prev_im = carry
            audio = self._istft(magnitude * angle_re, magnitude * angle_im)
            rebuilt_re, rebuilt_im = self._stft(audio)
            re = rebuilt_re - beta * prev_re
            im = rebuilt_im - beta * prev_im
            norm = ops.sqrt(ops.square(re) + ops.square(im)) + 1e-8
            return re / norm, im / norm, rebuilt_re, rebuilt_im

        if iterations > 0:
            angle_re, angle_im, _, _ = ops.fori_loop(
                0, iterations, body, (angle_re, angle_im, prev_re, prev_im))
        audio = self._istft(magnitude * angle_re, magnitude * angle_im)
        return audio[:, : self.length]

    def decode(self, images, seeds, iterations=None):
        """Images `(batch, num_mels, num_frames, 1)` in [0, 1] -> float32
        waveforms `(batch, length)` in [-1, 1] (rows louder than full scale
        are divided by their peak; quieter rows keep their level)."""
        audio = self.griffin_lim(self.mel_to_magnitude(images), seeds, iterations)
        peak = ops.max(ops.abs(audio), axis=-1, keepdims=True)
        return ops.clip(audio / ops.maximum(peak, 1.0), -1.0, 1.0)

    # --- config -----------------------------------------------------------

    def get_config(self):
        return {
            "sample_rate": self.sample_rate, "length": self.length,
            "fft_length": self.fft_length, "hop_length": self.hop_length,
            "num_mels": self.num_mels, "min_freq": self.min_freq,
            "max_freq": self.max_freq, "floor": self.floor, "ceiling": self.ceiling,
            "griffin_lim_iters": self.griffin_lim_iters, "momentum": self.momentum,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
