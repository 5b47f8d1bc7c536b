"""How often a trained classifier reads class-conditional samples as the
class they were asked for."""

import keras
from keras import ops

from kgen.api import kgen_export
from kgen.metrics.distribution import concrete


@kgen_export("kgen.metrics.ClassifierAccuracy")
class ClassifierAccuracy(keras.metrics.Metric):
    """Share of generated samples a trained classifier labels as their
    intended class, overall and per class.

    `update_state(labels, generated)`: `labels` the int classes the samples
    were generated for `(batch,)` (or `(batch, 1)`), `generated` a batch the
    classifier takes. The classifier's prediction is the argmax of its
    output. `result()` is the overall share; `per_class()` the share per
    class (NaN for a class with no samples yet); `results()` both as named
    numbers.

    Args:
        classifier: a trained Keras model mapping samples to
            `(batch, num_classes)` logits or probabilities.
        name: key in logs.
        dtype: dtype of the counts and the result.

    Example:

    ```python
    accuracy = ClassifierAccuracy(mnist_classifier)
    labels = np.arange(100) % 10
    accuracy.update_state(labels, cgan.generate(100, seed=0, labels=labels))
    accuracy.result(), accuracy.per_class()
    ```
    """

    def __init__(self, classifier, name="classifier_accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        shape = classifier.output_shape
        if isinstance(shape, list) or len(shape) != 2 or not shape[-1] or shape[-1] < 2:
            raise ValueError(
                f"classifier {classifier.name!r} has output shape {shape}; "
                "expected (batch, num_classes) with num_classes >= 2"
            )
        self.classifier = classifier
        self.num_classes = int(shape[-1])
        self.correct = self.add_variable(
            shape=(self.num_classes,), initializer="zeros", dtype=self.dtype, name="correct")
        self.total = self.add_variable(
            shape=(self.num_classes,), initializer="zeros", dtype=self.dtype, name="total")

    def update_state(self, labels, generated, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(f"{self.name}: sample_weight is not supported (got one)")
        labels = ops.convert_to_tensor(labels)
        if len(labels.shape) == 2 and labels.shape[-1] == 1:
            labels = labels[:, 0]
        if len(labels.shape) != 1:
            raise ValueError(
                f"{self.name}: labels have shape {tuple(labels.shape)}; expected "
                "(batch,) int classes"
            )
        values = concrete(labels)
        if values is not None and values.size and (
                values.min() < 0 or values.max() >= self.num_classes):
            bad = values[(values < 0) | (values >= self.num_classes)][0]
            raise ValueError(
                f"{self.name}: label {bad} is outside [0, {self.num_classes}) "
                f"(the classifier has {self.num_classes} classes)"
            )
        labels = ops.cast(labels, "int32")
        predicted = ops.cast(
            ops.argmax(self.classifier(generated, training=False), axis=-1), "int32")
        if predicted.shape[0] is not None and labels.shape[0] is not None and (
                predicted.shape[0] != labels.shape[0]):
            raise ValueError(
                f"{self.name}: {labels.shape[0]} labels for {predicted.shape[0]} "
                "generated samples"
            )
        one_hot = ops.one_hot(labels, self.num_classes, dtype=self.dtype)
        hit = ops.cast(ops.equal(predicted, labels), self.dtype)
        self.correct.assign(self.correct.value + ops.sum(one_hot * hit[:, None], axis=0))
        self.total.assign(self.total.value + ops.sum(one_hot, axis=0))

    def result(self):
        return ops.sum(self.correct.value) / ops.maximum(ops.sum(self.total.value), 1.0)

    def per_class(self):
        """`(num_classes,)` accuracy of each class (NaN where none were fed)."""
        total = self.total.value
        return ops.where(total > 0, self.correct.value / ops.maximum(total, 1.0),
                         float("nan"))

    def results(self):
        """`{name: overall, name_class_C: per class C}`."""
        per_class = self.per_class()
        return {self.name: self.result(),
                **{f"{self.name}_class_{c}": per_class[c] for c in range(self.num_classes)}}
