"""Negative ELBO of a VAE on real images: nats per example, bits per dimension."""

import math

import keras
from keras import ops

from kgen import random as kgen_random
from kgen.api import kgen_export
from kgen.models.base import batch_images
from kgen.precision import to_float32

# kgen.random stream of the evaluation's posterior draws (sampling uses 0).
ELBO_STREAM = 7


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**30:
        raise ValueError(f"seed={seed!r}: must be an int in [0, 2**30)")
    return seed


def vae_negative_elbo(model, images, seed=0, offset=0):
    """Per image `(batch,)`: `-ELBO = -E_q[log p(x|z)] + KL(q(z|x) || p(z))`
    in nats, with one posterior draw per image.

    The draw for image `i` of the batch comes from the kgen.random row seed
    `seed + offset + i` (stream `ELBO_STREAM`), so the number is the same on
    every backend and does not depend on how a data set is cut into
    batches (pass each batch's position as `offset`). `beta` is not applied:
    this is the true bound, whatever beta the model was trained with. The
    likelihood is the model's own (`model.example_terms`): see `NegativeELBO`.

    Args:
        model: a `kgen.models.VAE`.
        images: a batch of images in [0, 1] (or a `{"images": ...}` dict).
        seed: base seed of the posterior draws (int in [0, 2**30)).
        offset: index of the batch's first image in the whole set.
    """
    _check_seed(seed)
    images = ops.convert_to_tensor(batch_images(images))
    first = ops.cast(offset, "int32") + seed
    fn = model.compiled_function(
        "negative_elbo", lambda x, first: _negative_elbo(model, x, first),
        model.encoder.weights + model.decoder.weights)
    return fn(images, first)


def _negative_elbo(model, images, first):
    """`vae_negative_elbo`'s computation: row `i` draws from seed `first + i`."""
    mean, log_var = model.encode(images)
    rows = ops.arange(ops.shape(mean)[0], dtype="int32") + first
    pairs = ops.stack([rows, ops.zeros_like(rows)], axis=-1)
    eps = kgen_random.normal(pairs, (model.latent_dim,), stream=ELBO_STREAM)
    z = mean + ops.exp(0.5 * log_var) * ops.cast(eps, mean.dtype)
    logits = model.decoder(z, training=False)
    # The bound in float32 whatever the model's compute dtype (a mixed
    # bfloat16 or float16 model's encoder and decoder compute in it).
    reconstruction, kl = model.example_terms(
        images, {"z_mean": to_float32(mean), "z_log_var": to_float32(log_var),
                 "logits": to_float32(logits)})
    return ops.cast(reconstruction, "float32") + ops.cast(kl, "float32")


@kgen_export("kgen.metrics.NegativeELBO")
class NegativeELBO(keras.metrics.Mean):
    """A VAE's negative ELBO on real images, in nats per image and bits per
    dimension (`nats / (pixels * ln 2)`).

    `update_state(images)` adds a batch; image `j` of the whole stream gets
    the posterior draw of row seed `seed + j`, so the result is the same on
    every backend and for any batching. It is an upper bound on the negative
    log-likelihood of the model's own likelihood: with `likelihood=
    "bernoulli"` the per-pixel binary cross-entropy (a discrete
    log-likelihood for binarised pixels; for grey-level pixels in [0, 1] a
    cross-entropy, not a normalised density), with `"gaussian"` the density of
    `N(sigmoid(logits), gaussian_scale^2)` (continuous, so bits/dim can be
    negative and is not comparable to discrete models' bits/dim without
    dequantisation). Bits/dim is for that likelihood.

    Args:
        model: a `kgen.models.VAE`.
        seed: base seed of the posterior draws (int in [0, 2**30)).
        name: key in logs (nats); bits/dim under `name + "_bits_per_dim"`.
        dtype: dtype of the running mean.

    Example:

    ```python
    elbo = NegativeELBO(vae)
    for batch in test_images:
        elbo.update_state(batch)
    elbo.results()  # {"negative_elbo": nats, "negative_elbo_bits_per_dim": bits}
    ```
    """

    def __init__(self, model, seed=0, name="negative_elbo", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.model = model
        self.seed = _check_seed(seed)
        self.dimensions = int(math.prod(model.image_shape))
        self.seen = self.add_variable(shape=(), initializer="zeros", dtype="int32",
                                      name="seen")

    def update_state(self, images, y_pred=None, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(f"{self.name}: sample_weight is not supported (got one)")
        nats = vae_negative_elbo(self.model, images, self.seed, self.seen.value)
        self.seen.assign(self.seen.value + ops.cast(ops.shape(nats)[0], "int32"))
        return super().update_state(nats)

    def bits_per_dim(self):
        return self.result() / (self.dimensions * math.log(2.0))

    def results(self):
        """`{name: nats per image, name + "_bits_per_dim": bits per pixel}`."""
        return {self.name: self.result(), f"{self.name}_bits_per_dim": self.bits_per_dim()}

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}
