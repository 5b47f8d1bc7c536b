"""What every diffusion scheduler shares: the noise schedule and its config.

Schedulers are stateless: every method is a pure function of its tensor
arguments written in `keras.ops`, so the same code runs eagerly, under
`jax.jit`, under `tf.function` (the exported SavedModel) and on torch. The
schedule itself (`alphas_cumprod`) is a numpy constant fixed at construction.

Timesteps follow diffusers' "trailing" spacing: with `num_steps` steps, step
`i` (0-based) denoises timestep `(num_steps - i) * T // num_steps - 1`, from
`T - 1` down; the timestep after the last step is `-1`, where
`alpha_bar = 1` (the clean sample). The spacing is integer arithmetic on the
step index, so `num_steps` may be a traced tensor (one exported signature
serves every step count).

A multistep solver needs the previous step's prediction: every scheduler's
`step()` takes and returns the same `state` tuple `(x0_last, t_last)`
(`initial_state()` gives the first one), so sampling loops treat schedulers
interchangeably.
"""

import inspect
import math

import numpy as np
from keras import ops

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_PREDICTION_ALIASES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def normalize_prediction_type(prediction_type):
    """`"v"` -> `"v_prediction"`, `"eps"` -> `"epsilon"`, `"x0"` -> `"sample"`."""
    name = _PREDICTION_ALIASES.get(prediction_type, prediction_type)
    if name not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type={prediction_type!r}: expected one of "
            f"{PREDICTION_TYPES} (or 'eps', 'v', 'x0')"
        )
    return name


def make_betas(num_train_timesteps, beta_schedule, beta_start, beta_end):
    """Per-timestep betas (float64 numpy) of a named schedule."""
    T = int(num_train_timesteps)
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, T, dtype="float64")
    if beta_schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, T, dtype="float64") ** 2
    if beta_schedule == "cosine":
        # Nichol & Dhariwal (2021), diffusers' "squaredcos_cap_v2".
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([
            min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999)
            for i in range(T)
        ], dtype="float64")
    raise ValueError(
        f"beta_schedule={beta_schedule!r}: expected one of {BETA_SCHEDULES}"
    )


def _per_example(values, like):
    """Reshape `[batch]` (or scalar) coefficients to broadcast over `like`."""
    values = ops.cast(values, like.dtype)
    if len(ops.shape(values)) == 0:
        return values
    return ops.reshape(values, (-1,) + (1,) * (len(like.shape) - 1))


class Scheduler:
    """Base of the stateless schedulers; holds the shared config keys.

    Args:
        num_train_timesteps: number of diffusion steps T of training.
        beta_schedule: `"linear"`, `"scaled_linear"` or `"cosine"`.
        beta_start: first beta of the linear schedules.
        beta_end: last beta of the linear schedules.
        prediction_type: what the denoiser predicts: `"epsilon"` (the
            noise), `"v_prediction"` (`alpha * eps - sigma * x0`) or
            `"sample"` (x0). `"eps"`, `"v"` and `"x0"` are accepted.
        clip_sample: clip predicted clean samples to
            `[-clip_sample_range, clip_sample_range]` while sampling.
        clip_sample_range: the clipping bound.
    """

    #: `step()` uses its `noise` argument (sampling draws fresh noise per step).
    stochastic = False
    #: short name for `kgen.schedulers.get()`.
    name = None

    def __init__(self, num_train_timesteps=1000, beta_schedule="linear",
                 beta_start=1e-4, beta_end=0.02, prediction_type="epsilon",
                 clip_sample=True, clip_sample_range=1.0):
        if int(num_train_timesteps) < 2:
            raise ValueError(
                f"num_train_timesteps={num_train_timesteps}: must be at least 2"
            )
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_schedule = beta_schedule
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.prediction_type = normalize_prediction_type(prediction_type)
        self.clip_sample = bool(clip_sample)
        self.clip_sample_range = float(clip_sample_range)
        betas = make_betas(self.num_train_timesteps, beta_schedule,
                           self.beta_start, self.beta_end)
        self.betas = betas.astype("float32")
        self.alphas_cumprod = np.cumprod(1.0 - betas).astype("float32")

    # --- the schedule ------------------------------------------------------

    def alpha_bar(self, timesteps):
        """`alpha_bar[t]`, with `alpha_bar[-1] = 1` (the clean sample)."""
        timesteps = ops.cast(timesteps, "int32")
        table = ops.convert_to_tensor(self.alphas_cumprod, "float32")
        values = ops.take(table, ops.maximum(timesteps, 0), axis=0)
        return ops.where(timesteps >= 0, values, ops.ones_like(values))

    def timestep(self, index, num_steps):
        """The timestep that step `index` of `num_steps` denoises (int32).

        `index == num_steps` gives -1, the clean end of the chain.
        """
        index = ops.cast(index, "int32")
        num_steps = ops.cast(num_steps, "int32")
        T = self.num_train_timesteps
        return ops.floor_divide((num_steps - index) * T, num_steps) - 1

    def timesteps(self, num_steps):
        """All timesteps of a `num_steps` sampling run, descending (int32)."""
        self.check_num_steps(num_steps)
        return self.timestep(ops.arange(int(num_steps), dtype="int32"), num_steps)

    def check_num_steps(self, num_steps):
        if not 1 <= int(num_steps) <= self.num_train_timesteps:
            raise ValueError(
                f"num_steps={num_steps}: must be between 1 and "
                f"num_train_timesteps={self.num_train_timesteps}"
            )

    # --- training ----------------------------------------------------------

    def add_noise(self, original_samples, noise, timesteps):
        """`q_sample`: `sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * noise`."""
        a = _per_example(self.alpha_bar(timesteps), original_samples)
        return ops.sqrt(a) * original_samples + ops.sqrt(1.0 - a) * noise

    def get_velocity(self, sample, noise, timesteps):
        """The v target: `sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * x0`."""
        a = _per_example(self.alpha_bar(timesteps), sample)
        return ops.sqrt(a) * noise - ops.sqrt(1.0 - a) * sample

    def training_target(self, sample, noise, timesteps):
        """What the denoiser should output for `prediction_type`."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.get_velocity(sample, noise, timesteps)
        return sample

    # --- sampling ----------------------------------------------------------

    def predict_x0_and_eps(self, model_output, timestep, sample):
        """Model output -> `(x0, eps)`; x0 clipped if `clip_sample`, eps made
        consistent with the clipped x0."""
        a = _per_example(self.alpha_bar(timestep), sample)
        alpha, sigma = ops.sqrt(a), ops.sqrt(1.0 - a)
        if self.prediction_type == "epsilon":
            x0 = (sample - sigma * model_output) / alpha
        elif self.prediction_type == "v_prediction":
            x0 = alpha * sample - sigma * model_output
        else:
            x0 = model_output
        if self.clip_sample:
            r = self.clip_sample_range
            x0 = ops.clip(x0, -r, r)
        eps = (sample - alpha * x0) / ops.maximum(sigma, 1e-8)
        return x0, eps

    def initial_state(self, sample):
        """The `(x0_last, t_last)` state before the first step."""
        return (ops.zeros_like(sample), ops.convert_to_tensor(-1, "int32"))

    def step(self, model_output, timestep, prev_timestep, sample, state,
             noise=None):
        """One reverse step from `timestep` to `prev_timestep`.

        Args:
            model_output: the denoiser's output at `(sample, timestep)`.
            timestep: int scalar, the current timestep.
            prev_timestep: int scalar, the next (smaller) timestep; -1 at
                the end of the chain.
            sample: the current noisy sample `x_t`.
            state: `(x0_last, t_last)` from `initial_state()` or the
                previous `step()`.
            noise: standard normal noise shaped like `sample` (used by
                stochastic schedulers; others ignore it).

        Returns:
            `(prev_sample, state)`.
        """
        raise NotImplementedError

    # --- config ------------------------------------------------------------

    def get_config(self):
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "prediction_type": self.prediction_type,
            "clip_sample": self.clip_sample,
            "clip_sample_range": self.clip_sample_range,
        }

    @classmethod
    def from_config(cls, config):
        """Build from any scheduler's config: keys this class does not take
        (another scheduler's own, e.g. DDIM's `eta`) are ignored."""
        names = set()
        for klass in cls.__mro__:  # follow **kwargs up to Scheduler
            if "__init__" not in vars(klass):
                continue
            params = inspect.signature(klass.__init__).parameters.values()
            names.update(p.name for p in params if p.kind is not p.VAR_KEYWORD)
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return cls(**{k: v for k, v in config.items() if k in names})

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
