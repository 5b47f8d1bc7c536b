"""What a bare `import kgen` gives: no Keras yet, and kgen's model classes
registered with Keras' serialization once Keras is imported."""

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import kgen_env


def _run(code, tmp_path):
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=kgen_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_load_model_works_after_a_bare_import_kgen(tmp_path):
    from kgen import models
    from kgen import networks

    vae = models.VAE(*networks.conv_vae_networks((8, 8, 1), 2, (4,), 8), seed=0)
    vae(np.zeros((1, 8, 8, 1), "float32"))
    vae.save(tmp_path / "best.keras")
    expected = np.asarray(vae.generate(2, seed=3))
    np.save(tmp_path / "expected.npy", expected)
    # Keras imported after kgen, and before it: both find the class.
    for imports in ("import kgen, keras", "import keras, kgen"):
        out = _run(f"{imports}\nimport sys\nimport numpy as np\n"
                   "assert 'kgen.models' in sys.modules\n"
                   "model = keras.saving.load_model('best.keras')\n"
                   "print(type(model).__name__)\n"
                   "got = np.asarray(model.generate(2, seed=3))\n"
                   "np.testing.assert_allclose(got, np.load('expected.npy'), atol=1e-6)\n",
                   tmp_path)
        assert out.strip() == "VAE", imports


@pytest.mark.backend_agnostic
def test_import_kgen_imports_no_keras(tmp_path):
    """The command line chooses the backend after `import kgen`."""
    out = _run("import sys, kgen, kgen.cli\nprint('keras' in sys.modules)", tmp_path)
    assert out.strip() == "False"
