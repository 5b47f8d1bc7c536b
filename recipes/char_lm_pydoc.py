"""Character Transformer LM on CPython's embedded pydoc help texts: no data argument needed."""

from kgen import data
from kgen.recipes.char_lm_shakespeare import CONFIG as SHAKESPEARE
from kgen.recipes.char_lm_shakespeare import build_char_lm
from kgen.recipes.char_lm_shakespeare import sample_kwargs  # noqa: F401  (SampleLogger)

CONFIG = dict(
    SHAKESPEARE,
    data="pydoc",              # pydoc_data.topics.topics, shipped inside CPython
    sample_prompts=("The ", "class "),
    # nanoGPT's schedule: 2,000 iterations of 12 windows at 1e-3
    epochs=10,
    steps_per_epoch=200,
    batch_size=12,
    learning_rate=1e-3,
    min_learning_rate=1e-4,
)


def build(config):
    return build_char_lm(config, data.load_text(config["data"]))
