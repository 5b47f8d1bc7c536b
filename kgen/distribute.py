"""`--strategy`: the distribution a run trains under, from the flag and the
environment.

```
none           one device (every backend)
mirrored       tf.distribute.MirroredStrategy: the devices of one host (tensorflow)
multi_worker   tf.distribute.MultiWorkerMirroredStrategy: one process per
               worker, the cluster from TF_CONFIG (tensorflow)
tpu            tf.distribute.TPUStrategy through TPUClusterResolver (tensorflow)
data_parallel  keras.distribution.DataParallel across the devices of this
               process, or of every process (jax)
```

`distribution(name)` returns a `Distribution`: every model and every
optimizer (the GAN's two included) is built under its `scope()`, and only
its chief (`is_chief`) writes a run's files. Under `tf.distribute` each
replica's loss is averaged over its share of the global batch and scaled by
`1 / num_replicas` (Keras' `scale_loss_for_distribution`), so the summed
gradients are those of the mean over the global batch; the recipe's
`batch_size` is the global batch.

Example:

```python
dist = distribution("multi_worker")   # TF_CONFIG names this worker
with dist.scope():
    model, data = recipe.build(config)
model.fit(dist.distribute_dataset(data.train), epochs=2)
```
"""

import contextlib
import json
import math
import os

import keras

from kgen.config import ConfigError

STRATEGIES = ("none", "mirrored", "multi_worker", "tpu", "data_parallel")

# What each backend can run; `none` everywhere.
SUPPORTED = {
    "tensorflow": ("none", "mirrored", "multi_worker", "tpu"),
    "jax": ("none", "data_parallel"),
    "torch": ("none",),
}
_BACKEND_OF = {"mirrored": "tensorflow", "multi_worker": "tensorflow",
               "tpu": "tensorflow", "data_parallel": "jax"}


class Distribution:
    """A `--strategy` made for this process.

    Args:
        name: the `--strategy` value.
        strategy: the `tf.distribute.Strategy`, or `None` (no strategy, or
            a `keras.distribution` on JAX, which is global).
        is_chief: whether this process writes the run's files.
        num_replicas: replicas that share each global batch.
    """

    def __init__(self, name, strategy=None, is_chief=True, num_replicas=1):
        self.name = name
        self.strategy = strategy
        self.is_chief = is_chief
        self.num_replicas = num_replicas

    def scope(self):
        """The context every model and optimizer is built under."""
        if self.strategy is None:
            return contextlib.nullcontext()
        return self.strategy.scope()

    def distribute_dataset(self, dataset):
        """`dataset` sharded by data across workers (a `tf.data.Dataset` of
        global batches; anything else is returned as it is).

        Keras distributes a `tf.data.Dataset` itself; this sets the
        auto-shard policy to DATA, so each worker keeps its part of every
        global batch whatever files the pipeline reads (the default, FILE,
        splits a file-based pipeline by file, which gives workers unequal
        step counts).
        """
        if self.strategy is None or not hasattr(dataset, "with_options"):
            return dataset
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        return dataset.with_options(options)

    def __repr__(self):
        return (f"Distribution({self.name!r}, num_replicas={self.num_replicas}, "
                f"is_chief={self.is_chief})")


def check(name, backend=None):
    """A ConfigError unless `--strategy name` runs on `backend` (default:
    Keras' backend)."""
    backend = backend or keras.backend.backend()
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy {name}: expected one of {', '.join(STRATEGIES)}")
    supported = SUPPORTED.get(backend, ("none",))
    if name not in supported:
        raise ConfigError(
            f"--strategy {name} needs --backend {_BACKEND_OF[name]} (got {backend}); "
            f"{backend} supports --strategy {' or '.join(supported)}"
        )


def distribution(name="none"):
    """The `Distribution` for `--strategy name` on Keras' backend.

    Raises:
        ConfigError: an unknown name, a strategy this backend cannot run,
            no TPU found (`tpu`), or a missing or bad `TF_CONFIG`
            (`multi_worker`).
    """
    check(name)
    if name == "none":
        return Distribution(name)
    if name == "data_parallel":
        return Distribution(name, num_replicas=_jax_data_parallel())
    import tensorflow as tf

    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        return Distribution(name, strategy, num_replicas=strategy.num_replicas_in_sync)
    if name == "multi_worker":
        return _multi_worker(tf)
    return _tpu(tf)


def _jax_data_parallel():
    """Set Keras' global distribution to data parallelism over every device
    (of every process, joining their cluster first when it is configured);
    returns the device count."""
    from kgen.trainers import jax_distribution

    distribution = jax_distribution.data_parallel()
    return math.prod(distribution.device_mesh.shape)


def cluster_from_env():
    """`(cluster, task_type, task_index)` of `TF_CONFIG`, checked.

    Raises:
        ConfigError: `TF_CONFIG` missing, not JSON, or naming no task of
            its cluster.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError(
            "--strategy multi_worker needs TF_CONFIG, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}} (see the README)'
        )
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        task_type, index = task["type"], int(task["index"])
        if not 0 <= index < len(cluster[task_type]):
            raise IndexError(f"task index {index} outside the {task_type} list")
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ConfigError(f"TF_CONFIG={raw}: {type(e).__name__}: {e}") from None
    return cluster, task_type, index


def is_chief_task(cluster, task_type, index):
    """The chief is the `chief` task, else worker 0 (TF's convention)."""
    if task_type == "chief":
        return True
    return "chief" not in cluster and task_type == "worker" and index == 0


# A process configures its collectives once, so it holds one multi-worker
# strategy (for the `TF_CONFIG` it was made with) for every run it trains.
_MULTI_WORKER = {}


def _multi_worker(tf):
    cluster, task_type, index = cluster_from_env()
    key = os.environ["TF_CONFIG"]
    if key not in _MULTI_WORKER:
        if _MULTI_WORKER:
            raise ConfigError(
                f"TF_CONFIG={key}: this process already joined the cluster "
                f"{next(iter(_MULTI_WORKER))}; a worker belongs to one cluster")
        _MULTI_WORKER[key] = tf.distribute.MultiWorkerMirroredStrategy()
    strategy = _MULTI_WORKER[key]
    return Distribution("multi_worker", strategy,
                        is_chief=is_chief_task(cluster, task_type, index),
                        num_replicas=strategy.num_replicas_in_sync)


def _tpu(tf):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ConfigError(
            f"--strategy tpu: no TPU was found ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no detail'}); set TPU_NAME or "
            f"run on a TPU VM, or use --strategy none|mirrored|multi_worker"
        ) from None
    strategy = tf.distribute.TPUStrategy(resolver)
    return Distribution("tpu", strategy, num_replicas=strategy.num_replicas_in_sync)
