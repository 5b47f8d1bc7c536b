"""ClassifierAccuracy with a tiny trained classifier, NegativeELBO of a tiny
VAE against a float64 NumPy reference, and test bits per token of a tiny LM."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from kgen import random as kgen_random
from kgen.data import CharTokenizer
from kgen.metrics import ClassifierAccuracy
from kgen.metrics import NegativeELBO
from kgen.metrics import text_bits_per_token
from kgen.metrics import vae_negative_elbo
from kgen.models import VAE
from kgen.models import CausalLM
from kgen.networks import transformer_lm


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images[:, :, :, None] / 16.0).astype("float32"), data.target.astype("int32")


# --- ClassifierAccuracy --------------------------------------------------------


def test_classifier_accuracy_of_a_trained_classifier(digits):
    images, labels = digits
    keras.utils.set_random_seed(0)
    classifier = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                   keras.layers.Dense(10)])
    classifier.compile(optimizer=keras.optimizers.Adam(0.05),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    classifier.fit(images[:1200], labels[:1200], epochs=5, batch_size=100, verbose=0)
    held_out, truth = images[1200:], labels[1200:]
    predicted = np.argmax(ops.convert_to_numpy(classifier(held_out)), axis=-1)
    metric = ClassifierAccuracy(classifier)
    metric.update_state(truth[:100], held_out[:100])
    metric.update_state(truth[100:, None], held_out[100:])  # (batch, 1) labels too
    expected = (predicted == truth).mean()
    assert expected > 0.85
    np.testing.assert_allclose(float(ops.convert_to_numpy(metric.result())), expected,
                               rtol=1e-6)
    per_class = ops.convert_to_numpy(metric.per_class())
    for c in range(10):
        np.testing.assert_allclose(per_class[c], (predicted == truth)[truth == c].mean(),
                                   rtol=1e-6)
    assert set(metric.results()) == {"classifier_accuracy",
                                     *(f"classifier_accuracy_class_{c}" for c in range(10))}
    # Asked for the wrong class, the samples score low.
    wrong = ClassifierAccuracy(classifier)
    wrong.update_state((truth + 1) % 10, held_out)
    assert float(ops.convert_to_numpy(wrong.result())) < 0.1
    with pytest.raises(ValueError, match=r"label 10 is outside \[0, 10\)"):
        metric.update_state(np.array([3, 10]), held_out[:2])
    with pytest.raises(ValueError, match="3 labels for 2 generated"):
        metric.update_state(np.array([1, 2, 3]), held_out[:2])


# --- NegativeELBO ---------------------------------------------------------------

LATENT = 3


def dense_vae():
    """An 8x8 VAE of three Dense layers, weights from NumPy (same on every
    backend), so a NumPy reference can recompute its ELBO."""
    inputs = keras.Input((8, 8, 1))
    flat = keras.layers.Flatten()(inputs)
    mean = keras.layers.Dense(LATENT, name="mean")(flat)
    log_var = keras.layers.Dense(LATENT, name="log_var")(flat)
    encoder = keras.Model(inputs, [mean, log_var])
    latents = keras.Input((LATENT,))
    logits = keras.layers.Reshape((8, 8, 1))(keras.layers.Dense(64, name="out")(latents))
    decoder = keras.Model(latents, logits)
    rng = np.random.default_rng(0)
    for layer in (encoder.get_layer("mean"), encoder.get_layer("log_var"),
                  decoder.get_layer("out")):
        w, b = layer.get_weights()
        layer.set_weights([rng.normal(size=w.shape).astype("float32") * 0.2,
                           np.zeros_like(b)])
    return VAE(encoder, decoder, seed=1)


def reference_negative_elbo(vae, images, seed):
    """-ELBO per image in float64 from the weights and kgen.random's draws."""
    x = np.float64(images.reshape(len(images), -1))
    wm, bm = vae.encoder.get_layer("mean").get_weights()
    wv, bv = vae.encoder.get_layer("log_var").get_weights()
    wo, bo = vae.decoder.get_layer("out").get_weights()
    mean, log_var = x @ wm + bm, x @ wv + bv
    pairs = kgen_random.seed_pairs(kgen_random.row_seeds(seed, len(images)))
    eps = np.float64(ops.convert_to_numpy(kgen_random.normal(pairs, (LATENT,), stream=7)))
    logits = (mean + np.exp(0.5 * log_var) * eps) @ wo + bo
    reconstruction = (np.logaddexp(0, logits) - x * logits).sum(-1)
    kl = -0.5 * (1 + log_var - mean ** 2 - np.exp(log_var)).sum(-1)
    return reconstruction + kl


def test_negative_elbo_matches_reference_in_batches(digits):
    images = digits[0][:100]
    vae = dense_vae()
    expected = reference_negative_elbo(vae, images, seed=4)
    np.testing.assert_allclose(ops.convert_to_numpy(vae_negative_elbo(vae, images, seed=4)),
                               expected, rtol=1e-4)
    metric = NegativeELBO(vae, seed=4)
    for start, stop in ((0, 37), (37, 38), (38, 100)):
        metric.update_state(images[start:stop])
    results = {k: float(ops.convert_to_numpy(v)) for k, v in metric.results().items()}
    np.testing.assert_allclose(results["negative_elbo"], expected.mean(), rtol=1e-4)
    np.testing.assert_allclose(results["negative_elbo_bits_per_dim"],
                               expected.mean() / (64 * math.log(2)), rtol=1e-4)
    with pytest.raises(ValueError, match="seed=-1"):
        NegativeELBO(vae, seed=-1)


def test_negative_elbo_falls_as_the_vae_trains(digits):
    images = digits[0]
    keras.utils.set_random_seed(0)
    vae = dense_vae()
    vae.compile(optimizer=keras.optimizers.Adam(0.01))
    metric = NegativeELBO(vae)
    scores = []
    for _ in range(3):
        metric.reset_state()
        metric.update_state(images[1500:])
        scores.append(float(ops.convert_to_numpy(metric.result())))
        vae.fit(images[:1500], epochs=2, batch_size=100, verbose=0)
    assert scores[0] > scores[1] > scores[2]


# --- text --------------------------------------------------------------------------


def test_text_bits_per_token():
    text = "to be or not to be,\nthat is the question.\n" * 4
    tokenizer = CharTokenizer.from_text(text)
    keras.utils.set_random_seed(0)
    lm = CausalLM(transformer_lm(tokenizer.vocabulary_size, 8, num_layers=1, num_heads=1,
                                 hidden_dim=8), tokenizer)
    result = text_bits_per_token(lm, text, batch_size=3)
    assert result["tokens"] == len(text) - 1
    # Any batching gives the same number.
    np.testing.assert_allclose(text_bits_per_token(lm, text, batch_size=50)["bits_per_token"],
                               result["bits_per_token"], rtol=1e-5)
    # Reference: every token after the first, predicted from its window.
    ids = tokenizer.encode(text)
    starts = list(range(0, len(ids) - 1, 8))
    windows = np.zeros((len(starts), 9), "int32")  # causal: zero padding after is harmless
    for row, start in enumerate(starts):
        windows[row, :len(ids[start:start + 9])] = ids[start:start + 9]
    padded = np.zeros((50, 8), "int32")
    padded[:len(windows)] = windows[:, :-1]
    logits = np.float64(lm.predict_on_batch(padded))[:len(windows)]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nats = [-log_probs[row, i, windows[row, i + 1]]
            for row, start in enumerate(starts) for i in range(min(8, len(ids) - 1 - start))]
    assert len(nats) == len(text) - 1
    np.testing.assert_allclose(result["bits_per_token"], np.mean(nats) / math.log(2),
                               rtol=1e-4)
    # All-zero output weights: uniform logits, log2(vocabulary) bits.
    head = lm.network.layers[-1]
    head.set_weights([np.zeros_like(w) for w in head.get_weights()])
    np.testing.assert_allclose(text_bits_per_token(lm, text, batch_size=3)["bits_per_token"],
                               math.log2(tokenizer.vocabulary_size), rtol=1e-5)
    with pytest.raises(ValueError, match="context=9"):
        text_bits_per_token(lm, text, context=9)
