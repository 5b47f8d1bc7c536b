"""The Keras members `kgen.compat.keras` uses that are not public API, each
pinned on the installed Keras: a test fails naming the member and the
version when a release changes it (see `kgen/compat/__init__.py`)."""

import inspect

import keras
import numpy as np
import pytest

from kgen import compat
from kgen.compat import keras as keras_compat

BACKEND = keras.backend.backend()
# Keras' TensorFlow trainer: kgen hooks into it on TensorFlow only.
tensorflow_only = pytest.mark.tf_only


def _changed(member, detail):
    return compat.changed("keras", member, detail)


def _data(rows=8):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(rows, 3)).astype("float32"),
            rng.normal(size=(rows, 1)).astype("float32"))


def _parameters(function):
    return list(inspect.signature(function).parameters)


class DenseProbe(keras_compat.TensorFlowTrainerHooks, keras.Model):
    """One Dense layer on kgen's TensorFlow trainer hooks; tests subclass it
    to watch one hook."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)


def test_installed_keras_is_a_verified_release():
    assert compat.is_supported("keras"), (
        f"keras {compat.installed_version('keras')} is outside "
        f"{compat.supported_range('keras')}, the releases kgen.compat's Keras members "
        "were verified on: run tests/compat/ on it and widen kgen.compat.SUPPORTED")


# === TensorFlowTrainer._make_function ===


@tensorflow_only
def test_make_function_signature():
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    member = "keras.src.backend.tensorflow.trainer.TensorFlowTrainer._make_function"
    assert hasattr(TensorFlowTrainer, "_make_function"), _changed(member, "it is gone")
    assert _parameters(TensorFlowTrainer._make_function) == ["self", "step_function"], \
        _changed(member, f"its parameters are {_parameters(TensorFlowTrainer._make_function)}")


@tensorflow_only
def test_make_function_receives_the_train_and_test_steps_it_runs():
    wrapped, ran = [], []

    class Probe(DenseProbe):
        def wrap_step_function(self, step_function):
            wrapped.append(step_function.__name__)

            def step(data):
                ran.append(step_function.__name__)
                return step_function(data)

            return step

    model = Probe()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    model.evaluate(x, y, batch_size=4, verbose=0)
    member = "TensorFlowTrainer._make_function(step_function)"
    assert wrapped == ["train_step", "test_step"], _changed(
        member, f"fit() and evaluate() handed it {wrapped}, not the train and test steps")
    assert set(ran) == {"train_step", "test_step"}, _changed(
        member, "the step it was given is not the one fit() and evaluate() run")


@tensorflow_only
def test_trainer_changes_are_none_on_the_installed_keras():
    assert keras_compat.trainer_changes(keras.Model) == []


def test_trainer_changes_name_each_missing_method_and_the_version():
    problems = keras_compat.trainer_changes(object)
    version = compat.installed_version("keras")
    assert len(problems) == 2
    for name, problem in zip(keras_compat.TRAINER_METHODS, problems):
        assert f"TensorFlowTrainer.{name} changed in keras {version}" in problem


# === TensorFlowTrainer._maybe_symbolic_build ===


@tensorflow_only
def test_maybe_symbolic_build_signature():
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    member = "keras.src.backend.tensorflow.trainer.TensorFlowTrainer._maybe_symbolic_build"
    assert hasattr(TensorFlowTrainer, "_maybe_symbolic_build"), _changed(member, "it is gone")
    parameters = inspect.signature(TensorFlowTrainer._maybe_symbolic_build).parameters
    assert list(parameters) == ["self", "iterator", "data_batch"] and all(
        parameters[name].default is None for name in ("iterator", "data_batch")), \
        _changed(member, f"its parameters are {list(parameters)}")


@tensorflow_only
def test_fit_under_a_strategy_builds_from_the_epoch_iterators_first_batch():
    import tensorflow as tf

    asked, seen = [], []

    class Probe(DenseProbe):
        def call(self, x):
            seen.append(tuple(x.shape))
            return self.dense(x)

        def build_from_local_batch(self):
            asked.append(True)
            return True

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = Probe()
        model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    member = "TensorFlowTrainer._maybe_symbolic_build(iterator=...)"
    assert asked, _changed(member, "fit() under a strategy no longer calls it with its "
                                   "epoch iterator")
    assert seen and seen[0] == (4, 3), _changed(
        member, f"the model was built from shapes {seen[:1]}, not one (4, 3) batch of "
                "the epoch iterator's (begin, end, iterator) triples")
    assert len(history.history["loss"]) == 1 and model.built


@tensorflow_only
def test_first_local_batch_reads_a_tensorflow_epoch_iterator():
    import tensorflow as tf
    from keras.src.backend.tensorflow.trainer import TFEpochIterator

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    x, y = _data()
    iterator = TFEpochIterator(distribute_strategy=strategy, x=x, y=y, batch_size=4)
    batch = keras_compat.first_local_batch(strategy, iterator)
    shapes = tf.nest.map_structure(lambda v: tuple(v.shape), batch)
    assert shapes == ((4, 3), (4, 1)), _changed(
        "keras.src.backend.tensorflow.trainer.TFEpochIterator",
        f"its first batch read as (begin, end, iterator) triples has shapes {shapes}")


@tensorflow_only
def test_fit_without_a_strategy_builds_before_the_first_trace():
    """With no strategy, kgen's hook builds the model, its metrics and its
    optimizer from the epoch iterator's first batch (`first_batch`,
    `Trainer._symbolic_build`, `TensorFlowTrainer._distribute_strategy`), so
    the train step is traced once, creating no variable."""
    import tensorflow as tf
    from keras.src.backend.tensorflow.trainer import TFEpochIterator
    from keras.src.trainers.trainer import Trainer

    member = "keras.src.trainers.trainer.Trainer._symbolic_build"
    parameters = list(inspect.signature(Trainer._symbolic_build).parameters)
    assert parameters == ["self", "iterator", "data_batch"], \
        _changed(member, f"its parameters are {parameters}")
    x, y = _data()
    iterator = TFEpochIterator(distribute_strategy=tf.distribute.get_strategy(), x=x, y=y,
                               batch_size=4)
    shapes = tf.nest.map_structure(lambda v: tuple(v.shape), keras_compat.first_batch(iterator))
    assert shapes == ((4, 3), (4, 1)), _changed(
        "keras.src.backend.tensorflow.trainer.TFEpochIterator",
        f"its first batch read as (begin, end, iterator) triples has shapes {shapes}")

    built_at_start, step_traces = [], []

    class Probe(DenseProbe):
        def train_step(self, data):
            step_traces.append(True)
            return super().train_step(data)

    class AtStart(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            built_at_start.append((self.model.built, self.model.optimizer.built))

    model = Probe()
    assert model._distribute_strategy is None, _changed(
        "keras.src.backend.tensorflow.trainer.TensorFlowTrainer._distribute_strategy",
        f"a model outside any strategy holds {model._distribute_strategy!r}, not None")
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[AtStart()])
    assert built_at_start == [(True, True)], _changed(
        "TensorFlowTrainer._maybe_symbolic_build", "the model or its optimizer was "
        f"not built when fit() started (built, optimizer built: {built_at_start})")
    assert len(step_traces) == 1, f"the train step was traced {len(step_traces)} times"


# === Trainer._initial_epoch ===


def test_initial_epoch_is_an_attribute_of_every_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    assert getattr(model, "_initial_epoch", "missing") is None, _changed(
        "keras.src.trainers.trainer.Trainer._initial_epoch",
        f"a new model holds {getattr(model, '_initial_epoch', 'missing')!r}, not None")


def test_set_initial_epoch_in_on_train_begin_moves_the_first_epoch():
    epochs = []

    class Resume(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            keras_compat.set_initial_epoch(self.model, 2)

        def on_epoch_begin(self, epoch, logs=None):
            epochs.append(epoch)

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    model.fit(x, y, batch_size=4, epochs=4, verbose=0, callbacks=[Resume()])
    assert epochs == [2, 3], _changed(
        "keras.src.trainers.trainer.Trainer._initial_epoch",
        f"set in on_train_begin, fit(epochs=4) ran epochs {epochs}, not [2, 3]")


# === TFLayer._default_save_signature ===


@tensorflow_only
def test_default_save_signature_is_a_property_making_a_tf_function():
    import tensorflow as tf
    from keras.src.backend.tensorflow.layer import TFLayer

    member = "keras.src.backend.tensorflow.layer.TFLayer._default_save_signature"
    assert isinstance(TFLayer.__dict__.get("_default_save_signature"), property), \
        _changed(member, "it is no longer a property")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    made = model._default_save_signature
    assert isinstance(made, tf.types.experimental.GenericFunction), \
        _changed(member, f"it gives {type(made).__name__}, not a tf.function")
    assert model._default_save_signature is not made, \
        _changed(member, "it no longer makes a new tf.function at each read")


@tensorflow_only
def test_without_default_save_signatures_turns_it_off_and_back_on():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    with keras_compat.without_default_save_signatures():
        assert model._default_save_signature is None
    assert model._default_save_signature is not None


@tensorflow_only
def test_an_export_traces_no_forward_pass_of_its_models(tmp_path, monkeypatch):
    """The reason for the fence: while kgen writes a SavedModel, no model's
    default save signature is made (so none is traced)."""
    from keras.src.backend.tensorflow.layer import TFLayer

    from kgen import models, networks
    from kgen.export import export_model

    reads = []
    original = TFLayer.__dict__["_default_save_signature"]

    def counted(self):
        reads.append(type(self).__name__)
        return original.fget(self)

    monkeypatch.setattr(TFLayer, "_default_save_signature", property(counted))
    vae = models.VAE(*networks.conv_vae_networks((8, 8, 1), 2, (4,), 8))
    version = export_model(vae, tmp_path / "vae", max_rows=2)
    assert (version / "saved_model.pb").is_file()
    assert reads == [], f"default save signatures made during the export: {reads}"
