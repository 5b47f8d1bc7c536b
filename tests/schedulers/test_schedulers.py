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
