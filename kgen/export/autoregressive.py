"""Serving signature of `kgen.models.CausalLM`: text in, text out.

The graph tokenises the prompt with core `tf.strings` ops (a sorted
code-point table for characters, `tf.io.decode_raw` for bytes), runs the
model's own cached sampling loop (`CausalLM.generate_loop`, traced on the
TensorFlow backend into a `While` op) over the whole batch at once (rows
keep their own prompt lengths, token counts, seeds and settings), and joins
the sampled tokens back into strings. No tf-text, no PyFunc, no XLA
ops: TF Serving runs it as it is.
"""

import tensorflow as tf

from kgen.export import common
from kgen.models.autoregressive import MAX_NEW_TOKENS
from kgen.trainers.tensorflow import core_ops_only

DEFAULTS = {"max_new_tokens": 256, "temperature": 0.8, "top_k": 20}


class _Codec:
    """Prompt strings <-> token ids with core ops, per tokenizer kind."""

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

    def encode(self, prompts):
        """Strings `(batch,)` -> `(ragged ids (batch, None), checks)`."""
        if self.kind == "byte":
            pieces = tf.strings.bytes_split(prompts)
            flat = tf.reshape(tf.io.decode_raw(pieces.flat_values, tf.uint8), [-1])
            return pieces.with_flat_values(tf.cast(flat, tf.int32)), []
        code_points = tf.strings.unicode_decode(prompts, "UTF-8")
        flat = code_points.flat_values
        ids = tf.searchsorted(self.code_points, flat)
        ids = tf.minimum(ids, tf.size(self.code_points) - 1)
        known = tf.equal(tf.gather(self.code_points, ids), flat)
        check = tf.debugging.assert_equal(
            tf.reduce_all(known), True,
            message="prompt contains characters outside the vocabulary",
        )
        return code_points.with_flat_values(ids), [check]

    def decode(self, ids, lengths):
        """Ids `(batch, n)` valid up to `lengths` -> strings `(batch,)`."""
        ragged = tf.RaggedTensor.from_tensor(ids, lengths=lengths)
        return tf.strings.reduce_join(tf.gather(self.pieces, ragged), axis=-1)


def causal_lm_signatures(model, max_rows):
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
            ids, token_checks = codec.encode(tf.identity(prompt))
        prompt_lengths = tf.cast(ids.row_lengths(), tf.int32)
        token_checks.append(tf.debugging.assert_less_equal(
            prompt_lengths, context,
            message=f"prompt is longer than the context of {context} tokens"))
        with tf.control_dependencies(token_checks):
            prompt_lengths = tf.identity(prompt_lengths)
        ends = prompt_lengths + max_new_tokens
        width = tf.reduce_max(tf.concat([ends, [0]], 0)) + context
        dense = ids.to_tensor(0)
        buffer = tf.pad(dense, [[0, 0], [0, width - tf.shape(dense)[1]]])
        # Traced with core ops only: saving may trace the function again.
        with core_ops_only():
            tokens, lengths = model.generate_loop(
                buffer, prompt_lengths, ends, tf.cast(seed, tf.int32),
                temperature, top_k, tf.ones_like(temperature), tf.constant(-1),
                kind="top_k", use_cache=True,
            )
        text = codec.decode(tokens, lengths)
        prompt_bytes = tf.strings.length(prompt)
        completion = tf.strings.substr(
            text, prompt_bytes, tf.strings.length(text) - prompt_bytes)
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
