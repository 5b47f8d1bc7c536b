"""kgen: generative models from the lab to the market, on Keras 3.

Importing `kgen` does not import Keras, so the command line can choose the
Keras backend first. Import the rooms you need: `kgen.models`, `kgen.data`,
`kgen.export`, `kgen.callbacks`.
"""

from kgen.version import __version__  # noqa: F401
