"""Every recipe trains a few steps on real data, on the current backend.

MNIST and tiny Shakespeare come from $KGEN_DATA, or their stand-ins where
absent (see tests/conftest.py).
"""

import json
import math

import numpy as np
import pytest

from kgen import config
from kgen import training
from tests.conftest import shared
from tests.imagecheck import assert_images_look_real
from tests.imagecheck import grid_cells

# Settings each recipe needs beyond its defaults (data paths).
MNIST = lambda: {"data": str(shared("mnist"))}  # noqa: E731
DATA = {
    "vae_mnist": MNIST,
    "dcgan_mnist": MNIST,
    "wgan_gp_mnist": MNIST,
    "cgan_mnist": MNIST,
    # Smaller samples and validation so a language model's smoke run takes seconds.
    "char_lm_shakespeare": lambda: {
        "data": str(shared("tinyshakespeare", "input.txt")),
        "validation_batches": "2", "sample_max_new_tokens": "16",
    },
    "char_lm_pydoc": lambda: {"validation_batches": "2", "sample_max_new_tokens": "16"},
    # A narrow U-Net and two solver steps per sample grid: the recipe's code
    # path, at a size a smoke run affords on every backend.
    "ddpm_mnist": lambda: {**MNIST(), "sample_steps": "2", "filters": "8,16"},
    "ddpm_digits": lambda: {"sample_steps": "2", "filters": "8,16"},
    "digit_classifier_fsdd": lambda: {"data": str(shared("fsdd", "recordings")),
                                      "limit": "64", "filters": "8,16"},
    # Spoken digits: a narrow U-Net, two solver steps and a few Griffin-Lim
    # iterations per clip.
    "audio_fsdd": lambda: {"data": str(shared("fsdd", "recordings")), "limit": "64",
                           "filters": "8,16", "sample_steps": "2",
                           "griffin_lim_iters": "2", "sample_count": "2"},
    "mnist_classifier": lambda: {**MNIST(), "filters": "8,16"},
    # Moving MNIST: few clips, a narrow U-Net, two solver steps per strip.
    "video_moving_mnist": lambda: {**MNIST(), "filters": "8,16", "train_clips": "32",
                                   "validation_clips": "8", "batch_size": "4",
                                   "sample_steps": "2", "sample_count": "2"},
    "digits_classifier": lambda: {"filters": "8,16"},
}


def smoke_settings(name):
    """Two epochs of three steps on batches of 8, validating on 1% of the
    data where the recipe holds a share out: the recipe's code path at any
    size, at the cost of a smoke run (unoptimized XLA code, tests/conftest.py,
    runs a batch of 64 MNIST images slower than it compiles, and PyTorch
    steps through a validation split batch by batch)."""
    sets = {"epochs": "2", "steps_per_epoch": "3", "batch_size": "8"}
    if "validation_fraction" in config.load_recipe(name).CONFIG:
        sets["validation_fraction"] = "0.01"
    return sets


# Recipes whose model judges samples rather than drawing them: no samples.
CLASSIFIERS = ("digit_classifier_fsdd", "mnist_classifier", "digits_classifier")


@pytest.mark.slow
@pytest.mark.parametrize("name", config.recipe_names())
def test_recipe_runs_a_few_steps(name, tmp_path):
    sets = {**smoke_settings(name), **DATA.get(name, dict)()}
    result = training.train(name, sets=sets, run_dir=tmp_path / "run", verbose=0)
    assert result["best"].exists()
    assert all(math.isfinite(v) for v in result["logs"].values())
    samples = tmp_path / "run" / "samples"
    if name in CLASSIFIERS:
        assert not samples.exists() and "val_accuracy" in result["logs"]
        return
    if name == "audio_fsdd":  # one WAV file per clip
        assert sorted(p.name for p in (samples / "epoch_002").iterdir()) == [
            "row_00_label_0.wav", "row_01_label_1.wav"]
        return
    if name == "video_moving_mnist":  # one strip of frames per clip, stacked
        from PIL import Image

        with Image.open(samples / "epoch_002.png") as image:
            strips = np.asarray(image, "float32") / 255.0
        assert strips.shape[1] > 5 * strips.shape[0] / 2  # 2 strips of 10 frames
        assert strips.std() > 1e-3
        return
    assert list(samples.glob("epoch_002.png")) or list(samples.glob("epoch_002.txt"))
    if (samples / "epoch_002.png").exists():
        settings = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
        cells = grid_cells(samples / "epoch_002.png", settings.get("sample_count", 16))
        # Six steps in, a VAE's samples are close to one grey blur: the grid
        # must not be blank, broken or identical, but may be faint.
        assert_images_look_real(cells, min_std_within=1e-3, min_std_across=1e-3)


def test_text_recipe_logs_text_samples_to_tensorboard(tmp_path):
    sets = {"epochs": "1", "steps_per_epoch": "2", **DATA["char_lm_pydoc"]()}
    result = training.train("char_lm_pydoc", sets=sets, run_dir=tmp_path / "run", verbose=0)
    texts = (tmp_path / "run" / "samples" / "epoch_001.txt").read_text().split("\n\n---\n\n")
    assert len(texts) == 4 and texts[0].startswith("The ") and texts[1].startswith("class ")
    assert list((tmp_path / "run" / "logs" / "samples").glob("events.out.tfevents.*"))
    assert {"loss", "val_loss", "bits_per_token", "perplexity"} <= set(result["logs"])
