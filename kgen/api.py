"""The one decorator that both exports a class and registers it for `.keras`
serialization (the keras-hub pattern)."""

import keras


def kgen_export(path):
    """Register a class under `kgen>ClassName` so `.keras` files reload it.

    Args:
        path: the public path of the class, e.g. `"kgen.models.VAE"`; kept on
            the class as `_kgen_path` for documentation and error messages.
    """

    def decorator(cls):
        cls._kgen_path = path
        return keras.saving.register_keras_serializable(package="kgen")(cls)

    return decorator
