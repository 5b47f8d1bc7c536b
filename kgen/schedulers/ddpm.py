"""DDPM ancestral sampling (Ho et al., 2020)."""

from keras import ops

from kgen.api import kgen_export
from kgen.schedulers.base import Scheduler
from kgen.schedulers.base import _per_example


@kgen_export("kgen.schedulers.DDPMScheduler")
class DDPMScheduler(Scheduler):
    """Ancestral sampling: the posterior `q(x_{t'} | x_t, x0)` with fresh noise.

    With fewer steps than `num_train_timesteps` the posterior is taken
    between the spaced timesteps (as diffusers does), with the "fixed small"
    variance.

    Example:

    ```python
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="cosine")
    noisy = scheduler.add_noise(images, noise, timesteps)
    x, state = scheduler.step(eps, t, t_prev, x, state, noise=fresh_noise)
    ```
    """

    stochastic = True
    name = "ddpm"

    def step(self, model_output, timestep, prev_timestep, sample, state,
             noise=None):
        x0, _ = self.predict_x0_and_eps(model_output, timestep, sample)
        a_t = _per_example(self.alpha_bar(timestep), sample)
        a_prev = _per_example(self.alpha_bar(prev_timestep), sample)
        current_alpha = a_t / a_prev
        current_beta = 1.0 - current_alpha
        coef_x0 = ops.sqrt(a_prev) * current_beta / (1.0 - a_t)
        coef_xt = ops.sqrt(current_alpha) * (1.0 - a_prev) / (1.0 - a_t)
        mean = coef_x0 * x0 + coef_xt * sample
        if noise is None:
            return mean, (x0, ops.cast(timestep, "int32"))
        variance = ops.maximum((1.0 - a_prev) / (1.0 - a_t) * current_beta, 1e-20)
        last = ops.cast(prev_timestep < 0, sample.dtype)
        prev = mean + (1.0 - last) * ops.sqrt(variance) * noise
        return prev, (x0, ops.cast(timestep, "int32"))
