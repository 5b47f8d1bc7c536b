"""The generate contract for the VAE and the GAN: row `i` of
`generate(n, seed=s)` is `generate(1, seed=s + i)[0]`, on every backend, and
the exported SavedModel's row for seed `s + i` is the same sample."""

import numpy as np
import pytest

from kgen import random as kgen_random
from kgen.export import export_model
from kgen.models import GAN
from kgen.models import VAE
from kgen.networks import conv_vae_networks
from kgen.networks import dcgan_discriminator
from kgen.networks import dcgan_generator

SHAPE = (8, 8, 1)
ATOL = 2e-5


def tiny(family):
    if family == "vae":
        return VAE(*conv_vae_networks(SHAPE, 3, (4,), 8), seed=0)
    classes = 10 if family == "cgan" else None
    return GAN(dcgan_generator(4, SHAPE, (8,), num_classes=classes),
               dcgan_discriminator(SHAPE, (8,), num_classes=classes),
               num_classes=classes, ema_decay=0.9, seed=0)


@pytest.fixture(scope="module", params=["vae", "gan", "cgan"])
def exported(request, tmp_path_factory):
    model = tiny(request.param)
    tmp = tmp_path_factory.mktemp(request.param)
    model.save(tmp / "model.keras")
    return model, export_model(tmp / "model.keras", tmp / "saved_models" / "m")


def served(version_dir, seeds, labels=None):
    import tensorflow as tf

    generate = tf.saved_model.load(str(version_dir)).signatures["generate"]
    inputs = {"seed": tf.constant(seeds, tf.int64)}
    if labels is not None:
        inputs["label"] = tf.constant(labels, tf.int32)
    return generate(**inputs)["images"].numpy()


def test_row_i_is_seed_plus_i_and_the_exports_row(exported):
    model, version_dir = exported
    labels = [3, 1, 4] if model.num_classes else None
    rows = model.generate(3, seed=5, labels=labels)
    assert rows.shape == (3, *SHAPE) and rows.std() > 0
    for i in range(3):
        one = model.generate(1, seed=5 + i, labels=None if labels is None else [labels[i]])
        np.testing.assert_allclose(rows[i], one[0], atol=ATOL)
    np.testing.assert_allclose(served(version_dir, [5, 6, 7], labels), rows, atol=ATOL)
    # Rows do not depend on n or on their neighbours.
    np.testing.assert_allclose(model.generate(7, seed=4, labels=None if labels is None
                                              else [0, *labels, 0, 0, 0])[1:4], rows, atol=ATOL)


def test_default_labels_follow_the_seed_not_the_position(exported):
    model, version_dir = exported
    if not model.num_classes:
        pytest.skip("conditional GAN only")
    rows = model.generate(4, seed=18)
    np.testing.assert_allclose(rows[2], model.generate(1, seed=20)[0], atol=ATOL)
    # seed mod num_classes: seeds 18..21 -> labels 8, 9, 0, 1
    np.testing.assert_allclose(served(version_dir, [18, 19, 20, 21], [8, 9, 0, 1]), rows, atol=ATOL)


def test_all_64_bits_of_the_seed_count(exported):
    model, version_dir = exported
    labels = [1, 1] if model.num_classes else None
    a, b = model.generate(1, seed=7), model.generate(1, seed=7 + 2**32)
    assert not np.allclose(a, b)
    np.testing.assert_allclose(served(version_dir, [7, 7 + 2**32], labels),
                               np.concatenate([model.generate(1, seed=s, labels=labels[:1] if labels else None)
                                               for s in (7, 7 + 2**32)]), atol=ATOL)


def test_generate_refuses_bad_arguments_by_name():
    vae = tiny("vae")
    with pytest.raises(ValueError, match="labels=\\[1\\]: VAE is unconditional"):
        vae.generate(1, seed=0, labels=[1])
    with pytest.raises(ValueError, match="n=0"):
        vae.generate(0, seed=0)
    with pytest.raises(ValueError, match="seed=9223372036854775807"):
        vae.generate(2, seed=2**63 - 1)
    cgan = tiny("cgan")
    with pytest.raises(ValueError, match="labels=\\[10\\]: must be in \\[0, 10\\)"):
        cgan.generate(1, seed=0, labels=[10])
    with pytest.raises(ValueError, match="expected one int or 2 ints"):
        cgan.generate(2, seed=0, labels=[1, 2, 3])
    # Wrong dtypes name the argument and the value.
    with pytest.raises(ValueError, match="labels=\\[1.5\\]: must be ints"):
        cgan.generate(1, seed=0, labels=[1.5])
    with pytest.raises(ValueError, match="seed=1.5: must be an int"):
        vae.generate(1, seed=1.5)
    with pytest.raises(ValueError, match="n='3': must be an int >= 1"):
        vae.generate("3", seed=0)
    with pytest.raises(ValueError, match="num_classes=0"):
        GAN(dcgan_generator(4, SHAPE, (8,)), dcgan_discriminator(SHAPE, (8,)), num_classes=0)


def test_the_generator_is_the_same_numbers_on_every_backend():
    # Values computed once on TensorFlow: the integer hash is exact, the
    # floats agree to rounding on JAX and PyTorch (and would catch a change
    # to the generator, which would change every user's samples).
    from keras import ops

    pairs = kgen_random.seed_pairs([0, 1, -1, 2**40 + 3])
    u = ops.convert_to_numpy(kgen_random.uniform(pairs, (2,), stream=3))
    z = ops.convert_to_numpy(kgen_random.normal(pairs, (2,)))
    assert u.shape == (4, 2) and z.shape == (4, 2)
    golden = np.array([
        [0.16744342, 0.6340376, 0.30543998, 1.8961822],
        [0.47120938, 0.61104333, -1.1057194, 0.38985935],
        [0.04899576, 0.5731033, 1.9748566, -0.19186662],
        [0.70041263, 0.40437362, -0.15265642, -1.3504318],
    ])
    np.testing.assert_allclose(np.concatenate([u, z], 1), golden, atol=1e-6)
