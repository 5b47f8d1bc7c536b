import keras
import numpy as np
import pytest

from kgen.ops import cache_update


@pytest.mark.parametrize("shape, start, update_shape", [
    ((3, 2, 8, 4, 5), (0, 0, 5, 0, 0), (3, 2, 1, 4, 5)),   # one position of a KV cache
    ((2, 8, 4, 5), (0, 3, 0, 0), (2, 4, 4, 5)),            # several positions
    ((4, 6), (1, 2), (2, 3)),                              # a block in the middle
    ((4, 6), (0, 0), (4, 6)),                              # the whole array
])
def test_cache_update_matches_numpy(shape, start, update_shape):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=shape).astype("float32")
    updates = rng.normal(size=update_shape).astype("float32")
    expected = inputs.copy()
    expected[tuple(slice(s, s + n) for s, n in zip(start, update_shape))] = updates
    out = cache_update(inputs, list(start), updates)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), expected)
    starts = [keras.ops.convert_to_tensor(s, "int32") for s in start]
    out = cache_update(keras.ops.convert_to_tensor(inputs), starts,
                       keras.ops.convert_to_tensor(updates))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), expected)


@pytest.mark.tf_only
@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the TensorFlow graph is what an export holds")
def test_cache_update_traces_to_core_ops_only():
    import tensorflow as tf

    @tf.function
    def update(inputs, updates, start):
        return cache_update(inputs, tf.unstack(start), updates)

    inputs, updates = tf.zeros((2, 8, 4, 5)), tf.ones((2, 1, 4, 5))
    start = tf.constant([0, 3, 0, 0])
    np.testing.assert_array_equal(update(inputs, updates, start).numpy()[:, 3], 1.0)
    graph = update.get_concrete_function(inputs, updates, start).graph
    op_types = {op.type for op in graph.get_operations()}
    assert "TensorScatterUpdate" in op_types
    assert not any(t.startswith("Xla") for t in op_types), op_types
    # What keras.ops.slice_update would have emitted instead.
    keras_graph = tf.function(lambda x, u, s: keras.ops.slice_update(x, tf.unstack(s), u))
    keras_ops = {op.type for op in keras_graph.get_concrete_function(
        inputs, updates, start).graph.get_operations()}
    assert any(t.startswith("Xla") for t in keras_ops), keras_ops


def test_bad_start_indices_are_named():
    with pytest.raises(ValueError, match="start_indices has 1 entries; inputs has rank 2"):
        cache_update(np.zeros((2, 3), "float32"), [0], np.zeros((2, 3), "float32"))
