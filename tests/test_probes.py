"""A user's mistakes that once ended in `kgen: internal error`, and the
smaller defects of the same kind, each as one row: the `kgen` command run
in this process (`kgen_main`), exit status 2 and one `kgen: error:` line
naming the bad value.

The rows that need a model share one module-scoped set of tiny untrained
models (`models`): a VAE exported twice (3 rows per call, and 256), a GAN
and a classifier as `.keras` files, an exported language model, and a
one-step `vae_digits` run whose `state.json` was replaced by a list.
"""

import numpy as np
import pytest

from tests.conftest import kgen_main
from tests.export.helpers import tiny

# A name longer than any file system allows for one name (255 bytes).
LONG = "a" * 300


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny untrained models: `{name: path}`."""
    import keras

    from kgen.metrics.features import image_classifier

    root = tmp_path_factory.mktemp("probes")
    vae = tiny("vae")
    vae(keras.ops.zeros((1, 8, 8, 1)))
    vae.save(root / "vae.keras")
    gan = tiny("gan")
    gan.compile(g_optimizer="adam", d_optimizer="adam")
    rng = np.random.default_rng(0)
    gan.fit({"images": rng.random((4, 8, 8, 1), "float32"),
             "labels": np.arange(4, dtype="int32")}, batch_size=4, epochs=1, verbose=0)
    gan.save(root / "gan.keras")
    classifier = image_classifier((8, 8, 1), num_classes=10, filters=(4,), feature_dim=8)
    classifier.save(root / "classifier.keras")
    lm = tiny("lm")
    lm(np.zeros((1, 4), "int32"))
    lm.save(root / "lm.keras")
    base = root / "saved_models"
    kgen_main("export", root / "vae.keras", "--to", base / "vae", "--max-rows", "3")
    kgen_main("export", root / "vae.keras", "--to", base / "vae")
    kgen_main("export", root / "lm.keras", "--to", base / "lm")
    (root / "empty").mkdir()
    # A finished one-step run whose state.json was replaced by a list.
    kgen_main("train", "vae_digits", "--run-dir", root / "listed", "--set", "epochs=1",
              "--set", "steps_per_epoch=1", "--no-export")
    (root / "listed" / "state.json").write_text("[1, 2]")
    return {"root": root, "vae_keras": root / "vae.keras", "gan_keras": root / "gan.keras",
            "classifier": root / "classifier.keras", "vae": base / "vae",
            "lm": base / "lm", "empty": root / "empty",
            "listed": root / "listed"}


# (id, arguments, the values the error line names); "{name}" is a path of
# `models`. Rows with no "{" need no model and run on any backend once.
PROBES = [
    ("latent_dim_beyond_memory",
     ["train", "vae_digits", "--set", "latent_dim=100000000", "--no-export"],
     ["--set latent_dim=100000000", "GiB", "this machine has"]),
    ("batch_size_beyond_memory",
     ["train", "vae_digits", "--set", "batch_size=1000000000", "--no-export"],
     ["--set batch_size=1000000000", "GiB", "this machine has"]),
    ("long_name_in_run_dir",
     ["train", "vae_digits", "--run-dir", f"runs/{LONG}", "--no-export"],
     [f"runs/{LONG}", "file name too long", "--run-dir"]),
    ("long_name_in_a_setting",
     ["train", "vae_digits", "--set", f"data={LONG}", "--set", "epochs=1", "--no-export"],
     [LONG, "file name too long"]),
    ("beta_nan", ["train", "vae_digits", "--set", "beta=nan", "--no-export"],
     ["--set beta=nan", "finite"]),
    ("beta_inf", ["train", "vae_digits", "--set", "beta=inf", "--no-export"],
     ["--set beta=inf", "finite"]),
    ("learning_rate_minus_inf",
     ["train", "vae_digits", "--set", "learning_rate=-inf", "--no-export"],
     ["--set learning_rate=-inf", "finite"]),
    ("empty_image_folder",
     ["train", "vae_digits", "--set", "data={empty}", "--set", "epochs=1", "--no-export"],
     ["{empty}", "holds no images", ".png"]),
    ("long_name_in_out",
     ["sample", "{vae}", "--out", f"{LONG}.png"],
     [f"{LONG}.png", "file name too long", "--out"]),
    ("export_a_classifier",
     ["export", "{classifier}", "--to", "{root}/saved_models/classifier"],
     ["{classifier}", "a classifier", "--classifier"]),
    ("evaluate_classifier_given_a_vae",
     ["evaluate", "{vae}", "--data", "digits", "--classifier", "{vae_keras}", "--n", "4"],
     ["--classifier {vae_keras}", "VAE", "not an image classifier"]),
    ("keras_gan_for_a_vae_export",
     ["evaluate", "{vae}", "--data", "digits", "--classifier", "{classifier}",
      "--keras", "{gan_keras}", "--n", "4"],
     ["--keras {gan_keras}", "GAN", "VAE"]),
    ("lm_sample_to_png", ["sample", "{lm}", "--n", "1", "--out", "lm.png"],
     ["lm.png", "'.png'", ".txt"]),
    ("audio_or_images_to_txt", ["sample", "{vae}", "--n", "1", "--out", "grid.txt"],
     ["grid.txt", "'.txt'", ".png"]),
    ("state_json_holding_a_list",
     ["train", "vae_digits", "--run-dir", "{listed}", "--set", "epochs=1", "--set",
      "steps_per_epoch=1", "--no-export"],
     ["{listed}/state.json", "JSON list", "expected an object"]),
    ("sample_n_beyond_a_grid", ["sample", "{vae}", "--n", "10000000"],
     ["--n 10000000", "--out rows.npy"]),
]


def _row(probe_id, args, named):
    needs_model = any("{" in a for a in args)
    mark = pytest.mark.tf_only if needs_model else pytest.mark.backend_agnostic
    return pytest.param(args, named, id=probe_id, marks=[mark])


@pytest.mark.parametrize("args, named", [_row(*p) for p in PROBES])
def test_probe_is_a_named_user_error(args, named, request, tmp_path):
    paths = request.getfixturevalue("models") if any("{" in a for a in args) else {}
    args = [a.format(**paths) for a in args]
    named = [n.format(**paths) for n in named]
    code, out, err = kgen_main(*args, cwd=tmp_path, check=False)
    lines = [line for line in err.splitlines() if line.startswith("kgen:")]
    assert code == 2, f"exit {code}:\n{err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("kgen: error: "), err[-2000:]
    for value in named:
        assert value in lines[0], f"{value!r} not named in: {lines[0]}"


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("shadow", ["vae_digits", "vae_digits.py"])
def test_a_file_named_like_a_recipe_does_not_shadow_it(tmp_path, shadow):
    (tmp_path / shadow).write_text("CONFIG = {}\n")
    code, out, _ = kgen_main("recipes", "vae_digits", cwd=tmp_path)
    assert code == 0 and out.startswith("vae_digits: VAE on scikit-learn's 8x8 digits")


@pytest.mark.backend_agnostic
def test_lm_evaluate_table_is_aligned():
    from kgen.evaluate import format_report

    report = {"family": "CausalLM", "n": 4, "seed": 0,
              "test": {"bits_per_token": 5.7605, "perplexity": 54.211, "tokens": 256},
              "floor": {"uniform_bits_per_token": 6.6865}}
    rows = format_report(report).splitlines()[1:]
    assert len(rows) == 4 and len({len(row) for row in rows}) == 1, rows
    assert len({row.rindex(".") for row in rows if "." in row.split()[-1]}) == 1


@pytest.mark.tf_only
def test_chunked_rows_equal_one_call(models, tmp_path):
    """Version 1 allows 3 rows per call, version 2 256: 10 rows drawn in
    chunks (streamed into .npy, or gathered into a grid) equal one call's,
    and row i is the row of seed s + i alone."""
    vae = models["vae"]
    code, _, err = kgen_main("sample", vae, "--version", "1", "--n", "10", "--seed", "5",
                             "--out", "chunked.npy", cwd=tmp_path)
    assert "kgen sample: 10/10 rows (100%)" in err
    kgen_main("sample", vae, "--version", "2", "--n", "10", "--seed", "5",
              "--out", "whole.npy", cwd=tmp_path)
    kgen_main("sample", vae, "--version", "1", "--n", "1", "--seed", "12",
              "--out", "one.npy", cwd=tmp_path)
    chunked, whole = np.load(tmp_path / "chunked.npy"), np.load(tmp_path / "whole.npy")
    assert chunked.shape == (10, 8, 8, 1)
    # The same rows; a matmul over 3 rows and over 10 may round the last bit apart.
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(chunked[7], np.load(tmp_path / "one.npy")[0], rtol=0, atol=1e-6)
    kgen_main("sample", vae, "--version", "1", "--n", "10", "--out", "a.png", cwd=tmp_path)
    kgen_main("sample", vae, "--version", "2", "--n", "10", "--out", "b.png", cwd=tmp_path)
    from PIL import Image

    a, b = (np.asarray(Image.open(tmp_path / f"{x}.png"), "int32") for x in "ab")
    assert a.shape == b.shape and np.abs(a - b).max() <= 1


@pytest.mark.tf_only
def test_an_array_larger_than_the_free_disk_is_refused(models, tmp_path, monkeypatch):
    import collections

    from kgen.export import sample

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(sample.shutil, "disk_usage", lambda _: usage(10**6, 10**6 - 100, 100))
    code, _, err = kgen_main("sample", models["vae"], "--n", "10", "--out", "rows.npy",
                             cwd=tmp_path, check=False)
    assert code == 2 and "kgen: error: --n 10: rows.npy would take" in err
    assert "free on its disk" in err and list(tmp_path.iterdir()) == []


@pytest.mark.backend_agnostic
def test_audio_evaluation_count_is_bounded():
    from kgen import evaluate

    with pytest.raises(evaluate.EvaluateError, match=r"^--n 10000000: an audio evaluation"):
        evaluate._evaluate_audio(None, data=None, n=10**7, classifier=None, seed=0,
                                 batch=None, settings=None, progress=False)
