"""`kgen evaluate` on tiny trained exports of every family.

TensorFlow only: the command samples through SavedModels, whose graphs are
TensorFlow's whatever backend trained the model (the metrics themselves
are tested on every backend in tests/metrics/).
"""

import json
import math

import pytest

from kgen import cli
from kgen import training

pytestmark = pytest.mark.skipif(
    __import__("keras").backend.backend() != "tensorflow",
    reason="kgen evaluate runs SavedModels: tested on the TensorFlow backend only",
)
pytestmark = [pytestmark, pytest.mark.tf_only, pytest.mark.slow]

N = "40"  # samples per evaluation (the digits hold out 180)
TINY = {
    "cgan": ("dcgan_digits", {"epochs": "1", "steps_per_epoch": "3", "batch_size": "16",
                              "filters": "16,8", "d_filters": "8,16", "latent_dim": "8",
                              "conditional": "true"}),
    "vae": ("vae_digits", {"epochs": "1", "steps_per_epoch": "3", "filters": "8,16",
                           "hidden_dim": "16", "latent_dim": "4"}),
    "ddpm": ("ddpm_digits", {"epochs": "1", "steps_per_epoch": "2", "filters": "8,16",
                             "sample_steps": "2"}),
    "lm": ("char_lm_pydoc", {"epochs": "1", "steps_per_epoch": "3", "num_layers": "1",
                             "hidden_dim": "16", "num_heads": "2", "context": "16",
                             "validation_batches": "1", "sample_max_new_tokens": "4",
                             "warmup_steps": "1"}),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    out = {"classifier": training.train(
        "digits_classifier", sets={"epochs": "2", "steps_per_epoch": "10", "filters": "8,16",
                                   "feature_dim": "16"},
        run_dir=root / "classifier", verbose=0)["best"]}
    for key, (recipe, sets) in TINY.items():
        # The image families are exported (and sampled through their
        # SavedModels); a language model's bits need its .keras file alone.
        export_to = None if key == "lm" else root / "saved_models" / key
        out[key] = training.train(recipe, sets=sets, run_dir=root / "runs" / key,
                                  export_to=export_to, verbose=0)
    return out


def _evaluate(capsys, *args):
    capsys.readouterr()
    cli.main(["evaluate", *map(str, args)])
    return capsys.readouterr().out


def _error(capsys, *args):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", *map(str, args)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kgen: error: "), lines
    return lines[0]


def _finite(*values):
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


def test_a_conditional_gan_export_gets_fid_kid_accuracy_and_the_real_floor(trained, capsys):
    export = trained["cgan"]["exported"].parent
    text = _evaluate(capsys, export, "--data", "digits", "--n", N,
                     "--classifier", trained["classifier"])
    for name in ("fid", "kid", "precision", "recall", "accuracy", "class 9"):
        assert name in text, text
    report = json.loads(_evaluate(capsys, export, "--data", "digits", "--n", N,
                                  "--classifier", trained["classifier"], "--json"))
    samples, floor = report["samples"], report["floor"]
    assert report["family"] == "GAN" and report["n"] == 40
    assert _finite(samples["fid"], samples["kid"], samples["kid_std"], floor["fid"],
                   floor["kid"], samples["accuracy"], floor["accuracy"])
    assert len(samples["per_class"]) == 10 and 0 <= samples["accuracy"] <= 1
    # An untrained GAN is far from the data; held-out real images are not.
    assert floor["fid"] < samples["fid"]


def test_a_vae_gets_its_test_negative_elbo(trained, capsys):
    export = trained["vae"]["exported"].parent
    report = json.loads(_evaluate(capsys, export, "--data", "digits", "--n", N,
                                  "--classifier", trained["classifier"],
                                  "--keras", trained["vae"]["best"], "--json"))
    test = report["test"]
    assert report["family"] == "VAE" and _finite(test["negative_elbo_nats"],
                                                 test["bits_per_dim"])
    assert test["bits_per_dim"] == pytest.approx(test["negative_elbo_nats"] / (64 * math.log(2)))
    assert "accuracy" not in report["samples"] and "accuracy" in report["floor"]
    # The .keras file itself is a source too, sampled through model.generate.
    text = _evaluate(capsys, trained["vae"]["best"], "--data", "digits", "--n", N,
                     "--classifier", trained["classifier"])
    assert "test negative_elbo_nats" in text and "fid" in text


def test_a_diffusion_export_is_sampled_in_batches(trained, capsys):
    export = trained["ddpm"]["exported"].parent
    report = json.loads(_evaluate(capsys, export, "--data", "digits", "--n", "8",
                                  "--batch", "5", "--classifier", trained["classifier"],
                                  "--json"))
    assert report["family"] == "DiffusionModel" and report["n"] == 8
    assert _finite(report["samples"]["fid"], report["samples"]["accuracy"])


def test_the_family_declaration_chooses_the_evaluation(trained, capsys, tmp_path):
    """An export's kgen.json records its family's evaluation; an export
    written before it did is evaluated by the declaration of the class its
    kgen.json names. A `.keras` model's `--set` values take the dtypes its
    family declares for its generate options."""
    import shutil

    old = tmp_path / "old_vae" / "1"
    shutil.copytree(trained["vae"]["exported"], old)
    meta_path = old / "assets.extra" / "kgen.json"
    meta = json.loads(meta_path.read_text())
    assert meta["evaluation"] == {"kind": "images", "metrics": ["negative_elbo"]}
    del meta["evaluation"]
    meta_path.write_text(json.dumps(meta))
    report = json.loads(_evaluate(capsys, old.parent, "--data", "digits", "--n", "8",
                                  "--classifier", trained["classifier"],
                                  "--keras", trained["vae"]["best"], "--json"))
    assert _finite(report["test"]["negative_elbo_nats"])
    assert "--set num_steps=x: expected a number" in _error(
        capsys, trained["ddpm"]["best"], "--data", "digits", "--classifier",
        trained["classifier"], "--set", "num_steps=x")


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    """A tiny audio model exported, and a tiny spoken-digit classifier, both
    trained a few steps on real FSDD clips."""
    from tests.conftest import shared

    recordings = str(shared("fsdd", "recordings"))
    root = tmp_path_factory.mktemp("evaluate_audio")
    classifier = training.train(
        "digit_classifier_fsdd", sets={"data": recordings, "limit": "64", "filters": "8,16",
                                       "epochs": "1", "steps_per_epoch": "2"},
        run_dir=root / "classifier", verbose=0)["best"]
    model = training.train(
        "audio_fsdd", sets={"data": recordings, "limit": "32", "filters": "8,16",
                            "griffin_lim_iters": "2", "sample_steps": "2",
                            "sample_count": "2", "epochs": "1", "steps_per_epoch": "2"},
        run_dir=root / "audio", export_to=root / "saved_models" / "audio", verbose=0)
    return {"data": recordings, "classifier": classifier,
            "export": model["exported"].parent}


def test_an_audio_export_gets_digit_accuracy_loudness_and_the_real_floor(spoken, capsys):
    args = (spoken["export"], "--data", spoken["data"], "--n", "12",
            "--classifier", spoken["classifier"], "--set", "num_steps=2",
            "--set", "guidance_scale=5")
    text = _evaluate(capsys, *args)
    for name in ("accuracy", "peak", "rms_dbfs", "sounding_s", "class 9"):
        assert name in text, text
    report = json.loads(_evaluate(capsys, *args, "--json"))
    assert report["family"] == "AudioDiffusionModel" and report["n"] == 12
    assert report["sample_rate"] == 8000
    assert report["settings"] == {"num_steps": "2", "guidance_scale": "5"}
    samples, floor = report["samples"], report["floor"]
    assert len(samples["per_class"]) == 10 and 0 <= samples["accuracy"] <= 1
    # the floor: the FSDD's own test takes (0-4 of every digit and speaker)
    assert floor["clips"] == 300 and 0 <= floor["accuracy"] <= 1
    assert _finite(samples["peak"], samples["rms_dbfs"], samples["sounding_s"],
                   floor["peak"], floor["rms_dbfs"], floor["sounding_s"])
    # real clips are peak-normalised when loaded, and shorter than a second
    assert floor["peak"] == pytest.approx(1.0) and 0 < floor["sounding_s"] < 1
    assert "--classifier: needed for audio models" in _error(
        capsys, spoken["export"], "--data", spoken["data"])
    assert "--set num_steps=x: expected a value of the input's dtype int32" in _error(
        capsys, *args[:-4], "--set", "num_steps=x")


def test_a_language_model_gets_test_bits_per_character(trained, capsys):
    report = json.loads(_evaluate(capsys, trained["lm"]["best"], "--data", "pydoc",
                                  "--n", "8", "--json"))
    test = report["test"]
    assert report["family"] == "CausalLM" and test["tokens"] == 8 * 16
    assert _finite(test["bits_per_token"], test["perplexity"])
    assert test["perplexity"] == pytest.approx(2 ** test["bits_per_token"], rel=1e-4)
    # Three training steps leave the model near uniform, not far above it.
    assert test["bits_per_token"] < report["floor"]["uniform_bits_per_token"] + 1.5
    text = _evaluate(capsys, trained["lm"]["best"], "--data", "pydoc", "--n", "8")
    assert "test bits_per_token" in text and "floor uniform_bits_per_token" in text


def test_bad_inputs_are_one_line_naming_the_value(trained, capsys, tmp_path, monkeypatch):
    export = trained["cgan"]["exported"].parent
    classifier = trained["classifier"]
    assert "--n 1: must be an integer >= 2" in _error(
        capsys, export, "--data", "digits", "--n", "1", "--classifier", classifier)
    assert "nope.keras: no such classifier file" in _error(
        capsys, export, "--data", "digits", "--classifier", tmp_path / "nope.keras")
    assert "--classifier: needed for image models" in _error(capsys, export, "--data", "digits")
    assert f"--data {tmp_path / 'none'}" in _error(
        capsys, export, "--data", tmp_path / "none", "--classifier", classifier)
    assert "--data: needed" in _error(capsys, export, "--classifier", classifier)
    assert "--version 7" in _error(capsys, export, "--version", "7", "--data", "digits",
                                   "--classifier", classifier)
    # The 28x28 data (or a 28x28 classifier) does not fit an 8x8 model.
    from tests.conftest import shared

    message = _error(capsys, export, "--data", shared("mnist"), "--classifier", classifier)
    assert "images of shape (28, 28, 1), but the model makes (8, 8, 1)" in message
    # A classifier of 28x28 images cannot judge 8x8 samples.
    from kgen.metrics.features import image_classifier

    wide = tmp_path / "mnist_shaped.keras"
    image_classifier((28, 28, 1), filters=(4,), feature_dim=4).save(wide)
    message = _error(capsys, export, "--data", "digits", "--classifier", wide)
    assert f"--classifier {wide}: it takes images of shape (28, 28, 1), but the model " \
           "makes (8, 8, 1)" in message
    # InceptionV3 is used only when its weights are on disk; nothing is downloaded.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("KGEN_INCEPTION_WEIGHTS", raising=False)
    message = _error(capsys, export, "--data", "digits", "--classifier", classifier,
                     "--features", "inception")
    assert "--features inception: " in message and "are not downloaded" in message
