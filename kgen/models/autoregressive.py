"""Autoregressive family: a decoder-only Transformer language model."""

import codecs

import keras
import numpy as np
from keras import ops

from kgen import metrics  # noqa: F401  (registers the LM metrics for .keras files)
from kgen import samplers
from kgen.api import kgen_export
from kgen.family import Family
from kgen.family import declare_family
from kgen.data import tokenizers  # noqa: F401  (registers them for .keras files)
from kgen import random as kgen_random
from kgen.models.base import GenerativeModel
from kgen.models.base import check_count
from kgen.networks import transformer
from kgen.ops import cache_update

# Most tokens one row may add (Python and export alike).
MAX_NEW_TOKENS = 4096


@declare_family(Family(
    name="language model",
    output_kind="text",
    signatures="kgen.export.autoregressive:causal_lm_signatures",
    options={"prompt": "string", "max_new_tokens": "int32", "temperature": "float32",
             "top_k": "int32", "top_p": "float32", "stop_token": "string"},
    served_defaults="kgen.export.autoregressive:served_defaults",
))
@kgen_export("kgen.models.CausalLM")
class CausalLM(GenerativeModel):
    """A decoder-only Transformer over tokens, with cached generation.

    `call(token_ids)` returns next-token logits `(batch, length, vocabulary)`,
    so the stock `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`
    trains it through `compile()`; `kgen.metrics.Perplexity` and
    `kgen.metrics.BitsPerToken` report the same loss in other units.

    `generate(n, seed=s, prompt=...)` keeps kgen's generate contract: row `i`
    is drawn from seed `s + i` alone (`kgen.samplers.next_token` with
    `kgen.random` noise), so it equals `generate(1, seed=s + i)` and the
    exported signature's row for seed `s + i`. Sampling uses a
    self-attention (KV) cache: the prompt is run once to fill it, then one
    token per step in a `keras.ops.while_loop` compiled once per backend.
    Past the context the window slides: when it is full the cache is
    refilled from the last half of the context and generation goes on, so
    any number of tokens can be drawn. `use_cache=False` recomputes the
    whole window at every step (the same tokens, for comparison).

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
    lm.generate(2, seed=0, prompt="ROMEO:", max_new_tokens=100, top_k=10)
    ```
    """

    nested_config_keys = ("network", "tokenizer")

    def __init__(self, network, tokenizer, default_prompt="\n", seed=None, **kwargs):
        if network.output_shape[-1] != tokenizer.vocabulary_size:
            raise ValueError(
                f"network has {network.output_shape[-1]} outputs but the "
                f"tokenizer has {tokenizer.vocabulary_size} tokens"
            )
        for block in transformer.decoder_layers(network):
            if not isinstance(block, transformer.DecoderBlock):
                raise ValueError(
                    f"network: {block.name} is a {type(block).__name__}; cached "
                    "generation needs kgen.networks.transformer.DecoderBlock blocks "
                    "(build the network with kgen.networks.transformer_lm)"
                )
        if not default_prompt:
            raise ValueError("default_prompt must not be empty")
        tokenizer.check(default_prompt, "default_prompt")  # fails early
        super().__init__(seed=seed, **kwargs)
        # === Layers ===
        self.network = network
        self.tokenizer = tokenizer
        # === Config ===
        self.default_prompt = default_prompt
        self.context = int(network.get_layer("position_embedding").sequence_length)
        self.vocabulary_size = int(tokenizer.vocabulary_size)
        self.build((None, self.context))

    def build(self, input_shape):
        # The network arrives built; nothing else holds weights.
        pass

    def call(self, token_ids, training=False):
        # float32 logits whatever the network computes in (`kgen.precision`):
        # the softmax of the loss and metrics runs in float32.
        return ops.cast(self.network(token_ids, training=training), "float32")

    # --- the sampling computation (keras.ops, traced by the export) -----------

    def sample(self, seeds, labels=None, *, tokens, prompt_lengths, ends, temperature,
               top_k, top_p, stop_token, use_cache=True):
        """Fill each row's token buffer after its prompt (one graph).

        Rows may have prompts of different lengths and ask for different
        numbers of tokens: the loop starts at the shortest prompt, keeps each
        row's own prompt tokens until its prompt ends (feeding them through
        the cache), and runs until every row has reached its end or its
        stop token. A row's tokens depend on its own prompt, seed and
        settings only.

        Args:
            seeds: int32 `(batch, 2)` seed pairs (`kgen.random.seed_pairs`).
            labels: unused (the model is unconditional).
            tokens: int32 `(batch, >= max(ends) + context)`, each row's prompt
                in its first `prompt_lengths[r]` positions, anything after.
            prompt_lengths: int32 `(batch,)`, each in `[1, context]`.
            ends: int32 `(batch,)`: fill each row up to this position.
            temperature, top_p: float32 `(batch,)`; top_k: int32 `(batch,)`
                (`kgen.samplers.next_token`).
            stop_token: int32 `(batch,)`; a row ends after it (`-1`: none).
            use_cache: use the self-attention cache (static).

        Returns:
            `(tokens, lengths)`: the filled buffer and each row's length.
        """
        rows = _Rows(seeds, prompt_lengths, ends, temperature, top_k, top_p, stop_token)
        decoder = _Decoder(self.network, self.context, ops.shape(tokens)[0], use_cache)

        def cond(*state):
            return ops.any(rows.active(state[0], state[5]))

        def body(*state):
            return _decode_step(rows, decoder, state)

        state = ops.while_loop(cond, body, self._prefill(decoder, rows.prompt_lengths,
                                                         rows.ends, tokens))
        return state[2], state[6]

    # --- the same computation, one step at a time (streaming) -----------------

    def prefill(self, tokens, prompt_lengths, ends, use_cache=True):
        """Everything `sample()` does before its loop: the state the first
        `decode_step()` reads.

        Args:
            tokens, prompt_lengths, ends: as `sample()`.
            use_cache: use the self-attention cache (static).

        Returns:
            The loop state, a tuple `(position, window_start, tokens, cache,
            logits, done, lengths)`: `position` int32 scalar, the next
            position to write (the shortest prompt's length); `window_start`
            int32 scalar (0); `tokens` the buffer; `cache` one `(key, value)`
            pair per decoder block, each float32 `(batch, context, heads,
            head_dim)`; `logits` float32 `(batch, vocabulary)`, the next
            token's; `done` bool `(batch,)` (rows that sampled their stop
            token); `lengths` int32 `(batch,)` (each row's length so far:
            its end until it stops).
        """
        decoder = _Decoder(self.network, self.context, ops.shape(tokens)[0], use_cache)
        return self._prefill(decoder, ops.cast(prompt_lengths, "int32"),
                             ops.cast(ends, "int32"), tokens)

    def _prefill(self, decoder, prompt_lengths, ends, tokens):
        start = ops.clip(ops.min(prompt_lengths), 1, self.context)
        zero = ops.convert_to_tensor(0, "int32")
        logits, cache = decoder.window_logits(tokens, zero, start - 1)
        done = ops.zeros(ops.shape(ends), "bool")
        return (start, zero, tokens, cache, logits, done, ends)

    def decode_step(self, state, seeds, *, prompt_lengths, ends, temperature, top_k,
                    top_p, stop_token, use_cache=True):
        """One iteration of `sample()`'s loop: write the token at `position`
        (the prompt's, a sampled one, or 0 for a finished row), then feed it
        to get the next logits. `sample()` is `prefill()` and this step in a
        `while_loop`, so stepping from `prefill()` until `finished` is all
        true gives the same tokens, bit for bit.

        Args:
            state: the tuple `prefill()` or the previous step returns.
            seeds, prompt_lengths, ends, temperature, top_k, top_p,
                stop_token: as `sample()`.
            use_cache: as `prefill()`.

        Returns:
            `(state, token, emitted, finished)`: the next state; `token`
            int32 `(batch,)`, the token written at `position`; `emitted`
            bool `(batch,)`, whether that token was sampled for the row (it
            was active and past its prompt); `finished` bool `(batch,)`,
            whether the row will emit nothing more.
        """
        rows = _Rows(seeds, prompt_lengths, ends, temperature, top_k, top_p, stop_token)
        decoder = _Decoder(self.network, self.context, ops.shape(state[2])[0], use_cache)
        i, done = state[0], state[5]
        emitted = rows.emits(i, done)
        state = _decode_step(rows, decoder, state)
        token = ops.take(state[2], i, axis=1)
        return state, token, emitted, ops.logical_not(rows.active(state[0], state[5]))

    # --- generate (Python) ------------------------------------------------------

    def generate(self, n, *, seed=None, labels=None, prompt=None, prompts=None,
                 max_new_tokens=None, sampler="top_k", temperature=1.0, top_k=10,
                 top_p=0.9, stop_token=None, use_cache=True):
        """`n` texts (prompt + continuation); row `i` comes from seed `seed + i`.

        The options have the names of the export signature's inputs
        (`prompt`, `seed`, `max_new_tokens`, `temperature`, `top_k`, `top_p`,
        `stop_token`); `sampler` picks which of them apply
        (`kgen.samplers`: `greedy` is `top_k=1`, `top_p` turns `top_k` off,
        ...), as the export's caller does by passing `top_k=0` or `top_p=1`.

        Args:
            n: number of texts (rows).
            seed: int (64-bit); `None` draws one from the model's seed
                generator.
            labels: must be `None` (the model is unconditional).
            prompt: one string every row continues (default:
                `default_prompt`).
            prompts: `n` strings, one per row (instead of `prompt`).
            max_new_tokens: tokens to add per row, in `[1, 4096]` (default:
                the context length).
            sampler: `"greedy"`, `"temperature"`, `"top_k"` or `"top_p"`.
            temperature: divides the logits (all samplers but greedy), > 0.
            top_k: tokens kept by the `"top_k"` sampler (0: all).
            top_p: probability mass kept by the `"top_p"` sampler.
            stop_token: a one-token string (e.g. `"\\n"`) that ends a row
                (kept in the text); `None` or `""`: none.
            use_cache: `False` recomputes the whole window at every step.

        Returns:
            A list of `n` strings.
        """
        return super().generate(
            n, seed=seed, labels=labels, prompt=prompt, prompts=prompts,
            max_new_tokens=max_new_tokens, sampler=sampler, temperature=temperature,
            top_k=top_k, top_p=top_p, stop_token=stop_token, use_cache=use_cache)

    def generate_rows(self, pairs, labels, prompt=None, prompts=None,
                      max_new_tokens=None, sampler="top_k", temperature=1.0, top_k=10,
                      top_p=0.9, stop_token=None, use_cache=True):
        """`generate()` on int32 seed pairs `(n, 2)`: checks and tokenizes
        the options, runs `sample()` compiled, decodes the rows."""
        buffer, lengths, ends, settings = self._sample_args(
            len(pairs), prompt, prompts, max_new_tokens, sampler, temperature, top_k,
            top_p, stop_token)
        fn = self.compiled_function(("sample", bool(use_cache)), self._sample_fn(bool(use_cache)),
                           self.variables, autograph=False, tiny_ops=True)
        tokens, out_lengths = fn(pairs, buffer, lengths, ends, *settings)
        tokens, out_lengths = ops.convert_to_numpy(tokens), ops.convert_to_numpy(out_lengths)
        return [self.tokenizer.decode(row[:k]) for row, k in zip(tokens, out_lengths)]

    def _sample_args(self, n, prompt, prompts, max_new_tokens, sampler, temperature,
                     top_k, top_p, stop_token):
        """The checked options as `sample()`'s NumPy inputs: `(buffer,
        prompt_lengths, ends, (temperature, top_k, top_p, stop_token))`."""
        settings = samplers.get(sampler).settings(temperature, top_k, top_p)
        new = self.context if max_new_tokens is None else max_new_tokens
        if isinstance(new, bool) or not isinstance(new, (int, np.integer)) or \
                not 1 <= new <= MAX_NEW_TOKENS:
            raise ValueError(
                f"max_new_tokens={max_new_tokens!r}: must be an int in [1, {MAX_NEW_TOKENS}]")
        stop = -1 if not stop_token else self.tokenizer.token_id(stop_token, "stop_token")
        prompt_ids = [self.encode_prompt(text, name)
                      for name, text in self._row_prompts(n, prompt, prompts)]
        buffer, lengths = self.prompt_buffer(prompt_ids, int(new))
        return buffer, lengths, lengths + int(new), (
            np.full(n, settings["temperature"], "float32"),
            np.full(n, settings["top_k"], "int32"),
            np.full(n, settings["top_p"], "float32"),
            np.full(n, stop, "int32"),
        )

    def stream(self, n=1, *, seed=None, prompt=None, prompts=None, max_new_tokens=None,
               sampler="top_k", temperature=1.0, top_k=10, top_p=0.9, stop_token=None,
               use_cache=True):
        """`generate()`'s continuations, piece by piece as they are made.

        A generator of `(row, text)` pairs: `text` is what row `row` (of
        `n`) has added since its last piece. It runs `prefill()` and then
        `decode_step()` (each compiled once per backend) until every row is
        finished, the same computation `generate()` runs in one loop, so the
        pieces of row `i` joined equal `generate(n, ...)[i]` past its prompt,
        for the same seed and options. A piece holds whole characters only:
        the bytes of a character split over several tokens (a
        `ByteTokenizer`'s) are held back until the character is complete.

        Args:
            n, seed, prompt, prompts, max_new_tokens, sampler, temperature,
                top_k, top_p, stop_token, use_cache: as `generate()`.

        Example:

        ```python
        for _, text in lm.stream(seed=0, prompt="ROMEO:", max_new_tokens=100):
            print(text, end="", flush=True)
        ```
        """
        n = check_count(n)
        pairs = kgen_random.seed_pairs(self.row_seeds(n, seed))
        args = self._sample_args(n, prompt, prompts, max_new_tokens, sampler,
                                 temperature, top_k, top_p, stop_token)
        return self._stream(pairs, args, bool(use_cache))

    def _stream(self, pairs, args, use_cache):
        buffer, lengths, ends, settings = args
        prefill = self.compiled_function(
            ("prefill", use_cache), self._prefill_fn(use_cache), self.variables,
            autograph=False, tiny_ops=True)
        step = self.compiled_function(
            ("decode_step", use_cache), self._step_fn(use_cache), self.variables,
            autograph=False, tiny_ops=True)
        pieces = self._token_bytes()
        text = _TextPieces(len(pairs))
        state = prefill(buffer, lengths, ends)
        finished = np.zeros(len(pairs), bool)
        while not finished.all():
            token, emitted, finished, *state = step(pairs, lengths, ends, *settings, *state)
            token, emitted, finished = (ops.convert_to_numpy(x)
                                        for x in (token, emitted, finished))
            for row in np.flatnonzero(emitted):
                piece = text.add(int(row), pieces[token[row]])
                if piece:
                    yield int(row), piece
        for row in range(len(pairs)):
            piece = text.flush(row)
            if piece:
                yield row, piece

    def _token_bytes(self):
        """Each token id's bytes (Python)."""
        if not hasattr(self, "_token_bytes_list"):
            self._token_bytes_list = [bytes(p) for p in self.tokenizer.pieces().numpy()]
        return self._token_bytes_list

    # The compiled halves take and return the loop state flat (a list of
    # tensors, `keras.tree.flatten` order), as every backend's compiler
    # passes it.

    def _state_structure(self):
        blocks = len(transformer.decoder_layers(self.network))
        return (0, 0, 0, ((0, 0),) * blocks, 0, 0, 0)

    def _prefill_fn(self, use_cache):
        def fn(tokens, prompt_lengths, ends):
            return keras.tree.flatten(
                self.prefill(tokens, prompt_lengths, ends, use_cache=use_cache))

        return fn

    def _step_fn(self, use_cache):
        structure = self._state_structure()

        def fn(pairs, prompt_lengths, ends, temperature, top_k, top_p, stop, *flat):
            state = keras.tree.pack_sequence_as(structure, list(flat))
            state, token, emitted, finished = self.decode_step(
                state, pairs, prompt_lengths=prompt_lengths, ends=ends,
                temperature=temperature, top_k=top_k, top_p=top_p, stop_token=stop,
                use_cache=use_cache)
            return [token, emitted, finished, *keras.tree.flatten(state)]

        return fn

    def _sample_fn(self, use_cache):
        def fn(pairs, tokens, prompt_lengths, ends, temperature, top_k, top_p, stop):
            return self.sample(pairs, tokens=tokens, prompt_lengths=prompt_lengths,
                               ends=ends, temperature=temperature, top_k=top_k,
                               top_p=top_p, stop_token=stop, use_cache=use_cache)

        return fn

    def _row_prompts(self, n, prompt, prompts):
        """`(name, text)` of each row's prompt."""
        if prompt is not None and prompts is not None:
            raise ValueError("prompt and prompts: give one of them (prompts: one per row)")
        if prompts is not None:
            if isinstance(prompts, str) or len(prompts) != n:
                raise ValueError(
                    f"prompts: expected a list of n={n} strings (one per row), got "
                    f"{_short(prompts)}")
            return [(f"prompts[{i}]", text) for i, text in enumerate(prompts)]
        if prompt is None:
            return [("default_prompt", self.default_prompt)] * n
        return [("prompt", prompt)] * n

    def encode_prompt(self, text, name="prompt"):
        """A prompt's int32 ids, or a ValueError naming `name`."""
        if not isinstance(text, str):
            raise ValueError(f"{name}={_short(text)}: must be a string")
        if not text:
            raise ValueError(f"{name}={text!r}: must not be empty")
        ids = self.tokenizer.encode(text, name=name)
        if len(ids) > self.context:
            raise ValueError(
                f"{name} is {len(ids)} tokens, longer than the context of "
                f"{self.context} tokens")
        return ids

    def prompt_buffer(self, prompt_ids, max_new_tokens):
        """The token buffer `sample()` fills (prompts left-aligned, room for
        `max_new_tokens` and a window) and the prompt lengths, as NumPy."""
        lengths = np.array([len(ids) for ids in prompt_ids], "int32")
        buffer = np.zeros((len(prompt_ids), lengths.max() + max_new_tokens + self.context),
                          "int32")
        for r, ids in enumerate(prompt_ids):
            buffer[r, :len(ids)] = ids
        return buffer, lengths

    # --- config --------------------------------------------------------------

    def get_config(self):
        return {
            **super().get_config(),
            "default_prompt": self.default_prompt,
        }


class _TextPieces:
    """Each row's bytes as whole characters: `add(row, data)` returns the
    characters `data` completes (an incomplete UTF-8 sequence is held until
    its last byte comes), `flush(row)` what is left at the end. Bytes that
    are not UTF-8 become U+FFFD, as `Tokenizer.decode` of the whole text
    gives them."""

    def __init__(self, rows):
        self.decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace")
                         for _ in range(rows)]

    def add(self, row, data):
        return self.decoders[row].decode(data)

    def flush(self, row):
        return self.decoders[row].decode(b"", final=True)


class _Rows:
    """Each row's state in the sampling loop: its prompt, end, stop token
    and sampler settings; it chooses and writes the token at position `i`."""

    def __init__(self, seeds, prompt_lengths, ends, temperature, top_k, top_p, stop_token):
        self.seeds = seeds
        self.prompt_lengths = ops.cast(prompt_lengths, "int32")
        self.ends = ops.cast(ends, "int32")
        self.settings = (temperature, top_k, top_p)
        self.stop_token = ops.cast(stop_token, "int32")

    def active(self, i, done):
        return ops.logical_and(i < self.ends, ops.logical_not(done))

    def emits(self, i, done):
        """Rows whose token at `i` is sampled (active, past the prompt)."""
        return ops.logical_and(self.active(i, done), i >= self.prompt_lengths)

    def write_token(self, i, tokens, logits, done, lengths):
        """Position `i`: the prompt's token inside the prompt, else a sampled
        one (0 for rows already finished); a sampled stop token ends a row."""
        active = self.active(i, done)
        in_prompt = i < self.prompt_lengths
        sampled = samplers.next_token(logits, self.seeds, i, *self.settings)
        given = ops.slice(tokens, [0, i], [ops.shape(tokens)[0], 1])[:, 0]
        token = ops.where(in_prompt, given, ops.where(active, sampled, 0))
        tokens = cache_update(tokens, [0, i], token[:, None])
        stopped = ops.logical_and(ops.logical_and(active, ops.logical_not(in_prompt)),
                                  token == self.stop_token)
        return tokens, ops.logical_or(done, stopped), ops.where(stopped, i + 1, lengths)


def _decode_step(rows, decoder, state):
    """One iteration of the sampling loop (`CausalLM.decode_step`)."""
    i, w, tokens, cache, logits, done, lengths = state
    tokens, done, lengths = rows.write_token(i, tokens, logits, done, lengths)
    w, cache, logits = decoder.advance(i, w, tokens, cache)
    return i + 1, w, tokens, cache, logits, done, lengths


class _Decoder:
    """The network's next-token logits in the sampling loop, through the
    self-attention cache (or recomputing the window), with a sliding window
    past the context."""

    def __init__(self, network, context, batch, use_cache):
        self.network = network
        self.context = context
        self.batch = batch
        self.use_cache = use_cache
        self.zeros = transformer.empty_cache(network, batch)

    def window_logits(self, tokens, w, slot):
        """Logits at `slot` of the window starting at `w`, from empty caches:
        the refill of the cached loop and every step of the uncached one
        (the same arithmetic, so the two differ only in reusing the cache)."""
        window = ops.slice(tokens, [0, w], [self.batch, self.context])
        logits, cache = transformer.forward_with_cache(self.network, window, self.zeros, 0)
        return ops.take(logits, slot, axis=1), cache

    def step_logits(self, tokens, i, slot, cache):
        """Feed token `i` alone at `slot` of the cache."""
        token_ids = ops.slice(tokens, [0, i], [self.batch, 1])
        logits, cache = transformer.forward_with_cache(self.network, token_ids, cache, slot)
        return logits[:, 0, :], cache

    def advance(self, i, w, tokens, cache):
        """Feed token `i` to get the logits of position `i + 1`; past the
        context, slide the window start `w` to keep the last half of it.

        Returns:
            `(w, cache, logits)`.
        """
        slide = (i - w) >= self.context
        w = ops.where(slide, i - self.context // 2, w)
        slot = i - w
        if not self.use_cache:
            logits, cache = self.window_logits(tokens, w, slot)
            return w, cache, logits
        logits, cache = ops.cond(
            slide,
            lambda: self.window_logits(tokens, w, slot),
            lambda: self.step_logits(tokens, i, slot, cache),
        )
        return w, cache, logits


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
