"""kgen: generative models from the lab to the market, on Keras 3."""

import pathlib

from setuptools import setup

HERE = pathlib.Path(__file__).parent
VERSION = {}
exec((HERE / "kgen" / "version.py").read_text(), VERSION)

setup(
    name="kgen",
    version=VERSION["__version__"],
    description=(
        "Train GAN, VAE, diffusion and autoregressive models with Keras 3 on "
        "TensorFlow, JAX or PyTorch and ship them to TensorFlow Serving."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[
        "kgen",
        "kgen.callbacks",
        "kgen.data",
        "kgen.export",
        "kgen.metrics",
        "kgen.models",
        "kgen.networks",
        "kgen.schedulers",
        "kgen.serving",
        "kgen.trainers",
        "kgen.recipes",
    ],
    # The recipes live in a flat top-level folder so they read like scripts,
    # and install as `kgen.recipes` so `kgen recipes` finds them anywhere.
    package_dir={"kgen.recipes": "recipes"},
    install_requires=[
        "keras>=3.15,<4",
        # keras-hub pulls in tensorflow-text, which requires the full
        # `tensorflow` wheel, so that is the one kgen asks for too.
        "tensorflow>=2.21,<3",
        # TF Serving's own protos: every export writes its warm-up requests
        # as PredictionLog records, and `kgen deploy` writes models.config.
        "tensorflow-serving-api>=2.21",
        "keras-hub>=0.32",
        "tensorboard>=2.21",
        "numpy",
        "scikit-learn",
        "pillow",
    ],
    extras_require={
        "jax": ["jax>=0.10"],
        # The CPU build that this project is tested with; a bare `torch`
        # pulls a multi-GB CUDA build.
        "torch": ["torch==2.13.0"],
        # `kgen serve` (KServe's model server: TF Serving's REST API as its V1
        # protocol, V2 REST and gRPC, Prometheus metrics), gRPC for
        # `kgen.serving.Client`, PyYAML for `kgen deploy`'s manifests, and the
        # OpenAI SDK's response types for the OpenAI-compatible completions.
        "serving": ["kserve>=0.21", "grpcio", "pyyaml", "openai>=1.40"],
        # `kgen tune`: Optuna's search, pruners and study databases (SQLite
        # through SQLAlchemy; any database Optuna supports for shared studies).
        "tune": ["optuna>=5,<6", "sqlalchemy>=2"],
        # Video clips as MP4 (imageio with the ffmpeg binary its wheel ships)
        # and GIF/MP4 clip folders as training data; GIFs alone need only Pillow.
        "video": ["imageio>=2.30", "imageio-ffmpeg>=0.5"],
        "test": ["pytest>=8"],
        # The documentation site: `mkdocs build --strict` (mkdocs.yml, docs/).
        "docs": ["mkdocs-material>=9.5"],
    },
    entry_points={"console_scripts": ["kgen=kgen.cli:main"]},
)
