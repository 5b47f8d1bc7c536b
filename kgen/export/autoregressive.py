"""Serving signature of `kgen.models.CausalLM`: text in, text out.

The graph tokenises the prompt with core `tf.strings` ops (a sorted
code-point table for characters, `tf.io.decode_raw` for bytes), runs the
model's own cached sampling loop (`CausalLM.generate_loop`, traced on the
TensorFlow backend into a `While` op) once per row under `tf.map_fn`, and
joins the sampled tokens back into strings. No tf-text, no PyFunc, no XLA
ops: TF Serving runs it as it is.
"""

import contextlib

import tensorflow as tf

from kgen.export import common
from kgen.models.autoregressive import MAX_NEW_TOKENS

DEFAULTS = {"max_new_tokens": 256, "temperature": 0.8, "top_k": 20}


def _core_slice_update(inputs, start_indices, updates):
    """`keras.ops.slice_update` from `Pad` + `SelectV2` instead of XLA's
    `XlaDynamicUpdateSlice` (which TF Serving's CPU build does not run)."""
    inputs = tf.convert_to_tensor(inputs)
    updates = tf.cast(updates, inputs.dtype)
    start = tf.stack([tf.cast(s, tf.int32) for s in start_indices])
    after = tf.shape(inputs) - start - tf.shape(updates)
    paddings = tf.stack([start, after], axis=1)
    mask = tf.pad(tf.ones_like(updates, tf.bool), paddings)
    out = tf.where(mask, tf.pad(updates, paddings), inputs)
    out.set_shape(inputs.shape)
    return out


@contextlib.contextmanager
def core_ops_only():
    """While tracing: keras-hub's cache update uses core ops only."""
    from keras.src.backend.tensorflow import core

    original = core.slice_update
    core.slice_update = _core_slice_update
    try:
        yield
    finally:
        core.slice_update = original


class _Codec:
    """Prompt string <-> token ids with core ops, per tokenizer kind."""

    def __init__(self, tokenizer):
        self.kind = tokenizer.kind
        if self.kind == "char":
            vocabulary = tokenizer.vocabulary
            self.code_points = tf.constant([ord(c) for c in vocabulary], tf.int32)
            self.pieces = tf.constant([c.encode("utf-8") for c in vocabulary])
        elif self.kind == "byte":
            self.pieces = tf.constant([bytes([i]) for i in range(256)])
        else:
            raise TypeError(f"cannot export tokenizer kind {self.kind!r}")

    def encode(self, prompt):
        """A scalar string -> `(ids (length,), checks)`."""
        if self.kind == "byte":
            return tf.cast(tf.io.decode_raw(prompt, tf.uint8), tf.int32), []
        code_points = tf.strings.unicode_decode(prompt, "UTF-8")
        ids = tf.searchsorted(self.code_points, code_points)
        ids = tf.minimum(ids, tf.size(self.code_points) - 1)
        known = tf.equal(tf.gather(self.code_points, ids), code_points)
        check = tf.debugging.assert_equal(
            tf.reduce_all(known), True,
            message="prompt contains characters outside the vocabulary",
        )
        return ids, [check]

    def decode(self, ids):
        return tf.strings.reduce_join(tf.gather(self.pieces, ids))


def causal_lm_signatures(model):
    """`generate`: per-row `prompt`, `seed`, `max_new_tokens`, `temperature`,
    `top_k` -> `text` (prompt + continuation) and `completion`."""
    context = model.context
    codec = _Codec(model.tokenizer)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="prompt"),
        common.SEED_SPEC,
        tf.TensorSpec([None], tf.int32, name="max_new_tokens"),
        tf.TensorSpec([None], tf.float32, name="temperature"),
        tf.TensorSpec([None], tf.int32, name="top_k"),
    ])
    def generate(prompt, seed, max_new_tokens, temperature, top_k):
        batch = tf.shape(prompt)[0]
        checks = [
            tf.debugging.assert_equal(
                tf.shape(x)[0], batch,
                message=f"{name} must have one value per prompt (same batch size)",
            )
            for name, x in (("seed", seed), ("max_new_tokens", max_new_tokens),
                            ("temperature", temperature), ("top_k", top_k))
        ] + [
            tf.debugging.assert_greater(
                tf.strings.length(prompt), 0, message="prompt must not be empty"),
            tf.debugging.assert_greater_equal(
                max_new_tokens, 1,
                message=f"max_new_tokens must be in [1, {MAX_NEW_TOKENS}]"),
            tf.debugging.assert_less_equal(
                max_new_tokens, MAX_NEW_TOKENS,
                message=f"max_new_tokens must be in [1, {MAX_NEW_TOKENS}]"),
            tf.debugging.assert_all_finite(
                temperature, message="temperature must be finite and > 0"),
            tf.debugging.assert_greater(
                temperature, 0.0, message="temperature must be finite and > 0"),
            tf.debugging.assert_greater_equal(
                top_k, 0, message="top_k must be >= 0 (0: no top-k filter)"),
        ]
        with tf.control_dependencies(checks):
            seed = tf.identity(seed)

        def row(args):
            text, row_seed, new_tokens, row_temperature, row_top_k = args
            ids, row_checks = codec.encode(text)
            length = tf.size(ids)
            row_checks.append(tf.debugging.assert_less_equal(
                length, context,
                message=f"prompt is longer than the context of {context} tokens"))
            with tf.control_dependencies(row_checks):
                ids = tf.identity(ids)
            end = length + new_tokens
            buffer = tf.concat([ids, tf.zeros([new_tokens + context], tf.int32)], 0)
            tokens, lengths = model.generate_loop(
                buffer[None], length, end, tf.cast(row_seed, tf.int32)[None],
                row_temperature, row_top_k, tf.constant(1.0), tf.constant(-1),
                kind="top_k", use_cache=True,
            )
            out = tokens[0, :lengths[0]]
            return codec.decode(out), codec.decode(out[length:])

        # Patched for the trace itself: saving may trace the function again.
        with core_ops_only():
            text, completion = tf.map_fn(
                row, (prompt, seed, max_new_tokens, temperature, top_k),
                fn_output_signature=(tf.TensorSpec([], tf.string),
                                     tf.TensorSpec([], tf.string)),
            )
        return {"text": text, "completion": completion}

    metadata = {
        "output_kind": "text",
        "context": context,
        "tokenizer": model.tokenizer.kind,
        "vocabulary_size": model.vocabulary_size,
        "max_new_tokens_limit": MAX_NEW_TOKENS,
        "defaults": {"prompt": model.default_prompt, **DEFAULTS},
        "signatures": {
            "generate": (
                "prompt string [batch], seed int64 [batch], max_new_tokens int32 "
                "[batch], temperature float32 [batch] (> 0), top_k int32 [batch] "
                "(0: off) -> text string [batch] (prompt + continuation), "
                "completion string [batch] (continuation only)"
            ),
        },
    }
    return {"generate": generate}, metadata
