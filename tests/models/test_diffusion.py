import keras
import numpy as np
import pytest
from keras import ops

from kgen.data import image_datasets
from kgen.models import DiffusionModel
from kgen.networks import unet
from kgen.schedulers import DDPMScheduler


def tiny_model(image_shape=(8, 8, 1), num_classes=10, **kwargs):
    kwargs.setdefault("scheduler", DDPMScheduler(100))
    return DiffusionModel(
        unet(image_shape, widths=(8, 16), num_classes=num_classes, groups=4),
        num_classes=num_classes, seed=1, **kwargs,
    )


def with_labels(dataset):
    return dataset.map(lambda x, y: {"images": x, "labels": y})


def to_numpy(x):
    return ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def trained():
    """A conditional v-prediction model after a few steps (one compile)."""
    model = tiny_model(scheduler=DDPMScheduler(100, "cosine", prediction_type="v"),
                       sampler="dpm_solver", ema_momentum=0.9)
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
    history = model.fit(with_labels(data.train), epochs=3, steps_per_epoch=6,
                        validation_data=with_labels(data.validation), verbose=0)
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


def test_ema_follows_the_trained_weights(trained):
    model, before = trained
    assert float(to_numpy(model.ema_updates)) == 4.0
    ema = [to_numpy(w) for w in model.ema_denoiser.weights]
    weights = [to_numpy(w) for w in model.denoiser.weights]
    assert max(np.abs(e - b).max() for e, b in zip(ema, before)) > 0, "EMA must move"
    assert max(np.abs(e - w).max() for e, w in zip(ema, weights)) > 0, "EMA lags"
    assert not model.ema_denoiser.trainable_weights


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpm_solver"])
def test_same_seed_same_sample(trained, scheduler):
    model, _ = trained
    kwargs = dict(num_steps=5, scheduler=scheduler, label=[1, 2, 3], guidance_scale=3.0)
    a = model.generate(3, seed=7, **kwargs)
    b = model.generate(3, seed=7, **kwargs)
    c = model.generate(3, seed=8, **kwargs)
    assert a.shape == (3, 8, 8, 1) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4
    count = len(model._sample_functions)
    model.generate(3, seed=7, num_steps=9, scheduler=scheduler)  # other steps, unguided
    assert len(model._sample_functions) == count  # compiled once per scheduler


def test_guidance_changes_the_sample(trained):
    model, _ = trained
    kwargs = dict(seed=3, num_steps=4, scheduler="ddim", label=[1, 1])
    plain = model.generate(2, guidance_scale=1.0, **kwargs)
    guided = model.generate(2, guidance_scale=4.0, **kwargs)
    assert np.abs(plain - guided).max() > 1e-5


def test_generate_rejects_bad_arguments(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="num_steps"):
        model.generate(2, seed=0, num_steps=0)
    with pytest.raises(ValueError, match="num_steps"):
        model.generate(2, seed=0, num_steps=101)
    with pytest.raises(ValueError, match="label"):
        model.generate(2, seed=0, num_steps=2, label=10)
    with pytest.raises(ValueError, match="num_classes"):
        DiffusionModel(unet((8, 8, 1), (8, 16), groups=4), num_classes=10)


def test_keras_file_round_trip(trained, tmp_path):
    model, _ = trained
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.scheduler) is DDPMScheduler
    assert loaded.scheduler.get_config() == model.scheduler.get_config()
    assert loaded.scheduler.prediction_type == "v_prediction"
    assert loaded.sampler == "dpm_solver" and loaded.num_classes == 10
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    kwargs = dict(seed=1, num_steps=3, label=[0, 5])
    np.testing.assert_allclose(loaded.generate(2, **kwargs), model.generate(2, **kwargs),
                               atol=1e-6)
