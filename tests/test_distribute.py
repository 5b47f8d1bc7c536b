"""A GAN under a real two-replica MirroredStrategy (two logical CPUs).

TensorFlow fixes its devices when it starts, so this runs in a fresh
process; it is a TensorFlow-only path and is skipped on other backends.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import backend

SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from kgen import data, models, networks

    ds = data.load_image_data("digits", batch_size=32, with_labels=True, repeat=True)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        gan = models.GAN(
            networks.dcgan_generator(8, (8, 8, 1), (16, 8), num_classes=10),
            networks.dcgan_discriminator((8, 8, 1), (8, 16), num_classes=10),
            num_classes=10, loss="wasserstein", gradient_penalty_weight=1.0, ema_decay=0.9)
        gan.compile(g_optimizer=keras.optimizers.Adam(1e-3),
                    d_optimizer=keras.optimizers.Adam(1e-3))
    history = gan.fit(ds.train, epochs=1, steps_per_epoch=3, verbose=0).history
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "logs": {k: v[-1] for k, v in history.items()},
        "iterations": [int(o.iterations.numpy()) for o in (gan.optimizer, gan.g_optimizer, gan.d_optimizer)],
    }))
""")


def test_gan_trains_on_two_mirrored_replicas(tmp_path):
    if backend() != "tensorflow":
        pytest.skip("tf.distribute.MirroredStrategy is the TensorFlow backend's")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True,
        timeout=600, env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["iterations"] == [3, 3, 3]
    assert out["logs"]["gradient_penalty"] > 0
    assert all(abs(v) < 1e6 for v in out["logs"].values())
