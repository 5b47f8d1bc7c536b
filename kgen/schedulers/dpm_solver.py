"""DPM-Solver++(2M) (Lu et al., 2022): a second-order multistep solver."""

from keras import ops

from kgen.api import kgen_export
from kgen.schedulers.base import Scheduler
from kgen.schedulers.base import _per_example


@kgen_export("kgen.schedulers.DPMSolverScheduler")
class DPMSolverScheduler(Scheduler):
    """DPM-Solver++ 2M in data (x0) prediction: good samples in ~20 steps.

    Each step is the exponential-integrator update of the diffusion ODE with
    a linear extrapolation of the x0 prediction from the previous step
    (carried in `state`). The first step and the last (which lands on the
    clean sample, where the log-SNR is infinite) are first order, as
    diffusers' `lower_order_final` does. Deterministic.

    Example:

    ```python
    solver = kgen.schedulers.get("dpm_solver").from_config(ddpm.get_config())
    images = model.generate(16, seed=0, num_steps=20, scheduler=solver)
    ```
    """

    name = "dpm_solver"

    def _alpha_sigma(self, timestep, like):
        a = _per_example(self.alpha_bar(timestep), like)
        return ops.sqrt(a), ops.sqrt(ops.maximum(1.0 - a, 0.0))

    def _log_snr(self, alpha, sigma):
        return ops.log(alpha) - ops.log(ops.maximum(sigma, 1e-12))

    def step(self, model_output, timestep, prev_timestep, sample, state,
             noise=None):
        x0, _ = self.predict_x0_and_eps(model_output, timestep, sample)
        x0_last, t_last = state
        alpha_t, sigma_t = self._alpha_sigma(timestep, sample)
        alpha_p, sigma_p = self._alpha_sigma(prev_timestep, sample)
        # exp(-h), h = lambda_prev - lambda_t, written without logs so the
        # final step (sigma_prev = 0) gives exactly x0.
        exp_neg_h = (sigma_p * alpha_t) / (alpha_p * ops.maximum(sigma_t, 1e-12))
        sigma_ratio = sigma_p / ops.maximum(sigma_t, 1e-12)
        first = sigma_ratio * sample + alpha_p * (1.0 - exp_neg_h) * x0

        alpha_l, sigma_l = self._alpha_sigma(ops.maximum(t_last, 0), sample)
        lambda_t = self._log_snr(alpha_t, sigma_t)
        h = self._log_snr(alpha_p, sigma_p) - lambda_t
        h_last = lambda_t - self._log_snr(alpha_l, sigma_l)
        r = h_last / ops.maximum(h, 1e-12)
        d = x0 + (x0 - x0_last) / (2.0 * ops.maximum(r, 1e-12))
        second = sigma_ratio * sample + alpha_p * (1.0 - exp_neg_h) * d

        use_second = ops.logical_and(t_last >= 0, prev_timestep >= 0)
        prev = ops.where(use_second, second, first)
        return prev, (x0, ops.cast(timestep, "int32"))
