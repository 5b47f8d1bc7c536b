"""Checks shared by the export tests: TF Serving's loader, a process
without kgen, and the op types in a SavedModel's graph."""

import json
import subprocess
import sys

FORBIDDEN_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc", "XlaCallModule"}

# Prepended to scripts run by `run_without_kgen`: any `import kgen` fails.
NO_KGEN_PRELUDE = """
import json, sys
sys.modules["kgen"] = None
try:
    import kgen
except ImportError:
    pass
else:
    raise SystemExit("kgen was importable")
import numpy as np
import tensorflow as tf
"""


def saved_model_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *map(str, args)],
        capture_output=True, text=True, timeout=300,
    )


def run_without_kgen(tmp_path, body, *args):
    """Run `body` (after NO_KGEN_PRELUDE) in a fresh process; it must print
    one JSON line last, which is returned."""
    script = tmp_path / "no_kgen.py"
    script.write_text(NO_KGEN_PRELUDE + body)
    result = subprocess.run(
        [sys.executable, str(script), *map(str, args)], cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def graph_op_types(version_dir):
    """Every op type in a SavedModel's graph and function library."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    ops = set()
    for meta_graph in proto.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for fn in meta_graph.graph_def.library.function:
            ops.update(node.op for node in fn.node_def)
    assert ops, "no ops found: a check on them would pass vacuously"
    return ops


def tiny(family):
    """An untrained model of `family` (vae, gan, diffusion, video, audio,
    lm) at 8x8 (four frames of it for video), a 16x64 spectrogram of one
    second at 8 kHz, or a 16-token context: the smallest export of each
    family."""
    from kgen import models, networks, schedulers
    from kgen.data import CharTokenizer

    shape = (8, 8, 1)
    if family == "vae":
        return models.VAE(*networks.conv_vae_networks(shape, 2, (4,), 8))
    if family == "gan":
        return models.GAN(networks.dcgan_generator(4, shape, (8,), num_classes=10),
                          networks.dcgan_discriminator(shape, (8,), num_classes=10),
                          num_classes=10)
    if family == "diffusion":
        return models.DiffusionModel(
            networks.unet(shape, filters=(8, 16), num_classes=10, groups=4),
            schedulers.DDPMScheduler(100), num_classes=10, sampler="ddim")
    if family == "video":
        return models.VideoDiffusionModel(
            networks.video_unet((4, *shape), filters=(8, 16), num_classes=10, groups=4),
            schedulers.DDPMScheduler(100), num_classes=10, sampler="ddim",
            clip_settings={"frames": 4, "size": 8, "digit_size": 4, "num_digits": 1})
    if family == "audio":
        from kgen.audio import LogMel

        codec = LogMel(8000, 8000, fft_length=256, hop_length=128, num_mels=16,
                       griffin_lim_iters=2)
        return models.AudioDiffusionModel(
            networks.unet(codec.image_shape, filters=(8, 16), num_classes=10, groups=4),
            codec, schedulers.DDPMScheduler(100), num_classes=10, sampler="ddim")
    tokenizer = CharTokenizer.from_text("abcdefgh \n")
    return models.CausalLM(
        networks.transformer_lm(tokenizer.vocabulary_size, 16, num_layers=1,
                                num_heads=1, hidden_dim=8), tokenizer)


def tolerance(model, float32_atol):
    """`float32_atol` for a float32 model; for one built under a mixed
    policy (`KGEN_TEST_PRECISION`), the rounding of its bfloat16 or float16
    arithmetic, which the exported graph (Grappler fuses its matmuls,
    biases and activations) and the in-process call round differently."""
    if model.dtype_policy.compute_dtype == "float32":
        return float32_atol
    return max(float32_atol, 5e-2)
