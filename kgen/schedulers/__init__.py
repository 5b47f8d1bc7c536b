"""Diffusion schedulers: one algorithm per file, stateless, `keras.ops` only.

Every scheduler takes the same config keys (`num_train_timesteps`,
`beta_schedule`, `beta_start`, `beta_end`, `prediction_type`,
`clip_sample`, `clip_sample_range`), so one swaps for another:

```python
ddim = kgen.schedulers.get("ddim").from_config(ddpm.get_config())
```
"""

from kgen.schedulers.base import Scheduler
from kgen.schedulers.ddim import DDIMScheduler
from kgen.schedulers.ddpm import DDPMScheduler
from kgen.schedulers.dpm_solver import DPMSolverScheduler

SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm_solver": DPMSolverScheduler,
}
_ALIASES = {"dpm": "dpm_solver", "dpmsolver": "dpm_solver",
            "dpm_solver++": "dpm_solver", "dpmpp_2m": "dpm_solver"}


def get(identifier):
    """A scheduler class by name (`"ddpm"`, `"ddim"`, `"dpm_solver"`), or the
    class of a scheduler instance, or a class unchanged."""
    if isinstance(identifier, Scheduler):
        return type(identifier)
    if isinstance(identifier, type) and issubclass(identifier, Scheduler):
        return identifier
    key = str(identifier).lower()
    key = _ALIASES.get(key, key)
    if key not in SCHEDULERS:
        raise ValueError(
            f"unknown scheduler {identifier!r}; expected one of "
            f"{', '.join(SCHEDULERS)}"
        )
    return SCHEDULERS[key]
