"""Feature extractors that judge generated images, all available offline.

The field measures image generators (FID, KID, precision/recall) in the
feature space of a network trained to recognise real images. Nothing can be
downloaded here, so kgen trains its own judges: `image_classifier()` is a
small CNN that the recipes `mnist_classifier` (28x28 MNIST) and
`digits_classifier` (scikit-learn's 8x8 digits) train and save as `.keras`
files; `load_feature_extractor()` loads such a file and returns the
classifier with a model that stops at its penultimate (feature) layer.
InceptionV3, the field's usual judge, is used when its weights file is on
disk (`inception_feature_extractor()`), and refused with a message saying
where to put it when it is not; no download is attempted.
"""

import os
import pathlib

import keras
from keras import ops

# The layer whose output is the feature vector (the penultimate layer).
FEATURE_LAYER = "features"
# Where `keras.applications.InceptionV3` keeps its weights once downloaded.
INCEPTION_WEIGHTS = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
INCEPTION_ENV = "KGEN_INCEPTION_WEIGHTS"


def image_classifier(image_shape, num_classes=10, filters=(32, 64), feature_dim=128,
                     dropout=0.3, name="image_classifier"):
    """A small CNN: images in [0, 1] NHWC in, class logits out.

    Per block: two 3x3 convolutions with ReLU and 2x2 max pooling; then a
    dense layer named `features` (the penultimate layer, whose output FID
    and KID compare), dropout and the logits.

    Args:
        image_shape: `(height, width, channels)`.
        num_classes: how many classes.
        filters: channels of each convolutional block.
        feature_dim: width of the feature layer.
        dropout: dropout rate before the logits.
        name: the model's name.

    Returns:
        A functional `keras.Model` from float32 `(batch, h, w, c)` to
        `(batch, num_classes)` logits.

    Example:

    ```python
    model = image_classifier((28, 28, 1), num_classes=10)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ```
    """
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: a classifier needs at least 2")
    if not filters:
        raise ValueError(f"filters={filters!r}: need at least one block")
    inputs = keras.Input(tuple(int(d) for d in image_shape), name="images")
    x = inputs
    for i, f in enumerate(filters):
        x = keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}a")(x)
        x = keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}b")(x)
        x = keras.layers.MaxPooling2D(2, padding="same")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(feature_dim, activation="relu", name=FEATURE_LAYER)(x)
    x = keras.layers.Dropout(dropout)(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def feature_model(classifier):
    """A model from the classifier's input to its feature layer: the layer
    named `features`, else the input of its last layer."""
    try:
        layer_output = classifier.get_layer(FEATURE_LAYER).output
    except ValueError:
        layer_output = classifier.layers[-1].input
    if len(layer_output.shape) != 2:
        raise ValueError(
            f"{classifier.name}: its feature layer gives shape {layer_output.shape}; "
            "expected (batch, features)"
        )
    # One input as a tensor, not a list: the model is then called with a
    # plain batch of images, as the classifier is.
    inputs = classifier.inputs[0] if len(classifier.inputs) == 1 else classifier.inputs
    return keras.Model(inputs, layer_output, name=f"{classifier.name}_features")


def load_feature_extractor(path):
    """Load a classifier `.keras` file: `(classifier, feature_model)`.

    Raises:
        FileNotFoundError: naming the path, and the command that makes it.
        ValueError: naming the path when it is not a readable image
            classifier (a model with one image input and 2-D logits).

    Example:

    ```python
    classifier, features = load_feature_extractor("runs/mnist_classifier/best.keras")
    f = features.predict(images)  # (n, 128)
    ```
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such classifier file (train one with `kgen train "
            f"mnist_classifier --set data=DIR` or `kgen train digits_classifier`; "
            f"it is saved as runs/<recipe>/best.keras)"
        )
    try:
        classifier = keras.saving.load_model(path)
    except Exception as e:  # zipfile, h5py and Keras raise many kinds
        raise ValueError(
            f"{path}: cannot be read as a .keras classifier ({type(e).__name__}: "
            f"{(str(e).strip().splitlines() or [''])[0]})"
        ) from None
    # A generative model (a subclassed VAE, GAN, ...) has no `inputs`.
    inputs = getattr(classifier, "inputs", None) if isinstance(classifier, keras.Model) else None
    if (not inputs or len(inputs) != 1
            or len(classifier.input_shape) != 4 or len(classifier.output_shape) != 2):
        raise ValueError(
            f"{path}: a {type(classifier).__name__} model, not an image classifier "
            "(expected one (batch, h, w, c) input and (batch, classes) logits, as "
            "`kgen train digits_classifier` or `mnist_classifier` saves)"
        )
    return classifier, feature_model(classifier)


def inception_weights_path(path=None):
    """The InceptionV3 weights file: `path`, else `$KGEN_INCEPTION_WEIGHTS`,
    else Keras' cache `~/.keras/models/<INCEPTION_WEIGHTS>`.

    Raises:
        FileNotFoundError: naming every place looked at; nothing is
            downloaded.
    """
    if path is None:
        path = os.environ.get(INCEPTION_ENV) or None
    if path is not None:
        path = pathlib.Path(os.path.expanduser(str(path)))
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such InceptionV3 weights file (expected Keras' "
                f"{INCEPTION_WEIGHTS})"
            )
        return path
    cache = pathlib.Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()
    path = cache / "models" / INCEPTION_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: InceptionV3 weights are absent and are not downloaded "
            f"(this machine works offline); copy {INCEPTION_WEIGHTS} there or "
            f"set {INCEPTION_ENV}=PATH, or use a kgen classifier's features "
            f"(kgen train mnist_classifier)"
        )
    return path


def inception_feature_extractor(image_shape, weights=None):
    """InceptionV3's 2048 pooled features of images in [0, 1] NHWC.

    Grey images are repeated over three channels and every image is resized
    to 299x299 and scaled to [-1, 1], as InceptionV3 expects.

    Args:
        image_shape: `(height, width, channels)` of the images, 1 or 3
            channels.
        weights: the `_notop` weights file (see `inception_weights_path`).

    Example:

    ```python
    features = inception_feature_extractor((28, 28, 1))
    ```
    """
    weights = inception_weights_path(weights)
    channels = int(image_shape[-1])
    if channels not in (1, 3):
        raise ValueError(f"image_shape={tuple(image_shape)}: InceptionV3 takes 1 or 3 channels")
    inputs = keras.Input(tuple(int(d) for d in image_shape), name="images")
    x = inputs
    if channels == 1:
        x = keras.layers.Concatenate()([x, x, x])
    x = keras.layers.Resizing(299, 299)(x)
    x = keras.layers.Rescaling(2.0, offset=-1.0)(x)
    backbone = keras.applications.InceptionV3(
        include_top=False, weights=str(weights), input_shape=(299, 299, 3), pooling="avg")
    return keras.Model(inputs, backbone(x), name="inception_v3_features")


def predict_in_batches(model, images, batch_size=256):
    """`model(images)` batch by batch, as float32 numpy."""
    import numpy as np

    parts = [ops.convert_to_numpy(model(images[i:i + batch_size], training=False))
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts).astype("float32")
