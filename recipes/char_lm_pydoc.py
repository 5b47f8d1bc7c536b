"""Character Transformer LM on CPython's embedded pydoc help texts: no data argument needed."""

from kgen import data
from kgen.recipes.char_lm_shakespeare import CONFIG as SHAKESPEARE
from kgen.recipes.char_lm_shakespeare import build_char_lm
from kgen.recipes.char_lm_shakespeare import sample_kwargs  # noqa: F401  (SampleLogger)

CONFIG = dict(
    SHAKESPEARE,
    data="pydoc",              # pydoc_data.topics.topics, shipped inside CPython
    sample_prompts=("The ", "class "),
)


def build(config):
    return build_char_lm(config, data.load_text(config["data"]))
