"""Mixed precision: `--set precision=auto|float32|mixed_bfloat16|mixed_float16`.

Every recipe takes the setting (`kgen.config.COMMON`), `auto` by default.
`auto` is decided per device when a run starts (`resolve`), from what the
backend and the operating system report (`device`):

- `mixed_bfloat16` where the device computes bfloat16 natively: a TPU, an
  NVIDIA GPU of compute capability 8.0 or newer, or a CPU with the
  AVX512_BF16 or AMX-BF16 instructions (`kgen.machine.cpu_has_bf16`);
- `mixed_float16` on an NVIDIA GPU with float16 tensor cores and no
  bfloat16 (compute capability 7.x);
- `float32` everywhere else: elsewhere bfloat16 is emulated, and slower.

The run prints its choice and the reason, and records the chosen policy
(not `auto`) in its `config.json`; an export records its model's policy in
`kgen.json`. A named policy is used as it is, except on PyTorch on a CPU,
where mixed_bfloat16 without native bfloat16 and mixed_float16 are refused
(`refusal`): PyTorch's CPU convolutions then fall back to kernels whose
half-precision gradients fail.

The recipe's model is
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
import dataclasses
from typing import Optional
from typing import Tuple

AUTO = "auto"
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
CHOICES = (AUTO, *PRECISIONS)
# What a model is built under when no precision is given at all.
DEFAULT = "float32"


def check(precision, where=None):
    """`precision` if it is one of `CHOICES`, else a `ConfigError`
    naming it (as `where`, default `--set precision=VALUE`) and the
    choices."""
    if isinstance(precision, str) and precision in CHOICES:
        return precision
    from kgen.config import ConfigError

    where = where or f"--set precision={precision}"
    raise ConfigError(f"{where}: expected one of {', '.join(CHOICES)}")


@dataclasses.dataclass(frozen=True)
class Device:
    """The device a run computes on, as far as precision cares.

    Attributes:
        kind: `"cpu"`, `"gpu"` or `"tpu"`.
        name: what the backend or the OS calls it (a GPU's name, the CPU
            model).
        compute_capability: an NVIDIA GPU's `(major, minor)`; None elsewhere.
        bf16: a CPU computes bfloat16 natively (AVX512_BF16 or AMX-BF16).
        why: the CPU flags found, or why there are none.
    """

    kind: str
    name: str
    compute_capability: Optional[Tuple[int, int]] = None
    bf16: bool = False
    why: str = ""


def device(backend=None):
    """The `Device` the backend computes on: its first accelerator, else
    the CPU (read from /proc/cpuinfo by `kgen.machine`)."""
    import keras

    backend = backend or keras.backend.backend()
    found = {"tensorflow": _tensorflow_device, "jax": _jax_device,
             "torch": _torch_device}.get(backend, lambda: None)()
    if found is not None:
        return found
    from kgen import machine

    bf16, why = machine.cpu_has_bf16()
    return Device("cpu", machine.cpu_model() or "unknown CPU", bf16=bf16, why=why)


def _capability(text):
    """`(8, 6)` from `"8.6"` or `(8, 6)`; None when it cannot be read."""
    if isinstance(text, (tuple, list)) and len(text) == 2:
        return int(text[0]), int(text[1])
    try:
        major, minor = str(text).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def _tensorflow_device():
    import tensorflow as tf

    if tf.config.list_logical_devices("TPU"):
        return Device("tpu", "TPU")
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    return Device("gpu", details.get("device_name", "GPU"),
                  _capability(details.get("compute_capability")))


def _jax_device():
    import jax

    first = jax.devices()[0]
    if first.platform == "tpu":
        return Device("tpu", first.device_kind)
    if first.platform == "gpu":
        return Device("gpu", first.device_kind,
                      _capability(getattr(first, "compute_capability", None)))
    return None


def _torch_device():
    import torch

    if not torch.cuda.is_available():
        return None
    return Device("gpu", torch.cuda.get_device_name(0),
                  _capability(torch.cuda.get_device_capability(0)))


def choose(found):
    """`(policy, reason)` that `auto` means on the `Device` `found`."""
    if found.kind == "tpu":
        return "mixed_bfloat16", f"{found.name} computes bfloat16 natively"
    if found.kind == "gpu":
        cc = found.compute_capability
        if cc is None:
            return "float32", f"{found.name}: compute capability unknown"
        text = f"{found.name}, compute capability {cc[0]}.{cc[1]}"
        if cc >= (8, 0):
            return "mixed_bfloat16", f"{text}: bfloat16 tensor cores"
        if cc >= (7, 0):
            return "mixed_float16", f"{text}: float16 tensor cores, no bfloat16"
        return "float32", f"{text}: no float16 or bfloat16 tensor cores"
    if found.bf16:
        return "mixed_bfloat16", f"{found.name} computes bfloat16 natively ({found.why})"
    return "float32", f"{found.name} has no native bfloat16 ({found.why})"


def resolve(precision, found=None):
    """`(policy, reason)`: `auto` decided on the device (`found`, default
    `device()`), or a named policy as it is.

    Args:
        precision: one of `CHOICES` (`None`: `DEFAULT`).
        found: the `Device` to decide for; read from the backend when None.
    """
    precision = check(DEFAULT if precision is None else precision)
    if precision != AUTO:
        return precision, "set by the recipe or --set precision"
    return choose(found or device())


def refusal(policy, backend=None, found=None):
    """Why `policy` cannot train on this backend and device (None when it
    can): on PyTorch on a CPU, mixed_bfloat16 without native bfloat16, and
    mixed_float16 always (PyTorch's CPU convolutions then fall back to
    kernels whose half-precision gradients fail)."""
    import keras

    backend = backend or keras.backend.backend()
    if policy not in ("mixed_bfloat16", "mixed_float16") or backend != "torch":
        return None
    found = found or device(backend)
    if found.kind != "cpu" or (policy == "mixed_bfloat16" and found.bf16):
        return None
    if policy == "mixed_float16":
        return (f"--set precision=mixed_float16: PyTorch cannot train in float16 on a "
                f"CPU ({found.name}; its convolutions' float16 gradients fail); use "
                f"precision=auto or float32, or another backend")
    return (f"--set precision=mixed_bfloat16: PyTorch cannot train in bfloat16 on "
            f"this CPU ({found.name}: {found.why}; its convolutions' bfloat16 "
            f"gradients fail); use precision=auto or float32, or another backend")


@contextlib.contextmanager
def policy_scope(precision):
    """Build models under the Keras dtype policy `precision`; the previous
    global policy is restored on exit (also when the block raises).

    Args:
        precision: one of `CHOICES` (`None`: float32; `auto`: `resolve`d
            on this device).
    """
    with global_policy(resolve(precision)[0]):
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
