"""`kgen.models.ema`: the one EMA of the sampling weights, shared by the GAN
and diffusion families, updated by the train step and nothing else."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from kgen.models import GAN
from kgen.models import ema
from kgen.networks import dcgan_discriminator
from kgen.networks import dcgan_generator
from tests.conftest import backend


def values(variables):
    return [ops.convert_to_numpy(v) for v in variables]


def test_warmup_decay_is_the_formula():
    for decay in (0.0, 0.5, 0.999):
        for n in (0, 1, 9, 100, 10_000):
            got = float(ops.convert_to_numpy(ema.warmup_decay(decay, n)))
            assert got == pytest.approx(min(decay, (1 + n) / (10 + n)), rel=1e-6)


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("bad", [1.0, -0.1, 2, "0.9", True])
def test_check_decay_names_the_value(bad):
    with pytest.raises(ValueError, match=f"ema_decay={bad!r}: must be in \\[0, 1\\) or None"):
        ema.check_decay(bad)
    assert ema.check_decay(None) is None and ema.check_decay(0) == 0.0


def test_update_steps_every_weight_and_the_counter():
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2),
                            keras.layers.BatchNormalization()])
    holder = keras.layers.Layer()
    average = ema.average_copy(net, 0.9)
    counter = ema.update_counter(holder)
    assert not average.trainable_weights and len(average.weights) == len(net.weights)
    start = values(average.weights)
    for w in net.weights:  # BatchNorm's moving statistics included
        w.assign(np.asarray(ops.convert_to_numpy(w)) + 1.0)
    for n in range(3):
        before = values(average.weights)
        d = min(0.9, (1 + n) / (10 + n))
        ema.update(average, net, 0.9, counter)
        for got, b, w in zip(values(average.weights), before, values(net.weights)):
            np.testing.assert_allclose(got, d * b + (1 - d) * w, rtol=1e-6, atol=1e-6)
    assert float(ops.convert_to_numpy(counter)) == 3.0
    assert all(np.abs(a - s).max() > 0 for a, s in zip(values(average.weights), start))
    assert ema.average_copy(net, None) is None
    ema.update(None, net, None, None)  # no EMA: nothing to do


def test_gan_ema_moves_with_fit_not_with_calls():
    shape = (8, 8, 1)
    gan = GAN(dcgan_generator(4, shape, (8, 4)), dcgan_discriminator(shape, (4, 8)),
              ema_decay=0.9, seed=0)
    gan.compile(g_optimizer="adam", d_optimizer="adam")
    before = values(gan.ema_generator.weights)
    gan(np.zeros((2, 4), "float32"), training=True)
    assert float(ops.convert_to_numpy(gan.ema_updates)) == 0.0
    assert all(np.array_equal(a, b) for a, b in zip(before, values(gan.ema_generator.weights)))
    images = np.random.default_rng(0).uniform(size=(16, 8, 8, 1)).astype("float32")
    gan.fit(images, batch_size=8, epochs=1, verbose=0)
    assert float(ops.convert_to_numpy(gan.ema_updates)) == 2.0


MIRRORED = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from kgen import models, networks, schedulers

    rng = np.random.default_rng(0)
    data = {"images": rng.uniform(size=(32, 8, 8, 1)).astype("float32"),
            "labels": np.arange(32) % 10}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = models.DiffusionModel(
            networks.unet((8, 8, 1), (8, 16), num_classes=10, groups=4),
            schedulers.DDPMScheduler(50), num_classes=10, ema_decay=0.9, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = [w.numpy() for w in model.ema_denoiser.weights]
    history = model.fit(data, batch_size=16, epochs=1, validation_data=data, verbose=0).history
    moved = max(float(np.abs(w.numpy() - b).max())
                for w, b in zip(model.ema_denoiser.weights, before))
    images = model.generate(2, seed=0, labels=[1, 2], num_steps=2)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync,
                      "ema_updates": float(model.ema_updates.numpy()), "moved": moved,
                      "val_loss": history["val_loss"][-1], "shape": list(images.shape)}))
""")


@pytest.mark.tf_only
@pytest.mark.slow
def test_diffusion_ema_on_two_mirrored_replicas(tmp_path):
    if backend() != "tensorflow":
        pytest.skip("tf.distribute.MirroredStrategy is the TensorFlow backend's")
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED], cwd=tmp_path, capture_output=True, text=True,
        timeout=600, env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and out["ema_updates"] == 2.0 and out["moved"] > 0
    assert np.isfinite(out["val_loss"]) and out["shape"] == [2, 8, 8, 1]
