"""The exponential moving average (EMA) of a network's weights, shared by the
GAN (`ema_generator`) and diffusion (`ema_denoiser`) families.

The EMA copy is what samples and exports: `generate()`, the SavedModel and
(for diffusion) the validation loss that picks `best.keras` all read it.
It is updated once per optimizer step, in the train step
(`kgen.trainers`), never as a side effect of calling the model, with a
warmed-up decay

    decay_n = min(ema_decay, (1 + n) / (10 + n))    after n updates,

so the average does not drag the random initial weights through thousands
of steps (the first update keeps 10% of them, the tenth about 55%).

The copy and the update counter are non-trainable weights of the model that
owns them, so `.keras` files, `BackupAndRestore`, the JAX trainer's state
and `tf.distribute` replicas carry them like BatchNorm statistics (each
replica averages its own copy of the mirrored weights, which stay equal).

Example:

```python
class MyModel(GenerativeModel):
    def __init__(self, net, ema_decay=0.999, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.ema_decay = ema.check_decay(ema_decay)
        self.ema_net = ema.average_copy(net, self.ema_decay)
        self.ema_updates = ema.update_counter(self)

    def update_ema(self):
        ema.update(self.ema_net, self.net, self.ema_decay, self.ema_updates)
```
"""

import keras
from keras import ops


def check_decay(ema_decay, name="ema_decay"):
    """`ema_decay` as a float in [0, 1), or `None` (no EMA)."""
    if ema_decay is None:
        return None
    if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) \
            or not 0.0 <= float(ema_decay) < 1.0:
        raise ValueError(f"{name}={ema_decay!r}: must be in [0, 1) or None")
    return float(ema_decay)


def average_copy(network, ema_decay):
    """A non-trainable clone of `network` holding a copy of its weights (the
    average's starting point), or `None` when `ema_decay` is `None`."""
    if ema_decay is None:
        return None
    copy = keras.models.clone_model(network)
    for average, weight in zip(copy.weights, network.weights):
        average.assign(ops.convert_to_numpy(weight))  # a copy, not a shared buffer
    copy.trainable = False
    return copy


def update_counter(model):
    """The model's non-trainable count of EMA updates (float32 scalar)."""
    return model.add_weight(shape=(), initializer="zeros", trainable=False,
                            name="ema_updates")


def warmup_decay(ema_decay, updates):
    """`min(ema_decay, (1 + n) / (10 + n))` after `n = updates` updates."""
    n = ops.cast(updates, "float32")
    return ops.minimum(ops.cast(ema_decay, "float32"), (1.0 + n) / (10.0 + n))


def update(average, network, ema_decay, updates):
    """One EMA step: `average <- d * average + (1 - d) * network` for every
    float weight (BatchNorm statistics included; others are copied),
    `d = warmup_decay(...)`, then `updates += 1`. Does nothing when
    `average` is `None`."""
    if average is None:
        return
    decay = warmup_decay(ema_decay, updates)
    for avg, weight in zip(average.weights, network.weights):
        value = ops.stop_gradient(ops.cast(weight, avg.dtype))
        if "float" not in str(avg.dtype):  # e.g. a seed generator's state
            avg.assign(value)
            continue
        d = ops.cast(decay, avg.dtype)
        avg.assign(d * avg + (1.0 - d) * value)
    updates.assign(updates + 1.0)
