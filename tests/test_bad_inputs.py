"""Hostile and mistaken inputs to the `kgen` command, each refused in one line.

Every case runs the command as a user would (`kgen.cli.main` on an argument
list, output captured at the file-descriptor level) and asserts: exit status
2, stderr exactly one `kgen: error: ...` line naming the bad value, no
traceback, and nothing on disk changed (no new file, no new export
version). The bad files are made here: a gzip bomb, IDX files with
overflowing sizes or a label 255, an image folder with a corrupt PNG, a
truncated `saved_model.pb` copied from a tiny real export.

A few cases also run in a subprocess, to check what the terminal shows:
no TensorFlow start-up lines, and the traceback under `--debug`.
"""

import gzip
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kgen.cli import main
from tests.conftest import kgen_env
from tests.data.test_images import idx_header
from tests.data.test_images import write_gzip_bomb
from tests.data.test_images import write_idx

# === Helpers ===


def snapshot(*roots):
    """Every path under `roots` with its size and modification time."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            stat = path.stat()
            found[str(path)] = (path.is_dir(), stat.st_size, stat.st_mtime_ns)
    return found


def kgen(capfd, *args):
    """Run `kgen ARGS` in this process: (exit status, stdout, stderr)."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    out, err = capfd.readouterr()
    return exited.value.code, out, err


def assert_refused(capfd, roots, args, *named):
    """`kgen ARGS` exits 2 with one `kgen: error:` line naming each of
    `named`, and leaves every path under `roots` as it was."""
    before = snapshot(*roots)
    status, out, err = kgen(capfd, *args)
    lines = err.strip().splitlines()
    assert status == 2, f"exit status {status}:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("kgen: error: "), err
    assert "Traceback" not in err
    for value in named:
        assert str(value) in lines[0], f"{value!r} not named in: {lines[0]}"
    assert snapshot(*roots) == before, "the refused command changed files"
    return lines[0]


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """An empty working directory (default outputs land here)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """`saved_models/tiny/1`: a tiny untrained VAE on 8x8 images, published
    by `kgen export` from its `.keras` file."""
    import keras

    from kgen import models
    from kgen import networks

    root = tmp_path_factory.mktemp("export")
    encoder, decoder = networks.conv_vae_networks((8, 8, 1), 2, (4,), 8)
    vae = models.VAE(encoder, decoder, seed=0)
    vae.compile(optimizer="adam")
    vae(keras.ops.zeros((1, 8, 8, 1)))
    vae.save(root / "tiny.keras")
    try:
        main(["export", str(root / "tiny.keras"), "--to", str(root / "saved_models" / "tiny"),
              "--max-rows", "4"])
    except SystemExit as e:
        raise AssertionError(f"kgen export failed with status {e.code}") from None
    assert (root / "saved_models" / "tiny" / "1" / "saved_model.pb").is_file()
    return root / "saved_models" / "tiny"


# === kgen sample ===


@pytest.mark.tf_only
def test_sample_works_on_the_tiny_export(capfd, cwd, export):
    """The baseline the bad cases differ from: a real grid is written."""
    capfd.readouterr()
    main(["sample", str(export), "--n", "4", "--out", "grid.png"])
    assert (cwd / "grid.png").is_file()
    assert capfd.readouterr().out.strip().endswith("grid.png")


@pytest.mark.tf_only
def test_sample_unknown_image_suffix(capfd, cwd, export):
    assert_refused(capfd, [cwd, export], ["sample", export, "--out", "x.xyz"], "x.xyz")


@pytest.mark.tf_only
def test_sample_seed_past_64_bits(capfd, cwd, export):
    seed = 2**63 - 1
    line = assert_refused(capfd, [cwd, export], ["sample", export, "--n", 2, "--seed", seed],
                          f"--seed {seed}", "--n 2")
    assert "64-bit" in line


@pytest.mark.tf_only
def test_sample_model_dir_that_does_not_exist(capfd, cwd, export):
    assert_refused(capfd, [cwd, export], ["sample", "saved_models/none"], "saved_models/none")


@pytest.mark.tf_only
def test_sample_truncated_saved_model(capfd, cwd, export, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    pb = broken / "1" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:4000])
    assert_refused(capfd, [cwd, broken], ["sample", broken], f"{broken / '1'}",
                   "not a loadable SavedModel")


@pytest.mark.tf_only
@pytest.mark.parametrize("folder", ["01", "²"])
def test_sample_version_folder_not_a_plain_integer(capfd, cwd, export, tmp_path, folder):
    odd = tmp_path / "odd"
    shutil.copytree(export / "1", odd / folder)
    assert_refused(capfd, [cwd, odd], ["sample", odd], f"version folder {folder!r}")


@pytest.mark.tf_only
def test_sample_version_that_does_not_exist(capfd, cwd, export):
    assert_refused(capfd, [cwd, export], ["sample", export, "--version", 7],
                   "--version 7", "found 1")


@pytest.mark.tf_only
def test_sample_label_for_an_unconditional_model(capfd, cwd, export):
    assert_refused(capfd, [cwd, export], ["sample", export, "--label", 3], "--label 3")


@pytest.mark.tf_only
@pytest.mark.parametrize("n", ["0", "-4", "many"])
def test_sample_bad_count(capfd, cwd, export, n):
    assert_refused(capfd, [cwd, export], ["sample", export, "--n", n], "argument --n", n)


@pytest.mark.tf_only
def test_sample_splits_requests_at_the_exports_max_rows(export):
    """`--n` above the export's max_rows (4 here) is sent as several
    requests; rows are independent, so the split changes nothing."""
    import tensorflow as tf

    from kgen.export import sample

    version = export / "1"
    loaded = tf.saved_model.load(str(version))
    signature = loaded.signatures["generate"]
    meta = sample.read_metadata(version)
    assert meta["max_rows"] == 4
    nine = sample._run(signature, sample.generate_inputs(signature, meta, 9, 100), 4, version)
    rows = [sample._run(signature, sample.generate_inputs(signature, meta, 1, 100 + i), 4,
                        version)["images"][0] for i in range(9)]
    np.testing.assert_allclose(nine["images"], np.stack(rows), atol=1e-6)


def _save_generate(directory, generate, metadata=None):
    """A SavedModel holding only `generate` (plus kgen.json), as TF writes it."""
    import json

    import tensorflow as tf

    module = tf.Module()
    module.generate = generate
    tf.saved_model.save(module, str(directory), signatures={"generate": generate})
    if metadata is not None:
        (directory / "assets.extra").mkdir()
        (directory / "assets.extra" / "kgen.json").write_text(json.dumps(metadata))
    return directory


@pytest.mark.tf_only
def test_sample_graph_refusal_is_one_line(capfd, cwd, tmp_path):
    """An export that checks its rows (at most 2): kgen sample splits a
    larger request, and a refusal from inside the graph is named."""
    import tensorflow as tf

    from kgen.export import sample

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="seed")])
    def generate(seed):
        check = tf.debugging.assert_less_equal(
            tf.size(seed), 2, message="seed has more rows than this export allows (max_rows=2)")
        with tf.control_dependencies([check]):
            level = tf.cast(seed % 5, tf.float32) / 4.0
        return {"images": tf.ones([1, 4, 4, 1]) * level[:, None, None, None]}

    version = _save_generate(tmp_path / "m" / "1", generate,
                             {"output_kind": "images", "max_rows": 2})
    capfd.readouterr()
    main(["sample", str(tmp_path / "m"), "--n", "5", "--out", "five.png"])
    assert (cwd / "five.png").is_file()
    loaded = tf.saved_model.load(str(version))
    signature = loaded.signatures["generate"]
    inputs = sample.generate_inputs(signature, {}, 5, 0)
    with pytest.raises(sample.SampleError, match=r"m/1: the generate signature refused the "
                                                 r"request \(seed has more rows than this "
                                                 r"export allows \(max_rows=2\)"):
        sample._run(signature, inputs, None, version)


@pytest.mark.tf_only
def test_sample_refuses_non_finite_output(capfd, cwd, tmp_path):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="seed")])
    def generate(seed):
        return {"images": tf.fill([tf.size(seed), 4, 4, 1], float("nan"))}

    _save_generate(tmp_path / "nan" / "1", generate)
    line = assert_refused(capfd, [cwd, tmp_path / "nan"], ["sample", tmp_path / "nan", "--n", 3],
                          "non-finite values", "3 of 3 rows", "first: seed 0")
    assert line.endswith("Nothing written")


@pytest.mark.tf_only
def test_sample_out_in_a_missing_parent_that_is_a_file(capfd, cwd, export):
    (cwd / "taken").write_text("a file")
    assert_refused(capfd, [cwd, export], ["sample", export, "--out", "taken/grid.png"],
                   "taken/grid.png")


# === kgen train: settings and recipes ===


@pytest.mark.parametrize(
    "setting, named",
    [
        ("likelihood=foo", "--set likelihood=foo"),
        ("latent_dim=0", "--set latent_dim=0"),
        ("filters=0", "--set filters=0"),
        ("epochs=abc", "--set epochs=abc"),
        ("colour=red", "--set colour=red"),
        ("seed=-1", "--set seed=-1"),
        ("learning_rate=inf", "--set learning_rate=inf"),
    ],
)
def test_train_bad_setting(capfd, cwd, tmp_path, setting, named):
    # The run directory lies outside `cwd`: see test_refused_build_writes_no_run.
    assert_refused(capfd, [cwd], ["train", "vae_digits", "--set", setting, "--no-export",
                                  "--run-dir", tmp_path / "run"], named)


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    "name, content, named",
    [
        ("notes.txt", b"CONFIG = {}\n", "expected a Python file ending in .py"),
        ("broken.py", b"CONFIG = dict(\n", "not valid Python (line 1"),
        ("binary.py", bytes(range(256)), "not a readable Python file"),
        ("raises.py", b"import no_such_module_here\n", "ModuleNotFoundError"),
    ],
)
def test_train_recipe_path_that_is_not_a_recipe(capfd, cwd, name, content, named):
    (cwd / name).write_bytes(content)
    assert_refused(capfd, [cwd], ["train", f"./{name}", "--no-export"], name, named)


@pytest.mark.backend_agnostic
def test_train_recipe_directory(capfd, cwd):
    (cwd / "recipes_here").mkdir()
    assert_refused(capfd, [cwd], ["train", "recipes_here/", "--no-export"], "recipes_here")


# === kgen train: hostile data ===
#
# `training.train` writes the run directory's config.json before the
# recipe's `build` loads the data and builds the model, so the cases that
# fail in `build` check that nothing outside the run directory changed;
# `test_refused_build_writes_no_run` tracks the run directory itself.


def _refused_data(capfd, cwd, data_dir, *named, recipe="vae_mnist"):
    run = cwd / "run"
    outside = cwd / "outside"
    outside.mkdir()
    (outside / "kept.txt").write_text("kept")
    return assert_refused(capfd, [outside, data_dir],
                          ["train", recipe, "--set", f"data={data_dir}", "--run-dir", run,
                           "--export", outside / "saved_models"], *named)


@pytest.mark.backend_agnostic
def test_train_gzip_bomb(capfd, cwd, tmp_path):
    data_dir = tmp_path / "bomb"
    data_dir.mkdir()
    # 4 MB of gzip that expands to 4 GiB: a header announcing 4 GiB of pixels.
    write_gzip_bomb(data_dir / "train-images-idx3-ubyte.gz", idx_header((1 << 22, 32, 32)),
                    4 << 30)
    (data_dir / "train-labels-idx1-ubyte").write_bytes(idx_header((4,)) + bytes(4))
    _refused_data(capfd, cwd, data_dir, "train-images-idx3-ubyte.gz",
                  "4,294,967,296 bytes", "over the limit")


@pytest.mark.backend_agnostic
def test_train_gzip_bomb_behind_a_small_header(capfd, cwd, tmp_path):
    data_dir = tmp_path / "bomb"
    data_dir.mkdir()
    write_gzip_bomb(data_dir / "train-images-idx3-ubyte.gz",
                    idx_header((4, 28, 28)) + bytes(4 * 28 * 28), 4 << 30)
    (data_dir / "train-labels-idx1-ubyte").write_bytes(idx_header((4,)) + bytes(4))
    _refused_data(capfd, cwd, data_dir, "train-images-idx3-ubyte.gz", "padded IDX data")


@pytest.mark.backend_agnostic
def test_train_idx_header_sizes_overflow(capfd, cwd, tmp_path):
    data_dir = tmp_path / "overflow"
    data_dir.mkdir()
    # 2**32-1 x 2**32-1 x 2**32-1 bytes: the product wraps 64-bit integers.
    (data_dir / "t10k-images-idx3-ubyte").write_bytes(idx_header((2**32 - 1,) * 3) + bytes(64))
    (data_dir / "t10k-labels-idx1-ubyte").write_bytes(idx_header((4,)) + bytes(4))
    _refused_data(capfd, cwd, data_dir, "t10k-images-idx3-ubyte",
                  "(4294967295, 4294967295, 4294967295)")


@pytest.mark.backend_agnostic
def test_train_label_255_in_a_ten_class_set(capfd, cwd, tmp_path):
    data_dir = tmp_path / "labels"
    data_dir.mkdir()
    write_idx(data_dir / "t10k-images-idx3-ubyte", np.zeros((40, 28, 28)))
    labels = (np.arange(40) % 10).astype("uint8")
    labels[23] = 255
    (data_dir / "t10k-labels-idx1-ubyte").write_bytes(idx_header(labels.shape) + labels.tobytes())
    _refused_data(capfd, cwd, data_dir, "t10k-labels-idx1-ubyte", "label 255 (row 23)",
                  "[0, 10)", recipe="cgan_mnist")


@pytest.mark.backend_agnostic
def test_train_pixel_below_zero(capfd, cwd, tmp_path):
    data_dir = tmp_path / "signed"
    data_dir.mkdir()
    pixels = np.zeros((10, 28, 28), np.int8)
    pixels[2, 3, 4] = -1
    (data_dir / "t10k-images-idx3-ubyte").write_bytes(idx_header(pixels.shape, 0x09)
                                                      + pixels.tobytes())
    (data_dir / "t10k-labels-idx1-ubyte").write_bytes(idx_header((10,)) + bytes(range(10)))
    _refused_data(capfd, cwd, data_dir, "t10k-images-idx3-ubyte", "pixel value -1")


FOLDER_RECIPE = b'''"""Tiny VAE on an image folder (a user's recipe file)."""
import keras
from kgen import data, models, networks

CONFIG = dict(data=None, epochs=1, steps_per_epoch=None, batch_size=2,
              learning_rate=1e-3, validation_fraction=0.5, seed=0)


def build(config):
    ds = data.load_image_data(config["data"], batch_size=2, image_size=(8, 8),
                              validation_fraction=0.5)
    encoder, decoder = networks.conv_vae_networks(ds.image_shape, 2, (4,), 8)
    model = models.VAE(encoder, decoder, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]))
    return model, ds
'''


@pytest.mark.backend_agnostic
def test_train_image_folder_with_a_corrupt_png(capfd, cwd, tmp_path):
    from PIL import Image

    data_dir = tmp_path / "folder"
    for label in ("a", "b"):
        (data_dir / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(data_dir / label / f"{i}.png")
    png = (data_dir / "b" / "0.png").read_bytes()
    (data_dir / "b" / "0.png").write_bytes(png[:40])
    recipe = tmp_path / "folder_vae.py"
    recipe.write_bytes(FOLDER_RECIPE)
    _refused_data(capfd, cwd, data_dir, "b/0.png", "not a readable image", recipe=recipe)


def test_refused_build_writes_no_run(capfd, cwd):
    status, _, _ = kgen(capfd, "train", "vae_digits", "--set", "latent_dim=0", "--no-export")
    assert status == 2
    assert not (cwd / "runs").exists()


# === kgen export ===


@pytest.mark.tf_only
def test_export_of_a_file_that_is_not_a_keras_model(capfd, cwd, export):
    (cwd / "model.keras").write_text("not a zip")
    assert_refused(capfd, [cwd, export], ["export", "model.keras", "--to", export],
                   "model.keras", "damaged .keras file (not a zip archive)")
    assert_refused(capfd, [cwd, export], ["export", "missing.keras", "--to", export],
                   "missing.keras")
    np.savez(cwd / "arrays.npz", x=np.zeros(3))  # a zip archive, but not a model
    assert_refused(capfd, [cwd, export], ["export", "arrays.npz", "--to", export],
                   "arrays.npz", "holds no config.json")


@pytest.mark.tf_only
@pytest.mark.parametrize("rows", ["0", "lots"])
def test_export_bad_max_rows(capfd, cwd, export, rows):
    assert_refused(capfd, [cwd, export],
                   ["export", "x.keras", "--to", export, "--max-rows", rows], "--max-rows", rows)


# === What the terminal shows (subprocesses) ===


def _kgen_process(*args, cwd):
    env = kgen_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it
    return subprocess.run([sys.executable, "-m", "kgen", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.tf_only
def test_terminal_shows_one_line_and_no_tensorflow_start_up(cwd, export, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    (broken / "1" / "saved_model.pb").write_bytes(b"\x08\x01garbage")
    result = _kgen_process("sample", broken, "--n", 2, cwd=cwd)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith(f"kgen: error: {broken / '1'}: not a loadable SavedModel")

    ok = _kgen_process("sample", export, "--n", 2, "--out", "ok.png", cwd=cwd)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == "", f"kgen sample printed to stderr:\n{ok.stderr}"


@pytest.mark.tf_only
def test_debug_shows_the_traceback(cwd, export):
    result = _kgen_process("sample", export, "--out", "x.xyz", "--debug", cwd=cwd)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("kgen: error: x.xyz")


@pytest.mark.backend_agnostic
def test_internal_error_is_one_line_with_a_hint(capfd, cwd, tmp_path):
    recipe = tmp_path / "buggy.py"
    recipe.write_text("CONFIG = dict(epochs=1)\n\n\ndef build(config):\n"
                      "    return {}['model'], None\n")
    status, _, err = kgen(capfd, "train", recipe, "--no-export")
    assert status == 1
    assert err.strip() == ("kgen: internal error: KeyError: 'model' "
                           "(run again with --debug for the traceback)")


def test_any_user_error_is_one_error_line(capfd, cwd, tmp_path):
    """A `kgen.errors.UserError` raised anywhere (here by a recipe's own
    build) is a user mistake: its first line after `kgen: error:`, status 2."""
    recipe = tmp_path / "strict.py"
    recipe.write_text(
        "from kgen.errors import UserError\n\n\nclass StrictError(UserError):\n"
        "    pass\n\n\nCONFIG = dict(epochs=1, width=3)\n\n\ndef build(config):\n"
        "    raise StrictError('--set width=3: this recipe needs an even width\\n"
        "more detail')\n")
    line = assert_refused(capfd, [cwd], ["train", recipe, "--no-export",
                                         "--run-dir", tmp_path / "run"], "--set width=3")
    assert line == "kgen: error: --set width=3: this recipe needs an even width"


@pytest.mark.backend_agnostic
def test_gzip_helper_writes_a_real_bomb(tmp_path):
    """The bomb is what it claims: 4 GiB of zeros behind its header."""
    path = write_gzip_bomb(tmp_path / "b.gz", b"head", 4 << 30)
    assert path.stat().st_size < 8 << 20
    with gzip.open(path) as f:
        assert f.read(4) == b"head"
        assert f.read(1 << 20) == bytes(1 << 20)


@pytest.mark.parametrize("setting, named", [
    ("context=0", "context=0"),
    ("sample_prompts=The,\u2603x", "sample_prompts[1]"),  # a snowman pydoc lacks
])
def test_language_model_settings_refused_before_training(capfd, cwd, setting, named):
    assert_refused(capfd, [cwd], ["train", "char_lm_pydoc", "--set", setting, "--no-export"],
                   named)
    assert not (cwd / "runs").exists()
