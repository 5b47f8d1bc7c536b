"""Stateless per-row random numbers, the same on every backend and in exports.

kgen's generate contract: row `i` of `generate(n, seed=s)` is drawn from the
64-bit seed `s + i` alone, so it equals `generate(1, seed=s + i)[0]` and the
exported SavedModel's row for seed `s + i`. That needs a generator that is

- stateless (a pure function of the row's seed, a stream number and the
  element's index: traceable by `tf.function` and `jax.jit`, nothing to
  carry through a sampling loop),
- written once in `keras.ops` and built from 32-bit integer arithmetic
  that wraps identically on TensorFlow, JAX and PyTorch (so the bits agree
  exactly and the floats to rounding), and
- made of core TensorFlow ops when traced for an export.

Seeds are 64-bit. Inside a computation a batch of seeds travels as int32
`(batch, 2)` pairs (low and high halves: JAX runs in 32-bit by default);
`seed_pairs()` splits NumPy seeds and `kgen.export.common.seed_pairs` does
the same in the graph. Each value hashes (low, high, stream, index) with
lowbias32 (C. Wellons' full-avalanche 32-bit mix): uniforms take 24 bits,
normals use Box-Muller over two streams.

Example:

```python
pairs = seed_pairs(row_seeds(5, 3))          # seeds 5, 6, 7
z = normal(pairs, (8,))                      # (3, 8); row 1 == normal(seed_pairs([6]), (8,))[0]
```
"""

import math

import numpy as np

MIN_SEED = -(2**63)
MAX_SEED = 2**63 - 1

_GOLDEN = 0x9E3779B9
_LOW_SALT = 0x632BE5AB
_STREAM_SALT = 0x85EBCA6B


def _int32(value):
    """A Python int's low 32 bits as a signed NumPy int32."""
    value = int(value) & 0xFFFFFFFF
    return np.int32(value - (1 << 32) if value >= (1 << 31) else value)


def check_seed(seed, n=1, name="seed"):
    """`seed` as an int such that `seed + n - 1` is still a 64-bit seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{name}={seed!r}: must be an int")
    seed = int(seed)
    if not MIN_SEED <= seed <= MAX_SEED - (int(n) - 1):
        raise ValueError(
            f"{name}={seed}: with {n} row(s) the seeds {name}..{name}+{int(n) - 1} "
            f"must lie in [{MIN_SEED}, {MAX_SEED}] (64-bit)"
        )
    return seed


def row_seeds(seed, n):
    """The int64 seeds `seed, seed + 1, ..., seed + n - 1` of `n` rows."""
    seed = check_seed(seed, n)
    return np.array([seed + i for i in range(int(n))], dtype=np.int64)


def seed_pairs(seeds):
    """int64 seeds `(batch,)` -> int32 `(batch, 2)`: (low, high) halves."""
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    low = (seeds & 0xFFFFFFFF).astype(np.int64)
    low = np.where(low >= 2**31, low - 2**32, low).astype(np.int32)
    high = (seeds >> 32).astype(np.int32)
    return np.stack([low, high], axis=-1)


# --- 32-bit integer hashing in keras.ops ----------------------------------


def _ops():
    from keras import ops

    return ops


def _const(value):
    return _ops().convert_to_tensor(_int32(value), "int32")


def _shift_right(x, bits):
    """Logical right shift of int32 bits (the sign bit shifts in as 0)."""
    ops = _ops()
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def mix(x):
    """lowbias32: a full-avalanche hash of int32 values (wrapping arithmetic)."""
    ops = _ops()
    x = ops.bitwise_xor(x, _shift_right(x, 16))
    x = ops.multiply(x, _const(0x7FEB352D))
    x = ops.bitwise_xor(x, _shift_right(x, 15))
    x = ops.multiply(x, _const(0x846CA68B))
    return ops.bitwise_xor(x, _shift_right(x, 16))


def _row_keys(pairs, stream):
    """int32 `(batch,)`: one key per row and stream."""
    ops = _ops()
    pairs = ops.cast(pairs, "int32")
    key = mix(ops.bitwise_xor(pairs[:, 0], _const(_LOW_SALT)))
    key = mix(ops.bitwise_xor(key, pairs[:, 1]))
    stream = ops.cast(stream, "int32")
    return mix(ops.bitwise_xor(key, ops.add(ops.multiply(stream, _const(_STREAM_SALT)),
                                            _const(_GOLDEN))))


def bits(pairs, size, stream=0):
    """int32 `(batch, size)` hash bits of each row's seed, stream and index."""
    ops = _ops()
    index = ops.multiply(ops.arange(int(size), dtype="int32"), _const(_GOLDEN))
    return mix(mix(ops.add(_row_keys(pairs, stream)[:, None], index[None, :])))


def uniform(pairs, shape, stream=0):
    """float32 `(batch, *shape)` uniform in (0, 1), row `r` from `pairs[r]`.

    Args:
        pairs: int32 `(batch, 2)` seed halves (`seed_pairs`).
        shape: static per-row shape.
        stream: int or int32 scalar tensor: independent draws for the same
            seed (e.g. one stream per sampling step).
    """
    ops = _ops()
    shape = tuple(int(d) for d in shape)
    size = int(np.prod(shape)) if shape else 1
    u = (ops.cast(_shift_right(bits(pairs, size, stream), 8), "float32") + 0.5) * (
        1.0 / (1 << 24)
    )
    return ops.reshape(u, (-1, *shape))


def normal(pairs, shape, stream=0):
    """float32 `(batch, *shape)` standard normal (Box-Muller over streams
    `2 * stream` and `2 * stream + 1`), row `r` from `pairs[r]` alone."""
    ops = _ops()
    stream = ops.cast(stream, "int32")
    u1 = uniform(pairs, shape, 2 * stream)
    u2 = uniform(pairs, shape, 2 * stream + 1)
    return ops.sqrt(-2.0 * ops.log(u1)) * ops.cos((2.0 * math.pi) * u2)


def gumbel(pairs, shape, stream=0):
    """float32 `(batch, *shape)` Gumbel(0, 1): `argmax(logits + gumbel)` is a
    draw from `softmax(logits)`."""
    ops = _ops()
    return -ops.log(-ops.log(uniform(pairs, shape, stream)))
