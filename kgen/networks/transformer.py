"""Decoder-only Transformer language model.

GPT-2's shape (as nanoGPT writes it): token + learned position embeddings
(keras-hub's `ReversibleEmbedding` and `PositionEmbedding`), `num_layers`
pre-norm `DecoderBlock`s, a final LayerNorm, and an output projection tied
to the token embedding (or not).

`DecoderBlock` is kgen's own (registered for `.keras` files) so that cached
generation can read its weights through public attributes: keras-hub's
`TransformerDecoder` keeps its sublayers private, and its cache update is
`keras.ops.slice_update`, an XLA op in a TensorFlow graph that TF Serving's
CPU build cannot run.

From keras-hub it uses public API only: `ReversibleEmbedding(reverse=True)`
and `PositionEmbedding(start_index=...)` with its `sequence_length`
attribute (keras-hub >= 0.32, the version kgen's setup.py asks for).

The layers are named so cached generation (`forward_with_cache`) can find
them: `token_embedding`, `position_embedding`, `embedding_dropout`,
`decoder_0` ... `decoder_{n-1}`, `final_norm`.
"""

import keras
from keras import layers
from keras import ops

from kgen.api import kgen_export
from kgen.ops import cache_update


@kgen_export("kgen.networks.DecoderBlock")
class DecoderBlock(layers.Layer):
    """A pre-norm causal self-attention block (GPT-2 / nanoGPT).

    `x + attention(norm(x))`, then `x + feedforward(norm(x))`, the
    attention causal. Every sublayer is a public attribute, so a cached
    decoding step (`cached_call`) reads the same weights.

    Under a mixed dtype policy (`kgen.precision`) the residual stream `x`
    stays in the variable dtype (float32), as in mixed-precision GPT
    training: the block does not cast its input to the compute dtype, and
    only its sublayers (the matmuls) compute in bfloat16 or float16.

    Args:
        num_heads: attention heads (`hidden_dim` must divide by it).
        intermediate_dim: width of the feed-forward layer.
        dropout: dropout of the attention and feed-forward outputs.
        activation: the feed-forward activation.
        layer_norm_epsilon: epsilon of both LayerNorms.
        kernel_initializer: initializer of every kernel.

    Example:

    ```python
    block = DecoderBlock(num_heads=4, intermediate_dim=512)
    y = block(x)  # x (batch, length, 128) -> y (batch, length, 128)
    ```
    """

    def __init__(self, num_heads, intermediate_dim, dropout=0.0, activation="gelu",
                 layer_norm_epsilon=1e-5, kernel_initializer="glorot_uniform", **kwargs):
        kwargs.setdefault("autocast", False)  # the residual stream stays float32
        super().__init__(**kwargs)
        # === Config ===
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.dropout = float(dropout)
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # === Layers ===
        dense = dict(kernel_initializer=self.kernel_initializer)
        self.attention_norm = layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="attention_norm")
        self.query_key_value = None  # (hidden, 3 * hidden), built in build()
        self.attention_output = None
        self.feedforward_norm = layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="feedforward_norm")
        self.feedforward_intermediate = layers.Dense(
            self.intermediate_dim, activation=self.activation,
            name="feedforward_intermediate", **dense)
        self.feedforward_output = None
        self.output_dropout = layers.Dropout(self.dropout, name="output_dropout")

    def build(self, input_shape):
        hidden = int(input_shape[-1])
        if hidden % self.num_heads:
            raise ValueError(
                f"hidden_dim={hidden} must be divisible by num_heads={self.num_heads}"
            )
        dense = dict(kernel_initializer=self.kernel_initializer)
        self.query_key_value = layers.Dense(3 * hidden, name="query_key_value", **dense)
        self.attention_output = layers.Dense(hidden, name="attention_output", **dense)
        self.feedforward_output = layers.Dense(hidden, name="feedforward_output", **dense)
        self.attention_norm.build(input_shape)
        self.query_key_value.build(input_shape)
        self.attention_output.build(input_shape)
        self.feedforward_norm.build(input_shape)
        self.feedforward_intermediate.build(input_shape)
        self.feedforward_output.build((*input_shape[:-1], self.intermediate_dim))

    @property
    def head_dim(self):
        return self.attention_output.kernel.shape[0] // self.num_heads

    def call(self, x, training=False):
        x = ops.cast(x, self.variable_dtype)
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        query, key, value = self._split_heads(self.query_key_value(self.attention_norm(x)))
        attended = ops.dot_product_attention(
            query, key, value, is_causal=True, scale=self.head_dim ** -0.5)
        attended = ops.reshape(attended, (batch, length, -1))
        h = self.output_dropout(self.attention_output(attended), training=training)
        x = x + ops.cast(h, x.dtype)
        h = self.feedforward_output(self.feedforward_intermediate(self.feedforward_norm(x)))
        return x + ops.cast(self.output_dropout(h, training=training), x.dtype)

    def cached_call(self, x, key_cache, value_cache, index, visible):
        """The block over tokens at positions `index ...`, attending to the
        cache: the same arithmetic as `call()` written over the sublayers'
        weights in `keras.ops` (calling ~10 layers per token costs more than
        a one-token step's arithmetic), the new keys and values written into
        the caches at `index` as keras-hub's `CachedMultiHeadAttention` does.

        Args:
            x: float `(batch, t, hidden)`.
            key_cache, value_cache: float `(batch, sequence_length, heads,
                head_dim)`.
            index: int scalar (may be a tensor): the position of `x[:, 0]`.
            visible: bool `(1, 1, t, sequence_length)`: which cached
                positions each query sees.

        Returns:
            `(x, key_cache, value_cache)`.
        """
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        h = _layer_norm(x, self.attention_norm)
        query, key, value = self._split_heads(_dense(h, self.query_key_value))
        key_cache = cache_update(key_cache, [0, index, 0, 0], key)
        value_cache = cache_update(value_cache, [0, index, 0, 0], value)
        attended = ops.dot_product_attention(
            query, key_cache, value_cache, mask=visible, scale=self.head_dim ** -0.5)
        x = x + _dense(ops.reshape(attended, (batch, length, -1)), self.attention_output)
        h = _dense(_layer_norm(x, self.feedforward_norm), self.feedforward_intermediate)
        return x + _dense(h, self.feedforward_output), key_cache, value_cache

    def _split_heads(self, qkv):
        batch, length = ops.shape(qkv)[0], ops.shape(qkv)[1]
        qkv = ops.reshape(qkv, (batch, length, 3, self.num_heads, self.head_dim))
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
            "activation": keras.activations.serialize(self.activation),
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


def _dense(x, layer):
    y = ops.matmul(x, ops.cast(layer.kernel, x.dtype)) + ops.cast(layer.bias, x.dtype)
    return y if layer.activation is None else layer.activation(y)


def _layer_norm(x, layer):
    return ops.layer_normalization(
        x, layer.gamma, layer.beta, layer.axis, layer.epsilon,
        rms_scaling=layer.rms_scaling)


def transformer_lm(vocabulary_size, sequence_length, num_layers=4, num_heads=4,
                   hidden_dim=128, intermediate_dim=None, dropout=0.0,
                   tie_weights=True, layer_norm_epsilon=1e-5, name="transformer_lm"):
    """Token ids `(batch, length <= sequence_length)` -> next-token logits.

    Args:
        vocabulary_size: number of token ids.
        sequence_length: the context: most positions the model attends over.
        num_layers: number of Transformer decoder blocks.
        num_heads: attention heads per block (`hidden_dim` must divide).
        hidden_dim: width of the residual stream.
        intermediate_dim: width of the feed-forward layer (default 4x).
        dropout: dropout of embeddings, attention and feed-forward outputs.
        tie_weights: output projection = transposed token embedding.

    Example:

    ```python
    network = transformer_lm(65, 64, num_layers=4, num_heads=4, hidden_dim=128)
    logits = network(token_ids)  # (batch, length, 65)
    ```
    """
    if hidden_dim % num_heads:
        raise ValueError(
            f"hidden_dim={hidden_dim} must be divisible by num_heads={num_heads}"
        )
    # Imported here: keras-hub takes seconds to import, and only the LM uses
    # it (a saved LM's layers import it again when the file is loaded).
    import keras_hub

    intermediate_dim = intermediate_dim or 4 * hidden_dim
    initializer = keras.initializers.RandomNormal(stddev=0.02)
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    token_embedding = keras_hub.layers.ReversibleEmbedding(
        vocabulary_size, hidden_dim, tie_weights=tie_weights,
        embeddings_initializer=initializer, name="token_embedding",
    )
    x = token_embedding(tokens)
    x = x + keras_hub.layers.PositionEmbedding(
        sequence_length, initializer=initializer, name="position_embedding",
    )(x)
    x = layers.Dropout(dropout, name="embedding_dropout")(x)
    for i in range(num_layers):
        x = DecoderBlock(
            num_heads, intermediate_dim, dropout=dropout, activation="gelu",
            layer_norm_epsilon=layer_norm_epsilon, kernel_initializer=initializer,
            name=f"decoder_{i}",
        )(x)
    x = layers.LayerNormalization(epsilon=layer_norm_epsilon, name="final_norm")(x)
    logits = token_embedding(x, reverse=True)
    return keras.Model(tokens, logits, name=name)


def decoder_layers(network):
    """The network's decoder blocks, in order."""
    blocks = []
    while True:
        try:
            blocks.append(network.get_layer(f"decoder_{len(blocks)}"))
        except ValueError:
            return blocks


def forward_with_cache(network, token_ids, caches, index):
    """Run `token_ids` (positions `index ...`) through the network, reading
    and writing each block's self-attention cache.

    The same computation as calling the network, block by block through
    `DecoderBlock.cached_call`: the new keys and values are written at
    `index`, the queries attend to every cached position up to their own.

    Args:
        network: a `transformer_lm` model.
        token_ids: int `(batch, t)`, the tokens at positions `index ... index+t-1`.
        caches: one `(key, value)` pair per decoder block, each float
            `(batch, sequence_length, heads, head_dim)`, as `empty_cache`
            makes them.
        index: int scalar (may be a tensor): the first position.

    Sampling runs in float32 whatever the network's dtype policy
    (`kgen.precision`): the embeddings are cast to float32 and every later
    matmul reads the float32 weights, so the caches and logits are float32.

    Returns:
        `(logits float32 (batch, t, vocabulary), updated caches)`.
    """
    token_embedding = network.get_layer("token_embedding")
    x = ops.cast(token_embedding(token_ids), "float32")
    x = x + ops.cast(network.get_layer("position_embedding")(x, start_index=index),
                     "float32")
    length = ops.shape(token_ids)[1]
    size = caches[0][0].shape[1]
    # Query at position index + i sees cached positions <= index + i (the
    # same for every block).
    visible = (ops.arange(size, dtype="int32")[None, :]
               <= index + ops.arange(length, dtype="int32")[:, None])[None, None]
    updated = []
    for block, (key_cache, value_cache) in zip(decoder_layers(network), caches):
        x, key_cache, value_cache = block.cached_call(x, key_cache, value_cache, index,
                                                      visible)
        updated.append((key_cache, value_cache))
    x = _layer_norm(x, network.get_layer("final_norm"))
    return _output_logits(x, token_embedding), tuple(updated)


def _output_logits(x, token_embedding):
    """`token_embedding(x, reverse=True)` in the dtype of `x` (the layer
    call would compute in its policy's compute dtype)."""
    kernel = (ops.transpose(token_embedding.embeddings) if token_embedding.tie_weights
              else token_embedding.reverse_embeddings)
    return ops.matmul(x, ops.cast(kernel, x.dtype))


def empty_cache(network, batch_size):
    """The zero caches `forward_with_cache` starts from: one `(key, value)`
    pair per block, each `(batch_size, sequence_length, heads, head_dim)`."""
    blocks = decoder_layers(network)
    sequence_length = network.get_layer("position_embedding").sequence_length
    shape = (batch_size, sequence_length, blocks[0].num_heads, blocks[0].head_dim)
    return tuple((ops.zeros(shape), ops.zeros(shape)) for _ in blocks)
