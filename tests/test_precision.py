"""Mixed precision (`kgen.precision`, `--set precision=...`).

Every family trains a few steps under `mixed_bfloat16` with falling loss on
the backend under test, computing in bfloat16 while its weights, EMA copies,
losses and samples stay float32; a GAN under `mixed_float16` carries two
loss-scale optimizers through training, a checkpoint and a resumed run; the
policies come back with a reloaded `.keras` file and do not leak out of the
build; an export of a `mixed_bfloat16` model keeps float32 outputs and the
same-seed-same-sample contract.
"""

import json
import math

import keras
import numpy as np
import pytest

from kgen import config as kgen_config
from kgen import precision
from kgen import training
from kgen.config import ConfigError
from tests.conftest import backend
from tests.export.helpers import tiny

BF16 = "mixed_bfloat16"


def _digits(n=16):
    """scikit-learn's 8x8 digits in [0, 1] and their labels (fixed rows)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images[:n, :, :, None] / 16.0).astype("float32"), \
        digits.target[:n].astype("int32")


def _tiny(family):
    """The export tests' tiny models; the diffusion ones with a one-level
    U-Net without attention (the cheapest to compile)."""
    from kgen import models, networks, schedulers

    if family == "diffusion":
        return models.DiffusionModel(
            networks.unet((8, 8, 1), filters=(8,), num_classes=10, groups=4,
                          attention=False),
            schedulers.DDPMScheduler(100), num_classes=10, ema_decay=0.9)
    if family == "audio":
        from kgen.audio import LogMel

        codec = LogMel(8000, 8000, fft_length=256, hop_length=128, num_mels=16,
                       griffin_lim_iters=2)
        return models.AudioDiffusionModel(
            networks.unet(codec.image_shape, filters=(8,), num_classes=10, groups=4,
                          attention=False),
            codec, schedulers.DDPMScheduler(100), num_classes=10, ema_decay=0.9)
    return tiny(family)


def _build(family, policy=BF16):
    """A tiny model of `family` built under `policy`, compiled."""
    with precision.policy_scope(policy):
        model = _tiny(family)
        if family == "gan":
            model.compile(g_optimizer=keras.optimizers.Adam(2e-3, beta_1=0.5),
                          d_optimizer=keras.optimizers.Adam(2e-3, beta_1=0.5))
        elif family == "lm":
            model.compile(optimizer=keras.optimizers.Adam(1e-2),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        else:
            model.compile(optimizer=keras.optimizers.Adam(3e-3))
    assert keras.config.dtype_policy().name == "float32"  # restored
    return model


def _batch(family):
    """One fixed training batch of `family` (x, y or None)."""
    images, labels = _digits()
    if family == "vae":
        return images, None
    if family == "gan":
        return {"images": images, "labels": labels}, None
    if family == "diffusion":
        return {"images": images, "labels": labels}, None
    if family == "audio":
        t = np.arange(8000, dtype="float32") / 8000.0
        freq = 200.0 + 100.0 * labels[:8, None]
        return {"audio": (0.5 * np.sin(2 * np.pi * freq * t)).astype("float32"),
                "labels": labels[:8]}, None
    ids = (np.arange(17)[None, :] + np.arange(16)[:, None]) % 8  # "abcdefgh" cycles
    return ids[:, :-1].astype("int32"), ids[:, 1:].astype("int32")


def _float_weights(model):
    return [w for w in model.weights if "float" in str(w.dtype)]


def _compute_dtypes(model):
    return {layer.compute_dtype for layer in model._flatten_layers(include_self=False)
            if layer.weights}


@pytest.fixture(scope="module")
def trained():
    """`family -> (model, loss before, loss after)`, trained on demand once."""
    cache = {}

    def get(family):
        if family not in cache:
            model = _build(family)
            x, y = _batch(family)
            # One batch holds every row: a step per epoch, evaluated with the
            # same rows (and the models' fixed validation draws).
            evaluate = lambda: model.evaluate(  # noqa: E731
                x, y, batch_size=64, verbose=0, return_dict=True)["loss"]
            before = evaluate()
            model.fit(x, y, epochs=6, batch_size=64, verbose=0, shuffle=False)
            cache[family] = (model, before, evaluate())
        return cache[family]

    return get


def _audio_on_tensorflow(family):
    if family == "audio" and backend() != "tensorflow":
        pytest.skip("the audio model trains the diffusion model's step on "
                    "spectrograms (float32 keras.ops, checked on TensorFlow); "
                    "JAX and PyTorch train the image diffusion model")


AUDIO = pytest.param("audio", marks=pytest.mark.tf_only)


@pytest.mark.parametrize("family", ["vae", "diffusion", AUDIO, "lm"])
def test_family_trains_in_bfloat16_with_falling_loss(trained, family):
    _audio_on_tensorflow(family)
    if family != "lm":
        _skip_where_refused(BF16)
    model, before, after = trained(family)
    assert math.isfinite(before) and math.isfinite(after)
    assert after < before, (family, before, after)
    assert _compute_dtypes(model) == {"bfloat16"}
    # The weights (and optimizer state) stay float32; so does what the
    # loss reads.
    assert {str(w.dtype) for w in _float_weights(model)} == {"float32"}
    assert {str(v.dtype) for v in model.optimizer.variables
            if "float" in str(v.dtype)} == {"float32"}
    x, _ = _batch(family)
    outputs = model(x, training=False)
    for value in (outputs.values() if isinstance(outputs, dict) else [outputs]):
        assert keras.backend.standardize_dtype(value.dtype) == "float32"


@pytest.mark.parametrize("family", ["diffusion", AUDIO])
def test_diffusion_ema_stays_float32_and_samples_are_finite(trained, family):
    _audio_on_tensorflow(family)
    _skip_where_refused(BF16)
    model, _, _ = trained(family)
    assert model.ema_denoiser is not None
    assert {str(w.dtype) for w in _float_weights(model.ema_denoiser)} == {"float32"}
    # The EMA moved (it follows the trained weights, in float32).
    assert float(keras.ops.convert_to_numpy(model.ema_updates)) > 0
    samples = model.generate(2, seed=3, labels=[1, 2], num_steps=2)
    assert samples.dtype == np.float32 and np.isfinite(samples).all()
    if family == "audio":
        assert np.abs(samples).max() <= 1.0
    else:
        assert 0.0 <= samples.min() and samples.max() <= 1.0


def test_vae_and_lm_samples_in_float32(trained):
    _skip_where_refused(BF16)
    vae, _, _ = trained("vae")
    images = vae.generate(3, seed=5)
    assert images.dtype == np.float32 and np.isfinite(images).all()
    np.testing.assert_allclose(images[1], vae.generate(1, seed=6)[0], atol=1e-6)
    mean, log_var = vae.encode(_digits(2)[0])
    assert keras.backend.standardize_dtype(log_var.dtype) == "float32"
    lm, _, _ = trained("lm")
    texts = lm.generate(3, seed=5, prompt="ab", max_new_tokens=6)
    assert texts[1] == lm.generate(1, seed=6, prompt="ab", max_new_tokens=6)[0]
    assert texts[0].startswith("ab") and len(texts[0]) == 8


def _d_loss(gan, batch):
    return float(keras.ops.convert_to_numpy(gan.discriminator_loss(*gan.unpack(batch))[0]))


def _g_loss(gan, batch):
    return float(keras.ops.convert_to_numpy(gan.generator_loss(*gan.unpack(batch))))


def test_gan_phases_lower_their_losses_in_bfloat16():
    _skip_where_refused(BF16)
    gan = _build("gan")
    batch, _ = _batch("gan")
    keras.utils.set_random_seed(0)
    before = _d_loss(gan, batch)
    for _ in range(3):
        gan.train_phase("discriminator", batch)
    after = _d_loss(gan, batch)
    assert after < before, ("discriminator", before, after)
    before = _g_loss(gan, batch)
    for _ in range(3):
        gan.train_phase("generator", batch)
    after = _g_loss(gan, batch)
    assert after < before, ("generator", before, after)
    history = gan.fit(batch, epochs=2, batch_size=16, verbose=0).history
    assert all(math.isfinite(v[-1]) for v in history.values())
    assert _compute_dtypes(gan) == {"bfloat16"}
    images = gan.generate(2, seed=0)
    assert images.dtype == np.float32 and np.isfinite(images).all()


def _loss_scales(gan):
    return [float(keras.ops.convert_to_numpy(opt.dynamic_scale))
            for opt in (gan.g_optimizer, gan.d_optimizer)]


def test_gan_in_float16_scales_both_losses_and_reloads(tmp_path):
    _skip_where_refused("mixed_float16")
    gan = _build("gan", "mixed_float16")
    for opt in (gan.g_optimizer, gan.d_optimizer):
        assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    # Both scales are trainer state: saved, restored, carried by JAX's step.
    state = {id(v) for v in gan.optimizer.variables}
    assert {id(gan.g_optimizer.dynamic_scale), id(gan.d_optimizer.dynamic_scale)} <= state
    batch, _ = _batch("gan")
    history = gan.fit(batch, epochs=3, batch_size=8, verbose=0).history
    assert all(math.isfinite(v[-1]) for v in history.values()), history
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in gan.weights)
    # Each optimizer counted its own steps (3 epochs x 2 steps).
    for opt in (gan.g_optimizer, gan.d_optimizer):
        assert int(keras.ops.convert_to_numpy(opt.iterations)) == 6
    assert _compute_dtypes(gan) == {"float16"}
    images = gan.generate(2, seed=1)
    assert images.dtype == np.float32 and np.isfinite(images).all()
    gan.save(tmp_path / "gan.keras")
    loaded = keras.saving.load_model(tmp_path / "gan.keras")
    assert keras.config.dtype_policy().name == "float32"
    assert isinstance(loaded.g_optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(loaded.d_optimizer, keras.optimizers.LossScaleOptimizer)
    assert _loss_scales(loaded) == _loss_scales(gan)
    np.testing.assert_allclose(loaded.generate(2, seed=1), images, atol=1e-3)


def test_reloaded_model_keeps_every_layer_policy(trained, tmp_path):
    """Layers a network makes in its own constructor (the LM's decoder
    blocks) come back with the policy they trained with."""
    model, _, _ = trained("lm")
    model.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras")
    assert keras.config.dtype_policy().name == "float32"
    policies = lambda m: {layer.path: layer.dtype_policy.name  # noqa: E731
                          for layer in m._flatten_layers()}
    assert policies(loaded) == policies(model)
    assert loaded.network.get_layer("decoder_0").query_key_value.compute_dtype == "bfloat16"
    x, _ = _batch("lm")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)),
                               keras.ops.convert_to_numpy(model(x)), atol=1e-5)


class _Stop(keras.callbacks.Callback):
    """Stops a run after its first epoch (kgen's own callbacks, the backup
    included, have run), keeping the GAN's loss scales."""

    def __init__(self):
        super().__init__()
        self.scales = None

    def on_epoch_end(self, epoch, logs=None):
        self.scales = _loss_scales(self.model)
        raise KeyboardInterrupt("stopped after the first epoch")


class _Restored(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):  # after the backup restored itself
        self.scales = _loss_scales(self.model)
        self.policy = self.model.generator.dtype_policy.name


def test_resumed_float16_gan_run_keeps_its_policy_and_loss_scales(tmp_path):
    _skip_where_refused("mixed_float16")
    sets = {"precision": "mixed_float16", "epochs": "2", "steps_per_epoch": "2",
            "batch_size": "8", "latent_dim": "4", "filters": "8,8", "d_filters": "8,8",
            "ema_decay": "0.9"}
    run_dir = tmp_path / "run"
    stop = _Stop()
    with pytest.raises(KeyboardInterrupt):
        training.train("dcgan_digits", sets=sets, run_dir=run_dir, verbose=0,
                       callbacks=[stop])
    assert keras.config.dtype_policy().name == "float32"
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["config"]["precision"] == "mixed_float16"
    restored = _Restored()
    result = training.train("dcgan_digits", sets=sets, run_dir=run_dir, verbose=0,
                            callbacks=[restored])
    assert restored.policy == "mixed_float16"
    assert restored.scales == stop.scales
    assert (run_dir / "history.csv").read_text().count("\n") == 3  # header + 2 epochs
    loaded = keras.saving.load_model(result["best"])
    assert loaded.generator.dtype_policy.name == "mixed_float16"
    assert isinstance(loaded.g_optimizer, keras.optimizers.LossScaleOptimizer)


# === Exports stay float32 ===


@pytest.mark.tf_only
@pytest.mark.parametrize("family", ["vae", "gan", "diffusion", "lm"])
def test_export_of_a_bfloat16_model_is_float32(family, tmp_path):
    if backend() != "tensorflow":
        pytest.skip("exports are written from the TensorFlow backend; the JAX and "
                    "PyTorch export path reloads the .keras file there")
    import tensorflow as tf

    from kgen.export import export_model

    model = _build(family)
    version_dir = export_model(model, tmp_path / "saved_models" / family, max_rows=8)
    loaded = tf.saved_model.load(str(version_dir))
    for name, fn in loaded.signatures.items():
        for key, spec in fn.structured_outputs.items():
            if spec.dtype.is_floating:
                assert spec.dtype == tf.float32, (name, key, spec)
        for key, spec in fn.structured_input_signature[1].items():
            if spec.dtype.is_floating:
                assert spec.dtype == tf.float32, (name, key, spec)
    generate = loaded.signatures["generate"]
    inputs = {"seed": tf.constant([5, 6, 7], tf.int64)}
    if family in ("gan", "diffusion"):
        inputs["label"] = tf.constant([1, 2, 3], tf.int32)
    if family == "diffusion":
        inputs.update(num_steps=tf.fill([3], 2), guidance_scale=tf.fill([3], 1.5))
    if family == "lm":
        inputs.update(prompt=tf.constant(["ab"] * 3), max_new_tokens=tf.fill([3], 6),
                      temperature=tf.fill([3], 1.0), top_k=tf.fill([3], 4),
                      top_p=tf.fill([3], 1.0), stop_token=tf.fill([3], ""))
    rows = {k: v.numpy() for k, v in generate(**inputs).items()}
    one = {k: v.numpy() for k, v in
           generate(**{k: v[1:2] for k, v in inputs.items()}).items()}
    for key, value in rows.items():
        if value.dtype.kind == "f":
            assert value.dtype == np.float32 and np.isfinite(value).all()
            np.testing.assert_allclose(value[1], one[key][0], atol=1e-6)
        else:
            assert np.all(value[1] == one[key][0])
    if family == "lm":
        assert rows["text"][1].decode() == model.generate(
            1, seed=6, prompt="ab", max_new_tokens=6, top_k=4)[0]
    else:
        kwargs = {"labels": [2]} if family in ("gan", "diffusion") else {}
        if family == "diffusion":
            kwargs.update(num_steps=2, guidance_scale=1.5)
        np.testing.assert_allclose(rows["images"][1], model.generate(1, seed=6, **kwargs)[0],
                                   atol=2e-2)


def _skip_where_refused(policy):
    """Convolutions cannot train in `policy` on PyTorch on this CPU (no
    native bfloat16; float16 on any CPU): kgen refuses such a run
    (`precision.refusal`, tested below), so the model-level check skips."""
    reason = precision.refusal(policy)
    if reason:
        pytest.skip(f"PyTorch on this CPU: {reason}")


# === The setting ===


@pytest.mark.backend_agnostic
def test_every_recipe_takes_the_setting():
    """Every recipe decides its precision per device by default, and takes
    a named policy."""
    for name in kgen_config.recipe_names():
        recipe = kgen_config.load_recipe(name)
        default = kgen_config.apply_overrides(recipe.CONFIG, {})["precision"]
        assert default == "auto", name
        for precision in ("float32", BF16):
            config = kgen_config.apply_overrides(recipe.CONFIG, {"precision": precision})
            assert config["precision"] == precision


@pytest.mark.backend_agnostic
def test_bad_precision_is_named_with_the_choices():
    recipe = kgen_config.load_recipe("vae_digits")
    with pytest.raises(ConfigError, match=r"^--set precision=float64: expected one of "
                                          r"auto, float32, mixed_bfloat16, mixed_float16$"):
        kgen_config.apply_overrides(recipe.CONFIG, {"precision": "float64"})
    with pytest.raises(ConfigError, match=r"--set precision=None: expected one of"):
        kgen_config.apply_overrides(recipe.CONFIG, {"precision": "none"})


def test_policy_is_restored_after_a_failing_build():
    recipe = kgen_config.load_recipe("char_lm_shakespeare")
    config = kgen_config.apply_overrides(recipe.CONFIG, {"precision": BF16})
    with pytest.raises(Exception, match="needs a text file"):
        recipe.build(config)  # no data given
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.backend_agnostic
def test_run_recorded_before_the_setting_still_resumes(tmp_path):
    """A run directory whose config.json predates `precision` is the same
    run as a float32 one (not refused as "other settings")."""
    module = kgen_config.load_recipe("vae_digits")
    config = kgen_config.apply_overrides(module.CONFIG, {"precision": "float32"})
    settings = training._settings(module, config, "none")
    old = json.loads(json.dumps(settings))
    del old["config"]["precision"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert training._check_earlier_run(tmp_path, settings, overwrite=False) is not None
    bf16 = training._settings(
        module, kgen_config.apply_overrides(module.CONFIG, {"precision": BF16}), "none")
    with pytest.raises(ConfigError, match="precision: float32 -> mixed_bfloat16"):
        training._check_earlier_run(tmp_path, bf16, overwrite=False)


# === auto: decided per device ===

AMD_AVX2 = precision.Device("cpu", "AMD EPYC", bf16=False,
                            why="no avx512_bf16/amx_bf16 flag")
SAPPHIRE_RAPIDS = precision.Device("cpu", "Intel Xeon Platinum 8480+", bf16=True,
                                   why="avx512_bf16/amx_bf16")
DEVICES = [
    # (device, what auto picks)
    (AMD_AVX2, "float32"),
    (SAPPHIRE_RAPIDS, BF16),
    (precision.Device("gpu", "NVIDIA H100", (9, 0)), BF16),
    (precision.Device("gpu", "NVIDIA A100", (8, 0)), BF16),
    (precision.Device("gpu", "Tesla V100", (7, 0)), "mixed_float16"),
    (precision.Device("gpu", "Tesla T4", (7, 5)), "mixed_float16"),
    (precision.Device("gpu", "Tesla P100", (6, 0)), "float32"),
    (precision.Device("gpu", "some GPU", None), "float32"),
    (precision.Device("tpu", "TPU v4"), BF16),
]


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("found, expected", DEVICES, ids=[d.name for d, _ in DEVICES])
def test_auto_picks_what_the_device_computes_natively(found, expected):
    policy, reason = precision.resolve("auto", found)
    assert policy == expected
    assert found.name in reason
    # A named policy is kept whatever the device.
    assert precision.resolve("float32", found)[0] == "float32"
    assert precision.resolve(BF16, found)[0] == BF16


def test_this_backend_reports_its_device():
    """The backend's own report: on a machine with no accelerator, the CPU
    with its bfloat16 answer from /proc/cpuinfo."""
    from kgen import machine

    found = precision.device()
    assert found.kind in ("cpu", "gpu", "tpu")
    if found.kind == "cpu":
        assert (found.bf16, found.why) == machine.cpu_has_bf16()
        assert precision.resolve("auto")[0] == (BF16 if found.bf16 else "float32")


@pytest.mark.parametrize("found, expected", [(AMD_AVX2, "float32"), (SAPPHIRE_RAPIDS, BF16)],
                         ids=["no-bf16", "bf16"])
def test_a_run_records_what_auto_chose(found, expected, tmp_path, monkeypatch, capsys):
    """`kgen train` at precision=auto prints its choice with the reason,
    builds the model under it and records the chosen policy in config.json,
    with the device's report stubbed each way."""
    monkeypatch.setattr(precision, "device", lambda backend=None: found)
    if keras.backend.backend() == "torch" and expected == BF16:
        # A stubbed bfloat16 CPU under a real CPU that may lack it: build
        # only (torch's CPU kernels are the real machine's).
        config = kgen_config.apply_overrides(
            kgen_config.load_recipe("vae_digits").CONFIG, {})
        assert training._resolve_precision(config, verbose=0)["precision"] == expected
        return
    result = training.train("vae_digits", run_dir=tmp_path / "run", verbose=1,
                            sets={"epochs": "1", "steps_per_epoch": "1"})
    out = capsys.readouterr().out
    assert f"precision: {expected} (auto: {found.name}" in out, out
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["config"]["precision"] == expected
    model = keras.saving.load_model(result["best"])
    assert model.dtype_policy.name == expected


@pytest.mark.backend_agnostic
def test_bfloat16_on_pytorch_without_native_bfloat16_is_refused():
    assert "PyTorch cannot train in bfloat16 on this CPU (AMD EPYC" in precision.refusal(
        BF16, "torch", AMD_AVX2)
    assert precision.refusal(BF16, "torch", SAPPHIRE_RAPIDS) is None
    assert precision.refusal(BF16, "tensorflow", AMD_AVX2) is None
    assert precision.refusal("float32", "torch", AMD_AVX2) is None
    assert precision.refusal(BF16, "torch", precision.Device("gpu", "A100", (8, 0))) is None
    for cpu in (AMD_AVX2, SAPPHIRE_RAPIDS):
        assert "PyTorch cannot train in float16 on a CPU" in precision.refusal(
            "mixed_float16", "torch", cpu)
    assert precision.refusal("mixed_float16", "jax", AMD_AVX2) is None
    assert precision.refusal("mixed_float16", "torch",
                             precision.Device("gpu", "T4", (7, 5))) is None


def test_a_forced_bfloat16_run_on_pytorch_without_it_is_a_named_error(monkeypatch):
    monkeypatch.setattr(precision, "device", lambda backend=None: AMD_AVX2)
    config = {"precision": BF16}
    if backend() == "torch":
        with pytest.raises(ConfigError, match=r"^--set precision=mixed_bfloat16: PyTorch "
                                              r"cannot train in bfloat16 on this CPU"):
            training._resolve_precision(config, verbose=0)
    else:
        assert training._resolve_precision(config, verbose=0)["precision"] == BF16
