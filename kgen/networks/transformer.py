"""Decoder-only Transformer language model built from keras-hub layers.

GPT-2's shape (as nanoGPT writes it): token + learned position embeddings,
`num_layers` pre-norm `keras_hub.layers.TransformerDecoder` blocks, a final
LayerNorm, and an output projection tied to the token embedding (or not).

The layers are named so cached generation (`forward_with_cache`) can find
them and read their weights: `token_embedding`, `position_embedding`,
`embedding_dropout`, `decoder_0` ... `decoder_{n-1}`, `final_norm`.
"""

import keras
import keras_hub
from keras import layers
from keras import ops


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
    intermediate_dim = intermediate_dim or 4 * hidden_dim
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    token_embedding = keras_hub.layers.ReversibleEmbedding(
        vocabulary_size, hidden_dim, tie_weights=tie_weights,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
        name="token_embedding",
    )
    x = token_embedding(tokens)
    x = x + keras_hub.layers.PositionEmbedding(
        sequence_length,
        initializer=keras.initializers.RandomNormal(stddev=0.02),
        name="position_embedding",
    )(x)
    x = layers.Dropout(dropout, name="embedding_dropout")(x)
    for i in range(num_layers):
        x = keras_hub.layers.TransformerDecoder(
            intermediate_dim, num_heads, dropout=dropout, activation="gelu",
            layer_norm_epsilon=layer_norm_epsilon, normalize_first=True,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
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


def decoding_weights(network):
    """Each decoder block's weights as the one-token step reads them: one
    tuple per block of tensors (query/key/value kernels fused into one
    `(hidden, 3 * hidden)` matrix). Compute it once per generation and pass
    it to every `forward_with_cache` call."""
    weights = []
    for block in decoder_layers(network):
        attention = block._self_attention_layer
        if block._cross_attention_layer is not None:
            raise ValueError(f"{block.name}: cross-attention is not supported")
        dense = (attention._query_dense, attention._key_dense, attention._value_dense)
        hidden = dense[0].kernel.shape[0]
        weights.append((
            block._self_attention_layer_norm,
            ops.concatenate([ops.reshape(d.kernel, (hidden, -1)) for d in dense], axis=1),
            ops.concatenate([ops.reshape(d.bias, (-1,)) for d in dense], axis=0),
            ops.reshape(attention._output_dense.kernel, (-1, hidden)),
            attention._output_dense.bias,
            block._feedforward_layer_norm,
            block._feedforward_intermediate_dense,
            block._feedforward_output_dense,
        ))
    return weights


def _layer_norm(x, layer):
    return ops.layer_normalization(
        x, layer.gamma, layer.beta, layer.axis, layer.epsilon,
        rms_scaling=layer.rms_scaling)


def forward_with_cache(network, token_ids, caches, index, weights=None):
    """Run `token_ids` (positions `index ...`) through the network, reading
    and writing each block's self-attention cache.

    The same computation as calling the network (keras-hub's pre-norm
    `TransformerDecoder`: LayerNorm, multi-head self-attention, residual,
    LayerNorm, GELU feed-forward, residual) written over the blocks' own
    weights in `keras.ops`, as keras-hub's `CachedMultiHeadAttention` does
    with its cache: the new keys and values are written at `index`, the
    queries attend to every cached position up to their own. Calling the
    Keras layers themselves costs more than the arithmetic of a one-token
    step (about 50 layer calls a token), so a step calls none but the
    embeddings.

    Args:
        network: a `transformer_lm` model.
        token_ids: int `(batch, t)`, the tokens at positions `index ... index+t-1`.
        caches: one `(key, value)` pair per decoder block, each float
            `(batch, sequence_length, heads, head_dim)`, as `empty_cache`
            makes them.
        index: int scalar (may be a tensor): the first position.
        weights: `decoding_weights(network)` (computed here if not given).

    Returns:
        `(logits (batch, t, vocabulary), updated caches)`.
    """
    weights = decoding_weights(network) if weights is None else weights
    token_embedding = network.get_layer("token_embedding")
    x = token_embedding(token_ids)
    x = x + network.get_layer("position_embedding")(x, start_index=index)
    batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
    _, size, heads, head_dim = caches[0][0].shape
    # Query at position index + i sees cached positions <= index + i (the
    # same for every block).
    visible = (ops.arange(size, dtype="int32")[None, :]
               <= index + ops.arange(length, dtype="int32")[:, None])[None, None]
    updated = []
    for (norm1, qkv_kernel, qkv_bias, out_kernel, out_bias, norm2, ffn_in, ffn_out), \
            (key_cache, value_cache) in zip(weights, caches):
        h = _layer_norm(x, norm1)
        qkv = ops.reshape(ops.matmul(h, qkv_kernel) + qkv_bias,
                          (batch, length, 3, heads, head_dim))
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        key_cache = ops.slice_update(key_cache, [0, index, 0, 0], key)
        value_cache = ops.slice_update(value_cache, [0, index, 0, 0], value)
        attended = ops.dot_product_attention(
            query, key_cache, value_cache, mask=visible,
            scale=1.0 / float(head_dim) ** 0.5)
        x = x + ops.matmul(ops.reshape(attended, (batch, length, heads * head_dim)),
                           out_kernel) + out_bias
        h = _layer_norm(x, norm2)
        h = ffn_in.activation(ops.matmul(h, ffn_in.kernel) + ffn_in.bias)
        x = x + ops.matmul(h, ffn_out.kernel) + ffn_out.bias
        updated.append((key_cache, value_cache))
    x = _layer_norm(x, network.get_layer("final_norm"))
    return token_embedding(x, reverse=True), tuple(updated)


def empty_cache(network, batch_size):
    """The zero caches `forward_with_cache` starts from: one `(key, value)`
    pair per block, each `(batch_size, sequence_length, heads, head_dim)`."""
    blocks = decoder_layers(network)
    attention = blocks[0]._self_attention_layer
    sequence_length = network.get_layer("position_embedding").sequence_length
    shape = (batch_size, sequence_length, attention._num_heads, attention._key_dim)
    return tuple((ops.zeros(shape), ops.zeros(shape)) for _ in blocks)
