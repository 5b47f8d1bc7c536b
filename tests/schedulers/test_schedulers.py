"""The suite every scheduler passes (diffusers' common scheduler tests)."""

import keras
import numpy as np
import pytest
from keras import ops

from kgen import schedulers
from kgen.schedulers import DDIMScheduler
from kgen.schedulers import DDPMScheduler
from kgen.schedulers import DPMSolverScheduler

SCHEDULERS = {
    "ddpm": lambda **kw: DDPMScheduler(**kw),
    "ddim": lambda **kw: DDIMScheduler(**kw),
    "ddim_eta1": lambda **kw: DDIMScheduler(eta=1.0, **kw),
    "dpm_solver": lambda **kw: DPMSolverScheduler(**kw),
}
PREDICTIONS = ("epsilon", "v_prediction", "sample")


def np_(x):
    return ops.convert_to_numpy(x)


@pytest.fixture(params=sorted(SCHEDULERS))
def make(request):
    return SCHEDULERS[request.param]


@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
def test_schedule_is_decreasing_in_0_1(make, beta_schedule):
    s = make(num_train_timesteps=1000, beta_schedule=beta_schedule)
    a = np_(s.alpha_bar(ops.arange(1000)))
    assert a.shape == (1000,) and np.all(np.diff(a) < 0)
    assert 0.99 < a[0] <= 1 and 0 <= a[-1] < 0.01
    assert float(np_(s.alpha_bar(-1))) == 1.0


def test_add_noise_statistics(make):
    s = make(num_train_timesteps=1000)
    rng = np.random.default_rng(0)
    x0 = np.full((4000, 8), 0.5, "float32")
    noise = rng.standard_normal((4000, 8)).astype("float32")
    for t in (0, 500, 999):
        a = float(s.alphas_cumprod[t])
        noisy = np_(s.add_noise(x0, noise, np.full((4000,), t, "int32")))
        np.testing.assert_allclose(noisy.mean(), np.sqrt(a) * 0.5, atol=0.03)
        np.testing.assert_allclose(noisy.std(), np.sqrt(1 - a), rtol=0.03, atol=1e-3)
    # timestep 999 is (almost) pure noise; per-example timesteps broadcast
    mixed = np_(s.add_noise(x0[:2], noise[:2], np.array([0, 999], "int32")))
    assert abs(mixed[0] - 0.5).max() < 0.1 and abs(mixed[1] - noise[1]).max() < 0.05


def test_timesteps_descend_from_the_last(make):
    s = make(num_train_timesteps=1000)
    for n in (1, 10, 50, 1000):
        ts = np_(s.timesteps(n))
        assert ts.shape == (n,) and ts[0] == 999 and np.all(np.diff(ts) < 0)
        assert ts[-1] >= 0 and int(np_(s.timestep(n, n))) == -1
    np.testing.assert_array_equal(np_(s.timesteps(1000)), np.arange(999, -1, -1))
    for bad in (0, -3, 1001):
        with pytest.raises(ValueError, match="num_steps"):
            s.timesteps(bad)


def test_step_shapes_and_dtype(make):
    s = make(num_train_timesteps=100)
    x = np.random.default_rng(1).standard_normal((3, 4, 4, 2)).astype("float32")
    state = s.initial_state(ops.convert_to_tensor(x))
    out, state = s.step(ops.convert_to_tensor(0.1 * x), 99, 89, ops.convert_to_tensor(x),
                        state, noise=ops.convert_to_tensor(x))
    assert tuple(out.shape) == x.shape and ops.dtype(out) == "float32"
    assert tuple(state[0].shape) == x.shape and int(np_(state[1])) == 99
    assert np.all(np.isfinite(np_(out)))


def _sample(s, x0, num_steps, seed, prediction_type):
    """Run the reverse chain with a perfect denoiser of the clean `x0`."""
    rng = np.random.default_rng(seed)
    x = ops.convert_to_tensor(rng.standard_normal(x0.shape).astype("float32"))
    state = s.initial_state(x)
    for i in range(num_steps):
        t, t_prev = s.timestep(i, num_steps), s.timestep(i + 1, num_steps)
        a = float(np_(s.alpha_bar(t)))
        eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
        output = {"epsilon": eps, "sample": ops.convert_to_tensor(x0),
                  "v_prediction": np.sqrt(a) * eps - np.sqrt(1 - a) * x0}[prediction_type]
        noise = ops.convert_to_tensor(rng.standard_normal(x0.shape).astype("float32"))
        x, state = s.step(output, t, t_prev, x, state, noise=noise)
    return np_(x)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_perfect_denoiser_recovers_the_clean_sample(make, prediction_type):
    # float32: x0 = (x - sigma * eps) / alpha loses digits where alpha is
    # tiny (the cosine schedule's last timestep), hence the tolerance.
    x0 = np.random.default_rng(2).uniform(-1, 1, (2, 4, 4, 1)).astype("float32")
    for beta_schedule in ("linear", "cosine"):
        s = make(num_train_timesteps=1000, beta_schedule=beta_schedule,
                 prediction_type=prediction_type)
        for num_steps in (1, 7, 20):
            np.testing.assert_allclose(
                _sample(s, x0, num_steps, 3, prediction_type), x0, atol=1e-2)


def test_same_noise_same_result(make):
    s = make(num_train_timesteps=1000)
    x0 = np.zeros((2, 4, 4, 1), "float32")
    a = _sample(s, x0 + 0.3, 5, 4, "epsilon")
    b = _sample(s, x0 + 0.3, 5, 4, "epsilon")
    np.testing.assert_array_equal(a, b)


def test_config_round_trip_and_swap(make):
    s = make(num_train_timesteps=50, beta_schedule="cosine", prediction_type="v",
             clip_sample=False)
    config = s.get_config()
    assert config["prediction_type"] == "v_prediction"
    clone = type(s).from_config(config)
    assert clone.get_config() == config
    for name in ("ddpm", "ddim", "dpm_solver"):
        other = schedulers.get(name).from_config(config)
        np.testing.assert_array_equal(other.alphas_cumprod, s.alphas_cumprod)
        assert other.prediction_type == "v_prediction"
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(s))
    assert type(restored) is type(s) and restored.get_config() == config


def test_traces_in_the_backend_compiler(make):
    """`step` with tensor timesteps inside the backend's loop (jit/tf.function)."""
    from kgen.inference import compile_inference

    s = make(num_train_timesteps=100)
    x0 = np.full((2, 4, 4, 1), 0.25, "float32")

    def run(x, num_steps):
        state = s.initial_state(x)
        clean = ops.convert_to_tensor(x0)

        def body(i, carry):
            x, x0_last, t_last = carry
            t, t_prev = s.timestep(i, num_steps), s.timestep(i + 1, num_steps)
            a = s.alpha_bar(t)
            eps = (x - ops.sqrt(a) * clean) / ops.sqrt(1.0 - a)
            out = {"epsilon": eps, "v_prediction": ops.sqrt(a) * eps - ops.sqrt(1 - a) * clean,
                   "sample": clean + 0 * x}[s.prediction_type]
            x, (x0_last, t_last) = s.step(out, t, t_prev, x, (x0_last, t_last),
                                          noise=ops.zeros_like(x))
            return x, x0_last, t_last

        return ops.fori_loop(0, num_steps, body, (x, *state))[0]

    fn = compile_inference(run, [])
    x = np.random.default_rng(5).standard_normal(x0.shape).astype("float32")
    for n in (3, 10):
        np.testing.assert_allclose(np_(fn(x, np.asarray(n, "int32"))), x0, atol=2e-3)


@pytest.mark.backend_agnostic
def test_get_and_errors():
    assert schedulers.get("ddim") is DDIMScheduler
    assert schedulers.get("dpm") is DPMSolverScheduler
    assert schedulers.get(DDPMScheduler()) is DDPMScheduler
    with pytest.raises(ValueError, match="unknown scheduler"):
        schedulers.get("euler")
    with pytest.raises(ValueError, match="beta_schedule"):
        DDPMScheduler(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="prediction_type"):
        DDPMScheduler(prediction_type="score")
    with pytest.raises(ValueError, match="eta"):
        DDIMScheduler(eta=2.0)
    assert DDIMScheduler(eta=0.5).stochastic and not DDIMScheduler().stochastic


# --- single steps against the closed form -----------------------------------
# Each reference below is written in float64 NumPy from the papers' formulas
# and `alphas_cumprod`, independently of the schedulers' code.


def _x0_eps(prediction_type, output, x, a):
    """The (x0, eps) a model output implies at alpha_bar `a` (no clipping)."""
    alpha, sigma = np.sqrt(a), np.sqrt(1 - a)
    if prediction_type == "epsilon":
        return (x - sigma * output) / alpha, output
    if prediction_type == "v_prediction":  # v = alpha * eps - sigma * x0
        return alpha * x - sigma * output, sigma * x + alpha * output
    return output, (x - alpha * output) / sigma


def _step_case(s, index=3, num_steps=10, seed=0):
    """A mid-chain step: (t, t_prev, abar_t, abar_prev, x_t, output, noise)."""
    rng = np.random.default_rng(seed)
    t = int(np_(s.timestep(index, num_steps)))
    t_prev = int(np_(s.timestep(index + 1, num_steps)))
    a = float(np.cumprod(1 - make_betas_of(s))[t])
    a_prev = float(np.cumprod(1 - make_betas_of(s))[t_prev]) if t_prev >= 0 else 1.0
    x, output, noise = (rng.standard_normal((2, 4, 4, 1)) for _ in range(3))
    return t, t_prev, a, a_prev, x, 0.5 * output, noise


def make_betas_of(s):
    from kgen.schedulers.base import make_betas

    return make_betas(s.num_train_timesteps, s.beta_schedule, s.beta_start, s.beta_end)


def _run_step(s, output, t, t_prev, x, state=None, noise=None):
    x32 = ops.convert_to_tensor(x.astype("float32"))
    state = state if state is not None else s.initial_state(x32)
    prev, state = s.step(ops.convert_to_tensor(output.astype("float32")), t, t_prev, x32,
                         state, noise=None if noise is None
                         else ops.convert_to_tensor(noise.astype("float32")))
    return np_(prev).astype("float64"), state


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddim_eta0_step_is_the_closed_form(prediction_type):
    """x' = sqrt(abar') x0 + sqrt(1 - abar') eps for the x0, eps the output implies."""
    s = DDIMScheduler(1000, prediction_type=prediction_type, clip_sample=False)
    for index in (0, 3, 9):  # first, middle and last (t' = -1: x' = x0)
        t, t_prev, a, a_prev, x, output, _ = _step_case(s, index)
        x0, eps = _x0_eps(prediction_type, output, x, a)
        expected = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
        got, state = _run_step(s, output, t, t_prev, x)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-4)
        np.testing.assert_allclose(np_(state[0]), x0, rtol=1e-4, atol=2e-4)
        assert int(np_(state[1])) == t


def test_ddim_clipped_x0_and_its_consistent_eps():
    """With `clip_sample`, x0 is clipped and eps recomputed from it."""
    s = DDIMScheduler(1000, prediction_type="sample", clip_sample=True)
    t, t_prev, a, a_prev, x, output, _ = _step_case(s)
    output = output * 6.0  # well outside [-1, 1]
    x0 = np.clip(output, -1, 1)
    eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
    got, _ = _run_step(s, output, t, t_prev, x)
    np.testing.assert_allclose(got, np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps,
                               rtol=1e-4, atol=2e-4)


def test_ddim_eta1_step_adds_the_posterior_sigma():
    s = DDIMScheduler(1000, eta=1.0, clip_sample=False)
    t, t_prev, a, a_prev, x, output, noise = _step_case(s)
    x0, eps = _x0_eps("epsilon", output, x, a)
    sigma = np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    expected = (np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * eps
                + sigma * noise)
    got, _ = _run_step(s, output, t, t_prev, x, noise=noise)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddpm_step_is_the_posterior_mean_plus_sigma_noise(prediction_type):
    """x' = mu~(x_t, x0) + sigma~ z, the posterior q(x_t' | x_t, x0) of Ho et
    al. (eq. 7) between the spaced timesteps t and t'."""
    s = DDPMScheduler(1000, prediction_type=prediction_type, clip_sample=False)
    for index in (0, 3):
        t, t_prev, a, a_prev, x, output, noise = _step_case(s, index)
        x0, _ = _x0_eps(prediction_type, output, x, a)
        alpha_t = a / a_prev
        beta_t = 1 - alpha_t
        mean = (np.sqrt(a_prev) * beta_t / (1 - a) * x0
                + np.sqrt(alpha_t) * (1 - a_prev) / (1 - a) * x)
        sigma = np.sqrt((1 - a_prev) / (1 - a) * beta_t)
        got, _ = _run_step(s, output, t, t_prev, x, noise=noise)
        np.testing.assert_allclose(got, mean + sigma * noise, rtol=1e-4, atol=2e-4)
        got, _ = _run_step(s, output, t, t_prev, x)  # noise=None: the mean
        np.testing.assert_allclose(got, mean, rtol=1e-4, atol=2e-4)
    # the last step (t' = -1) adds no noise and lands on x0
    t, t_prev, a, a_prev, x, output, noise = _step_case(s, 9)
    assert t_prev == -1
    x0, _ = _x0_eps(prediction_type, output, x, a)
    got, _ = _run_step(s, output, t, t_prev, x, noise=noise)
    np.testing.assert_allclose(got, x0, rtol=1e-4, atol=2e-4)


def _lam(a):
    return 0.5 * np.log(a) - 0.5 * np.log(1 - a)  # log(alpha / sigma)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_dpm_solver_first_step_is_first_order_ddim(prediction_type):
    """DPM-Solver++ with no previous x0: x' = (sigma'/sigma) x - alpha'(e^-h - 1) x0,
    which is the DDIM (eta=0) update."""
    s = DPMSolverScheduler(1000, prediction_type=prediction_type, clip_sample=False)
    t, t_prev, a, a_prev, x, output, _ = _step_case(s, 0)
    x0, _ = _x0_eps(prediction_type, output, x, a)
    h = _lam(a_prev) - _lam(a)
    expected = (np.sqrt((1 - a_prev) / (1 - a)) * x
                - np.sqrt(a_prev) * (np.exp(-h) - 1) * x0)
    got, _ = _run_step(s, output, t, t_prev, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-4)
    ddim = DDIMScheduler.from_config(s.get_config())
    np.testing.assert_allclose(got, _run_step(ddim, output, t, t_prev, x)[0],
                               rtol=1e-4, atol=2e-4)


def test_dpm_solver_second_step_is_the_2m_update():
    """With the previous x0: D = x0 + (x0 - x0_last) / (2 r), r = h_last / h,
    x' = (sigma'/sigma) x - alpha'(e^-h - 1) D (Lu et al. 2022, Alg. 2)."""
    s = DPMSolverScheduler(1000, clip_sample=False)
    t_last = int(np_(s.timestep(2, 10)))
    t, t_prev, a, a_prev, x, output, _ = _step_case(s, 3)
    a_last = float(np.cumprod(1 - make_betas_of(s))[t_last])
    x0, _ = _x0_eps("epsilon", output, x, a)
    x0_last = np.random.default_rng(9).uniform(-1, 1, x.shape)
    h = _lam(a_prev) - _lam(a)
    r = (_lam(a) - _lam(a_last)) / h
    d = x0 + (x0 - x0_last) / (2 * r)
    expected = np.sqrt((1 - a_prev) / (1 - a)) * x - np.sqrt(a_prev) * (np.exp(-h) - 1) * d
    state = (ops.convert_to_tensor(x0_last.astype("float32")),
             ops.convert_to_tensor(t_last, "int32"))
    got, _ = _run_step(s, output, t, t_prev, x, state=state)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-4)
    first, _ = _run_step(s, output, t, t_prev, x)
    assert np.abs(got - first).max() > 1e-3  # the second-order term matters
