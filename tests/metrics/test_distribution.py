"""FID, KID and precision/recall against float64 NumPy references written
here from the papers' formulas, on whichever backend runs the suite."""

import keras
import numpy as np
import pytest
import scipy.linalg
from keras import ops

from kgen.metrics import FrechetDistance
from kgen.metrics import KernelInceptionDistance
from kgen.metrics import PrecisionRecall
from kgen.metrics import SampleBufferFull
from kgen.metrics import TooFewSamples

D = 8


def value(x):
    return float(ops.convert_to_numpy(x))


def features(n, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(D, D)) / np.sqrt(D)
    return (rng.normal(size=(n, D)) @ mixing * scale + shift).astype("float32")


# --- NumPy references (float64) ---------------------------------------------


def reference_fid(a, b):
    a, b = np.float64(a), np.float64(b)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * root))


def reference_kid(a, b, ranks, subset_size):
    """Binkowski et al.'s unbiased MMD^2, cubic kernel, over the subsets the
    metric documents: the m rows of smallest rank of each set."""
    a, b = np.float64(a), np.float64(b)
    m = min(len(a), len(b), subset_size)
    kernel = lambda x, y: (x @ y.T / a.shape[1] + 1) ** 3  # noqa: E731
    values = []
    for s in range(ranks.shape[1]):
        x = a[np.argsort(ranks[0, s, :len(a)], kind="stable")[:m]]
        y = b[np.argsort(ranks[1, s, :len(b)], kind="stable")[:m]]
        kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
        values.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                      - 2 * kxy.sum() / m ** 2)
    return np.mean(values), np.std(values)


def reference_precision_recall(real, generated, k):
    real, generated = np.float64(real), np.float64(generated)

    def dist(x, y):
        return np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))

    def radii(x):
        return np.sort(dist(x, x), axis=1)[:, k]  # column 0 is the point itself

    precision = (dist(generated, real) <= radii(real)[None, :]).any(1).mean()
    recall = (dist(real, generated) <= radii(generated)[None, :]).any(1).mean()
    return precision, recall


# --- Fréchet distance --------------------------------------------------------


def test_fid_matches_scipy_in_batches_and_at_once():
    real, generated = features(300, 0), features(260, 1, shift=0.5, scale=0.7)
    at_once = FrechetDistance(num_features=D)
    at_once.update_state(real, generated)
    batched = FrechetDistance(num_features=D)
    batched.update_state(real=real)  # the real set once, alone
    for start, stop in ((0, 1), (1, 100), (100, 237), (237, 260)):
        batched.update_state(generated=generated[start:stop])
    expected = reference_fid(real, generated)
    assert expected > 1.0
    np.testing.assert_allclose(value(at_once.result()), expected, rtol=1e-4)
    np.testing.assert_allclose(value(batched.result()), expected, rtol=1e-4)
    batched.reset_state()
    batched.update_state(real, real)
    assert abs(value(batched.result())) < 1e-4


def test_fid_equals_the_closed_form_of_two_gaussians():
    """Samples whose sample mean and covariance are exactly given: FID is
    |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2 for covariances sharing
    eigenvectors Q with eigenvalues a and b."""
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    eig_a, eig_b = rng.uniform(0.2, 3.0, D), rng.uniform(0.2, 3.0, D)
    mu_a, mu_b = rng.normal(size=D), rng.normal(size=D)

    def exact_samples(mean, eigenvalues, n, seed):
        z = np.random.default_rng(seed).normal(size=(n, D))
        z -= z.mean(0)
        z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
        return z @ (q * np.sqrt(eigenvalues)).T + mean

    a, b = exact_samples(mu_a, eig_a, 400, 4), exact_samples(mu_b, eig_b, 300, 5)
    np.testing.assert_allclose(np.cov(a, rowvar=False), q @ np.diag(eig_a) @ q.T, atol=1e-9)
    closed_form = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(eig_a) - np.sqrt(eig_b)) ** 2).sum()
    fid = FrechetDistance(num_features=D)
    fid.update_state(a.astype("float32"), b.astype("float32"))
    np.testing.assert_allclose(value(fid.result()), closed_form, rtol=1e-4)


@pytest.fixture(scope="module")
def extractor():
    """A fixed random feature extractor: 8x8 images -> 8 features, the same
    weights on every backend."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(D, activation="tanh")
    model = keras.Model(inputs, dense(x), name="features")
    rng = np.random.default_rng(7)
    dense.set_weights([rng.normal(size=(64, D)).astype("float32") / 4,
                       np.zeros(D, "float32")])
    return model


def test_fid_and_kid_grow_with_noise_through_an_extractor(extractor):
    from sklearn.datasets import load_digits

    images = (load_digits().images[:400, :, :, None] / 16.0).astype("float32")
    real, other = images[:200], images[200:]
    rng = np.random.default_rng(0)
    fids, kids = [], []
    fid = FrechetDistance(extractor)
    kid = KernelInceptionDistance(extractor, max_samples=200, subsets=20, subset_size=100)
    for sigma in (0.0, 0.2, 0.5, 1.0):
        noisy = other + sigma * rng.normal(size=other.shape).astype("float32")
        for metric in (fid, kid):
            metric.reset_state()
            metric.update_state(real, noisy[:120])
            metric.update_state(generated=noisy[120:])
        fids.append(value(fid.result()))
        kids.append({k: value(v) for k, v in kid.result_with_std().items()})
    assert fids == sorted(fids) and fids[1] > fids[0] and fids[-1] > 10 * fids[0]
    means = [k["kid"] for k in kids]
    assert means == sorted(means) and means[-1] > means[0]
    # Real digits against real digits: KID near 0 within a few of its stds.
    assert kids[0]["kid_std"] > 0
    assert abs(kids[0]["kid"]) < 4 * kids[0]["kid_std"] + 1e-3
    assert all(k["kid"] > 0 for k in kids[2:])
    # The same set against itself: FID ~ 0.
    fid.reset_state()
    fid.update_state(real, real)
    assert abs(value(fid.result())) < 1e-4


# --- KID ---------------------------------------------------------------------


def test_kid_matches_reference_in_batches_and_at_once():
    real, generated = features(150, 0), features(130, 1, shift=0.3)
    kwargs = dict(num_features=D, max_samples=160, subsets=4, subset_size=50, seed=3)
    at_once = KernelInceptionDistance(**kwargs)
    at_once.update_state(real, generated)
    batched = KernelInceptionDistance(**kwargs)
    for start in range(0, 150, 40):
        batched.update_state(real[start:start + 40],
                             generated[start:start + 40] if start < 130 else None)
    mean, std = reference_kid(real, generated, at_once.ranks, 50)
    assert mean > 0 and std > 0
    for metric in (at_once, batched):
        result = {k: value(v) for k, v in metric.result_with_std().items()}
        np.testing.assert_allclose(result["kid"], mean, rtol=1e-4)
        np.testing.assert_allclose(result["kid_std"], std, rtol=1e-3)
        np.testing.assert_allclose(value(metric.result()), mean, rtol=1e-4)
    # Sets smaller than subset_size: m = the smaller set's size.
    small = KernelInceptionDistance(**kwargs)
    small.update_state(real[:30], generated[:20])
    np.testing.assert_allclose(value(small.result()),
                               reference_kid(real[:30], generated[:20], small.ranks, 50)[0],
                               rtol=1e-4)


def test_kid_subsets_are_fixed_by_the_seed():
    a = KernelInceptionDistance(num_features=D, max_samples=50, subsets=3, subset_size=10,
                                seed=5)
    b = KernelInceptionDistance(num_features=D, max_samples=50, subsets=3, subset_size=10,
                                seed=5)
    c = KernelInceptionDistance(num_features=D, max_samples=50, subsets=3, subset_size=10,
                                seed=6)
    assert np.array_equal(a.ranks, b.ranks) and not np.array_equal(a.ranks, c.ranks)
    np.testing.assert_array_equal(np.sort(a.ranks[0, 0]), np.arange(50))


# --- precision / recall --------------------------------------------------------


def test_precision_recall_matches_reference():
    real, generated = features(120, 0), features(90, 1, shift=0.8, scale=0.5)
    metric = PrecisionRecall(num_features=D, k=3, max_samples=128)
    metric.update_state(real[:70], generated[:50])
    metric.update_state(real[70:], generated[50:])
    precision, recall = reference_precision_recall(real, generated, 3)
    assert 0 < precision < 1 and 0 < recall < 1
    result = {k: value(v) for k, v in metric.result().items()}
    # float32 distances may move a sample on a ball's very edge: one sample.
    assert abs(result["precision"] - precision) <= 1 / 90 + 1e-6
    assert abs(result["recall"] - recall) <= 1 / 120 + 1e-6


# --- in Keras' own loops ---------------------------------------------------------


def test_metrics_in_compile_and_evaluate():
    """As compiled metrics, (y_true, y_pred) = (real, generated) features,
    accumulated over evaluate()'s batches on this backend's compiled step."""
    real, x = features(200, 0), features(200, 1)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(D)])
    fid = FrechetDistance(num_features=D)
    kid = KernelInceptionDistance(num_features=D, max_samples=200, subsets=5,
                                  subset_size=60)
    model.compile(loss="mse", metrics=[fid, kid])
    logs = model.evaluate(x, real, batch_size=64, return_dict=True, verbose=0)
    generated = ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(logs["fid"], reference_fid(real, generated), rtol=1e-4)
    np.testing.assert_allclose(logs["kid"], reference_kid(real, generated, kid.ranks, 60)[0],
                               rtol=1e-4)
    # evaluate() resets the state: a second run gives the same numbers.
    again = model.evaluate(x, real, batch_size=50, return_dict=True, verbose=0)
    np.testing.assert_allclose(again["fid"], logs["fid"], rtol=1e-4)
    # A buffer too small for the data: the compiled steps cannot raise, but
    # Keras reads the final results eagerly and the named error comes out.
    model.compile(loss="mse", metrics=[KernelInceptionDistance(
        num_features=D, max_samples=150, subsets=2, subset_size=20)])
    with pytest.raises(SampleBufferFull, match="max_samples=150"):
        model.evaluate(x, real, batch_size=64, verbose=0)


# --- named errors ------------------------------------------------------------------


def test_bad_inputs_name_the_value(extractor):
    fid = FrechetDistance(num_features=D)
    with pytest.raises(ValueError, match=r"\(30, 5\).*num_features=8"):
        fid.update_state(np.zeros((30, 5), "float32"))
    fid.update_state(features(10, 0), features(1, 1))
    with pytest.raises(TooFewSamples, match="generated set holds 1 sample"):
        fid.result()
    with pytest.raises(ValueError, match="num_features=None"):
        FrechetDistance()
    with pytest.raises(ValueError, match="real, generated or both"):
        fid.update_state()
    kid = KernelInceptionDistance(extractor, max_samples=20, subsets=2, subset_size=5)
    assert kid.num_features == D
    kid.update_state(np.zeros((15, 8, 8, 1), "float32"))
    with pytest.raises(SampleBufferFull, match="15 real samples held plus a batch of 6 "
                                               "exceeds max_samples=20"):
        kid.update_state(np.zeros((6, 8, 8, 1), "float32"))
    with pytest.raises(TooFewSamples, match="generated set holds 0"):
        kid.result()
    with pytest.raises(ValueError, match="subset_size=1"):
        KernelInceptionDistance(num_features=D, subset_size=1)
    pr = PrecisionRecall(num_features=D, k=3, max_samples=10)
    pr.update_state(features(3, 0), features(5, 1))
    with pytest.raises(TooFewSamples, match="real set holds 3 sample.*at least 4"):
        pr.result()
