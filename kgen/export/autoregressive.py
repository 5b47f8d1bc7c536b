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

Beside `generate`, two signatures let a client stream the text token by
token: `prefill` (the same inputs as `generate`) returns the sampling loop's
state as tensors, the self-attention (KV) cache included, and `decode_step`
takes that state (plus each row's `seed` and sampler settings) and returns
the next state with the token written at this step and its text (`piece`).
They are `CausalLM.prefill` and `CausalLM.decode_step`, the two halves of
the loop `generate` runs in one graph, so the pieces of a row joined are
`generate`'s `completion` for the same inputs, bit for bit.
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


# The loop state `prefill` returns and `decode_step` takes and returns, in
# this order (every tensor batch-first).
STATE = ("tokens", "cache", "logits", "position", "window_start", "done", "lengths",
         "prompt_lengths", "ends", "stop_id")
# The per-row settings `decode_step` takes beside the state.
STEP_SETTINGS = ("seed", "temperature", "top_k", "top_p")


def state_signature(model):
    """The `tf.TensorSpec`s of the loop state (`STATE`)."""
    blocks, heads, head_dim = cache_shape(model)
    scalar = {"position": tf.int32, "window_start": tf.int32, "done": tf.bool,
              "lengths": tf.int32, "prompt_lengths": tf.int32, "ends": tf.int32,
              "stop_id": tf.int32}
    return [
        tf.TensorSpec([None, None], tf.int32, name="tokens"),
        tf.TensorSpec([None, blocks, 2, model.context, heads, head_dim], tf.float32,
                      name="cache"),
        tf.TensorSpec([None, model.vocabulary_size], tf.float32, name="logits"),
    ] + [tf.TensorSpec([None], scalar[name], name=name) for name in STATE[3:]]


def cache_shape(model):
    """`(decoder blocks, heads, head_dim)` of the model's KV cache."""
    from kgen.networks import transformer

    blocks = transformer.decoder_layers(model.network)
    return len(blocks), int(blocks[0].num_heads), int(blocks[0].head_dim)


def pack_cache(cache):
    """`CausalLM`'s cache (a `(key, value)` pair per block, each `[batch,
    context, heads, head_dim]`) -> one `[batch, blocks, 2, context, heads,
    head_dim]` tensor."""
    return tf.stack([tf.stack([key, value], axis=1) for key, value in cache], axis=1)


def unpack_cache(cache, blocks):
    return tuple((pair[:, 0], pair[:, 1]) for pair in tf.unstack(cache, num=blocks, axis=1))


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

    @tf.function(input_signature=INPUT_SIGNATURE, autograph=False)
    def prefill(prompt, seed, max_new_tokens, temperature, top_k, top_p, stop_token):
        checks = check_inputs(model, max_rows, prompt=prompt, seed=seed,
                              max_new_tokens=max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, stop_token=stop_token)
        with tf.control_dependencies(checks):
            prompt_ids, prompt_lengths = encode_prompts(model, prompt)
            stop_ids = encode_stop_tokens(model.tokenizer, stop_token)
        tokens, ends = prompt_buffer(model, prompt_ids, prompt_lengths, max_new_tokens)
        state = model.prefill(tokens, prompt_lengths, ends, use_cache=True)
        return state_outputs(state, prompt_lengths, ends, stop_ids)

    blocks = cache_shape(model)[0]
    pieces = model.tokenizer.pieces()

    @tf.function(input_signature=state_signature(model) + [
        common.SEED_SPEC,
        tf.TensorSpec([None], tf.float32, name="temperature"),
        tf.TensorSpec([None], tf.int32, name="top_k"),
        tf.TensorSpec([None], tf.float32, name="top_p"),
    ], autograph=False)
    def decode_step(tokens, cache, logits, position, window_start, done, lengths,
                    prompt_lengths, ends, stop_id, seed, temperature, top_k, top_p):
        given = dict(tokens=tokens, cache=cache, logits=logits, position=position,
                     window_start=window_start, done=done, lengths=lengths,
                     prompt_lengths=prompt_lengths, ends=ends, stop_id=stop_id,
                     seed=seed, temperature=temperature, top_k=top_k, top_p=top_p)
        with tf.control_dependencies(check_state(model, max_rows, **given)):
            given = {name: tf.identity(x) for name, x in given.items()}
        i, w = given["position"][0], given["window_start"][0]
        state = (i, w, given["tokens"], unpack_cache(given["cache"], blocks),
                 given["logits"], given["done"], given["lengths"])
        state, token, emitted, finished = model.decode_step(
            state, common.seed_pairs(given["seed"]),
            prompt_lengths=given["prompt_lengths"], ends=given["ends"],
            temperature=given["temperature"], top_k=given["top_k"],
            top_p=given["top_p"], stop_token=given["stop_id"], use_cache=True)
        piece = tf.where(emitted, tf.gather(pieces, token), tf.constant(""))
        return {**state_outputs(state, given["prompt_lengths"], given["ends"],
                                given["stop_id"]),
                "token": token, "emitted": emitted, "piece": piece, "finished": finished}

    return ({"generate": generate, "prefill": prefill, "decode_step": decode_step},
            metadata(model))


def state_outputs(state, prompt_lengths, ends, stop_ids):
    """`CausalLM`'s loop state as the signatures' named tensors (`STATE`)."""
    i, w, tokens, cache, logits, done, lengths = state
    rows = tf.shape(tokens)[:1]
    return {"tokens": tokens, "cache": pack_cache(cache), "logits": logits,
            "position": tf.fill(rows, i), "window_start": tf.fill(rows, w),
            "done": done, "lengths": lengths, "prompt_lengths": prompt_lengths,
            "ends": ends, "stop_id": stop_ids}


def check_state(model, max_rows, tokens, cache, logits, position, window_start, done,
                lengths, prompt_lengths, ends, stop_id, seed, temperature, top_k, top_p):
    """A `decode_step` request's state and settings: one row each, shapes,
    and the ranges a `prefill` or `decode_step` output keeps, each check
    naming its input (a client sends back what it got, or garbage)."""
    context, vocabulary = model.context, model.vocabulary_size
    blocks, heads, head_dim = cache_shape(model)
    width = tf.shape(tokens)[1]
    rows = tf.shape(seed)[0]
    # Rows and shapes first: the range checks compare inputs row by row.
    shapes = common.check_rows(seed, max_rows) + common.check_same_rows(
        seed, tokens=tokens, cache=cache, logits=logits, position=position,
        window_start=window_start, done=done, lengths=lengths,
        prompt_lengths=prompt_lengths, ends=ends, stop_id=stop_id,
        temperature=temperature, top_k=top_k, top_p=top_p,
    ) + common.check_shape(cache, [blocks, 2, context, heads, head_dim], "cache") + \
        common.check_shape(logits, [vocabulary], "logits")
    with tf.control_dependencies(shapes):
        return shapes + _check_ranges(
            context, vocabulary, rows, width, tokens=tokens, logits=logits,
            position=position, window_start=window_start, lengths=lengths,
            prompt_lengths=prompt_lengths, ends=ends, stop_id=stop_id,
            temperature=temperature, top_k=top_k, top_p=top_p)


def _check_ranges(context, vocabulary, rows, width, tokens, logits, position,
                  window_start, lengths, prompt_lengths, ends, stop_id, temperature,
                  top_k, top_p):
    def all_true(condition, message):
        return tf.debugging.assert_equal(tf.reduce_all(condition), True, message=message)

    return [
        tf.debugging.assert_less_equal(
            tf.cast(rows, tf.int64) * tf.cast(width - context, tf.int64),
            tf.constant(MAX_REQUEST_TOKENS, tf.int64),
            message=f"tokens: rows x (width - context) must be at most "
                    f"{MAX_REQUEST_TOKENS} tokens"),
        all_true(tf.logical_and(tokens >= 0, tokens < vocabulary),
                 f"tokens must be token ids in [0, {vocabulary})"),
        all_true(tf.equal(position, position[:1]),
                 "position must be the same in every row"),
        all_true(tf.logical_and(position >= 1, position + context <= width),
                 "position must be in [1, width of tokens - context]"),
        all_true(tf.logical_and(tf.equal(window_start, window_start[:1]),
                                tf.logical_and(window_start >= 0, window_start <= position)),
                 "window_start must be the same in every row, in [0, position]"),
        tf.debugging.assert_less_equal(
            position - window_start, context,
            message=f"window_start must be at least position - context ({context})"),
        all_true(tf.logical_and(prompt_lengths >= 1, prompt_lengths <= context),
                 f"prompt_lengths must be in [1, {context}]"),
        all_true(tf.logical_and(ends > prompt_lengths, ends + context <= width),
                 "ends must be in [prompt_lengths + 1, width of tokens - context]"),
        all_true(tf.logical_and(lengths >= 1, lengths <= ends),
                 "lengths must be in [1, ends]"),
        all_true(tf.logical_and(stop_id >= -1, stop_id < vocabulary),
                 f"stop_id must be -1 (none) or a token id in [0, {vocabulary})"),
        tf.debugging.assert_all_finite(logits, message="logits must be finite"),
    ] + check_settings(temperature, top_k, top_p)


def check_settings(temperature, top_k, top_p):
    """The per-row sampler settings' ranges (`generate`, `prefill` and
    `decode_step` alike), each check naming its input."""
    return [
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
    ]


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
    ] + check_settings(temperature, top_k, top_p) + [
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


STATE_DOC = (
    "tokens int32 [batch, width], cache float32 [batch, blocks, 2, context, heads, "
    "head_dim] (the self-attention keys and values), logits float32 [batch, "
    "vocabulary], position int32 [batch] (the next position written, the same in "
    "every row), window_start int32 [batch], done bool [batch] (stop token "
    "sampled), lengths int32 [batch], prompt_lengths int32 [batch], ends int32 "
    "[batch], stop_id int32 [batch] (-1: none)"
)


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
            "prefill": (
                "the inputs of generate, with its checks -> the sampling loop's state: "
                + STATE_DOC
            ),
            "decode_step": (
                f"the state ({', '.join(STATE)}, as prefill or decode_step returns it) "
                "and seed int64, temperature float32, top_k int32, top_p float32 "
                "[batch] -> the next state, token int32 [batch] (written at this "
                "position; 0 for a finished row), emitted bool [batch] (this step "
                "sampled a token for the row), piece string [batch] (the token's "
                "bytes where emitted, else ''), finished bool [batch] (the row emits "
                "nothing more); call it until every row is finished: a row's pieces "
                "joined are generate's completion for the same inputs"
            ),
        },
        # A server streams text with these two signatures.
        "streaming": {"prefill": "prefill", "decode_step": "decode_step"},
    }
