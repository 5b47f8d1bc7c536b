"""kgen: generative models from the lab to the market, on Keras 3.

Importing `kgen` does not import Keras, so the command line can choose the
Keras backend first. Import the rooms you need: `kgen.models`, `kgen.data`,
`kgen.export`, `kgen.callbacks`.

kgen's model classes register with Keras' serialization as soon as Keras
is imported (or at once, when it already is), so after a bare `import kgen`
`keras.saving.load_model("runs/NAME/best.keras")` finds them.
"""

import importlib.abc
import importlib.machinery
import sys

from kgen.version import __version__  # noqa: F401


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Imports `kgen.models` right after `keras` is first imported: the
    classes register themselves (`kgen.api.kgen_export`) on import."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister(importlib.abc.Loader):
    """Keras' own loader, then the import of `kgen.models`."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # Keras' package code refers to its loader only through the spec.
        module.__spec__.loader = self._loader
        module.__loader__ = self._loader
        self._loader.exec_module(module)
        importlib.import_module("kgen.models")

    def __getattr__(self, name):  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


def _register_model_classes():
    if "keras" in sys.modules:
        importlib.import_module("kgen.models")
    elif not any(isinstance(f, _RegisterAfterKeras) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterKeras())


_register_model_classes()
