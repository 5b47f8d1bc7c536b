import keras
import numpy as np
import pytest
from keras import ops

from kgen.data import image_datasets
from kgen.models import GAN
from kgen.networks import dcgan_discriminator
from kgen.networks import dcgan_generator

SHAPE = (28, 28, 1)


def tiny_gan(num_classes=None, **kwargs):
    return GAN(
        dcgan_generator(8, SHAPE, (16, 8), num_classes=num_classes),
        dcgan_discriminator(SHAPE, (8, 16), num_classes=num_classes),
        num_classes=num_classes, seed=1, **kwargs,
    )


def compiled(gan, lr=1e-3):
    gan.compile(g_optimizer=keras.optimizers.Adam(lr, beta_1=0.5),
                d_optimizer=keras.optimizers.Adam(lr, beta_1=0.5))
    return gan


def batch(mnist_arrays, n=16, labels=False):
    images, ys = mnist_arrays
    return {"images": images[:n], "labels": ys[:n].astype("int32")} if labels else images[:n]


def values(variables):
    return [ops.convert_to_numpy(v) for v in variables]


def unchanged(before, variables):
    return all(np.array_equal(a, b) for a, b in zip(before, values(variables)))


@pytest.mark.parametrize("num_classes", [None, 10], ids=["unconditional", "conditional"])
def test_each_phase_updates_only_its_network(mnist_arrays, num_classes):
    gan = compiled(tiny_gan(num_classes))
    data = batch(mnist_arrays, labels=bool(num_classes))
    g_before = values(gan.generator.trainable_variables)
    d_before = values(gan.discriminator.trainable_variables)
    gan.train_phase("discriminator", data)
    assert unchanged(g_before, gan.generator.trainable_variables)
    assert not unchanged(d_before, gan.discriminator.trainable_variables)

    d_before = values(gan.discriminator.trainable_variables)
    gan.train_phase("generator", data)
    assert unchanged(d_before, gan.discriminator.trainable_variables)
    assert not unchanged(g_before, gan.generator.trainable_variables)


@pytest.mark.parametrize("loss", ["non_saturating", "hinge", "wasserstein"])
def test_fit_logs_finite_losses(mnist_arrays, loss):
    images, _ = mnist_arrays
    data = image_datasets(images, batch_size=16, repeat=True, limit=256)
    gan = compiled(tiny_gan(loss=loss, d_steps=2))
    history = gan.fit(data.train, epochs=1, steps_per_epoch=3, verbose=0).history
    assert set(history) == {"d_loss", "g_loss", "real_score", "fake_score"}
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert int(ops.convert_to_numpy(gan.optimizer.iterations)) == 3
    assert int(ops.convert_to_numpy(gan.d_optimizer.iterations)) == 6


def test_gradient_penalty_is_logged_and_changes_the_critic(mnist_arrays):
    data = batch(mnist_arrays)
    with_gp = compiled(tiny_gan(loss="wasserstein", gradient_penalty_weight=10.0))
    without = compiled(GAN.from_config({**with_gp.get_config(), "gradient_penalty_weight": 0.0}))
    without.set_weights(with_gp.get_weights())
    with_gp.train_phase("discriminator", data)
    without.train_phase("discriminator", data)
    assert not all(
        np.allclose(a, b) for a, b in zip(values(with_gp.discriminator.trainable_variables),
                                          values(without.discriminator.trainable_variables))
    )
    history = with_gp.fit(data, batch_size=16, epochs=1, verbose=0).history
    assert history["gradient_penalty"][-1] > 0


def test_r1_penalty_is_logged(mnist_arrays):
    gan = compiled(tiny_gan(r1_weight=1.0))
    history = gan.fit(batch(mnist_arrays), batch_size=16, epochs=1, verbose=0).history
    assert history["r1_penalty"][-1] > 0


def test_ema_is_a_moving_average_of_the_generator(mnist_arrays):
    gan = compiled(tiny_gan(ema_decay=0.5))
    assert gan.ema_generator.trainable_weights == []  # never trained directly
    ema_before = values(gan.ema_generator.weights)
    gan.fit(batch(mnist_arrays), batch_size=16, epochs=1, verbose=0)
    generator_after = values(gan.generator.weights)
    assert len(ema_before) == len(generator_after) > 0
    # one step: the warmed-up decay min(0.5, (1 + 0) / (10 + 0)) of kgen.models.ema
    assert float(ops.convert_to_numpy(gan.ema_updates)) == 1.0
    for got, e, g in zip(values(gan.ema_generator.weights), ema_before, generator_after):
        np.testing.assert_allclose(got, 0.1 * e + 0.9 * g, rtol=1e-5, atol=1e-6)


def test_same_seed_same_image_and_labels_matter():
    gan = tiny_gan(num_classes=10)
    a, b = gan.generate(4, seed=3), gan.generate(4, seed=3)
    assert a.shape == (4, 28, 28, 1) and 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    zeros = gan.generate(4, seed=3, labels=[0, 0, 0, 0])
    sevens = gan.generate(4, seed=3, labels=[7, 7, 7, 7])
    assert np.abs(zeros - sevens).max() > 1e-4


def test_keras_file_round_trip_keeps_both_optimizers(tmp_path, mnist_arrays):
    gan = compiled(tiny_gan(num_classes=10, ema_decay=0.9))
    data = batch(mnist_arrays, labels=True)
    gan.fit(data, batch_size=8, epochs=1, verbose=0)
    gan.save(tmp_path / "gan.keras")
    loaded = keras.saving.load_model(tmp_path / "gan.keras")
    assert isinstance(loaded, GAN) and loaded.num_classes == 10
    np.testing.assert_allclose(loaded.generate(4, seed=5), gan.generate(4, seed=5), atol=1e-6)
    for opt in ("g_optimizer", "d_optimizer"):
        for a, b in zip(values(getattr(loaded, opt).variables), values(getattr(gan, opt).variables)):
            np.testing.assert_allclose(a, b, atol=1e-6)
    loaded.fit(data, batch_size=8, epochs=1, verbose=0)


def test_multioptimizer_carries_both_optimizers_in_order():
    """The JAX trainer slices `optimizer.variables`; a Keras release that
    changes MultiOptimizer's layout must fail here, loudly."""
    gan = compiled(tiny_gan())
    multi = gan.optimizer
    assert isinstance(multi, keras.optimizers.MultiOptimizer)
    assert multi.optimizers == [gan.g_optimizer, gan.d_optimizer]
    own = len(multi.variables) - len(gan.g_optimizer.variables) - len(gan.d_optimizer.variables)
    assert own >= 1
    assert all(a is b for a, b in zip(multi.variables[own:],
                                      gan.g_optimizer.variables + gan.d_optimizer.variables))
    g_ids = {id(v) for v in gan.generator.trainable_variables}
    assert [id(gan.trainable_variables[i]) in g_ids for i in gan._g_index] == [True] * len(g_ids)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss": "least_squares"}, r"loss='least_squares': expected one of"),
        ({"d_steps": 0}, r"d_steps=0: must be at least 1"),
        ({"ema_decay": 1.5}, r"ema_decay=1.5: must be in \[0, 1\)"),
        ({"num_classes": 10}, r"num_classes=10 needs a generator with 2 input"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GAN(dcgan_generator(8, SHAPE, (16, 8)), dcgan_discriminator(SHAPE, (8, 16)), **kwargs)


def test_conditional_gan_needs_labels(mnist_arrays):
    gan = compiled(tiny_gan(num_classes=10))
    with pytest.raises(ValueError, match=r"needs \{'images', 'labels'\} batches"):
        gan.train_phase("discriminator", batch(mnist_arrays))
    images, labels = mnist_arrays
    with pytest.raises(ValueError, match="dicts, not \\(images, labels\\) tuples"):
        gan.fit(images[:8], labels[:8], batch_size=8, epochs=1, verbose=0)
