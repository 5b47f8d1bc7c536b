"""Ops that kgen needs in a form Keras does not offer: `cache_update`.

`keras.ops.slice_update` on the TensorFlow backend emits XLA's
`XlaDynamicUpdateSlice`, which TF Serving's CPU build cannot run (it has no
XLA JIT unless started with `--xla_cpu_compilation_enabled`). Sampling loops
write into their buffers (the token buffer, the self-attention cache) with
`cache_update` instead: the same result, made of core TensorFlow ops on the
TensorFlow backend and `keras.ops.slice_update` on the others.
"""

import keras


def cache_update(inputs, start_indices, updates):
    """`inputs` with `updates` written at `start_indices` (a slice update).

    The same contract as `keras.ops.slice_update`; on the TensorFlow backend
    it is one core `TensorScatterUpdate` (the runtime updates the buffer in
    place when it can), so a traced sampling loop holds no XLA op.

    Args:
        inputs: the tensor to update.
        start_indices: one int (or int scalar tensor) per axis of `inputs`.
        updates: a tensor of the same rank, fitting inside `inputs` from
            `start_indices`.

    Returns:
        A tensor of `inputs`' shape and dtype.

    Example:

    ```python
    cache = cache_update(cache, [0, index, 0, 0], key)  # key (batch, 1, heads, dim)
    ```
    """
    rank = len(keras.ops.shape(inputs))
    if len(start_indices) != rank:
        raise ValueError(
            f"start_indices has {len(start_indices)} entries; inputs has rank {rank}"
        )
    if keras.backend.backend() == "tensorflow":
        return _tensorflow_cache_update(inputs, start_indices, updates)
    return keras.ops.slice_update(inputs, start_indices, updates)


def _tensorflow_cache_update(inputs, start_indices, updates):
    """One `TensorScatterUpdate`: the index grid covers the leading axes up
    to the last one the update does not span whole (for the KV cache: batch
    and position); the trailing axes go as whole slices."""
    import tensorflow as tf

    inputs = tf.convert_to_tensor(inputs)
    updates = tf.cast(updates, inputs.dtype)
    rank = inputs.shape.rank
    starts = [tf.cast(s, tf.int32) for s in start_indices]
    last = -1  # the last axis the update does not cover from 0 to the end
    for axis in range(rank):
        start = tf.get_static_value(starts[axis])
        size, full = updates.shape[axis], inputs.shape[axis]
        if start is None or start != 0 or size is None or size != full:
            last = axis
    if last < 0:
        return tf.ensure_shape(updates, inputs.shape)
    update_shape = tf.shape(updates)
    grids = tf.meshgrid(
        *[tf.range(update_shape[axis]) + starts[axis] for axis in range(last + 1)],
        indexing="ij",
    )
    out = tf.tensor_scatter_nd_update(inputs, tf.stack(grids, axis=-1), updates)
    return tf.ensure_shape(out, inputs.shape)
