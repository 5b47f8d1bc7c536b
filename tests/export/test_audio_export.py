"""The audio export contract on real FSDD clips: the diffusion loop and the
Griffin-Lim inversion in one graph of core ops, loaded without kgen, equal
to `generate()` on the backend that trained the model, and `kgen sample`
writing WAV files."""

import json
import textwrap
import wave

import keras
import numpy as np
import pytest

from kgen.audio import LogMel
from kgen.data import load_audio_data
from kgen.export import export_model
from kgen.export import read_metadata
from kgen.export.sample import sample_saved_model
from kgen.media import OutputError
from kgen.models import AudioDiffusionModel
from kgen.networks import unet
from kgen.schedulers import DDPMScheduler
from tests.conftest import run_kgen
from tests.conftest import shared
from tests.export.helpers import FORBIDDEN_OPS
from tests.export.helpers import graph_op_types
from tests.export.helpers import run_without_kgen
from tests.export.helpers import tolerance

MAX_ROWS = 4
RATE = 8000


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A conditional audio model trained a few steps on the current backend,
    saved as `.keras` and exported (from JAX/torch via a TensorFlow
    subprocess)."""
    tmp = tmp_path_factory.mktemp("audio_export")
    fsdd = load_audio_data(shared("fsdd", "recordings"), batch_size=16, split="fsdd",
                           with_labels=True, limit=32, seed=0)
    codec = LogMel(RATE, RATE, fft_length=256, hop_length=128, num_mels=16,
                   griffin_lim_iters=4)
    keras.utils.set_random_seed(0)
    model = AudioDiffusionModel(
        unet(codec.image_shape, (8, 16), num_classes=10, groups=4), codec,
        DDPMScheduler(100, "cosine", prediction_type="v"), num_classes=10,
        sampler="ddim", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    model.fit(fsdd.train, epochs=1, verbose=0)
    model.save(tmp / "model.keras")
    base = tmp / "saved_models" / "audio"
    version_dir = export_model(tmp / "model.keras", base, max_rows=MAX_ROWS)
    return {"dir": version_dir, "base": base, "model": model}


@pytest.mark.tf_only
def test_metadata(exported):
    meta = read_metadata(exported["dir"])
    assert meta["family"] == "AudioDiffusionModel" and meta["output_kind"] == "audio"
    assert meta["sample_rate"] == RATE and meta["num_samples"] == RATE
    assert meta["spectrogram_shape"] == [16, 64, 1] and meta["num_classes"] == 10
    assert meta["spectrogram"]["griffin_lim_iters"] == 4
    assert meta["max_rows"] == MAX_ROWS and meta["max_row_steps"] == MAX_ROWS * 50
    assert "audio float32 [batch, 8000] in [-1, 1] at 8000 Hz" in meta["signatures"]["generate"]


@pytest.mark.tf_only
def test_graph_has_the_loop_and_the_inversion_in_core_ops(exported):
    ops = graph_op_types(exported["dir"])
    assert "While" in ops or "StatelessWhile" in ops, "the loops must be in the graph"
    assert {"RFFT", "IRFFT"} <= ops, "Griffin-Lim's STFTs must be in the graph"
    assert not ops & FORBIDDEN_OPS


NO_KGEN = textwrap.dedent("""
    m = tf.saved_model.load(sys.argv[1])
    feeds = json.loads(sys.argv[2])
    specs = {"seed": tf.int64, "label": tf.int32, "num_steps": tf.int32,
             "guidance_scale": tf.float32}

    def run(name, **feeds):
        return m.signatures[name](
            **{k: tf.constant(v, specs[k]) for k, v in feeds.items()})["audio"].numpy()

    audio = run("generate", **feeds)
    again = run("serving_default", **feeds)
    alone = run("generate", **{k: v[1:2] for k, v in feeds.items()})
    try:
        run("generate", **dict(feeds, label=[10, 11, 3]))
        refused = None
    except tf.errors.InvalidArgumentError as e:
        refused = e.message
    print(json.dumps({"audio": audio.tolist(), "dtype": str(audio.dtype),
                      "same": bool(np.array_equal(audio, again)),
                      "alone": bool(np.allclose(alone[0], audio[1], atol=1e-5)),
                      "refused": refused}))
""")


def test_reloaded_without_kgen_equals_generate(exported, tmp_path):
    """Rows of the export (TensorFlow graph, no kgen) are `generate()`'s on
    the backend that trained the model, row by row."""
    model, s = exported["model"], 2**40 + 3  # seeds use all 64 bits
    feeds = dict(seed=[s, s + 1, s + 2], label=[3, 7, 10], num_steps=[3] * 3,
                 guidance_scale=[2.0] * 3)
    out = run_without_kgen(tmp_path, NO_KGEN, exported["dir"], json.dumps(feeds))
    audio = np.array(out["audio"], "float32")
    assert audio.shape == (3, RATE) and out["dtype"] == "float32"
    assert out["same"] and out["alone"]
    assert np.abs(audio).max() <= 1.0 and np.abs(audio[0] - audio[1]).max() > 1e-3
    labelled = model.generate(2, seed=s, labels=[3, 7], num_steps=3, guidance_scale=2.0)
    unlabelled = model.generate(1, seed=s + 2, num_steps=3)
    np.testing.assert_allclose(audio[:2], labelled, atol=tolerance(model, 2e-3))
    np.testing.assert_allclose(audio[2], unlabelled[0], atol=tolerance(model, 2e-3))
    assert "label must be in [0, 10] (10: no label)" in out["refused"]


def test_kgen_sample_writes_wav_files(exported, tmp_path):
    """`kgen sample` writes the export's rows as 16-bit WAV files at its
    sample rate: one file per row in a folder, or the rows one after another
    in one `.wav` file."""
    import tensorflow as tf

    run_kgen("sample", exported["base"], "--n", "3", "--seed", "4", "--out",
             tmp_path / "clips", cwd=tmp_path)
    names = sorted(p.name for p in (tmp_path / "clips").iterdir())
    # Default labels: each row's seed mod 10, as model.generate's callers get.
    assert names == ["seed_4_label_4.wav", "seed_5_label_5.wav", "seed_6_label_6.wav"]
    pcm = []
    for name in names:
        with wave.open(str(tmp_path / "clips" / name)) as f:
            assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) \
                == (1, 2, RATE, RATE)
            pcm.append(np.frombuffer(f.readframes(RATE), "<i2"))
    meta = read_metadata(exported["dir"])
    generate = tf.saved_model.load(str(exported["dir"])).signatures["generate"]
    rows = generate(seed=tf.constant([4, 5, 6], tf.int64), label=tf.constant([4, 5, 6]),
                    num_steps=tf.fill([3], meta["defaults"]["num_steps"]),
                    guidance_scale=tf.fill([3], float(meta["defaults"]["guidance_scale"])))
    expected = np.round(rows["audio"].numpy() * 32767.0)
    assert np.abs(np.stack(pcm) - expected).max() <= 1
    assert np.abs(np.stack(pcm)).max() > 100  # not silence

    one = sample_saved_model(exported["base"], n=3, seed=4, out=tmp_path / "all.wav")
    with wave.open(str(one)) as f:
        assert (f.getframerate(), f.getnframes()) == (RATE, 3 * RATE)
        assert np.abs(np.frombuffer(f.readframes(3 * RATE), "<i2")
                      - np.concatenate(pcm)).max() <= 1
    with pytest.raises(OutputError, match="cannot write audio as '.png'"):
        sample_saved_model(exported["base"], n=1, out=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
