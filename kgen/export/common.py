"""Graph pieces shared by the families' serving signatures (TensorFlow)."""

import tensorflow as tf

SEED_SPEC = tf.TensorSpec([None], tf.int64, name="seed")


def seed_pairs(seed):
    """int64 seeds `[batch]` -> int32 `[batch, 2]` (low, high) halves, the
    graph twin of `kgen.random.seed_pairs` (all 64 bits reach the hash)."""
    seed = tf.cast(seed, tf.int64)
    low = tf.bitwise.bitwise_and(seed, tf.constant(0xFFFFFFFF, tf.int64))
    low = tf.where(low >= 2**31, low - 2**32, low)
    high = tf.bitwise.right_shift(seed, tf.constant(32, tf.int64))
    return tf.stack([tf.cast(low, tf.int32), tf.cast(high, tf.int32)], axis=-1)


def check_rows(x, max_rows, name="seed"):
    """Checks that a request has between 1 and `max_rows` rows (`x`'s
    leading axis): INVALID_ARGUMENT naming `name` otherwise."""
    rows = tf.shape(x)[0]
    return [
        tf.debugging.assert_positive(
            rows, message=f"{name} must have at least one row (empty batch)"),
        tf.debugging.assert_less_equal(
            rows, tf.constant(max_rows, tf.int32),
            message=f"{name} has more rows than this export allows (max_rows={max_rows})"),
    ]


def check_same_rows(seed, **inputs):
    """Checks that every named input has one value per row (as `seed`)."""
    return [
        tf.debugging.assert_equal(
            tf.shape(x)[0], tf.shape(seed)[0],
            message=f"{name} must have one value per row (as seed)")
        for name, x in inputs.items()
    ]


def check_shape(x, row_shape, name):
    """Checks that each row of `x` has `row_shape`."""
    return [tf.debugging.assert_equal(
        tf.shape(x)[1:], tf.constant(row_shape, tf.int32),
        message=f"{name} must have shape [batch, {', '.join(map(str, row_shape))}]")]


def check_labels(label, num_classes, name="label"):
    """Checks that every label is in `[0, num_classes)`."""
    message = f"{name} must be in [0, {num_classes})"
    return [
        tf.debugging.assert_greater_equal(label, 0, message=message),
        tf.debugging.assert_less(label, num_classes, message=message),
    ]


def normal_per_row(seeds, shape, dtype=tf.float32):
    """One standard normal tensor of `shape` per int64 seed.

    Row `i` depends only on `seeds[i]`, so a row's sample does not change
    with the other rows of the request (TF Serving's row format).
    """
    zero = tf.zeros([], tf.int64)

    def draw(seed):
        return tf.random.stateless_normal(
            shape, seed=tf.stack([seed, zero]), dtype=dtype
        )

    return tf.map_fn(
        draw, seeds, fn_output_signature=tf.TensorSpec(shape, dtype)
    )


def check_unit_range(x, name):
    """Checks that every value of `x` is in [0, 1]."""
    return [
        tf.debugging.assert_greater_equal(
            x, tf.zeros([], x.dtype), message=f"{name} must be in [0, 1]"
        ),
        tf.debugging.assert_less_equal(
            x, tf.ones([], x.dtype), message=f"{name} must be in [0, 1]"
        ),
    ]


def check_images(images, image_shape, name="images"):
    """Assert `images` is `[batch, *image_shape]` float in [0, 1]."""
    return check_shape(images, image_shape, name) + check_unit_range(images, name)


def check_finite(x, name):
    return [tf.debugging.assert_all_finite(x, message=f"{name} must be finite")]
