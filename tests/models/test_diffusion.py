import keras
import numpy as np
import pytest
from keras import ops

from kgen.data import image_datasets
from kgen.models import DiffusionModel
from kgen.networks import unet
from kgen.models import ema
from kgen.schedulers import DDPMScheduler


def tiny_model(image_shape=(8, 8, 1), num_classes=10, **kwargs):
    kwargs.setdefault("scheduler", DDPMScheduler(100))
    return DiffusionModel(
        unet(image_shape, filters=(8, 16), num_classes=num_classes, groups=4),
        num_classes=num_classes, seed=1, **kwargs,
    )


def to_numpy(x):
    return ops.convert_to_numpy(x)


def values(variables):
    return [to_numpy(v) for v in variables]


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"images": rng.uniform(size=(n, 8, 8, 1)).astype("float32"),
            "labels": np.arange(n) % 10}


@pytest.fixture(scope="module")
def trained():
    """A conditional v-prediction model after a few steps (one compile)."""
    model = tiny_model(scheduler=DDPMScheduler(100, "cosine", prediction_type="v"),
                       sampler="dpm_solver", ema_decay=0.9)
    images = np.random.default_rng(0).uniform(size=(32, 8, 8, 1)).astype("float32")
    before = [to_numpy(w) for w in model.ema_denoiser.weights]
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit({"images": images, "labels": np.arange(32) % 10}, batch_size=16,
              epochs=2, verbose=0)
    return model, before


def test_loss_goes_down_on_mnist(mnist_arrays):
    images, labels = mnist_arrays
    keras.utils.set_random_seed(0)
    data = image_datasets(images, labels, batch_size=32, with_labels=True,
                          repeat=True, limit=640)
    model = tiny_model((28, 28, 1), scheduler=DDPMScheduler(1000, "cosine"))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(data.train, epochs=3, steps_per_epoch=6,
                        validation_data=data.validation, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert history.history["val_loss"][-1] < 0.8 * losses[0]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "sample"])
def test_call_returns_prediction_and_target(prediction_type):
    scheduler = DDPMScheduler(100, prediction_type=prediction_type)
    images = np.random.default_rng(0).uniform(size=(4, 8, 8, 1)).astype("float32")
    for loss in ("mse", "mae"):
        model = tiny_model(scheduler=scheduler, loss=loss, num_classes=None)
        out = model(images, training=False)
        assert set(out) == {"prediction", "target"}
        assert tuple(out["prediction"].shape) == tuple(out["target"].shape) == (4, 8, 8, 1)
        diff = to_numpy(out["prediction"]) - to_numpy(out["target"])
        expected = np.mean(diff**2) if loss == "mse" else np.mean(np.abs(diff))
        np.testing.assert_allclose(to_numpy(model.compute_loss(images, None, out)),
                                   expected, rtol=1e-5)
    if prediction_type == "sample":  # the target is the image in [-1, 1]
        np.testing.assert_allclose(to_numpy(out["target"]), images * 2 - 1, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "sample"])
def test_min_snr_gamma_weights_each_row_by_its_timestep(prediction_type):
    """Min-SNR-gamma: the loss is the mean of each row's error times
    min(SNR, 5) / SNR (epsilon), / (SNR + 1) (v) or min(SNR, 5) (sample),
    with SNR = alpha_bar / (1 - alpha_bar) of the row's timestep."""
    scheduler = DDPMScheduler(100, "cosine", prediction_type=prediction_type)
    images = np.random.default_rng(0).uniform(size=(16, 8, 8, 1)).astype("float32")
    model = tiny_model(scheduler=scheduler, num_classes=None, min_snr_gamma=5)
    out = model(images, training=False)
    assert set(out) == {"prediction", "target", "weight"}
    timesteps, _ = model.validation_draws(images)
    a = scheduler.alphas_cumprod[to_numpy(timesteps)]
    snr = a / (1 - a)
    expected_weight = {"epsilon": np.minimum(snr, 5) / snr,
                       "v": np.minimum(snr, 5) / (snr + 1),
                       "sample": np.minimum(snr, 5)}[prediction_type]
    np.testing.assert_allclose(to_numpy(out["weight"]), expected_weight, rtol=1e-4)
    assert len(set(np.round(expected_weight, 4))) > 1  # rows weigh differently
    per_row = np.mean((to_numpy(out["prediction"]) - to_numpy(out["target"])) ** 2,
                      axis=(1, 2, 3))
    np.testing.assert_allclose(to_numpy(model.compute_loss(images, None, out)),
                               np.mean(per_row * expected_weight), rtol=1e-5)
    assert DiffusionModel.from_config(model.get_config()).min_snr_gamma == 5.0


@pytest.mark.parametrize("bad", [0, -1.0, "5", True, float("inf")])
def test_min_snr_gamma_must_be_positive(bad):
    with pytest.raises(ValueError, match=f"min_snr_gamma={bad!r}"):
        tiny_model(min_snr_gamma=bad)


def test_ema_follows_the_trained_weights(trained):
    model, before = trained
    assert float(to_numpy(model.ema_updates)) == 4.0  # 2 epochs x 2 steps
    ema_weights = values(model.ema_denoiser.weights)
    weights = values(model.denoiser.weights)
    assert max(np.abs(e - b).max() for e, b in zip(ema_weights, before)) > 0, "EMA must move"
    assert max(np.abs(e - w).max() for e, w in zip(ema_weights, weights)) > 0, "EMA lags"
    assert not model.ema_denoiser.trainable_weights


def test_one_fit_step_is_one_warmed_up_ema_update():
    """After one step from a fresh model: `ema = d * start + (1 - d) * new`
    with `d = min(ema_decay, 1 / 10)` (the warm-up of `kgen.models.ema`)."""
    model = tiny_model(ema_decay=0.9)
    start = values(model.denoiser.weights)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(batch(8), batch_size=8, epochs=1, verbose=0)
    assert float(to_numpy(model.ema_updates)) == 1.0
    d = float(to_numpy(ema.warmup_decay(0.9, 0)))
    assert d == pytest.approx(0.1)
    moved = False
    for got, s, new in zip(values(model.ema_denoiser.weights), start,
                           values(model.denoiser.weights)):
        np.testing.assert_allclose(got, d * s + (1 - d) * new, rtol=1e-5, atol=1e-6)
        moved |= bool(np.abs(new - s).max() > 0)
    assert moved


def test_calling_the_model_in_training_mode_leaves_the_ema_alone():
    model = tiny_model(ema_decay=0.5)
    before = values(model.ema_denoiser.weights)
    for _ in range(2):
        model(batch(4), training=True)
    assert float(to_numpy(model.ema_updates)) == 0.0
    for a, b in zip(values(model.ema_denoiser.weights), before):
        np.testing.assert_array_equal(a, b)


def test_validation_loss_is_fixed_and_uses_the_ema_weights(trained):
    model, _ = trained
    data = batch(16, seed=3)
    first = model.evaluate(data, batch_size=8, verbose=0)
    assert model.evaluate(data, batch_size=8, verbose=0) == first  # fixed t and noise
    t1, n1 = model.validation_draws(ops.zeros((4, 8, 8, 1)))
    t2, n2 = model.validation_draws(ops.zeros((4, 8, 8, 1)))
    np.testing.assert_array_equal(to_numpy(t1), to_numpy(t2))
    np.testing.assert_array_equal(to_numpy(n1), to_numpy(n2))
    assert len(set(to_numpy(t1).tolist())) > 1  # rows get different timesteps
    saved = values(model.denoiser.weights)
    try:  # the trained weights do not enter the validation loss ...
        for v in model.denoiser.trainable_weights:
            v.assign(np.zeros(v.shape, "float32"))
        assert model.evaluate(data, batch_size=8, verbose=0) == first
    finally:
        for v, value in zip(model.denoiser.weights, saved):
            v.assign(value)
    saved = values(model.ema_denoiser.weights)
    try:  # ... the EMA (sampling) weights do
        for v in model.ema_denoiser.weights:
            if "kernel" in v.path:
                v.assign(to_numpy(v) * 1.5)
        assert model.evaluate(data, batch_size=8, verbose=0) != first
    finally:
        for v, value in zip(model.ema_denoiser.weights, saved):
            v.assign(value)


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpm_solver"])
def test_row_i_is_seed_plus_i_alone(trained, scheduler):
    """`generate(n, seed=s)[i] == generate(1, seed=s + i)[0]`, guided rows and
    unlabelled rows of a conditional model alike."""
    model, _ = trained
    kwargs = dict(num_steps=3, scheduler=scheduler, guidance_scale=3.0)
    for labels in ([4, 2, 9], None):
        rows = model.generate(3, seed=7, labels=labels, **kwargs)
        assert rows.shape == (3, 8, 8, 1) and rows.dtype == np.float32
        assert 0.0 <= rows.min() and rows.max() <= 1.0
        for i in range(3):
            one = model.generate(1, seed=7 + i, labels=None if labels is None else labels[i],
                                 **kwargs)
            np.testing.assert_allclose(rows[i], one[0], atol=1e-5)
        assert np.abs(rows[0] - rows[1]).max() > 1e-4
    unconditional = tiny_model(num_classes=None)
    rows = unconditional.generate(3, seed=-2, num_steps=2, scheduler=scheduler)
    for i in range(3):
        np.testing.assert_allclose(
            rows[i], unconditional.generate(1, seed=-2 + i, num_steps=2,
                                            scheduler=scheduler)[0], atol=1e-5)


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpm_solver"])
def test_same_seed_same_sample(trained, scheduler):
    model, _ = trained
    kwargs = dict(num_steps=5, scheduler=scheduler, labels=[1, 2, 3], guidance_scale=3.0)
    a = model.generate(3, seed=7, **kwargs)
    b = model.generate(3, seed=7, **kwargs)
    c = model.generate(3, seed=8, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4
    count = len(model._compiled_functions.functions)
    model.generate(4, seed=7, num_steps=9, scheduler=scheduler, labels=[0, 1, 2, 3],
                   guidance_scale=1.5)  # other rows, steps and guidance
    assert len(model._compiled_functions.functions) == count  # compiled once per scheduler


def test_guidance_changes_the_sample(trained):
    model, _ = trained
    kwargs = dict(seed=3, num_steps=4, scheduler="ddim", labels=[1, 1])
    plain = model.generate(2, guidance_scale=1.0, **kwargs)
    guided = model.generate(2, guidance_scale=4.0, **kwargs)
    assert np.abs(plain - guided).max() > 1e-5


def test_the_model_guidance_is_the_default_and_is_saved(trained, tmp_path):
    model, _ = trained
    kwargs = dict(seed=3, num_steps=4, scheduler="ddim", labels=[1, 2])
    model.guidance_scale = 3.5
    try:
        np.testing.assert_array_equal(model.generate(2, **kwargs),
                                      model.generate(2, guidance_scale=3.5, **kwargs))
        model.save(tmp_path / "m.keras")
    finally:
        model.guidance_scale = 2.0
    assert keras.saving.load_model(tmp_path / "m.keras").guidance_scale == 3.5
    with pytest.raises(ValueError, match="guidance_scale=inf"):
        tiny_model(guidance_scale=float("inf"))


def test_generate_rejects_bad_arguments(trained):
    model, _ = trained
    for bad, match in [
        (dict(num_steps=0), "num_steps=0"), (dict(num_steps=101), "num_steps=101"),
        (dict(num_steps=2.5), "num_steps=2.5"), (dict(labels=10), "labels=10"),
        (dict(labels=[1, 2, 3]), "labels=\\[1, 2, 3\\]"),
        (dict(guidance_scale=float("nan")), "guidance_scale=nan"),
        (dict(guidance_scale="2"), "guidance_scale='2'"),
        (dict(scheduler="euler"), "euler"), (dict(seed=2**63 - 1), "seed="),
    ]:
        with pytest.raises(ValueError, match=match):
            model.generate(2, **{"seed": 0, "num_steps": 2, **bad})
    with pytest.raises(ValueError, match="n=0"):
        model.generate(0, seed=0)
    with pytest.raises(TypeError):
        model.generate(2, seed=0, label=1)  # the option is `labels`
    with pytest.raises(ValueError, match="labels=1: .*unconditional"):
        tiny_model(num_classes=None).generate(2, seed=0, labels=1)
    with pytest.raises(ValueError, match="num_classes"):
        DiffusionModel(unet((8, 8, 1), (8, 16), groups=4), num_classes=10)
    with pytest.raises(ValueError, match="ema_decay=1.0"):
        tiny_model(ema_decay=1.0)


def test_keras_file_round_trip(trained, tmp_path):
    model, _ = trained
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.scheduler) is DDPMScheduler
    assert loaded.scheduler.get_config() == model.scheduler.get_config()
    assert loaded.scheduler.prediction_type == "v_prediction"
    assert loaded.sampler == "dpm_solver" and loaded.num_classes == 10
    assert loaded.ema_decay == 0.9 and float(to_numpy(loaded.ema_updates)) == 4.0
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    kwargs = dict(seed=1, num_steps=3, labels=[0, 5])
    np.testing.assert_allclose(loaded.generate(2, **kwargs), model.generate(2, **kwargs),
                               atol=1e-6)
    config = model.get_config()
    config["ema_momentum"] = config.pop("ema_decay")  # the key of earlier files
    assert DiffusionModel.from_config(config).ema_decay == 0.9
