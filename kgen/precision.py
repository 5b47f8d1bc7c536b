"""Mixed precision: `--set precision=float32|mixed_bfloat16|mixed_float16`.

Every recipe takes the setting (`kgen.config.COMMON`). The recipe's model is
built under the Keras dtype policy of that name (`policy_scope`), so each
layer computes in bfloat16 or float16 while its variables stay float32;
the policy is restored after the build, so nothing else in the process
(later models, tests, `kgen tune` trials) inherits it. Each layer records
its policy in its config, so a `.keras` checkpoint or backup reloads with
the same policies whatever the process's global policy.

What stays float32, whatever the policy:

- the variables and the optimizer state (Keras' mixed policies), the EMA
  copies (`kgen.models.ema`) included;
- the losses and metrics: every model casts what its loss reads (logits,
  log-variances, predictions, discriminator scores) to float32 first, and
  Keras' losses compute in float32;
- LayerNorm and GroupNorm statistics (Keras computes them in float32),
  the schedulers' alphas, the sampling loops' state, Griffin-Lim
  (`kgen.audio`), and every export input and output.

`mixed_float16` adds dynamic loss scaling: Keras wraps a model's optimizer
in a `keras.optimizers.LossScaleOptimizer` in `compile()`, and the GAN wraps
both of its optimizers (`kgen.models.GAN.compile`); its train steps in
`kgen.trainers` scale each phase's loss with `optimizer.scale_loss` and the
optimizer unscales the gradients (skipping a step whose gradients are not
finite).

Example:

```python
from kgen import precision
with precision.policy_scope("mixed_bfloat16"):
    model, data = recipe.build(config)   # bfloat16 compute, float32 weights
model.fit(data.train)
```
"""

import contextlib

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
DEFAULT = "float32"


def check(precision, where=None):
    """`precision` if it is one of `PRECISIONS`, else a `ConfigError`
    naming it (as `where`, default `--set precision=VALUE`) and the
    choices."""
    if isinstance(precision, str) and precision in PRECISIONS:
        return precision
    from kgen.config import ConfigError

    where = where or f"--set precision={precision}"
    raise ConfigError(f"{where}: expected one of {', '.join(PRECISIONS)}")


@contextlib.contextmanager
def policy_scope(precision):
    """Build models under the Keras dtype policy `precision`; the previous
    global policy is restored on exit (also when the block raises).

    Args:
        precision: one of `PRECISIONS` (`None`: float32).
    """
    with global_policy(check(DEFAULT if precision is None else precision)):
        yield


@contextlib.contextmanager
def global_policy(policy):
    """Keras' global dtype policy set to `policy` (a `keras.DTypePolicy`, its
    name or its serialized dict; `None` leaves it as it is) inside the
    block, and restored on exit."""
    import keras

    previous = keras.config.dtype_policy()
    if policy is not None:
        keras.config.set_dtype_policy(keras.dtype_policies.get(policy))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def uses_loss_scaling(model):
    """Whether `model` was built under `mixed_float16` (its optimizers then
    scale the loss)."""
    return model.dtype_policy.name == "mixed_float16"


def to_float32(x):
    """`x` (a tensor, or a dict/list of them) with its floating tensors
    cast to float32 (what losses, metrics, samplers and exports read)."""
    import keras

    if isinstance(x, dict):
        return {k: to_float32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_float32(v) for v in x)
    if "float" in keras.backend.standardize_dtype(x.dtype):
        return keras.ops.cast(x, "float32")
    return x
