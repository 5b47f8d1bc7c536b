import numpy as np
import pytest
from keras import ops

from kgen.networks import conv_vae_networks
from kgen.networks import dcgan_discriminator
from kgen.networks import dcgan_generator


@pytest.mark.parametrize("upsample", ["resize", "transpose"])
def test_generator_shapes_and_range(upsample):
    g = dcgan_generator(8, (28, 28, 1), (16, 8), num_classes=10, upsample=upsample)
    images = ops.convert_to_numpy(g([np.zeros((3, 8), "float32"), np.array([0, 1, 2])]))
    assert images.shape == (3, 28, 28, 1)
    assert -1.0 <= images.min() and images.max() <= 1.0


def test_discriminator_gives_one_logit_per_image():
    d = dcgan_discriminator((8, 8, 3), (8, 16))
    assert tuple(d(np.zeros((5, 8, 8, 3), "float32")).shape) == (5, 1)


@pytest.mark.parametrize("conditioning", ["projection", "channel"])
def test_conditional_discriminator_judges_the_label(conditioning):
    d = dcgan_discriminator((8, 8, 1), (8, 16), num_classes=10, conditioning=conditioning)
    images = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)).astype("float32")
    a = ops.convert_to_numpy(d([images, np.array([0, 1, 2, 3])]))
    b = ops.convert_to_numpy(d([images, np.array([4, 5, 6, 7])]))
    assert a.shape == (4, 1)
    assert not np.allclose(a, b)  # the same images under other labels score otherwise


def test_bad_conditioning_is_named():
    with pytest.raises(ValueError, match=r"conditioning='concat': expected 'projection' or 'channel'"):
        dcgan_discriminator((8, 8, 1), (8,), num_classes=10, conditioning="concat")


def test_bad_upsample_is_named():
    with pytest.raises(ValueError, match=r"upsample='bilinear': expected 'resize' or 'transpose'"):
        dcgan_generator(8, (8, 8, 1), (8,), upsample="bilinear")


def test_sizes_must_fit_the_strides():
    with pytest.raises(ValueError, match=r"image_shape \(10, 10, 1\).*divisible by 4"):
        dcgan_generator(8, (10, 10, 1), (16, 8))


def test_vae_networks_mirror_each_other():
    encoder, decoder = conv_vae_networks((8, 8, 1), 3, (4, 8), 16)
    mean, log_var = encoder(np.zeros((2, 8, 8, 1), "float32"))
    assert tuple(mean.shape) == (2, 3)
    assert tuple(decoder(mean).shape) == (2, 8, 8, 1)


@pytest.mark.parametrize("tie_weights", [True, False])
def test_cached_forward_matches_the_network(tie_weights):
    """The one-token decoding step computes what the layers do: a prompt fed
    at once, then token by token through the cache, gives the network's own
    logits at every position."""
    import keras

    from kgen.networks import transformer

    keras.utils.set_random_seed(3)
    network = transformer.transformer_lm(23, 12, num_layers=2, num_heads=2,
                                         hidden_dim=16, tie_weights=tie_weights)
    tokens = np.random.default_rng(0).integers(0, 23, size=(3, 12)).astype("int32")
    expected = ops.convert_to_numpy(network(tokens))

    caches = transformer.empty_cache(network, 3)
    logits, caches = transformer.forward_with_cache(network, tokens[:, :5], caches, 0)
    steps = [ops.convert_to_numpy(logits)]
    for i in range(5, 12):
        logits, caches = transformer.forward_with_cache(
            network, tokens[:, i:i + 1], caches, i)
        steps.append(ops.convert_to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), expected, atol=2e-5, rtol=1e-4)
    assert len(caches) == 2 and all(c.shape == (3, 12, 2, 8) for pair in caches for c in pair)


def test_decoder_block_is_causal_and_round_trips(tmp_path):
    """Changing a later token leaves earlier outputs alone; the block's
    config and weights survive a `.keras` file."""
    import keras

    from kgen.networks import transformer

    keras.utils.set_random_seed(4)
    network = transformer.transformer_lm(11, 8, num_layers=1, num_heads=2, hidden_dim=8)
    tokens = np.random.default_rng(1).integers(0, 11, size=(2, 8)).astype("int32")
    changed = tokens.copy()
    changed[:, 5] = (changed[:, 5] + 1) % 11
    a, b = (ops.convert_to_numpy(network(t)) for t in (tokens, changed))
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-4
    block = network.get_layer("decoder_0")
    assert isinstance(block, transformer.DecoderBlock)
    assert block.query_key_value.kernel.shape == (8, 24)
    network.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras")
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(tokens)), a, atol=1e-6)
    assert loaded.get_layer("decoder_0").get_config() == block.get_config()
