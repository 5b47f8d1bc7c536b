"""Two replicas compute what one device computes, for every family.

Each family (VAE, conditional GAN with a gradient penalty and an EMA,
conditional diffusion with its EMA, the audio diffusion model, the
character LM) trains two steps on the same fixed global batches twice in
one process: once on one device, once on two, under
`tf.distribute.MirroredStrategy` (TensorFlow, two logical CPUs) or
`keras.distribution.DataParallel` (JAX, two host devices). The logs of
every step and every weight afterwards (EMA copies, counters and
optimizer state included) must agree to float tolerance.

The optimizers are plain SGD: its update is proportional to the gradient,
so a loss averaged per replica and then summed across replicas (twice the
gradient) or a gradient left un-reduced shows in the weights (Adam's first
step is nearly invariant to the gradient's scale and would hide it).
Training noise must not depend on which replica holds a row, or the
distributed step trains on other noise than the one-device step.

TensorFlow and JAX fix their devices when they start, so each backend's
comparison runs in a fresh process (`python -m tests.test_distribute_equivalence`);
the test belongs to those two backends and is skipped on PyTorch.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO
from tests.conftest import backend

pytestmark = pytest.mark.slow

FAMILIES = ("vae", "gan", "diffusion", "audio", "lm")
GLOBAL_BATCH = 8
STEPS = 2

# JAX's test time is the suite's critical path: there the audio model (the
# diffusion model's train step behind a spectrogram, checked by
# "diffusion") is left to TensorFlow, and only the GAN, whose evaluation
# step is kgen's own on JAX, also runs a validation pass.
CHECKED = {"tensorflow": FAMILIES, "jax": ("vae", "gan", "diffusion", "lm")}
VALIDATED = {"tensorflow": FAMILIES, "jax": ("gan",)}


def batches(family):
    """The fixed training data of `family`: `STEPS` global batches."""
    rng = np.random.default_rng(0)
    n = GLOBAL_BATCH * STEPS
    labels = rng.integers(0, 10, n).astype("int32")
    images = rng.uniform(0.0, 1.0, (n, 8, 8, 1)).astype("float32")
    if family == "vae":
        return {"images": images}, None
    if family in ("gan", "diffusion"):
        return {"images": images, "labels": labels}, None
    if family == "audio":
        t = np.arange(8000, dtype="float32") / 8000.0
        audio = 0.5 * np.sin(2 * np.pi * (200.0 + 50.0 * labels[:, None]) * t)
        audio += 0.05 * rng.standard_normal((n, 8000))
        return {"audio": audio.astype("float32"), "labels": labels}, None
    tokens = rng.integers(0, 10, (n, 17)).astype("int32")
    return tokens[:, :-1], tokens[:, 1:]


def build(family):
    """A tiny model of `family`, compiled with SGD (seeded, so every build
    starts from the same weights)."""
    import keras

    from kgen import metrics, models, networks
    from tests.export.helpers import tiny

    keras.utils.set_random_seed(0)
    if family == "gan":
        shape = (8, 8, 1)
        model = models.GAN(
            networks.dcgan_generator(4, shape, (8,), num_classes=10),
            networks.dcgan_discriminator(shape, (8,), num_classes=10),
            num_classes=10, gradient_penalty_weight=1.0, ema_decay=0.9, seed=1)
        model.compile(g_optimizer=keras.optimizers.SGD(0.05),
                      d_optimizer=keras.optimizers.SGD(0.05))
        return model
    if family in ("diffusion", "audio"):
        # tiny()'s, with a one-level U-Net (compiling it is most of the cost).
        model = tiny(family)
        denoiser = networks.unet(model.image_shape, filters=(8,), num_classes=10,
                                 attention=False, groups=4)
        model = type(model).from_config({**model.get_config(), "denoiser": denoiser})
    else:
        model = tiny(family)
    if family == "lm":
        model.compile(optimizer=keras.optimizers.SGD(0.5),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[metrics.BitsPerToken(), metrics.Perplexity()])
    else:
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def values(variables):
    import keras

    return [[v.path, keras.ops.convert_to_numpy(v.value).tolist()] for v in variables]


def train(family, scope, replicas, validate):
    """Two `fit()` steps of a fresh `family` model under `scope` (and a
    validation pass when `validate`): the logs of each step, every
    variable afterwards, and where the backend keeps one copy per replica,
    whether the copies agree."""
    import keras

    steps = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append({k: float(v) for k, v in logs.items()})

        def on_epoch_end(self, epoch, logs=None):  # the validation pass's
            steps.append({k: float(v) for k, v in logs.items() if k.startswith("val_")})

    x, y = batches(family)
    first = lambda data: None if data is None else (  # noqa: E731
        {k: v[:GLOBAL_BATCH] for k, v in data.items()} if isinstance(data, dict)
        else data[:GLOBAL_BATCH])
    with scope():
        model = build(family)
        model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0,
                  validation_data=(first(x), first(y)) if validate else None,
                  callbacks=[Record()])
    variables = [*model.variables, *model.optimizer.variables]
    return {"logs": steps, "weights": values(variables),
            "replicas_agree": replicas(variables)}


def main():
    import contextlib

    backend_name = os.environ["KERAS_BACKEND"]
    if backend_name == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2

        def replicas(variables):
            return all(
                all(np.array_equal(local.numpy(), copies[0].numpy()) for local in copies)
                for copies in (strategy.experimental_local_results(v.value)
                               for v in variables))

        distributed = strategy.scope
    else:
        import jax
        import keras

        assert jax.device_count() == 2, jax.devices()
        distribution = keras.distribution.DataParallel(devices=jax.devices())
        distributed = distribution.scope

        def replicas(variables):  # one array, replicated by the sharding
            return all(len(v.value.sharding.device_set) == 2 for v in variables)

    out = {}
    for family in sys.argv[1:] or CHECKED[backend_name]:
        start, cpu = time.perf_counter(), time.process_time()
        validate = family in VALIDATED[backend_name]
        out[family] = {
            "one": train(family, contextlib.nullcontext, lambda _: True, validate),
            "two": train(family, distributed, replicas, validate),
        }
        print(f"{family}: {time.perf_counter() - start:.1f} s ({time.process_time() - cpu:.1f} s CPU)",
              file=sys.stderr)
    print(json.dumps(out))


def compare(one, two, family, validated):
    assert len(one["logs"]) == len(two["logs"]) == STEPS + 1, (one["logs"], two["logs"])
    assert validated == any(key.startswith("val_") for key in one["logs"][-1]), one["logs"]
    for step, (a, b) in enumerate(zip(one["logs"], two["logs"])):
        assert sorted(a) == sorted(b)
        for key in a:
            assert np.isclose(a[key], b[key], rtol=1e-4, atol=1e-5), (
                f"{family}: step {step} {key}: one device {a[key]}, two {b[key]}")
    assert len(one["weights"]) == len(two["weights"])
    for (name, value), (_, other) in zip(one["weights"], two["weights"]):
        a, b = np.asarray(value), np.asarray(other)
        assert a.shape == b.shape, f"{family}: {name} {a.shape} vs {b.shape}"
        assert np.allclose(a, b, rtol=1e-4, atol=1e-5), (
            f"{family}: {name} differs by up to {np.max(np.abs(a - b))}")
    assert two["replicas_agree"], f"{family}: the replicas' copies differ"


@pytest.fixture(scope="module")
def results():
    if backend() not in ("tensorflow", "jax"):
        pytest.skip("two replicas are tf.distribute's (TensorFlow) and "
                    "keras.distribution's (JAX); PyTorch trains on one device")
    env = {**os.environ, "KERAS_BACKEND": backend(), "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend() == "jax":
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                            + " --xla_force_host_platform_device_count=2")
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_distribute_equivalence"], cwd=REPO,
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", [
    family if family in CHECKED["jax"] else pytest.param(family, marks=pytest.mark.tf_only)
    for family in FAMILIES])
def test_two_replicas_train_as_one_device(results, family):
    if family not in CHECKED[backend()]:
        pytest.skip(f"{family} is checked on TensorFlow only (JAX's test time: "
                    "its train step is the diffusion model's, checked here)")
    compare(results[family]["one"], results[family]["two"], family,
            family in VALIDATED[backend()])


if __name__ == "__main__":
    main()
