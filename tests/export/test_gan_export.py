"""A class-conditional GAN's export, checked as TF Serving would load it."""

import textwrap

import numpy as np
import pytest

from kgen.export import export_model
from kgen.export import read_metadata
from kgen.models import GAN
from kgen.networks import dcgan_discriminator
from kgen.networks import dcgan_generator
from tests.export.helpers import FORBIDDEN_OPS
from tests.export.helpers import graph_op_types
from tests.export.helpers import run_without_kgen
from tests.export.helpers import saved_model_cli
from tests.export.helpers import tolerance


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_arrays):
    images, labels = mnist_arrays
    tmp = tmp_path_factory.mktemp("gan_export")
    gan = GAN(dcgan_generator(8, (28, 28, 1), (16, 8), num_classes=10),
              dcgan_discriminator((28, 28, 1), (8, 16), num_classes=10),
              num_classes=10, ema_decay=0.9, seed=0)
    gan.compile(g_optimizer="adam", d_optimizer="adam")
    gan.fit({"images": images[:64], "labels": labels[:64].astype("int32")},
            batch_size=32, epochs=1, verbose=0)
    gan.save(tmp / "gan.keras")
    return {"dir": export_model(tmp / "gan.keras", tmp / "saved_models" / "cgan"),
            "model": gan}


@pytest.mark.tf_only
def test_metadata_says_conditional_and_ema(exported):
    meta = read_metadata(exported["dir"])
    assert meta["family"] == "GAN" and meta["num_classes"] == 10
    assert meta["uses_ema_generator"] is True


@pytest.mark.tf_only
def test_saved_model_cli_runs_generate_with_labels(exported, tmp_path):
    shown = saved_model_cli("show", "--dir", exported["dir"], "--all")
    assert "signature_def['serving_default']" in shown.stdout
    assert "inputs['label'] tensor_info:\n        dtype: DT_INT32" in shown.stdout
    result = saved_model_cli(
        "run", "--dir", exported["dir"], "--tag_set", "serve", "--signature_def",
        "generate", "--input_exprs", "seed=[1,2];label=[3,4]", "--outdir", tmp_path,
    )
    assert result.returncode == 0, result.stderr
    images = np.load(tmp_path / "images.npy")
    assert images.shape == (2, 28, 28, 1) and 0.0 <= images.min() and images.max() <= 1.0


def test_exported_images_match_the_ema_generator(exported):
    import tensorflow as tf
    from keras import ops

    from kgen import random as kgen_random

    loaded = tf.saved_model.load(str(exported["dir"]))
    served = loaded.signatures["generate"](
        seed=tf.constant([5], tf.int64), label=tf.constant([2], tf.int32))["images"].numpy()
    latents = kgen_random.normal(kgen_random.seed_pairs([5]), (8,))
    gan = exported["model"]
    local = ops.convert_to_numpy(gan.ema_generator(
        [latents, ops.convert_to_tensor([2], "int32")], training=False))
    np.testing.assert_allclose(served, np.clip((local + 1) / 2, 0, 1),
                               atol=tolerance(gan, 1e-5))


NO_KGEN = textwrap.dedent("""
    gen = tf.saved_model.load(sys.argv[1]).signatures["generate"]
    run = lambda seeds, labels: gen(seed=tf.constant(seeds, tf.int64),
                                    label=tf.constant(labels, tf.int32))["images"].numpy()
    a, b = run([7, 8], [1, 1]), run([7, 8], [1, 1])
    other_label = run([7, 8], [6, 6])
    errors = {}
    for name, (seeds, labels) in {"label_range": ([1], [10]), "negative": ([1], [-1]),
                                  "batch": ([1, 2], [3])}.items():
        try:
            run(seeds, labels)
        except tf.errors.InvalidArgumentError as e:
            errors[name] = e.message
    print(json.dumps({"same": bool(np.array_equal(a, b)),
                      "label_matters": bool(np.abs(a - other_label).max() > 1e-4),
                      "errors": errors}))
""")


@pytest.mark.tf_only
def test_without_kgen_same_seed_same_image_and_bad_labels(exported, tmp_path):
    out = run_without_kgen(tmp_path, NO_KGEN, exported["dir"])
    assert out["same"] and out["label_matters"]
    assert "label must be in [0, 10)" in out["errors"]["label_range"]
    assert "label must be in [0, 10)" in out["errors"]["negative"]
    assert "label must have one value per row (as seed)" in out["errors"]["batch"]


@pytest.mark.tf_only
def test_graph_has_only_core_ops(exported):
    assert not graph_op_types(exported["dir"]) & FORBIDDEN_OPS
