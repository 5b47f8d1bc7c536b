"""Whether a recipe's settings fit in this machine's memory, checked before building.

A setting typed with a few zeros too many (`--set latent_dim=100000000`,
`--set batch_size=1000000000`) would make Keras allocate tens of GiB for
one layer or one batch, and the run would end in an out-of-memory error
deep in the backend, or be killed. `check` refuses such settings at once,
naming the setting, with an estimate and the memory this machine has.

The estimate is read from the settings alone, without building anything,
and is a floor rather than a forecast: the settings' widths (`latent_dim`,
`hidden_dim`, `filters`, ...), positions per example (`context`, `length`)
and batch sizes (`batch_size`, `sample_count`, `val_kid_n`) bound the
largest layer and the largest activation every recipe's model holds. A
run refused here could not have run; a run that passes may still need
more (the images' size is the data's, not a setting).

Example:

```python
from kgen import memory

memory.check({"latent_dim": 100_000_000, "hidden_dim": 256, "batch_size": 32},
             sets={"latent_dim": "100000000"}, defaults={"latent_dim": 8})
# MemoryTooSmallError: --set latent_dim=100000000: the model would need about ...
```
"""

from kgen.config import format_value
from kgen.errors import UserError

# Settings that are the width of a layer (or, as tuples, of each level).
WIDTHS = ("latent_dim", "hidden_dim", "filters", "d_filters", "feature_dim", "num_mels",
          "num_mel_bins")
# Settings that are positions per example (tokens, audio samples).
LENGTHS = ("context", "length")
# Settings that are examples per step (training, logged samples, val_kid).
BATCHES = ("batch_size", "sample_count", "val_kid_n")
# float32 values.
BYTES = 4
# The weights, their gradients and Adam's two moments.
COPIES = 4
GIB = 2**30


class MemoryTooSmallError(UserError, ValueError):
    """A recipe's settings need more memory than this machine has."""


def _ints(value):
    values = value if isinstance(value, (tuple, list)) else (value,)
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0]


def _values(config, keys):
    return [v for key in keys for v in _ints(config.get(key))]


def estimate(config):
    """A floor of the memory (bytes) a model of `config` needs, by part.

    Returns:
        `{part: (bytes, what)}`: `weights` (the largest layer between the
        two widest widths, with its gradients and optimizer moments),
        `activations` (the widest layer's output for the largest batch at
        every position) and `attention` (one attention matrix, where the
        settings have `num_heads` and `context`); parts the settings say
        nothing about are left out.
    """
    widths = sorted(_values(config, WIDTHS))
    if not widths:
        return {}
    parts = {}
    wide = widths[-1]
    other = widths[-2] if len(widths) > 1 else 1
    parts["weights"] = (wide * other * COPIES * BYTES,
                        f"a {wide} x {other} layer's weights, gradients and optimizer moments")
    positions = max(_values(config, LENGTHS), default=1)
    batch = max(_values(config, BATCHES), default=1)
    per_example = f"{positions} positions x {wide}" if positions > 1 else f"{wide}"
    parts["activations"] = (batch * positions * wide * BYTES,
                            f"{batch} examples x {per_example} activations")
    heads = _values(config, ("num_heads",))
    contexts = _values(config, ("context",))
    if heads and contexts:
        parts["attention"] = (batch * heads[0] * contexts[0] ** 2 * BYTES,
                              f"{batch} x {heads[0]} heads x {contexts[0]}^2 attention scores")
    return parts


def total(parts):
    return sum(size for size, _ in parts.values())


def available():
    """`(available, total)` bytes of memory for this process: the lower of
    the machine's and its cgroup's limit."""
    free, whole = None, None
    try:
        import psutil

        memory = psutil.virtual_memory()
        free, whole = memory.available, memory.total
    except ImportError:
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
            free, whole = info.get("MemAvailable"), info.get("MemTotal")
        except (OSError, ValueError, IndexError):
            return None, None
    limit = _cgroup_limit()
    if limit is not None and whole is not None and limit < whole:
        free, whole = min(free, limit), limit
    return free, whole


def _cgroup_limit():
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def check(config, sets=None, defaults=None, where=None):
    """Refuse `config` when its estimate exceeds the memory available.

    Args:
        config: the resolved settings.
        sets: `{key: text}` the user gave (`--set`): the one whose default
            lowers the estimate most is named.
        defaults: the recipe's defaults, to find that setting.
        where: what to name when no `--set` is to blame (the recipe).

    Raises:
        MemoryTooSmallError: `--set KEY=VALUE: the model would need about
            X GiB (...); this machine has Y GiB available (of Z GiB)`.
    """
    parts = estimate(config)
    need = total(parts)
    free, whole = available()
    if free is None or need <= free:
        return config
    sets, defaults = sets or {}, defaults or {}
    blame, best = None, need
    for key in sets:
        if key in defaults:
            lowered = total(estimate({**config, key: defaults[key]}))
            if lowered < best:
                blame, best = key, lowered
    name = f"--set {blame}={sets[blame]}" if blame else (where or "these settings")
    largest = max(parts.values())[1]
    raise MemoryTooSmallError(
        f"{name}: the model would need about {need / GIB:,.1f} GiB (at least {largest}); "
        f"this machine has {free / GIB:.1f} GiB available (of {whole / GIB:.1f} GiB)"
        + (f"; the recipe's default is {blame}={format_value(defaults[blame])}" if blame
           else ""))

