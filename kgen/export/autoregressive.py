"""Serving signature of `kgen.models.CausalLM`: text in, text out.

The graph tokenises the prompts with the model's own tokenizer layer (core
`tf.strings` ops), runs the model's sampling computation
(`CausalLM.sample`, traced on the TensorFlow backend into a `While` op) over
the whole batch at once (rows keep their own prompt lengths, token counts,
seeds and sampler settings), and joins the sampled tokens back into strings
with the same tokenizer. No tf-text, no PyFunc, no XLA ops: TF Serving runs
it as it is.

The inputs carry the names of `CausalLM.generate`'s options, one value per
row: `prompt`, `seed`, `max_new_tokens`, `temperature`, `top_k` (0: off),
`top_p` (1: off) and `stop_token` (`""`: none). Python's named samplers are
settings of these (`kgen.samplers`): greedy is `top_k=1`; temperature is
`top_k=0, top_p=1`; top-k is `top_p=1`; top-p is `top_k=0`.
"""

import tensorflow as tf

from kgen.export import common
from kgen.models.autoregressive import MAX_NEW_TOKENS

DEFAULTS = {"max_new_tokens": 256, "temperature": 0.8, "top_k": 20, "top_p": 1.0,
            "stop_token": ""}
# Most tokens one request may hold: rows x (longest prompt + largest
# max_new_tokens). It bounds the token buffer and the work of one request
# (256 rows of 256 new tokens after a 256-token prompt).
MAX_REQUEST_TOKENS = 131072

INPUT_SIGNATURE = [
    tf.TensorSpec([None], tf.string, name="prompt"),
    common.SEED_SPEC,
    tf.TensorSpec([None], tf.int32, name="max_new_tokens"),
    tf.TensorSpec([None], tf.float32, name="temperature"),
    tf.TensorSpec([None], tf.int32, name="top_k"),
    tf.TensorSpec([None], tf.float32, name="top_p"),
    tf.TensorSpec([None], tf.string, name="stop_token"),
]


def served_defaults(input_names):
    """The defaults of a served `generate` (no `kgen.json`): the sampler
    settings every export shares (`DEFAULTS`); the prompt is the export's
    own, which a server does not publish."""
    return {name: value for name, value in DEFAULTS.items() if name in input_names}


def causal_lm_signatures(model, max_rows):
    """`generate`: per-row `prompt`, `seed`, `max_new_tokens`,
    `temperature`, `top_k`, `top_p`, `stop_token` -> `text` (prompt +
    continuation) and `completion`."""

    # No Python control flow on tensors here: the sampling loop is
    # `keras.ops.while_loop`, traced as written (as `compile_inference` does).
    @tf.function(input_signature=INPUT_SIGNATURE, autograph=False)
    def generate(prompt, seed, max_new_tokens, temperature, top_k, top_p, stop_token):
        checks = check_inputs(model, max_rows, prompt=prompt, seed=seed,
                              max_new_tokens=max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, stop_token=stop_token)
        with tf.control_dependencies(checks):
            prompt_ids, prompt_lengths = encode_prompts(model, prompt)
            stop_ids = encode_stop_tokens(model.tokenizer, stop_token)
        tokens, ends = prompt_buffer(model, prompt_ids, prompt_lengths, max_new_tokens)
        tokens, lengths = model.sample(
            common.seed_pairs(seed), tokens=tokens, prompt_lengths=prompt_lengths,
            ends=ends, temperature=temperature, top_k=top_k, top_p=top_p,
            stop_token=stop_ids, use_cache=True)
        text = model.tokenizer.detokenize(tokens, lengths)
        prompt_bytes = tf.strings.length(prompt)
        completion = tf.strings.substr(
            text, prompt_bytes, tf.strings.length(text) - prompt_bytes)
        return {"text": text, "completion": completion}

    return {"generate": generate}, metadata(model)


def check_inputs(model, max_rows, prompt, seed, max_new_tokens, temperature, top_k,
                 top_p, stop_token):
    """Row counts and ranges of the raw inputs, each check naming its input."""
    return common.check_rows(seed, max_rows) + common.check_same_rows(
        seed, prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p, stop_token=stop_token,
    ) + [
        tf.debugging.assert_greater(
            tf.strings.length(prompt), 0, message="prompt must not be empty"),
        # Four bytes per character at most: a cheap bound before tokenizing.
        tf.debugging.assert_less_equal(
            tf.strings.length(prompt), 4 * model.context,
            message=f"prompt is longer than the context of {model.context} tokens"),
        tf.debugging.assert_greater_equal(
            max_new_tokens, 1, message=f"max_new_tokens must be in [1, {MAX_NEW_TOKENS}]"),
        tf.debugging.assert_less_equal(
            max_new_tokens, MAX_NEW_TOKENS,
            message=f"max_new_tokens must be in [1, {MAX_NEW_TOKENS}]"),
        tf.debugging.assert_all_finite(
            temperature, message="temperature must be finite and > 0"),
        tf.debugging.assert_greater(
            temperature, 0.0, message="temperature must be finite and > 0"),
        tf.debugging.assert_greater_equal(
            top_k, 0, message="top_k must be >= 0 (0: off)"),
        tf.debugging.assert_greater(
            top_p, 0.0, message="top_p must be in (0, 1] (1: off)"),
        tf.debugging.assert_less_equal(
            top_p, 1.0, message="top_p must be in (0, 1] (1: off)"),
        tf.debugging.assert_less_equal(
            tf.strings.length(stop_token), 4,
            message="stop_token must be one token or empty"),
    ]


def encode_prompts(model, prompt):
    """Prompt strings -> (ragged ids, int32 lengths), checked against the
    vocabulary and the context (INVALID_ARGUMENT naming `prompt`)."""
    ids = model.tokenizer.tokenize(prompt, name="prompt")
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    check = tf.debugging.assert_less_equal(
        lengths, model.context,
        message=f"prompt is longer than the context of {model.context} tokens")
    with tf.control_dependencies([check]):
        return ids, tf.identity(lengths)


def encode_stop_tokens(tokenizer, stop_token):
    """Stop-token strings -> int32 ids `(batch,)`, `-1` for `""`."""
    ids = tokenizer.tokenize(stop_token, name="stop_token")
    check = tf.debugging.assert_less_equal(
        ids.row_lengths(), tf.constant(1, tf.int64),
        message="stop_token must be one token or empty")
    with tf.control_dependencies([check]):
        return tf.identity(ids.to_tensor(default_value=-1, shape=[None, 1])[:, 0])


def prompt_buffer(model, prompt_ids, prompt_lengths, max_new_tokens):
    """The token buffer `CausalLM.sample` fills, within the request's token
    budget (INVALID_ARGUMENT naming `max_new_tokens` otherwise), and each
    row's end."""
    ends = prompt_lengths + max_new_tokens
    rows = tf.shape(prompt_lengths)[0]
    longest = tf.reduce_max(prompt_lengths) + tf.reduce_max(max_new_tokens)
    check = tf.debugging.assert_less_equal(
        tf.cast(rows, tf.int64) * tf.cast(longest, tf.int64),
        tf.constant(MAX_REQUEST_TOKENS, tf.int64),
        message=f"max_new_tokens: rows x (longest prompt + largest max_new_tokens) "
                f"must be at most {MAX_REQUEST_TOKENS} tokens")
    with tf.control_dependencies([check]):
        width = tf.identity(longest) + model.context
    dense = prompt_ids.to_tensor(0)
    return tf.pad(dense, [[0, 0], [0, width - tf.shape(dense)[1]]]), ends


def metadata(model):
    """What `kgen sample` and a reader of `kgen.json` need."""
    return {
        "output_kind": "text",
        "context": model.context,
        "tokenizer": model.tokenizer.kind,
        "vocabulary_size": model.vocabulary_size,
        "max_new_tokens_limit": MAX_NEW_TOKENS,
        "max_request_tokens": MAX_REQUEST_TOKENS,
        "defaults": {"prompt": model.default_prompt, **DEFAULTS},
        "samplers": {
            "greedy": "top_k=1",
            "temperature": "top_k=0, top_p=1",
            "top_k": "top_p=1",
            "top_p": "top_k=0",
        },
        "signatures": {
            "generate": (
                "prompt string [batch], seed int64 [batch], max_new_tokens int32 "
                f"[batch] in [1, {MAX_NEW_TOKENS}], temperature float32 [batch] (> 0), "
                "top_k int32 [batch] (0: off), top_p float32 [batch] in (0, 1] "
                "(1: off), stop_token string [batch] (one token; '': none) -> text "
                "string [batch] (prompt + continuation), completion string [batch] "
                f"(continuation only); rows x (longest prompt + largest "
                f"max_new_tokens) <= {MAX_REQUEST_TOKENS}"
            ),
        },
    }
