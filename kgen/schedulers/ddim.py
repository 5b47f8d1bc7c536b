"""DDIM sampling (Song et al., 2021), deterministic at `eta=0`."""

from keras import ops

from kgen.api import kgen_export
from kgen.schedulers.base import Scheduler
from kgen.schedulers.base import _per_example


@kgen_export("kgen.schedulers.DDIMScheduler")
class DDIMScheduler(Scheduler):
    """Denoising diffusion implicit models: few steps, `eta` sets the noise.

    `eta=0` is the deterministic ODE-like sampler; `eta=1` matches DDPM's
    posterior variance.

    Args:
        eta: weight of the per-step noise, in [0, 1].
        *args, **kwargs: the shared `Scheduler` config keys.

    Example:

    ```python
    ddim = DDIMScheduler.from_config(ddpm.get_config())  # same schedule
    images = model.generate(16, seed=0, num_steps=50, scheduler=ddim)
    ```
    """

    name = "ddim"

    def __init__(self, *args, eta=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta={eta}: must be in [0, 1]")
        self.eta = float(eta)

    @property
    def stochastic(self):
        return self.eta > 0

    def step(self, model_output, timestep, prev_timestep, sample, state,
             noise=None):
        x0, eps = self.predict_x0_and_eps(model_output, timestep, sample)
        a_t = _per_example(self.alpha_bar(timestep), sample)
        a_prev = _per_example(self.alpha_bar(prev_timestep), sample)
        sigma = self.eta * ops.sqrt(
            (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
        )
        direction = ops.sqrt(ops.maximum(1.0 - a_prev - sigma**2, 0.0)) * eps
        prev = ops.sqrt(a_prev) * x0 + direction
        if self.stochastic and noise is not None:
            prev = prev + sigma * noise
        return prev, (x0, ops.cast(timestep, "int32"))

    def get_config(self):
        return {**super().get_config(), "eta": self.eta}
