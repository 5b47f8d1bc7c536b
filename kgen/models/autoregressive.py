"""Autoregressive family: a decoder-only Transformer language model."""

import keras
import numpy as np
from keras import ops

from kgen.inference import compile_inference
from kgen.api import kgen_export
from kgen import metrics  # noqa: F401  (registers the LM metrics for .keras files)
from kgen.data import tokenizers  # noqa: F401  (registers them for .keras files)
from kgen.models.base import GenerativeModel
from kgen.networks import transformer

SAMPLERS = ("greedy", "temperature", "top_k", "top_p")
MAX_NEW_TOKENS = 4096


# --- stateless sampling noise ------------------------------------------------
#
# Sampling draws Gumbel noise from an integer hash of (row seed, position,
# token id) written in int32 `keras.ops`: the same on every call, traceable by
# `tf.function` and `jax.jit`, no random state to carry through the loop, and
# only core ops in an exported graph. A row's draws depend on its own seed
# alone, so a row's sample does not change with the rest of the batch.

def _int32(value):
    value = int(value) & 0xFFFFFFFF
    return np.int32(value - (1 << 32) if value >= (1 << 31) else value)


def _shift_right(x, bits):
    """Logical right shift of int32 bits."""
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def _mix(x):
    """lowbias32 (C. Wellons): a full-avalanche 32-bit integer hash."""
    x = ops.bitwise_xor(x, _shift_right(x, 16))
    x = ops.multiply(x, ops.convert_to_tensor(_int32(0x7FEB352D), "int32"))
    x = ops.bitwise_xor(x, _shift_right(x, 15))
    x = ops.multiply(x, ops.convert_to_tensor(_int32(0x846CA68B), "int32"))
    return ops.bitwise_xor(x, _shift_right(x, 16))


def gumbel_noise(seeds, step, vocabulary_size):
    """Gumbel(0, 1) noise `(batch, vocabulary)` from int32 `seeds (batch,)`."""
    h = _mix(ops.cast(seeds, "int32"))[:, None]
    h = _mix(ops.bitwise_xor(h, ops.cast(step, "int32")))
    token = ops.arange(vocabulary_size, dtype="int32")[None, :]
    h = _mix(ops.bitwise_xor(h, token + _int32(0x632BE5AB)))
    u = (ops.cast(_shift_right(h, 8), "float32") + 0.5) / float(1 << 24)
    return -ops.log(-ops.log(u))


def filter_top_k(logits, k):
    """Keep the `k` largest logits of each row (`k (batch,)`; `k <= 0`: all)."""
    vocabulary_size = ops.shape(logits)[-1]
    k = ops.cast(k, "int32")
    k = ops.where(ops.logical_or(k <= 0, k > vocabulary_size), vocabulary_size, k)
    ascending = ops.sort(logits, axis=-1)
    threshold = ops.take_along_axis(ascending, (vocabulary_size - k)[:, None], axis=-1)
    return ops.where(logits < threshold, -1e9, logits)


def filter_top_p(logits, p):
    """Keep the fewest most likely tokens whose mass reaches `p (batch,)`."""
    probs = ops.softmax(logits, axis=-1)
    descending = -ops.sort(-probs, axis=-1)
    before = ops.cumsum(descending, axis=-1) - descending
    kept = ops.where(before < ops.cast(p, "float32")[:, None], descending, 2.0)
    threshold = ops.min(kept, axis=-1, keepdims=True)
    return ops.where(probs < threshold, -1e9, logits)


def sample_next(logits, seeds, step, kind, temperature, top_k, top_p):
    """Next token ids `(batch,)` from `(batch, vocabulary)` logits; the
    sampling settings are one value per row."""
    if kind == "greedy":
        return ops.cast(ops.argmax(logits, axis=-1), "int32")
    logits = logits / ops.cast(temperature, logits.dtype)[:, None]
    if kind == "top_k":
        logits = filter_top_k(logits, top_k)
    elif kind == "top_p":
        logits = filter_top_p(logits, top_p)
    noise = gumbel_noise(seeds, step, ops.shape(logits)[-1])
    return ops.cast(ops.argmax(logits + noise, axis=-1), "int32")


@kgen_export("kgen.models.CausalLM")
class CausalLM(GenerativeModel):
    """A decoder-only Transformer over tokens, with cached generation.

    `call(token_ids)` returns next-token logits `(batch, length, vocabulary)`,
    so the stock `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`
    trains it through `compile()`; `kgen.metrics.Perplexity` and
    `kgen.metrics.BitsPerToken` report the same loss in other units.

    `generate()` samples with a self-attention (KV) cache, laid out and
    updated as keras-hub's `CachedMultiHeadAttention` does: the prompt is
    run once to fill the cache, then one token per step in a
    `keras.ops.while_loop` compiled once per backend. The step reads the
    keras-hub blocks' weights directly (`networks.transformer.
    forward_with_cache`), so it costs its arithmetic, not ~50 Keras layer
    calls. Past the context the window slides: when it is full the cache is
    refilled from the last half of the context and generation goes on, so
    any number of tokens can be drawn. `use_cache=False` recomputes the whole window at every step (the
    same tokens, for comparison).

    Args:
        network: a `kgen.networks.transformer_lm` model.
        tokenizer: a `kgen.data.CharTokenizer` or `kgen.data.ByteTokenizer`
            (saved with the model, vocabulary included).
        default_prompt: what `generate(n)` starts from when given no prompts.
        seed: seed of the model's randomness (samples drawn with no `seed`).

    Example:

    ```python
    tokenizer = data.CharTokenizer.from_text(text)
    network = networks.transformer_lm(tokenizer.vocabulary_size, 64)
    lm = CausalLM(network, tokenizer)
    lm.compile(optimizer="adamw",
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    lm.fit(windows, steps_per_epoch=200)
    lm.generate("ROMEO:", max_new_tokens=100, sampler="top_k", top_k=10, seed=0)
    ```
    """

    output_kind = "text"

    def __init__(self, network, tokenizer, default_prompt="\n", seed=None, **kwargs):
        if network.output_shape[-1] != tokenizer.vocabulary_size:
            raise ValueError(
                f"network has {network.output_shape[-1]} outputs but the "
                f"tokenizer has {tokenizer.vocabulary_size} tokens"
            )
        tokenizer.encode(default_prompt)  # fails early if not in the vocabulary
        if not default_prompt:
            raise ValueError("default_prompt must not be empty")
        super().__init__(seed=seed, **kwargs)
        # === Layers ===
        self.network = network
        # === Config ===
        self.tokenizer = tokenizer
        self.default_prompt = default_prompt
        self.context = int(network.get_layer("position_embedding").sequence_length)
        self.vocabulary_size = int(tokenizer.vocabulary_size)
        self._generate_functions = {}
        self.build((None, self.context))

    def build(self, input_shape):
        # The network arrives built; nothing else holds weights.
        pass

    def call(self, token_ids, training=False):
        return self.network(token_ids, training=training)

    # --- generation ----------------------------------------------------------

    def generate_loop(self, tokens, prompt_lengths, ends, seeds, temperature,
                      top_k, top_p, stop_token, kind="top_k", use_cache=True):
        """The sampling loop in `keras.ops` (traced as one graph).

        Rows may have prompts of different lengths and ask for different
        numbers of tokens: the loop starts at the shortest prompt, keeps each
        row's own prompt tokens until its prompt ends (feeding them through
        the cache), and runs until every row has reached its end or its
        stop token. A row's tokens depend on its own prompt, seed and
        settings only.

        Args:
            tokens: int32 `(batch, >= max(ends) + context)`, each row's prompt
                in its first `prompt_lengths[r]` positions, anything after.
            prompt_lengths: int32 `(batch,)`, each in `[1, context]`.
            ends: int32 `(batch,)`: fill each row up to this position.
            seeds: int32 `(batch,)`, one per row.
            temperature, top_p: float32 `(batch,)`; top_k: int32 `(batch,)`.
            stop_token: int32 scalar; a row ends after it (`-1`: none).
            kind: one of `SAMPLERS` (static).
            use_cache: use the self-attention cache (static).

        Returns:
            `(tokens, lengths)`: the filled buffer and each row's length.
        """
        network = self.network
        context = self.context
        batch = ops.shape(tokens)[0]
        zeros = transformer.empty_cache(network, batch)
        weights = transformer.decoding_weights(network)
        prompt_lengths = ops.cast(prompt_lengths, "int32")
        ends = ops.cast(ends, "int32")
        stop_token = ops.cast(stop_token, "int32")
        no_tokens = ops.zeros((batch,), "int32")

        def window_logits(tokens, w, slot, cache):
            # The whole window from empty caches: the refill of the cached
            # loop, and every step of the uncached one (the same arithmetic,
            # so the two differ only in reusing the cache).
            window = ops.slice(tokens, [0, w], [batch, context])
            logits, cache = transformer.forward_with_cache(network, window, zeros, 0, weights)
            return ops.take(logits, slot, axis=1), cache

        def cond(i, w, tokens, cache, logits, done, lengths):
            return ops.any(ops.logical_and(i < ends, ops.logical_not(done)))

        def body(i, w, tokens, cache, logits, done, lengths):
            active = ops.logical_and(i < ends, ops.logical_not(done))
            in_prompt = i < prompt_lengths
            sampled = sample_next(logits, seeds, i, kind, temperature, top_k, top_p)
            given = ops.slice(tokens, [0, i], [batch, 1])[:, 0]
            token = ops.where(in_prompt, given, ops.where(active, sampled, no_tokens))
            tokens = ops.slice_update(tokens, [0, i], token[:, None])
            stopped = ops.logical_and(
                ops.logical_and(active, ops.logical_not(in_prompt)), token == stop_token)
            lengths = ops.where(stopped, i + 1, lengths)
            done = ops.logical_or(done, stopped)
            # Feed token i to get the logits of position i + 1; past the
            # context, slide the window to keep the last half of it.
            slide = (i - w) >= context
            w = ops.where(slide, i - context // 2, w)
            slot = i - w
            if use_cache:
                def refill():
                    return window_logits(tokens, w, slot, cache)

                def step():
                    token_ids = ops.slice(tokens, [0, i], [batch, 1])
                    out, new_cache = transformer.forward_with_cache(
                        network, token_ids, cache, slot, weights)
                    return out[:, 0, :], new_cache

                logits, cache = ops.cond(slide, refill, step)
            else:
                logits, cache = window_logits(tokens, w, slot, cache)
            return i + 1, w, tokens, cache, logits, done, lengths

        start = ops.clip(ops.min(prompt_lengths), 1, context)
        zero = ops.convert_to_tensor(0, "int32")
        logits, cache = window_logits(tokens, zero, start - 1, zeros)
        i, w, tokens, cache, logits, done, lengths = ops.while_loop(
            cond, body,
            (start, zero, tokens, cache, logits, ops.zeros((batch,), "bool"), ends),
        )
        return tokens, lengths

    def _compiled(self, kind, use_cache):
        key = (kind, use_cache)
        if key not in self._generate_functions:
            def fn(tokens, prompt_lengths, ends, seeds, temperature, top_k, top_p, stop):
                return self.generate_loop(tokens, prompt_lengths, ends, seeds,
                                          temperature, top_k, top_p, stop,
                                          kind=kind, use_cache=use_cache)

            self._generate_functions[key] = compile_inference(
                fn, self.variables, autograph=False, tiny_ops=True)
        return self._generate_functions[key]

    def generate_ids(self, prompt_ids, max_new_tokens, sampler="top_k", seeds=0,
                     temperature=1.0, top_k=10, top_p=0.9, stop_token=None,
                     use_cache=True):
        """Token-level generation: all rows in one compiled loop.

        Args:
            prompt_ids: int `(batch, length)`, or a list of 1-D prompts of
                any lengths.
            seeds: an int (row `r` uses `seeds + r`) or one int per row.

        Returns:
            `(ids, lengths)` as NumPy: `ids (batch, longest prompt +
            max_new_tokens)`, row `r` valid up to `lengths[r]` (its prompt
            length + `max_new_tokens`, or less after a stop token, which is
            kept).
        """
        rows = [np.asarray(p, dtype="int32").reshape(-1) for p in prompt_ids]
        if not rows:
            raise ValueError("prompt_ids: no prompts")
        lengths = np.array([len(r) for r in rows], dtype="int32")
        for length in lengths:
            self._check(length, max_new_tokens, sampler, temperature)
        batch = len(rows)
        if np.ndim(seeds) == 0:
            seeds = [int(seeds) + r for r in range(batch)]
        seeds = np.array([_int32(s) for s in seeds], dtype="int32")
        ends = lengths + int(max_new_tokens)
        width = int(ends.max())
        buffer = np.zeros((batch, width + self.context), "int32")
        for r, ids in enumerate(rows):
            buffer[r, :len(ids)] = ids
        stop = -1 if stop_token is None else int(stop_token)
        fn = self._compiled(sampler, bool(use_cache))
        tokens, out_lengths = fn(
            ops.convert_to_tensor(buffer, "int32"),
            ops.convert_to_tensor(lengths, "int32"),
            ops.convert_to_tensor(ends, "int32"),
            ops.convert_to_tensor(seeds, "int32"),
            ops.convert_to_tensor(np.full(batch, temperature, "float32")),
            ops.convert_to_tensor(np.full(batch, int(top_k or 0), "int32")),
            ops.convert_to_tensor(np.full(batch, top_p, "float32")),
            ops.convert_to_tensor(stop, "int32"),
        )
        return ops.convert_to_numpy(tokens)[:, :width], ops.convert_to_numpy(out_lengths)

    def _check(self, length, max_new_tokens, sampler, temperature):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r}: expected one of {SAMPLERS}")
        if length < 1:
            raise ValueError("prompt must not be empty")
        if length > self.context:
            raise ValueError(
                f"prompt is {length} tokens, longer than the context of "
                f"{self.context} tokens"
            )
        if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
            raise ValueError(
                f"max_new_tokens={max_new_tokens}: must be in [1, {MAX_NEW_TOKENS}]"
            )
        if not float(temperature) > 0:
            raise ValueError(f"temperature={temperature}: must be > 0")

    def generate(self, prompt=None, max_new_tokens=None, sampler="top_k", seed=None,
                 temperature=1.0, top_k=10, top_p=0.9, stop_token=None,
                 prompts=None, use_cache=True):
        """Continue text prompts; returns the prompts with their continuations.

        Args:
            prompt: a string (returns a string), a list of strings (returns a
                list), or an int `n` (returns `n` strings continuing
                `prompts` in turn, or `default_prompt`).
            max_new_tokens: tokens to add (default: the context length).
            sampler: `"greedy"`, `"temperature"`, `"top_k"` or `"top_p"`.
            seed: int; row `r` uses `seed + r`, and the same seed gives the
                same text. `None` draws one from the model's seed generator.
            temperature: divides the logits (all samplers but greedy).
            top_k: tokens kept by the `"top_k"` sampler.
            top_p: probability mass kept by the `"top_p"` sampler.
            stop_token: a one-token string (e.g. `"\\n"`) that ends a row.
            prompts: the prompts of `generate(n)`.
            use_cache: `False` recomputes the whole window at every step.
        """
        single = isinstance(prompt, str)
        if prompt is None:
            prompt = 1
        if isinstance(prompt, (int, np.integer)) and not isinstance(prompt, bool):
            pool = list(prompts or [self.default_prompt])
            rows = [pool[r % len(pool)] for r in range(int(prompt))]
        else:
            rows = [prompt] if single else list(prompt)
        if not rows:
            raise ValueError("no prompts to continue")
        if seed is None:
            seed = int(ops.convert_to_numpy(keras.random.randint(
                (), 0, 2**31 - 1, seed=self.seed_generator)))
        max_new_tokens = self.context if max_new_tokens is None else int(max_new_tokens)
        stop = None if stop_token is None else self.tokenizer.token_id(stop_token)
        encoded = [self.tokenizer.encode(text) for text in rows]
        ids, lengths = self.generate_ids(
            encoded, max_new_tokens, sampler=sampler, seeds=int(seed),
            temperature=temperature, top_k=top_k, top_p=top_p, stop_token=stop,
            use_cache=use_cache,
        )
        texts = [self.tokenizer.decode(row[:n]) for row, n in zip(ids, lengths)]
        return texts[0] if single else texts

    # --- config --------------------------------------------------------------

    def get_config(self):
        return {
            **super().get_config(),
            "network": keras.saving.serialize_keras_object(self.network),
            "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
            "default_prompt": self.default_prompt,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("network", "tokenizer"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
