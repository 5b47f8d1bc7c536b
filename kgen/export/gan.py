"""Serving signatures of `kgen.models.GAN`."""

import tensorflow as tf

from kgen.export import common


def gan_signatures(model, max_rows):
    """`generate`: per-row `seed` (and `label` for a conditional GAN) ->
    `images` in [0, 1], from the EMA generator when there is one: the
    graph of `model.sample`, the computation `model.generate` runs."""
    num_classes = model.num_classes
    label_spec = tf.TensorSpec([None], tf.int32, name="label")

    def checks(seed, label=None):
        found = common.check_rows(seed, max_rows)
        if num_classes:
            found += common.check_same_rows(seed, label=label)
            found += common.check_labels(label, num_classes)
        return found

    if num_classes:
        @tf.function(input_signature=[common.SEED_SPEC, label_spec])
        def generate(seed, label):
            with tf.control_dependencies(checks(seed, label)):
                pairs = common.seed_pairs(seed)
                return {"images": model.sample(pairs, tf.identity(label))}
        inputs = f"seed int64 [batch], label int32 [batch] in [0, {num_classes})"
    else:
        @tf.function(input_signature=[common.SEED_SPEC])
        def generate(seed):
            with tf.control_dependencies(checks(seed)):
                return {"images": model.sample(common.seed_pairs(seed))}
        inputs = "seed int64 [batch]"

    metadata = {
        "output_kind": "images",
        "image_shape": list(model.image_shape),
        "latent_dim": model.latent_dim,
        "num_classes": num_classes,
        "uses_ema_generator": model.ema_generator is not None,
        "signatures": {
            "generate": f"{inputs} -> images float32 [batch, h, w, c] in [0, 1]",
        },
    }
    return {"generate": generate}, metadata
