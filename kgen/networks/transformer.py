"""Decoder-only Transformer language model built from keras-hub layers.

GPT-2's shape (as nanoGPT writes it): token + learned position embeddings,
`num_layers` pre-norm `keras_hub.layers.TransformerDecoder` blocks, a final
LayerNorm, and an output projection tied to the token embedding (or not).

The layers are named so `CausalLM` can call them one by one with
keras-hub's self-attention cache: `token_embedding`, `position_embedding`,
`embedding_dropout`, `decoder_0` ... `decoder_{n-1}`, `final_norm`.
"""

import keras
import keras_hub
from keras import layers


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


def forward_with_cache(network, token_ids, caches, index):
    """Run `token_ids` (positions `index ...`) through the network, reading
    and writing each block's keras-hub self-attention cache.

    Args:
        network: a `transformer_lm` model.
        token_ids: int `(batch, t)`, the tokens at positions `index ... index+t-1`.
        caches: one float `(batch, 2, sequence_length, heads, head_dim)` per
            decoder block, as `empty_cache` makes them. They travel as
            separate tensors, not one stacked array, so a generation step
            does not copy every block's cache to update one.
        index: int scalar (may be a tensor): the first position.

    Returns:
        `(logits (batch, t, vocabulary), updated caches)`.
    """
    token_embedding = network.get_layer("token_embedding")
    x = token_embedding(token_ids)
    x = x + network.get_layer("position_embedding")(x, start_index=index)
    updated = []
    for block, cache in zip(decoder_layers(network), caches):
        x, cache = block(x, self_attention_cache=cache,
                         self_attention_cache_update_index=index)
        updated.append(cache)
    x = network.get_layer("final_norm")(x)
    return token_embedding(x, reverse=True), tuple(updated)


def empty_cache(network, batch_size):
    """The zero caches `forward_with_cache` starts from: a tuple with one
    `(batch_size, 2, sequence_length, heads, head_dim)` array per block."""
    from keras import ops

    blocks = decoder_layers(network)
    attention = blocks[0]._self_attention_layer
    sequence_length = network.get_layer("position_embedding").sequence_length
    shape = (batch_size, 2, sequence_length, attention._num_heads, attention._key_dim)
    return tuple(ops.zeros(shape) for _ in blocks)
