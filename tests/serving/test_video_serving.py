"""A video export as a user meets it: `kgen sample` writes an animated GIF
(and MP4) with a PNG contact sheet, `kgen serve` answers `generate` and
`extend` as the SavedModel does, `kgen sample --url` writes the same GIF
through the server, and `kgen evaluate` reports every video measure beside
the real clips' floor."""

import contextlib
import io
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from kgen.cli import main
from kgen.export import export_model
from kgen.serving import Client
from kgen.serving import ServerError
from tests.conftest import kgen_env
from tests.conftest import shared
from tests.export.test_video_export import SHAPE
from tests.export.test_video_export import trained_tiny
from tests.models.test_video import moving_squares
from tests.serving.test_client import free_port

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="exports are TensorFlow graphs whatever the training backend; checked once")
pytestmark = [pytestmark, pytest.mark.tf_only]

CLIP_SETTINGS = {"frames": 4, "size": 8, "digit_size": 4, "num_digits": 1}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A conditional video model trained a few steps, saved and exported."""
    root = tmp_path_factory.mktemp("video_serving")
    model = trained_tiny(CLIP_SETTINGS)
    model.save(root / "model.keras")
    version = export_model(root / "model.keras", root / "saved_models" / "video", max_rows=4)
    return {"root": root, "tree": root / "saved_models", "base": version.parent,
            "version": version, "keras": root / "model.keras"}


def kgen(*args):
    """`kgen ...` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    status = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([*map(str, args)])
        except SystemExit as e:
            status = e.code
    return status, out.getvalue(), err.getvalue()


def test_kgen_sample_writes_a_gif_with_its_contact_sheet_an_mp4_and_rows(exported, tmp_path):
    from PIL import Image

    from kgen.video import read_clip

    gif = tmp_path / "clips.gif"
    status, out, err = kgen("sample", exported["base"], "--n", "3", "--seed", "5",
                            "--set", "num_steps=2", "--out", gif)
    assert status == 0, err
    sheet = tmp_path / "clips.png"
    assert gif.is_file() and sheet.is_file()
    with Image.open(gif) as image:
        assert image.n_frames == SHAPE[0] and image.is_animated
    with Image.open(sheet) as image:  # one clip per row, its frames left to right
        assert image.width > image.height
    rows = tmp_path / "rows.npy"
    status, _, err = kgen("sample", exported["base"], "--n", "3", "--seed", "5",
                          "--set", "num_steps=2", "--out", rows)
    assert status == 0, err
    clips = np.load(rows)
    assert clips.shape == (3, *SHAPE) and 0.0 <= clips.min() and clips.max() <= 1.0
    # The GIF holds the same frames, three clips side by side (8-bit grey).
    frames = read_clip(gif)
    assert frames.shape[0] == SHAPE[0]
    mp4 = tmp_path / "clips.mp4"
    status, _, err = kgen("sample", exported["base"], "--n", "3", "--seed", "5",
                          "--set", "num_steps=2", "--out", mp4)
    assert status == 0, err
    assert read_clip(mp4).shape[0] == SHAPE[0] and (tmp_path / "clips.png").is_file()
    status, _, err = kgen("sample", exported["base"], "--out", tmp_path / "clips.txt")
    assert status != 0 and "clips.txt" in err and ".gif" in err


@pytest.mark.slow
def test_served_generate_and_extend_equal_the_saved_model_and_sample_url_writes_the_same_gif(
        exported, tmp_path):
    import tensorflow as tf

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "kgen", "serve", str(exported["tree"]), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=kgen_env(), cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    client = Client(url, timeout=60)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if client.status("video")[0]["state"] == "AVAILABLE":
                    break
            except (ServerError, OSError):
                pass
            assert time.monotonic() < deadline, "kgen serve did not load the video model"
            time.sleep(0.5)
        loaded = tf.saved_model.load(str(exported["version"]))
        generate = {"seed": np.array([7, 8], "int64"), "label": np.array([3, 10], "int32"),
                    "num_steps": np.array([2, 2], "int32"),
                    "guidance_scale": np.array([2.0, 2.0], "float32")}
        prompt = moving_squares(2, seed=4)[:, :2]
        extend = {"seed": np.array([1, 2], "int64"), "frames": prompt,
                  "num_steps": np.array([2, 2], "int32")}
        for name, inputs in (("generate", generate), ("extend", extend)):
            served = client.predict("video", inputs, signature=name)["video"]
            direct = loaded.signatures[name](
                **{k: tf.constant(v) for k, v in inputs.items()})["video"].numpy()
            assert served.shape == (2, *SHAPE)
            np.testing.assert_allclose(served, direct, atol=2e-5)
        np.testing.assert_array_equal(served[:, :2], prompt)  # the prompt comes back
        local, remote = tmp_path / "local.gif", tmp_path / "remote.gif"
        status, _, err = kgen("sample", exported["base"], "--n", "3", "--label", "4",
                              "--set", "num_steps=2", "--out", local)
        assert status == 0, err
        status, _, err = kgen("sample", "--url", f"{url}/v1/models/video", "--n", "3",
                              "--label", "4", "--set", "num_steps=2", "--set",
                              "guidance_scale=3.0", "--out", remote)
        assert status == 0, err
        assert local.read_bytes() == remote.read_bytes()
        assert (tmp_path / "local.png").read_bytes() == (tmp_path / "remote.png").read_bytes()
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    """A 28x28 digit classifier, untrained: the evaluation's path, not its
    figures, is under test here."""
    from kgen.metrics.features import image_classifier

    path = tmp_path_factory.mktemp("judge") / "judge.keras"
    image_classifier((28, 28, 1), filters=(4,), feature_dim=4).save(path)
    return path


def test_evaluate_reports_every_video_measure_beside_the_real_floor(exported, judge):
    from kgen import evaluate

    mnist = shared("mnist")
    for source in (exported["base"], exported["keras"]):
        report = evaluate.evaluate(source, data=mnist, n=6, classifier=judge, seed=1,
                                   settings={"num_steps": "2"}, progress=False)
        assert report["family"] == "VideoDiffusionModel" and report["n"] == 6
        for name in ("frame_accuracy", "identity", "extend_identity"):
            assert 0.0 <= report["samples"][name] <= 1.0, name
        for name in ("motion_error_px", "fd_clips", "extend_position_error_px"):
            assert np.isfinite(report["samples"][name]) or name == "motion_error_px", name
        assert report["floor"]["extend_position_error_px"] == 0.0
        text = evaluate.format_report(report)
        assert "frame_accuracy" in text and "extend_position_error_px" in text
    status, _, err = kgen("evaluate", exported["base"], "--data", mnist, "--n", "4")
    assert status != 0 and "--classifier" in err
