"""Next-token samplers: named presets over one per-row computation.

keras-hub names its samplers (`keras_hub.samplers.get("top_k")`); kgen keeps
the names and computes every one of them with the same per-row function,
`next_token(logits, pairs, position, temperature, top_k, top_p)`, in
`keras.ops`. A sampler is only a choice of the three per-row settings:

| sampler       | temperature | top_k        | top_p        |
|---------------|-------------|--------------|--------------|
| `greedy`      | (unused)    | 1            | 1.0 (off)    |
| `temperature` | as given    | 0 (off)      | 1.0 (off)    |
| `top_k`       | as given    | as given     | 1.0 (off)    |
| `top_p`       | as given    | 0 (off)      | as given     |

so the exported `generate` signature, which takes `temperature`, `top_k`
and `top_p` per row, offers every sampler the Python path offers, and both
draw the same tokens for the same seed: the noise is
`kgen.random.gumbel(pairs, (vocabulary,), stream=position)`, a pure
function of the row's 64-bit seed and the position.

Example:

```python
sampler = samplers.get("top_k")
settings = sampler.settings(temperature=0.8, top_k=20, top_p=0.9)
# {"temperature": 0.8, "top_k": 20, "top_p": 1.0}
```
"""

import math
import numbers

from keras import ops

from kgen import random as kgen_random


class Sampler:
    """A named choice of per-row sampling settings.

    Args:
        name: the sampler's name.
        uses: which of `temperature`, `top_k`, `top_p` it takes from the
            caller; the others are switched off.
        fixed: settings it always uses (`greedy`: `top_k=1`).
    """

    def __init__(self, name, uses, fixed=None):
        self.name = name
        self.uses = tuple(uses)
        self.fixed = dict(fixed or {})

    def settings(self, temperature=1.0, top_k=0, top_p=1.0):
        """The `temperature`, `top_k` and `top_p` this sampler samples with
        (checked; a ValueError names a bad one)."""
        given = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        values = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
        values.update({k: given[k] for k in self.uses})
        values.update(self.fixed)
        return check_settings(**values)

    def __repr__(self):
        return f"samplers.get({self.name!r})"


SAMPLERS = {
    "greedy": Sampler("greedy", (), {"top_k": 1}),
    "temperature": Sampler("temperature", ("temperature",)),
    "top_k": Sampler("top_k", ("temperature", "top_k")),
    "top_p": Sampler("top_p", ("temperature", "top_p")),
}


def get(identifier):
    """A `Sampler` by name (`"greedy"`, `"temperature"`, `"top_k"`,
    `"top_p"`), or the `Sampler` given."""
    if isinstance(identifier, Sampler):
        return identifier
    if identifier not in SAMPLERS:
        raise ValueError(f"sampler={identifier!r}: expected one of {tuple(SAMPLERS)}")
    return SAMPLERS[identifier]


def check_settings(temperature, top_k, top_p):
    """The settings as Python numbers, or a ValueError naming the bad one.

    `temperature > 0` and finite; `top_k` an int `>= 0` (0: off); `top_p`
    in `(0, 1]` (1: off).
    """
    if not (isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
            and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature={temperature!r}: must be a finite number > 0")
    if top_k is None:
        top_k = 0
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
        raise ValueError(f"top_k={top_k!r}: must be an int >= 0 (0: off)")
    if not (isinstance(top_p, numbers.Real) and not isinstance(top_p, bool)
            and 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r}: must be in (0, 1] (1: off)")
    return {"temperature": float(temperature), "top_k": int(top_k), "top_p": float(top_p)}


# --- the one per-row computation (keras.ops) -------------------------------


def filter_top_k(logits, k):
    """Keep the `k` largest logits of each row (`k (batch,)`; `k <= 0`: all)."""
    logits = ops.convert_to_tensor(logits)
    vocabulary_size = ops.shape(logits)[-1]
    k = ops.cast(k, "int32")
    k = ops.where(ops.logical_or(k <= 0, k > vocabulary_size), vocabulary_size, k)
    ascending = ops.sort(logits, axis=-1)
    threshold = ops.take_along_axis(ascending, (vocabulary_size - k)[:, None], axis=-1)
    return ops.where(logits < threshold, -1e9, logits)


def filter_top_p(logits, p):
    """Keep the fewest most likely tokens whose mass reaches `p (batch,)`
    (`p >= 1`: all)."""
    logits = ops.convert_to_tensor(logits)
    probs = ops.softmax(logits, axis=-1)
    descending = -ops.sort(-probs, axis=-1)
    before = ops.cumsum(descending, axis=-1) - descending
    kept = ops.where(before < ops.cast(p, "float32")[:, None], descending, 2.0)
    threshold = ops.min(kept, axis=-1, keepdims=True)
    filtered = ops.where(probs < threshold, -1e9, logits)
    return ops.where((ops.cast(p, "float32") >= 1.0)[:, None], logits, filtered)


def next_token(logits, pairs, position, temperature, top_k, top_p):
    """Next token ids `(batch,)` from `(batch, vocabulary)` logits.

    Each row samples with its own settings: logits divided by
    `temperature`, filtered to the `top_k` largest (0: off) and to the
    smallest set of mass `top_p` (1: off), then drawn with Gumbel noise from
    the row's seed pair and `position`; `top_k == 1` is the argmax (greedy).

    Args:
        logits: float `(batch, vocabulary)`.
        pairs: int32 `(batch, 2)` seed halves (`kgen.random.seed_pairs`).
        position: int32 scalar: the position being sampled (the noise stream).
        temperature, top_p: float32 `(batch,)`; top_k: int32 `(batch,)`.
    """
    logits = ops.cast(ops.convert_to_tensor(logits), "float32")
    greedy = ops.cast(ops.argmax(logits, axis=-1), "int32")
    scaled = logits / ops.cast(temperature, "float32")[:, None]
    scaled = filter_top_p(filter_top_k(scaled, top_k), top_p)
    noise = kgen_random.gumbel(pairs, (ops.shape(logits)[-1],), stream=position)
    drawn = ops.cast(ops.argmax(scaled + noise, axis=-1), "int32")
    return ops.where(ops.cast(top_k, "int32") == 1, greedy, drawn)
