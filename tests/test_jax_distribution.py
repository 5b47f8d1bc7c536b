"""`kgen.trainers.jax_distribution`: JAX data parallelism on one process
and across processes (two CPU processes on 127.0.0.1, Gloo collectives).
"""

import io
import os
import socket
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from kgen.trainers import jax_distribution
from kgen.trainers.jax_distribution import DistributionError
from tests.conftest import FAST_XLA_FLAGS
from tests.conftest import REPO
from tests.conftest import backend

# A tiny vae_digits: two steps, then the validation pass.
# float32 whatever the CPU: `precision=auto` picks bfloat16 on a CPU that
# computes it natively, whose rounding differs with the order two processes
# sum their gradients in, and this test is about that order alone.
TRAIN_SETTINGS = ["epochs=1", "steps_per_epoch=2", "filters=8,16", "hidden_dim=16",
                  "precision=float32"]


def cluster(address="127.0.0.1:1234", count="2", index="0"):
    return {"KERAS_DISTRIBUTION_JOB_ADDRESSES": address,
            "KERAS_DISTRIBUTION_NUM_PROCESSES": count,
            "KERAS_DISTRIBUTION_PROCESS_ID": index}


@pytest.mark.backend_agnostic
def test_process_settings_read_from_the_environment():
    assert jax_distribution.process_settings({}) is None
    assert jax_distribution.process_settings(cluster(index="1")) == {
        "job_addresses": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}
    both = cluster(address="10.0.0.1:1234,10.0.0.2:2345")
    assert jax_distribution.process_settings(both)["job_addresses"] == \
        "10.0.0.1:1234,10.0.0.2:2345"


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("environ, named", [
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}, "KERAS_DISTRIBUTION_JOB_ADDRESSES"),
    (cluster(address="127.0.0.1"), "KERAS_DISTRIBUTION_JOB_ADDRESSES='127.0.0.1'"),
    (cluster(address="a:1,b:2,c:3"), "lists 3 processes"),
    (cluster(count="two"), "KERAS_DISTRIBUTION_NUM_PROCESSES='two'"),
    (cluster(count="0"), "KERAS_DISTRIBUTION_NUM_PROCESSES='0'"),
    (cluster(index="2"), "KERAS_DISTRIBUTION_PROCESS_ID=2"),
    (cluster(index="-1"), "KERAS_DISTRIBUTION_PROCESS_ID='-1'"),
])
def test_bad_process_settings_are_named(environ, named):
    with pytest.raises(DistributionError, match=named.replace("[", r"\[")):
        jax_distribution.process_settings(environ)


def test_data_parallel_is_jax_only():
    if backend() == "jax":
        pytest.skip("the JAX backend has data_parallel(); tested below")
    with pytest.raises(DistributionError, match=f"KERAS_BACKEND={backend()}"):
        jax_distribution.data_parallel({})


def test_data_parallel_spans_every_device_and_checks_settings_first():
    if backend() != "jax":
        pytest.skip("keras.distribution data parallelism is the JAX backend's")
    import jax

    with pytest.raises(DistributionError, match="KERAS_DISTRIBUTION_PROCESS_ID=5"):
        jax_distribution.data_parallel(cluster(index="5"))
    try:
        distribution = jax_distribution.data_parallel({})
        assert keras.distribution.distribution() is distribution
        assert isinstance(distribution, keras.distribution.DataParallel)
        assert list(distribution.device_mesh.devices) == jax.devices()
    finally:
        keras.distribution.set_distribution(None)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def saved_weights(path):
    """Every array in a `.keras` file's weights, by its path in the file."""
    import h5py

    with zipfile.ZipFile(path) as archive:
        data = archive.read("model.weights.h5")
    arrays = {}
    with h5py.File(io.BytesIO(data), "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, np.array(item))
                     if isinstance(item, h5py.Dataset) else None)
    assert arrays
    return arrays


@pytest.mark.slow
def test_two_processes_train_as_one(tmp_path):
    """Two `kgen train --strategy data_parallel` processes joined through
    `KERAS_DISTRIBUTION_*` on 127.0.0.1 (one CPU device each) end with the
    same weights, and with those of one process on the same global
    batches."""
    if backend() != "jax":
        pytest.skip("multi-process keras.distribution is the JAX backend's")
    address = f"127.0.0.1:{free_port()}"
    sets = [arg for setting in TRAIN_SETTINGS for arg in ("--set", setting)]
    processes = []
    for index in range(2):
        env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
               "TF_CPP_MIN_LOG_LEVEL": "3",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count=1 {FAST_XLA_FLAGS}",
               **cluster(address, "2", str(index))}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "kgen", "train", "vae_digits", "--strategy",
             "data_parallel", "--no-export", "--run-dir", str(tmp_path / f"p{index}"),
             *sets], cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    try:
        outputs = [p.communicate(timeout=600) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
        assert "trained in" in out

    first, second = (saved_weights(tmp_path / f"p{i}" / "best.keras") for i in (0, 1))
    assert sorted(first) == sorted(second)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)

    # One process, no distribution: the recipe's model, seeded as `kgen
    # train` seeds it, fitted on the same global batches (its train steps
    # alone: the run's callbacks and validation pass change no weight).
    from kgen import config as kgen_config

    module = kgen_config.load_recipe("vae_digits")
    config = kgen_config.apply_overrides(
        module.CONFIG, dict(s.split("=", 1) for s in TRAIN_SETTINGS))
    keras.utils.set_random_seed(config["seed"])
    model, data = module.build(config)
    model.fit(data.train, epochs=1, steps_per_epoch=config["steps_per_epoch"],
              shuffle=False, verbose=0)
    path = tmp_path / "one.keras"
    model.save(path)
    one = saved_weights(path)
    assert sorted(one) == sorted(first)
    compared = [name for name in first if "seed_generator" not in name]
    assert len(compared) > 10, compared
    for name in compared:  # the seed state also counts the validation's draws
        np.testing.assert_allclose(first[name], one[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)
