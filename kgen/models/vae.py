"""Variational autoencoder (Kingma & Welling, 2014)."""

import math

import keras
from keras import ops

from kgen import random as kgen_random
from kgen.api import kgen_export
from kgen.family import Family
from kgen.family import declare_family
from kgen.models.base import GenerativeModel
from kgen.models.base import batch_images
from kgen.precision import to_float32
from kgen.trainers import scale_loss

LIKELIHOODS = ("bernoulli", "gaussian")


@declare_family(Family(
    name="VAE",
    output_kind="images",
    signatures="kgen.export.vae:vae_signatures",
    evaluation_metrics=("negative_elbo",),
))
@kgen_export("kgen.models.VAE")
class VAE(GenerativeModel):
    """A VAE with a diagonal Gaussian latent and a pixel likelihood.

    Batches are `{"images": ...}` dicts (or image arrays alone).
    `call(images)` returns a dict (`z_mean`, `z_log_var`, `z`, `logits`);
    `compute_loss()` is the negative ELBO per image in nats,
    `reconstruction + beta * kl`, written in `keras.ops` so Keras' own trainer
    computes gradients on every backend. `fit()` logs `loss`,
    `reconstruction_loss` and `kl_loss`.

    Args:
        encoder: a model mapping images to `[mean, log_var]`.
        decoder: a model mapping latents to per-pixel logits.
        likelihood: `"bernoulli"` (binary cross-entropy on logits) or
            `"gaussian"` (mean `sigmoid(logits)`, fixed `gaussian_scale`).
        beta: weight of the KL term (beta-VAE; 1 is the true ELBO).
        gaussian_scale: standard deviation of the Gaussian likelihood.
        seed: seed of the reparameterisation noise during training.

    Example:

    ```python
    from kgen.networks import conv_encoder, conv_decoder
    vae = VAE(conv_encoder((28, 28, 1), 16), conv_decoder(16, (28, 28, 1)))
    vae.compile(optimizer="adam")
    vae.fit(images, epochs=1)
    samples = vae.generate(16, seed=0)  # (16, 28, 28, 1); row i from seed i
    ```
    """

    nested_config_keys = ("encoder", "decoder")

    def __init__(
        self,
        encoder,
        decoder,
        likelihood="bernoulli",
        beta=1.0,
        gaussian_scale=0.1,
        seed=None,
        **kwargs,
    ):
        if likelihood not in LIKELIHOODS:
            raise ValueError(
                f"likelihood={likelihood!r}: expected one of {LIKELIHOODS}"
            )
        if beta < 0:
            raise ValueError(f"beta={beta}: must be >= 0")
        if gaussian_scale <= 0:
            raise ValueError(f"gaussian_scale={gaussian_scale}: must be > 0")
        super().__init__(seed=seed, **kwargs)
        # === Layers ===
        self.encoder = encoder
        self.decoder = decoder
        # === Config ===
        self.likelihood = likelihood
        self.beta = float(beta)
        self.gaussian_scale = float(gaussian_scale)
        self.image_shape = tuple(encoder.input_shape[1:])
        self.latent_dim = int(decoder.input_shape[-1])
        # === Metrics ===
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl_loss")
        self.build((None, *self.image_shape))

    def build(self, input_shape):
        # The encoder and decoder arrive built; nothing else holds weights.
        pass

    # --- the model ---------------------------------------------------------

    def reparameterize(self, mean, log_var):
        eps = self.batch_noise(keras.random.normal, ops.shape(mean)[0], mean.shape[1:])
        return mean + ops.exp(0.5 * log_var) * eps

    def call(self, images, training=False):
        images = batch_images(images)
        # float32 whatever the networks compute in (`kgen.precision`): the
        # noise, the log-variance's exp, the likelihood and the KL.
        mean, log_var = to_float32(self.encoder(images, training=training))
        z = self.reparameterize(mean, log_var)
        logits = to_float32(self.decoder(z, training=training))
        return {"z_mean": mean, "z_log_var": log_var, "z": z, "logits": logits}

    def example_terms(self, images, outputs):
        """Per image `(batch,)`: the reconstruction term `-log p(x|z)` and
        `KL(q(z|x) || N(0, I))`, in nats. Their sum is the negative ELBO.

        The likelihood is per pixel: `"bernoulli"` is the binary
        cross-entropy of the pixel values against `sigmoid(logits)` (a true
        log-likelihood for binary pixels); `"gaussian"` the density of
        `N(sigmoid(logits), gaussian_scale^2)` (a continuous density).
        """
        images = ops.cast(batch_images(images), outputs["logits"].dtype)
        logits = outputs["logits"]
        if self.likelihood == "bernoulli":
            nll = ops.softplus(logits) - images * logits
        else:
            s = self.gaussian_scale
            diff = (images - ops.sigmoid(logits)) / s
            nll = 0.5 * ops.square(diff) + math.log(s) + 0.5 * math.log(2 * math.pi)
        reconstruction = ops.sum(ops.reshape(nll, (ops.shape(nll)[0], -1)), -1)
        mean, log_var = outputs["z_mean"], outputs["z_log_var"]
        kl = -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), -1)
        return reconstruction, kl

    def loss_terms(self, images, outputs):
        """Mean over the batch of the reconstruction and KL terms, in nats."""
        reconstruction, kl = self.example_terms(images, outputs)
        return ops.mean(reconstruction), ops.mean(kl)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        reconstruction, kl = self.loss_terms(x, y_pred)
        loss = reconstruction + self.beta * kl
        for extra in self.losses:
            loss = loss + ops.cast(extra, loss.dtype)
        return scale_loss(loss)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        reconstruction, kl = self.loss_terms(x, y_pred)
        self.reconstruction_tracker.update_state(reconstruction)
        self.kl_tracker.update_state(kl)
        return self.get_metrics_result()

    # --- inference ---------------------------------------------------------

    def encode(self, images):
        """Images in [0, 1] -> float32 `(mean, log_var)` of the posterior."""
        return to_float32(self.encoder(images, training=False))

    def decode(self, latents):
        """Latents -> float32 images in [0, 1] (the likelihood's mean)."""
        return ops.sigmoid(to_float32(self.decoder(latents, training=False)))

    def sample(self, seeds, labels=None):
        """Decode one prior draw per row: int32 seed pairs `(batch, 2)` ->
        images in [0, 1]; row `r` depends on `seeds[r]` alone."""
        return self.decode(kgen_random.normal(seeds, (self.latent_dim,)))

    def generate_rows(self, pairs, labels):
        fn = self.compiled_function("sample", self.sample, self.decoder.weights)
        return ops.convert_to_numpy(fn(pairs))

    # --- config ------------------------------------------------------------

    def get_config(self):
        return {
            **super().get_config(),
            "likelihood": self.likelihood,
            "beta": self.beta,
            "gaussian_scale": self.gaussian_scale,
        }
