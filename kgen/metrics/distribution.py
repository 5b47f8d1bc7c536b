"""Distances between the feature distributions of real and generated samples.

Every metric here compares two sets, `real` and `generated`, through the
features of a Keras feature extractor (any model mapping a batch of images,
or audio, to `(batch, d)` features: kgen's own MNIST classifier, InceptionV3
where its weights are present) or, with `feature_extractor=None`, through
feature vectors given directly. The sets accumulate over batches:
`update_state(real, generated)` takes one batch of each, and either may be
`None`, so a fixed real set is fed once and generated batches afterwards.

- `FrechetDistance` (FID; Heusel et al., 2017): keeps per set the count,
  mean and centred sum of outer products, merged batch by batch with Chan's
  parallel update, so the accumulated result equals the all-at-once one to
  rounding and float32 state does not lose the covariance to cancellation.
- `KernelInceptionDistance` (KID; Binkowski et al., 2018): the unbiased
  MMD^2 with the cubic polynomial kernel over random subsets, mean and
  standard deviation. Keeps the features in a bounded buffer.
- `PrecisionRecall` (Kynkaanniemi et al., 2019): the share of generated
  samples inside the real k-NN manifold and of real ones inside the
  generated manifold. Keeps the features in a bounded buffer.

All computation is `keras.ops`, so the metrics run eagerly, inside `fit()`
/ `evaluate()` (compiled) and standalone on TensorFlow, JAX and PyTorch.
The matrix square root of FID uses symmetric eigendecompositions
(`keras.ops.eigh`): `Tr (S_r S_g)^(1/2) = Tr (S_r^(1/2) S_g S_r^(1/2))^(1/2)`,
the inner matrix being symmetric positive semi-definite; it runs in float64
wherever the backend has it (see `widest_float`), in `keras.ops` rather than
NumPy so that `result()` also runs inside compiled steps (JAX computes
metric results inside its jitted step). Bad input found
while running eagerly (standalone use, `kgen evaluate`) fails with a
`ValueError` naming the value; inside a compiled step, where no value can be
read, an overflowing buffer or a set too small makes `result()` NaN, and the
named error comes when Keras reads the final results eagerly (the end of
`evaluate()`, of an epoch).
"""

import numpy as np

import keras
from keras import ops

from kgen.api import kgen_export
from kgen.errors import UserError

SETS = ("real", "generated")


class SampleBufferFull(UserError, ValueError):
    """More samples were fed than a metric's `max_samples` buffer holds."""


class TooFewSamples(UserError, ValueError):
    """A set holds too few samples for the statistic asked of it."""


def concrete(value):
    """`value` as a NumPy value, or None inside a traced (compiled) step."""
    try:
        return ops.convert_to_numpy(value)
    except Exception:  # a tracer or a symbolic tensor: no value to read
        return None


def compiled(metric, key, fn):
    """`fn` (a pure function of tensors) compiled once per metric and key by
    `kgen.inference.compile_inference`: eagerly, JAX would otherwise trace
    and compile a `fori_loop` at every call; inside a compiled step it nests."""
    cache = metric.__dict__.setdefault("_compiled", {})
    if key not in cache:
        from kgen.inference import compile_inference

        cache[key] = compile_inference(fn, [])
    return cache[key]


class FeatureSets(keras.metrics.Metric):
    """Base of the two-set metrics: feature extraction and input checks.

    Args:
        feature_extractor: a Keras model mapping a batch of samples to
            `(batch, d)` features, or None to feed feature vectors.
        num_features: `d`; read from `feature_extractor.output_shape` when
            None. Needed with `feature_extractor=None`.
        name: the metric's name (its key in logs).
        dtype: dtype of the state and the computation (default float32;
            "float64" on TensorFlow and PyTorch, and on JAX with x64 on).
    """

    def __init__(self, feature_extractor=None, num_features=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.feature_extractor = feature_extractor
        if num_features is None:
            if feature_extractor is None:
                raise ValueError(
                    f"{type(self).__name__}: num_features=None needs a "
                    "feature_extractor to read it from; pass num_features=d "
                    "when feeding feature vectors"
                )
            shape = feature_extractor.output_shape
            if isinstance(shape, list) or len(shape) != 2 or shape[-1] is None:
                raise ValueError(
                    f"feature_extractor {feature_extractor.name!r} has output "
                    f"shape {shape}; expected one (batch, d) output"
                )
            num_features = shape[-1]
        if isinstance(num_features, bool) or int(num_features) != num_features or num_features < 1:
            raise ValueError(f"num_features={num_features!r}: must be an int >= 1")
        self.num_features = int(num_features)

    def features(self, samples, which):
        """One batch of `which` set -> `(batch, d)` features in `self.dtype`."""
        if self.feature_extractor is not None:
            samples = self.feature_extractor(samples, training=False)
        x = ops.convert_to_tensor(samples)
        if len(x.shape) != 2 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"{self.name}: {which} features have shape {tuple(x.shape)}; "
                f"expected (batch, {self.num_features}) (num_features="
                f"{self.num_features})"
            )
        return ops.cast(x, self.dtype)

    def update_state(self, real=None, generated=None, sample_weight=None):
        """Add one batch of real and/or generated samples (either may be None).

        In `compile(metrics=...)` Keras calls it with `(y_true, y_pred)`:
        the real batch and the generated one.
        """
        if sample_weight is not None:
            raise ValueError(f"{self.name}: sample_weight is not supported (got one)")
        if real is None and generated is None:
            raise ValueError(f"{self.name}: update_state needs real, generated or both")
        for which, samples in zip(SETS, (real, generated)):
            if samples is not None:
                self.update_set(which, self.features(samples, which))

    def update_set(self, which, features):
        raise NotImplementedError

    def results(self):
        """Every number the metric reports, by name (for `kgen evaluate`)."""
        result = self.result()
        return dict(result) if isinstance(result, dict) else {self.name: result}

    def get_config(self):
        return {**super().get_config(), "num_features": self.num_features}


# --- Fréchet distance -------------------------------------------------------


def widest_float(dtype):
    """float64 where the backend computes in it (TensorFlow, PyTorch; JAX
    with `jax_enable_x64`), else `dtype`.

    Measured (2000 samples, d = 64 and 256, against SciPy's float64
    `sqrtm`): float32 `eigh` agrees to 1e-6 relative on JAX and PyTorch but
    only to 2e-4..5e-4 on TensorFlow, where a set against itself gave -0.003
    at d = 256. With float32 state and this float64 step, TensorFlow and
    PyTorch agree to 1e-6 relative and give |FID(x, x)| < 2e-5 (JAX, float32
    throughout: 1e-6 and 3e-5); with `dtype="float64"` state, to 1e-12.
    """
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return dtype
    return "float64"


def trace_sqrt_product(a, b):
    """`Tr (a b)^(1/2)` for symmetric PSD `a`, `b`, via two `eigh` calls."""
    w, v = ops.eigh(a)
    root_a = ops.matmul(v * ops.sqrt(ops.maximum(w, 0.0))[None, :], ops.transpose(v))
    m = ops.matmul(ops.matmul(root_a, b), root_a)
    m = 0.5 * (m + ops.transpose(m))
    eigenvalues, _ = ops.eigh(m)
    return ops.sum(ops.sqrt(ops.maximum(eigenvalues, 0.0)))


def frechet_distance(mean_a, cov_a, mean_b, cov_b):
    """`||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))` in keras.ops."""
    diff = mean_a - mean_b
    return (
        ops.sum(diff * diff)
        + ops.trace(cov_a)
        + ops.trace(cov_b)
        - 2.0 * trace_sqrt_product(cov_a, cov_b)
    )


@kgen_export("kgen.metrics.FrechetDistance")
class FrechetDistance(FeatureSets):
    """Fréchet distance between Gaussians fitted to real and generated features.

    `result() = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))` with
    the unbiased covariances `S` (divided by `n - 1`). With InceptionV3 pool
    features this is FID; with kgen's own classifiers it is the same distance
    over their features (compare numbers only within one extractor).

    The state per set is the count, the mean and the centred sum of outer
    products `M2`; a batch is merged in with Chan et al.'s parallel update
    (`M2 += M2_batch + delta delta^T n_a n_b / n`), which is exact in exact
    arithmetic and, unlike raw sums of `x x^T`, keeps its precision in
    float32. Memory is `O(d^2)` whatever the number of samples.

    Args:
        feature_extractor: Keras model, samples -> `(batch, d)` features; None
            to feed feature vectors.
        num_features: `d` (read from the extractor when None).
        name: key in logs.
        dtype: state and computation dtype (float32 by default).

    Example:

    ```python
    fid = FrechetDistance(classifier_features)
    fid.update_state(real=real_images)           # once
    for batch in generated_batches:
        fid.update_state(generated=batch)
    fid.result()
    ```
    """

    def __init__(self, feature_extractor=None, num_features=None, name="fid", dtype=None):
        super().__init__(feature_extractor, num_features, name=name, dtype=dtype)
        d = self.num_features
        for which in SETS:
            setattr(self, f"{which}_count", self.add_variable(
                shape=(), initializer="zeros", dtype=self.dtype, name=f"{which}_count"))
            setattr(self, f"{which}_mean", self.add_variable(
                shape=(d,), initializer="zeros", dtype=self.dtype, name=f"{which}_mean"))
            setattr(self, f"{which}_m2", self.add_variable(
                shape=(d, d), initializer="zeros", dtype=self.dtype, name=f"{which}_m2"))

    def update_set(self, which, x):
        count = getattr(self, f"{which}_count")
        mean = getattr(self, f"{which}_mean")
        m2 = getattr(self, f"{which}_m2")
        n_b = ops.cast(ops.shape(x)[0], self.dtype)
        batch_mean = ops.sum(x, axis=0) / ops.maximum(n_b, 1.0)
        centred = x - batch_mean[None, :]
        batch_m2 = ops.matmul(ops.transpose(centred), centred)
        n_a = count.value
        n = n_a + n_b
        delta = batch_mean - mean.value
        weight = n_b / ops.maximum(n, 1.0)
        mean.assign(mean.value + delta * weight)
        m2.assign(m2.value + batch_m2 + ops.outer(delta, delta) * (n_a * weight))
        count.assign(n)

    def statistics(self, which):
        """`(count, mean, covariance)` of one set (covariance over `n - 1`)."""
        count = getattr(self, f"{which}_count").value
        n = concrete(count)
        if n is not None and n < 2:
            raise TooFewSamples(
                f"{self.name}: the {which} set holds {int(n)} sample(s); a "
                "covariance needs at least 2"
            )
        m2 = getattr(self, f"{which}_m2").value
        return count, getattr(self, f"{which}_mean").value, m2 / (count - 1.0)

    def result(self):
        _, mean_r, cov_r = self.statistics("real")
        _, mean_g, cov_g = self.statistics("generated")
        dtype = widest_float(self.dtype)
        distance = frechet_distance(*(ops.cast(t, dtype) for t in (mean_r, cov_r, mean_g, cov_g)))
        return ops.cast(distance, self.dtype)


# --- buffered features: KID, precision/recall --------------------------------


class BufferedFeatureSets(FeatureSets):
    """Keeps up to `max_samples` feature rows per set in fixed buffers.

    A batch is written at the rows after those already held (a scatter with
    static shapes, so it compiles); eagerly, a batch that would pass
    `max_samples` raises `SampleBufferFull` naming the numbers. Inside a
    compiled step the surplus rows go to a spare row, the count keeps
    counting, and `result()` is NaN.
    """

    def __init__(self, feature_extractor=None, num_features=None, max_samples=10000,
                 name=None, dtype=None):
        super().__init__(feature_extractor, num_features, name=name, dtype=dtype)
        if isinstance(max_samples, bool) or int(max_samples) != max_samples or max_samples < 2:
            raise ValueError(f"max_samples={max_samples!r}: must be an int >= 2")
        self.max_samples = int(max_samples)
        for which in SETS:
            # One spare row past the end takes writes beyond max_samples.
            setattr(self, f"{which}_features", self.add_variable(
                shape=(self.max_samples + 1, self.num_features), initializer="zeros",
                dtype=self.dtype, name=f"{which}_features"))
            setattr(self, f"{which}_count", self.add_variable(
                shape=(), initializer="zeros", dtype="int32", name=f"{which}_count"))

    def update_set(self, which, x):
        buffer = getattr(self, f"{which}_features")
        count = getattr(self, f"{which}_count")
        b = ops.shape(x)[0]
        held = concrete(count.value)
        if held is not None and isinstance(b, int) and held + b > self.max_samples:
            raise SampleBufferFull(
                f"{self.name}: {int(held)} {which} samples held plus a batch of {b} "
                f"exceeds max_samples={self.max_samples}; construct the metric with "
                "a larger max_samples or feed fewer samples"
            )
        rows = count.value + ops.arange(b, dtype="int32")
        rows = ops.minimum(rows, self.max_samples)
        buffer.assign(ops.scatter_update(buffer.value, rows[:, None], x))
        count.assign(count.value + ops.cast(b, "int32"))

    def held(self, which, minimum):
        """`(features (max_samples, d), n held, overflow flag)` of one set."""
        count = getattr(self, f"{which}_count").value
        n = concrete(count)
        if n is not None:
            if n > self.max_samples:
                raise SampleBufferFull(
                    f"{self.name}: {int(n)} {which} samples were fed but "
                    f"max_samples={self.max_samples}"
                )
            if n < minimum:
                raise TooFewSamples(
                    f"{self.name}: the {which} set holds {int(n)} sample(s); "
                    f"this needs at least {minimum}"
                )
        features = getattr(self, f"{which}_features").value[: self.max_samples]
        bad = ops.logical_or(count > self.max_samples, count < minimum)
        return features, ops.minimum(count, self.max_samples), bad

    def get_config(self):
        return {**super().get_config(), "max_samples": self.max_samples}


def polynomial_kernel(x, y, num_features):
    """`(x . y / d + 1)^3`, the KID kernel."""
    return (ops.matmul(x, ops.transpose(y)) / float(num_features) + 1.0) ** 3


def unbiased_mmd2(x, y, weights, m, num_features):
    """Unbiased MMD^2 between the rows of `x` and `y` where `weights` is 1.

    Diagonal terms are left out of the within-set sums (`m (m - 1)` pairs);
    the cross term averages all `m^2` pairs, as in Binkowski et al.'s code.
    """
    ww = weights[:, None] * weights[None, :]
    k_xx = polynomial_kernel(x, x, num_features) * ww
    k_yy = polynomial_kernel(y, y, num_features) * ww
    k_xy = polynomial_kernel(x, y, num_features) * ww
    within = (ops.sum(k_xx) - ops.trace(k_xx) + ops.sum(k_yy) - ops.trace(k_yy)) / (
        m * (m - 1.0))
    return within - 2.0 * ops.sum(k_xy) / (m * m)


@kgen_export("kgen.metrics.KernelInceptionDistance")
class KernelInceptionDistance(BufferedFeatureSets):
    """Kernel (inception) distance: unbiased MMD^2, cubic polynomial kernel.

    Over `subsets` random subsets of `m = min(n_real, n_generated,
    subset_size)` rows of each set (without replacement within a subset),
    the unbiased MMD^2 with `k(x, y) = (x . y / d + 1)^3`; `result()` is
    their mean and `result_with_std()` returns `{name: mean, name_std:
    std}` (population std over subsets, as Binkowski et al. report it).
    Unlike FID it is unbiased, so it can be negative near 0, and small sets
    compare fairly.

    Subsets are deterministic from `seed` and the same on every backend: the
    constructor draws with NumPy one random ranking of the `max_samples`
    buffer rows per subset and set; a subset is the `m` held rows of
    smallest rank.

    Args:
        feature_extractor: Keras model, samples -> `(batch, d)` features; None
            to feed feature vectors.
        num_features: `d` (read from the extractor when None).
        max_samples: rows kept per set (memory `2 (max_samples + 1) d`).
        subsets: number of random subsets.
        subset_size: rows per subset (fewer when a set holds fewer).
        seed: seed of the subset choice.
        name: key in logs (`result()`; the std is `name + "_std"`).
        dtype: state and computation dtype.

    Example:

    ```python
    kid = KernelInceptionDistance(classifier_features, max_samples=2000,
                                  subsets=50, subset_size=500)
    kid.update_state(real_images, generated_images)
    kid.result_with_std()   # {"kid": ..., "kid_std": ...}
    ```
    """

    def __init__(self, feature_extractor=None, num_features=None, max_samples=10000,
                 subsets=100, subset_size=1000, seed=0, name="kid", dtype=None):
        super().__init__(feature_extractor, num_features, max_samples, name=name,
                         dtype=dtype)
        for key, value in (("subsets", subsets), ("subset_size", subset_size)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{key}={value!r}: must be an int >= 1")
        if subset_size < 2:
            raise ValueError(f"subset_size={subset_size}: must be >= 2 (unbiased MMD)")
        self.subsets = int(subsets)
        self.subset_size = int(subset_size)
        self.seed = int(seed)
        rng = np.random.default_rng(self.seed)
        # ranks[set, subset, row]: a random permutation of the buffer rows.
        self.ranks = np.stack([
            np.stack([rng.permutation(self.max_samples) for _ in range(self.subsets)])
            for _ in SETS
        ]).astype("float32")

    def subset_rows(self, which, subset, held):
        """Buffer rows of one subset: the `k` held rows of smallest rank."""
        ranks = ops.take(ops.convert_to_tensor(self.ranks[SETS.index(which)]), subset, axis=0)
        position = ops.arange(self.max_samples, dtype="int32")
        ranks = ops.where(position < held, ranks, float(self.max_samples))
        k = min(self.subset_size, self.max_samples)
        _, rows = ops.top_k(-ranks, k=k, sorted=True)
        return rows

    def subset_values(self):
        """The MMD^2 of every subset, `(subsets,)`."""
        real, n_r, bad_r = self.held("real", 2)
        generated, n_g, bad_g = self.held("generated", 2)
        values = compiled(self, "subset_values", self.compute_subset_values)(
            real, n_r, generated, n_g)
        return ops.where(ops.logical_or(bad_r, bad_g), float("nan"), values)

    def compute_subset_values(self, real, n_r, generated, n_g):
        k = min(self.subset_size, self.max_samples)
        m = ops.minimum(ops.minimum(n_r, n_g), k)
        weights = ops.cast(ops.arange(k, dtype="int32") < m, self.dtype)
        m = ops.cast(m, self.dtype)

        def body(s, values):
            x = ops.take(real, self.subset_rows("real", s, n_r), axis=0)
            y = ops.take(generated, self.subset_rows("generated", s, n_g), axis=0)
            mmd = unbiased_mmd2(x, y, weights, m, self.num_features)
            return ops.scatter_update(values, ops.reshape(s, (1, 1)), ops.reshape(mmd, (1,)))

        return ops.fori_loop(0, self.subsets, body, ops.zeros((self.subsets,), self.dtype))

    def result_with_std(self):
        """`{name: mean, name + "_std": std}` over the subsets."""
        values = self.subset_values()
        return {self.name: ops.mean(values), f"{self.name}_std": ops.std(values)}

    def result(self):
        return ops.mean(self.subset_values())

    def results(self):
        return self.result_with_std()

    def get_config(self):
        return {
            **super().get_config(),
            "subsets": self.subsets,
            "subset_size": self.subset_size,
            "seed": self.seed,
        }


# --- precision and recall ----------------------------------------------------


def squared_distances(x, y):
    """Pairwise squared Euclidean distances `(len(x), len(y))`."""
    xx = ops.sum(x * x, axis=-1)
    yy = ops.sum(y * y, axis=-1)
    return ops.maximum(xx[:, None] + yy[None, :] - 2.0 * ops.matmul(x, ops.transpose(y)), 0.0)


@kgen_export("kgen.metrics.PrecisionRecall")
class PrecisionRecall(BufferedFeatureSets):
    """Improved precision and recall (Kynkaanniemi et al., 2019).

    Each set's manifold is the union of balls around its samples, a ball's
    radius being the distance to the sample's `k`-th nearest neighbour in
    its own set. Precision is the share of generated samples inside the
    real manifold (fidelity); recall the share of real samples inside the
    generated manifold (coverage). `result()` returns `{"precision": ...,
    "recall": ...}` (for standalone use and callbacks; a dict does not fit
    `compile(metrics=...)`).

    Memory and time grow with `max_samples^2` (all pairwise distances of the
    buffers), hence the smaller default.

    Args:
        feature_extractor: Keras model, samples -> `(batch, d)` features; None
            to feed feature vectors.
        num_features: `d` (read from the extractor when None).
        k: the neighbour whose distance sets a ball's radius (paper: 3).
        max_samples: rows kept per set.
        name: the metric's name.
        dtype: state and computation dtype.

    Example:

    ```python
    pr = PrecisionRecall(classifier_features, k=3, max_samples=2000)
    pr.update_state(real_images, generated_images)
    pr.result()   # {"precision": ..., "recall": ...}
    ```
    """

    def __init__(self, feature_extractor=None, num_features=None, k=3, max_samples=5000,
                 name="precision_recall", dtype=None):
        super().__init__(feature_extractor, num_features, max_samples, name=name,
                         dtype=dtype)
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"k={k!r}: must be an int >= 1")
        if k >= self.max_samples:
            raise ValueError(f"k={k}: must be < max_samples={self.max_samples}")
        self.k = int(k)

    def radii(self, x, held):
        """Squared distance of each row to its k-th neighbour among held rows."""
        valid = ops.arange(self.max_samples, dtype="int32") < held
        d = squared_distances(x, x)
        d = ops.where(valid[None, :], d, float("inf"))
        # The row itself is its own nearest (distance 0): take the (k+1)-th.
        smallest, _ = ops.top_k(-d, k=self.k + 1, sorted=True)
        return -smallest[:, -1]

    def coverage(self, points, n_points, centres, radii, n_centres):
        """Share of held `points` inside some held centre's ball."""
        valid_c = ops.arange(self.max_samples, dtype="int32") < n_centres
        d = squared_distances(points, centres)
        inside = ops.logical_and(d <= radii[None, :], valid_c[None, :])
        covered = ops.cast(ops.any(inside, axis=1), self.dtype)
        valid_p = ops.cast(ops.arange(self.max_samples, dtype="int32") < n_points, self.dtype)
        return ops.sum(covered * valid_p) / ops.cast(n_points, self.dtype)

    def result(self):
        real, n_r, bad_r = self.held("real", self.k + 1)
        generated, n_g, bad_g = self.held("generated", self.k + 1)
        bad = ops.logical_or(bad_r, bad_g)
        precision, recall = compiled(self, "precision_recall", self.compute)(
            real, n_r, generated, n_g)
        return {
            "precision": ops.where(bad, float("nan"), precision),
            "recall": ops.where(bad, float("nan"), recall),
        }

    def compute(self, real, n_r, generated, n_g):
        precision = self.coverage(generated, n_g, real, self.radii(real, n_r), n_r)
        recall = self.coverage(real, n_r, generated, self.radii(generated, n_g), n_g)
        return precision, recall

    def get_config(self):
        return {**super().get_config(), "k": self.k}
