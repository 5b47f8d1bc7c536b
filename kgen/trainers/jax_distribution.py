"""JAX data parallelism: one `keras.distribution.DataParallel` over every
device of every process.

On one host, `data_parallel()` spreads each global batch over the local
devices (several host CPUs with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`, or the GPUs/TPUs).
Across processes it first joins them with `keras.distribution.initialize()`
(`jax.distributed.initialize`), configured by the environment Keras reads:

```
KERAS_DISTRIBUTION_JOB_ADDRESSES=10.0.0.1:1234   # the coordinator (process 0), host:port
KERAS_DISTRIBUTION_NUM_PROCESSES=2
KERAS_DISTRIBUTION_PROCESS_ID=0                  # 1 on the other process
```

Every process runs the same command; Keras then gives each process its
contiguous share of every global batch (`DataParallel.distribute_dataset`),
and XLA all-reduces the gradients. Processes on CPU exchange them over TCP
with Gloo (this JAX's default `jax_cpu_collectives_implementation`), so two
processes on one machine (`127.0.0.1`) are a working cluster.

Example:

```python
from kgen.trainers import jax_distribution
distribution = jax_distribution.data_parallel()   # before any JAX computation
model, data = recipe.build(config)                # variables replicated on all devices
model.fit(data.train, epochs=1)
```
"""

import os

import keras

from kgen.errors import UserError

ENVIRONMENT = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
               "KERAS_DISTRIBUTION_PROCESS_ID")


class DistributionError(UserError, ValueError):
    """A multi-process setting that cannot work, named in the message."""


def process_settings(environ=None):
    """The multi-process settings from `environ` (default `os.environ`):
    `None` when none of `ENVIRONMENT` is set, else a dict with
    `job_addresses`, `num_processes` and `process_id`.

    Raises:
        DistributionError: some but not all of the variables are set, or
            one holds a bad value (the message names it).
    """
    environ = os.environ if environ is None else environ
    given = {name: environ[name] for name in ENVIRONMENT if environ.get(name)}
    if not given:
        return None
    missing = [name for name in ENVIRONMENT if name not in given]
    if missing:
        raise DistributionError(
            f"{', '.join(f'{k}={v}' for k, v in given.items())} set but "
            f"{', '.join(missing)} not: a multi-process run needs all of "
            f"{', '.join(ENVIRONMENT)}")
    addresses = given["KERAS_DISTRIBUTION_JOB_ADDRESSES"]
    for address in addresses.split(","):
        host, _, port = address.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DistributionError(
                f"KERAS_DISTRIBUTION_JOB_ADDRESSES={addresses!r}: expected "
                "host:port of the coordinator (process 0), or one host:port "
                "per process, comma-separated")
    count = _int(given, "KERAS_DISTRIBUTION_NUM_PROCESSES", 1)
    index = _int(given, "KERAS_DISTRIBUTION_PROCESS_ID", 0)
    if index >= count:
        raise DistributionError(
            f"KERAS_DISTRIBUTION_PROCESS_ID={index}: must be in [0, {count}) "
            f"with KERAS_DISTRIBUTION_NUM_PROCESSES={count}")
    if "," in addresses and len(addresses.split(",")) != count:
        raise DistributionError(
            f"KERAS_DISTRIBUTION_JOB_ADDRESSES={addresses!r} lists "
            f"{len(addresses.split(','))} processes but "
            f"KERAS_DISTRIBUTION_NUM_PROCESSES={count}")
    return {"job_addresses": addresses, "num_processes": count, "process_id": index}


def _int(given, name, minimum):
    text = given[name]
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise DistributionError(f"{name}={text!r}: must be an int >= {minimum}")
    return value


def data_parallel(environ=None):
    """Set (and return) a `keras.distribution.DataParallel` over all devices.

    When the multi-process environment is set (`ENVIRONMENT`, see the
    module docstring) and this process has not joined its cluster yet, it
    calls `keras.distribution.initialize()` first, which blocks until every
    process has started (the coordinator waits for the others). That must
    happen before this process runs any JAX computation.

    Args:
        environ: where to read the settings (default `os.environ`).

    Returns:
        The distribution, also set as Keras' global distribution.

    Raises:
        DistributionError: not the JAX backend, bad multi-process settings,
            or JAX already started on its own before joining the cluster.
    """
    backend = keras.backend.backend()
    if backend != "jax":
        raise DistributionError(
            f"data_parallel: keras.distribution data parallelism needs the jax "
            f"backend (KERAS_BACKEND={backend}); use a tf.distribute strategy on "
            "tensorflow")
    import jax

    settings = process_settings(environ)
    if settings is not None and settings["num_processes"] > 1 \
            and not jax.distributed.is_initialized():
        try:
            keras.distribution.initialize(**settings)
        except RuntimeError as error:
            raise DistributionError(
                f"KERAS_DISTRIBUTION_PROCESS_ID={settings['process_id']}: could "
                f"not join the {settings['num_processes']}-process cluster at "
                f"{settings['job_addresses']}: {error} (join it before anything "
                "runs on JAX: call data_parallel() first)") from error
    distribution = keras.distribution.DataParallel(devices=jax.devices())
    keras.distribution.set_distribution(distribution)
    return distribution
