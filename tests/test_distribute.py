"""Training on two devices: a GAN under a real two-replica MirroredStrategy
(TensorFlow, two logical CPUs) and `kgen train --strategy data_parallel`
(JAX, two host devices).

TensorFlow and JAX fix their devices when they start, so each runs in a
fresh process; each path belongs to one backend and is skipped on the others.
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


# `kgen train` as `python -m kgen` runs it, then what the run left behind:
# the distribution it set, the checkpoint's variables and a batch laid out
# by that distribution, as `fit()` lays out each of its batches.
DATA_PARALLEL = textwrap.dedent("""
    import json, sys
    import jax
    import keras
    import numpy as np
    from kgen import cli

    cli.main(["train", "vae_digits", "--strategy", "data_parallel", "--no-export",
              "--run-dir", "run", "--set", "epochs=1", "--set", "steps_per_epoch=2",
              "--set", "filters=8,16", "--set", "hidden_dim=16"])
    distribution = keras.distribution.distribution()
    model = keras.saving.load_model("run/best.keras")
    batch = np.zeros((32, 8, 8, 1), "float32")
    laid_out = keras.distribution.distribute_tensor(
        batch, distribution.get_data_layout(batch.shape))
    images = np.asarray(model.generate(4, seed=0))
    print(json.dumps({
        "jax_devices": jax.device_count(),
        "distribution": type(distribution).__name__,
        "mesh_devices": int(distribution.device_mesh.devices.size),
        "variable_devices": sorted({len(v.value.sharding.device_set) for v in model.weights}),
        "batch_shards": [shard.data.shape[0] for shard in laid_out.addressable_shards],
        "finite": bool(np.isfinite(images).all()),
    }))
""")


@pytest.mark.slow
def test_kgen_train_data_parallel_uses_two_jax_devices(tmp_path):
    if backend() != "jax":
        pytest.skip("--strategy data_parallel is the JAX backend's (keras.distribution)")
    result = subprocess.run(
        [sys.executable, "-c", DATA_PARALLEL], cwd=tmp_path, capture_output=True,
        text=True, timeout=600,
        env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
             "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
             + " --xla_force_host_platform_device_count=2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained in" in result.stdout
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["jax_devices"] == 2
    assert out["distribution"] == "DataParallel" and out["mesh_devices"] == 2
    assert out["variable_devices"] == [2]  # every weight replicated on both
    assert out["batch_shards"] == [16, 16]  # each batch split between them
    assert out["finite"]
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["strategy"] == "data_parallel" and recorded["backend"] == "jax"


@pytest.mark.tf_only
@pytest.mark.slow
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
