import keras
import numpy as np
import pytest
from keras import ops

from kgen.data import image_datasets
from kgen.models import VAE
from kgen.networks import conv_decoder
from kgen.networks import conv_encoder


def tiny_vae(image_shape=(28, 28, 1), latent_dim=4, **kwargs):
    return VAE(
        conv_encoder(image_shape, latent_dim, filters=(8, 16), hidden_dim=32),
        conv_decoder(latent_dim, image_shape, filters=(16, 8), hidden_dim=32),
        seed=1, **kwargs,
    )


def to_numpy(x):
    return ops.convert_to_numpy(x)


def test_loss_goes_down_on_mnist(mnist_arrays):
    images, _ = mnist_arrays
    keras.utils.set_random_seed(0)
    data = image_datasets(images, batch_size=64, repeat=True, limit=2000)
    vae = tiny_vae()
    vae.compile(optimizer=keras.optimizers.Adam(2e-3))
    before = vae.evaluate(data.validation, return_dict=True, verbose=0)
    history = vae.fit(data.train, epochs=2, steps_per_epoch=15,
                      validation_data=data.validation, verbose=0)
    after = history.history
    assert set(after) >= {"loss", "reconstruction_loss", "kl_loss", "val_loss"}
    assert after["val_loss"][-1] < 0.8 * before["loss"]
    assert after["loss"][-1] < after["loss"][0]


def test_loss_is_reconstruction_plus_beta_kl(mnist_arrays):
    images, _ = mnist_arrays
    vae = tiny_vae(beta=4.0)
    vae.compile(optimizer="adam")
    logs = vae.evaluate(images[:256], batch_size=256, return_dict=True, verbose=0)
    assert logs["kl_loss"] >= 0
    np.testing.assert_allclose(
        logs["loss"], logs["reconstruction_loss"] + 4.0 * logs["kl_loss"], rtol=1e-4
    )


def test_gaussian_likelihood_trains(mnist_arrays):
    images, _ = mnist_arrays
    vae = tiny_vae(likelihood="gaussian", gaussian_scale=0.2)
    vae.compile(optimizer="adam")
    history = vae.fit(images[:256], batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def test_same_seed_same_sample():
    vae = tiny_vae()
    a, b, c = vae.generate(6, seed=7), vae.generate(6, seed=7), vae.generate(6, seed=8)
    assert a.shape == (6, 28, 28, 1)
    assert 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_encode_decode_shapes(mnist_arrays):
    images, _ = mnist_arrays
    vae = tiny_vae(latent_dim=5)
    mean, log_var = vae.encode(images[:3])
    assert tuple(mean.shape) == (3, 5) and tuple(log_var.shape) == (3, 5)
    decoded = to_numpy(vae.decode(mean))
    assert decoded.shape == (3, 28, 28, 1)


def test_config_round_trip_gives_same_outputs(mnist_arrays):
    images, _ = mnist_arrays
    vae = tiny_vae(beta=0.5, likelihood="gaussian")
    clone = VAE.from_config(vae.get_config())
    clone.set_weights(vae.get_weights())
    assert (clone.beta, clone.likelihood, clone.latent_dim) == (0.5, "gaussian", 4)
    np.testing.assert_allclose(
        to_numpy(clone.encode(images[:4])[0]), to_numpy(vae.encode(images[:4])[0]), atol=1e-6
    )
    np.testing.assert_allclose(clone.generate(4, seed=3), vae.generate(4, seed=3), atol=1e-6)


def test_keras_file_round_trip(tmp_path, mnist_arrays):
    images, _ = mnist_arrays
    vae = tiny_vae()
    vae.compile(optimizer="adam")
    vae.fit(images[:128], batch_size=64, epochs=1, verbose=0)
    vae.save(tmp_path / "vae.keras")
    loaded = keras.saving.load_model(tmp_path / "vae.keras")
    assert isinstance(loaded, VAE)
    np.testing.assert_allclose(
        to_numpy(loaded.encode(images[:4])[0]), to_numpy(vae.encode(images[:4])[0]), atol=1e-6
    )
    np.testing.assert_allclose(loaded.generate(4, seed=11), vae.generate(4, seed=11), atol=1e-6)
    # The loaded model keeps training.
    loaded.fit(images[:64], batch_size=64, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"likelihood": "poisson"}, r"likelihood='poisson': expected one of"),
        ({"beta": -1.0}, r"beta=-1.0: must be >= 0"),
        ({"gaussian_scale": 0.0}, r"gaussian_scale=0.0: must be > 0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_vae(**kwargs)


def test_image_shape_must_fit_the_strides():
    with pytest.raises(ValueError, match=r"image_shape \(30, 30, 1\).*divisible by 4"):
        conv_encoder((30, 30, 1), 4, filters=(8, 16))
