"""A cheap kernel inception distance at each epoch's end: `val_kid`.

GAN losses do not rank epochs and a diffusion model's loss ranks them
poorly; the distance between the features of a few generated and a few
real images does. `ValidationKID` draws the same `n` samples every epoch
(fixed seeds through `model.generate(seed=...)`, labels cycled over the
classes, few diffusion steps), compares their features with those of `n`
fixed real images, and writes `val_kid` into the epoch's logs, where
TensorBoard, `HistoryLog` and `Checkpoint(monitor="val_kid")` read it.
For a class-conditional model judged by a classifier, it also logs
`val_label_accuracy`: the share of those samples the classifier labels as
the class they were asked for (`kgen tune --objective val_label_accuracy
--direction maximize` searches for it).
"""

import keras
import numpy as np

from kgen.metrics.features import load_feature_extractor
from kgen.metrics.features import predict_in_batches


def kid_value(metric):
    """`(mean, std)` of a `KernelInceptionDistance`'s subsets."""
    results = metric.results()
    return (float(keras.ops.convert_to_numpy(results[metric.name])),
            float(keras.ops.convert_to_numpy(results[f"{metric.name}_std"])))


def take_images(dataset, n):
    """The first `n` images of an image pipeline (dict batches with
    `"images"`, `(images, labels)` pairs, or plain image batches)."""
    parts, count = [], 0
    for batch in dataset:
        images = batch["images"] if isinstance(batch, dict) else (
            batch[0] if isinstance(batch, (tuple, list)) else batch)
        images = keras.ops.convert_to_numpy(images)
        parts.append(images)
        count += len(images)
        if count >= n:
            break
    if not parts:
        raise ValueError("the data holds no images for val_kid")
    return np.concatenate(parts)[:n].astype("float32")


class ValidationKID(keras.callbacks.Callback):
    """Log the KID of fixed samples against fixed real images as `val_kid`.

    Args:
        feature_extractor: a classifier `.keras` path (its `features`
            layer is used; see `kgen.metrics.load_feature_extractor`) or a
            Keras model from images to `(batch, features)`.
        real_images: float32 `(m, h, w, c)` in [0, 1]; the first `n` are
            compared.
        n: samples (and real images) per measurement; at least 2.
        seed: seed of the first sample (the same every epoch).
        every: measure every this many epochs (an epoch skipped logs no
            `val_kid`, so a Checkpoint monitoring it needs `every=1`).
        generate_kwargs: extra `model.generate()` options, e.g.
            `{"num_steps": 10}` for a diffusion model.
        subsets: KID's random subsets.
        subset_size: KID subset size (default: `min(n, 100)`).
        name: the logged key.
        classifier: the model whose argmax labels the samples for
            `val_label_accuracy` (default: the classifier a `.keras` path
            names; none for a feature model given as a Keras model).
        accuracy_name: the logged key of the label accuracy.

    Example:

    ```python
    kid = ValidationKID("runs/digits_classifier/best.keras", real, n=100,
                        generate_kwargs={"num_steps": 10})
    model.fit(data, epochs=5, callbacks=[kid, Checkpoint("best.keras", monitor="val_kid")])
    ```
    """

    def __init__(self, feature_extractor, real_images, n=200, seed=0, every=1,
                 generate_kwargs=None, subsets=20, subset_size=None, name="val_kid",
                 classifier=None, accuracy_name="val_label_accuracy"):
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"n={n!r}: val_kid needs at least 2 samples")
        if every < 1:
            raise ValueError(f"every={every}: must be at least 1")
        real_images = np.asarray(real_images, dtype="float32")
        if real_images.ndim != 4 or len(real_images) < n:
            raise ValueError(
                f"real images of shape {real_images.shape}: expected at least "
                f"n={n} images (n, h, w, c)"
            )
        if not isinstance(feature_extractor, keras.Model):
            loaded, feature_extractor = load_feature_extractor(feature_extractor)
            classifier = classifier if classifier is not None else loaded
        expected = tuple(feature_extractor.input_shape[1:])
        if tuple(real_images.shape[1:]) != expected:
            raise ValueError(
                f"images of shape {tuple(real_images.shape[1:])}: the feature "
                f"extractor takes {expected}"
            )
        self.features = feature_extractor
        self.real_images = real_images[:n]
        self.n, self.seed, self.every, self.name = n, seed, every, name
        self.generate_kwargs = dict(generate_kwargs or {})
        self.subsets = subsets
        self.subset_size = subset_size or min(n, 100)
        self.classifier, self.accuracy_name = classifier, accuracy_name
        self.last_accuracy = None  # of the last measure(), conditional models only
        self._real_features = None

    def measure(self, model=None):
        """The KID `(mean, std)` of `model`'s fixed samples now (and, for a
        conditional model and a classifier, their label accuracy in
        `last_accuracy`)."""
        from kgen.metrics import KernelInceptionDistance

        model = model or self.model
        if self._real_features is None:
            self._real_features = predict_in_batches(self.features, self.real_images)
        kwargs = dict(self.generate_kwargs)
        classes = getattr(model, "num_classes", None)
        if classes and "labels" not in kwargs:
            kwargs["labels"] = (self.seed + np.arange(self.n)) % classes
        samples = np.asarray(model.generate(self.n, seed=self.seed, **kwargs), "float32")
        generated = predict_in_batches(self.features, samples)
        self.last_accuracy = None
        if classes and self.classifier is not None:
            predicted = np.argmax(predict_in_batches(self.classifier, samples), axis=-1)
            self.last_accuracy = float(np.mean(predicted == np.asarray(kwargs["labels"])))
        metric = KernelInceptionDistance(
            num_features=generated.shape[-1], max_samples=self.n,
            subsets=self.subsets, subset_size=self.subset_size)
        metric.update_state(self._real_features, generated)
        return kid_value(metric)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every or logs is None:
            return
        logs[self.name] = self.measure()[0]
        if self.last_accuracy is not None:
            logs[self.accuracy_name] = self.last_accuracy
