"""`kgen evaluate`: the numbers that judge a trained model, with a floor.

Images (VAE, GAN, diffusion): `n` samples are drawn through the exported
SavedModel's `generate` signature (at most the export's `max_rows` rows per
call; or from a `.keras` file through `model.generate`) and compared, in the
feature space of a kgen classifier (or InceptionV3 when its weights are on
disk), with `n` real images of the data's training part: Fréchet distance,
kernel inception distance (mean and standard deviation over subsets) and,
when `kgen.metrics` has it, precision/recall. A class-conditional model's
samples ask for the classes in turn (row `i`'s label is `(seed + i) mod
classes`, as `kgen sample` does) and the classifier says how many it
recognises, overall and per class. A VAE adds its negative ELBO on held-out
images (nats per image and bits per dimension, from its `.keras` file).

The floor: the same numbers for `n` held-out real images (the data's last
10%, which neither the classifier nor the recipes train on) against the
same training images, and the classifier's accuracy on them. A model is
as good as the real data when its numbers reach the floor's.

Audio (`AudioDiffusionModel`): the spoken-digit classifier
(`kgen train digit_classifier_fsdd`) says how many of `n` generated clips
(labels cycled as for images) say their digit, overall and per class, and
how long and how loud they are (peak, RMS in dBFS, seconds sounding); the
floor is the same for the held-out real clips (the FSDD's takes 0-4, or
the folder's last 10%).

Language models: bits per character (token) and perplexity of the `.keras`
model on the held-out last 10% of the text, in non-overlapping windows of
its context; the floor is the uniform model's `log2(vocabulary)` bits.

Example:

```python
from kgen.evaluate import evaluate

report = evaluate("saved_models/cgan_mnist", data="/data/mnist", n=1000,
                  classifier="runs/mnist_classifier/best.keras")
report["samples"]["fid"], report["floor"]["fid"]
```
"""

import math
import pathlib
import sys

import numpy as np

from kgen.errors import UserError
from kgen.errors import first_line

# The held-out share of the data: the recipes' and the classifiers' own
# validation split (the last 10%).
HELD_OUT_FRACTION = 0.1
# Generated clips an audio evaluation holds in memory at most (the images'
# count is bounded by the held-out split, the text's by its windows).
MAX_AUDIO_N = 10_000


class EvaluateError(UserError, ValueError):
    """A `kgen evaluate` argument does not fit the model or the data."""


class _Progress:
    """A one-line progress bar on stderr (stdout stays for the report)."""

    def __init__(self, label, total, enabled=True):
        self.label, self.total, self.done = label, total, 0
        self.enabled = enabled
        self._draw()

    def add(self, count):
        self.done += count
        self._draw()
        if self.enabled and self.done >= self.total:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _draw(self):
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        bar = "=" * filled + ">" * (filled < width) + " " * (width - filled - 1)
        sys.stderr.write(f"\r{self.label:<22} [{bar[:width]}] {self.done}/{self.total}")
        sys.stderr.flush()


# === Sources ===


class _Source:
    """A model to sample from: an export's signature or a Keras model."""

    family = None
    num_classes = 0
    image_shape = None
    keras_model = None
    # The evaluation the family declares (`kgen.family.Family.evaluation`)
    # and the extra metrics it supports.
    evaluation = None
    evaluation_metrics = ()

    def generate(self, seeds_start, count, labels, settings=None):
        raise NotImplementedError

    def check(self, settings):
        """Refuse a bad `--set` before any progress bar is drawn."""


class _SavedModelSource(_Source):
    def __init__(self, model_dir, version):
        from kgen.export.sample import _load
        from kgen.export.sample import read_metadata
        from kgen.export.sample import resolve_version_dir

        try:
            self.version_dir = resolve_version_dir(model_dir, version)
            self.metadata = read_metadata(self.version_dir)
            self.loaded = _load(self.version_dir)
        except ValueError as e:
            raise EvaluateError(str(e)) from None
        self.signature = self.loaded.signatures["generate"]
        self.family = self.metadata.get("family")
        self.num_classes = int(self.metadata.get("num_classes") or 0)
        shape = self.metadata.get("image_shape")
        self.image_shape = tuple(int(d) for d in shape) if shape else None
        self.max_rows = self.metadata.get("max_rows")
        self.output_kind = self.metadata.get("output_kind", "images")
        self.sample_rate = self.metadata.get("sample_rate")
        self.evaluation, self.evaluation_metrics = _recorded_evaluation(self.metadata)
        self.name = pathlib.Path(model_dir).name
        if (pathlib.Path(model_dir) / "saved_model.pb").exists():
            self.name = pathlib.Path(model_dir).parent.name

    def check(self, settings):
        from kgen.export.sample import SampleError
        from kgen.export.sample import generate_inputs

        try:
            generate_inputs(self.signature, self.metadata, 1, 0, settings=settings)
        except SampleError as e:
            raise EvaluateError(str(e)) from None

    def generate(self, start, count, labels, settings=None):
        from kgen.export.sample import SampleError
        from kgen.export.sample import _run
        from kgen.export.sample import generate_inputs

        try:
            inputs = generate_inputs(self.signature, self.metadata, count, start,
                                     settings=settings)
            if labels is not None and "label" in inputs:
                inputs["label"] = labels.astype(inputs["label"].dtype)
            outputs = _run(self.signature, inputs, self.max_rows, self.version_dir)
        except SampleError as e:
            raise EvaluateError(str(e)) from None
        kind = self.output_kind
        if kind not in outputs:
            raise EvaluateError(
                f"{self.version_dir}: the generate signature has no {kind!r} output "
                f"(it returns {', '.join(outputs)})"
            )
        return outputs[kind]


def _recorded_evaluation(metadata):
    """`(kind, metrics)` of an export: what its `kgen.json` records of the
    family's declaration, or (an export written before it was recorded)
    the declaration of the class `kgen.json` names, or its output kind."""
    from kgen.family import family_named

    recorded = metadata.get("evaluation")
    if isinstance(recorded, dict) and isinstance(recorded.get("kind"), str):
        return recorded["kind"], tuple(recorded.get("metrics") or ())
    declaration = family_named(metadata.get("family"))
    if declaration is not None:
        return declaration.evaluation, declaration.evaluation_metrics
    return metadata.get("output_kind", "images"), ()


class _KerasSource(_Source):
    def __init__(self, path):
        from kgen.export import _load
        from kgen.family import FamilyError
        from kgen.family import family_of

        self.keras_model = _load(path)
        self.family = type(self.keras_model).__name__
        try:
            self.declaration = family_of(self.keras_model)
        except FamilyError as e:
            raise EvaluateError(f"{path}: {e}") from None
        self.evaluation = self.declaration.evaluation
        self.evaluation_metrics = self.declaration.evaluation_metrics
        self.num_classes = int(getattr(self.keras_model, "num_classes", None) or 0)
        shape = getattr(self.keras_model, "image_shape", None)
        self.image_shape = tuple(int(d) for d in shape) if shape is not None else None
        self.max_rows = None
        self.output_kind = getattr(self.keras_model, "output_kind", "images")
        spectrogram = getattr(self.keras_model, "spectrogram", None)
        self.sample_rate = getattr(spectrogram, "sample_rate", None)
        self.name = pathlib.Path(path).parent.name

    def check(self, settings):
        for name, text in (settings or {}).items():
            _setting_value(self.declaration, name, text)

    def generate(self, start, count, labels, settings=None):
        kwargs = {"labels": labels} if self.num_classes else {}
        for name, text in (settings or {}).items():
            kwargs[name] = _setting_value(self.declaration, name, text)
        try:
            samples = self.keras_model.generate(count, seed=start, **kwargs)
        except TypeError as e:
            raise EvaluateError(f"--set: {first_line(e)}") from None
        return np.asarray(samples, "float32")


def _setting_value(declaration, name, text):
    """`--set NAME=TEXT` for `model.generate`, as the option's declared
    dtype (`kgen.family.option_value`): an int, a float or the text."""
    from kgen.family import option_value

    try:
        return option_value(declaration, name, text)
    except ValueError as e:
        raise EvaluateError(str(e)) from None


def _source(model, version):
    path = pathlib.Path(model)
    if path.suffix == ".keras":
        if version is not None:
            raise EvaluateError(f"--version {version}: {path} is a .keras file, not an export")
        try:
            return _KerasSource(path)
        except ValueError as e:
            raise EvaluateError(str(e)) from None
    return _SavedModelSource(path, version)


def _keras_file(source, keras_path):
    """The `.keras` model of a source (for the VAE's ELBO and the LM's
    bits): `keras_path`, the source itself, or `runs/<NAME>/best.keras`."""
    from kgen.export import _load

    if source.keras_model is not None and keras_path is None:
        return source.keras_model
    candidates = ([pathlib.Path(keras_path)] if keras_path is not None else
                  [pathlib.Path("runs") / source.name / f for f in ("best.keras", "last.keras")])
    for path in candidates:
        if path.is_file() or keras_path is not None:
            try:
                model = _load(path)
            except ValueError as e:
                raise EvaluateError(str(e)) from None
            kinds = {cls.__name__ for cls in type(model).__mro__}
            if source.family and source.family not in kinds:
                raise EvaluateError(
                    f"--keras {path}: a {type(model).__name__} model, but the model "
                    f"evaluated ({source.name}) is a {source.family}; pass the .keras "
                    f"file it was exported from (e.g. runs/{source.name}/best.keras)")
            return model
    return None


# === Images ===


def _check_n(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise EvaluateError(f"--n {n}: must be an integer >= 2 (the distances compare sets)")
    return n


def _load_real(data, image_shape):
    from kgen.data import DataError
    from kgen.data.images import load_images

    if data is None:
        raise EvaluateError("--data: needed, the real images the samples are compared with")
    try:
        images, labels = load_images(data)
    except DataError as e:
        raise EvaluateError(f"--data {data}: {e}") from None
    if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
        raise EvaluateError(
            f"--data {data}: images of shape {tuple(images.shape[1:])}, but the model "
            f"makes {tuple(image_shape)}"
        )
    held = int(round(len(images) * HELD_OUT_FRACTION))
    if held < 2 or len(images) - held < 2:
        raise EvaluateError(
            f"--data {data}: {len(images)} images are too few to hold out 10% (at least 2 "
            f"held-out and 2 training images)"
        )
    return images, labels, len(images) - held


def load_classifier(classifier):
    """`(classifier, its feature model)` from a `.keras` file, or an
    EvaluateError naming `--classifier` and why it cannot be used."""
    from kgen.metrics.features import load_feature_extractor

    try:
        return load_feature_extractor(classifier)
    except FileNotFoundError as e:
        raise EvaluateError(f"--classifier {classifier}: {first_line(e)}") from None
    except ValueError as e:
        reason = first_line(e).removeprefix(f"{classifier}: ")
        raise EvaluateError(f"--classifier {classifier}: {reason}") from None


def _feature_extractor(classifier, features, inception_weights, image_shape):
    from kgen.metrics.features import inception_feature_extractor

    model = None
    if classifier is not None:
        model, feature_model = load_classifier(classifier)
        expected = tuple(model.input_shape[1:])
        if tuple(image_shape) != expected:
            raise EvaluateError(
                f"--classifier {classifier}: it takes images of shape {expected}, but the "
                f"model makes {tuple(image_shape)}"
            )
    if features == "inception":
        try:
            feature_model = inception_feature_extractor(image_shape, inception_weights)
        except FileNotFoundError as e:
            raise EvaluateError(f"--features inception: {first_line(e)}") from None
    elif features != "classifier":
        raise EvaluateError(f"--features {features}: expected classifier or inception")
    elif model is None:
        raise EvaluateError(
            "--classifier: needed for image models (train one with `kgen train "
            "mnist_classifier --set data=DIR` or `kgen train digits_classifier`; "
            "it is saved as runs/<recipe>/best.keras)"
        )
    return model, feature_model


def _sample_rows(source, n, seed, batch, settings, progress):
    """`n` samples in calls of at most `batch` rows (and the export's
    `max_rows`): row `i` has seed `seed + i` and, for a conditional model,
    label `(seed + i) mod classes`, as `kgen sample` gives them."""
    classes = source.num_classes
    step = min(batch, source.max_rows or batch)
    bar = _Progress("sampling", n, progress)
    parts = []
    for start in range(0, n, step):
        count = min(step, n - start)
        row_labels = ((seed + start + np.arange(count)) % classes).astype("int32") if classes else None
        parts.append(np.asarray(source.generate(seed + start, count, row_labels, settings),
                                "float32"))
        bar.add(count)
    return np.concatenate(parts)


def _distances(real_features, other_features):
    """FID, KID (mean, std over subsets) and precision/recall of two
    feature sets, through `kgen.metrics`."""
    from kgen import metrics

    d = real_features.shape[-1]
    m = len(real_features)
    out = {}
    for metric in (
        metrics.FrechetDistance(num_features=d),
        # Subsets of half the rows (at most 1000, the field's size), so
        # that they differ and their spread means something.
        metrics.KernelInceptionDistance(num_features=d, max_samples=max(m, 2),
                                        subset_size=max(2, min(m // 2, 1000))),
        metrics.PrecisionRecall(num_features=d, max_samples=max(m, 4)),
    ):
        if isinstance(metric, metrics.PrecisionRecall) and m <= metric.k:
            continue  # k-NN manifolds need more than k points
        metric.update_state(real_features, other_features)
        out.update({key: _number(value) for key, value in metric.results().items()})
    return out


def _number(value):
    import keras

    return float(keras.ops.convert_to_numpy(value))


def _accuracy(classifier, images, labels, num_classes, batch):
    """`kgen.metrics.ClassifierAccuracy` of `images` meant as `labels`:
    overall and per class (None for a class with no image)."""
    from kgen import metrics

    metric = metrics.ClassifierAccuracy(classifier)
    for i in range(0, len(images), batch):
        metric.update_state(labels[i:i + batch].astype("int32"), images[i:i + batch])
    per_class = [float(v) for v in np.asarray(metric.per_class())[:num_classes]]
    return {"accuracy": _number(metric.result()),
            "per_class": [None if math.isnan(v) else v for v in per_class]}


def _negative_elbo(vae, images, batch, seed):
    """The VAE's negative ELBO on `images` (`kgen.metrics.NegativeELBO`):
    nats per image and bits per dimension."""
    from kgen import metrics

    elbo = metrics.NegativeELBO(vae, seed=seed % 2**30)
    for i in range(0, len(images), batch):
        elbo.update_state(images[i:i + batch])
    results = elbo.results()
    return {"negative_elbo_nats": _number(results[elbo.name]),
            "bits_per_dim": _number(results[f"{elbo.name}_bits_per_dim"])}


def _evaluate_images(source, *, data, n, classifier, seed, batch, keras_path, features,
                     inception_weights, settings, progress, **_):
    images, labels, n_train = _load_real(data, source.image_shape)
    image_shape = source.image_shape or tuple(images.shape[1:])
    held_count = len(images) - n_train
    n_eff = min(n, held_count, n_train)
    model, feature_model = _feature_extractor(classifier, features, inception_weights,
                                              image_shape)
    classes = source.num_classes
    if classes and model is not None and model.output_shape[-1] < classes:
        raise EvaluateError(
            f"--classifier {classifier}: it knows {model.output_shape[-1]} classes, the "
            f"model makes {classes}"
        )
    samples = _sample_rows(source, n_eff, seed, batch or 256, settings, progress)
    if tuple(samples.shape[1:]) != tuple(image_shape):
        raise EvaluateError(
            f"the model made images of shape {tuple(samples.shape[1:])}, expected {image_shape}")
    if not np.isfinite(samples).all():
        raise EvaluateError("the model produced non-finite values (NaN or inf); its weights "
                            "are probably not finite")

    from kgen.metrics.features import predict_in_batches

    bar = _Progress("features", 3 * n_eff, progress)
    reference = images[:n_eff]                     # the training part
    held_out = images[n_train:n_train + n_eff]     # the held-out part
    feats = {}
    for key, values in (("reference", reference), ("held_out", held_out), ("samples", samples)):
        feats[key] = predict_in_batches(feature_model, values, batch or 256)
        bar.add(n_eff)

    report = {
        "family": source.family, "n": n_eff, "seed": seed,
        "features": "inception_v3" if features == "inception" else str(classifier),
        "samples": _distances(feats["reference"], feats["samples"]),
        "floor": _distances(feats["reference"], feats["held_out"]),
    }
    if n_eff < n:
        report["note"] = (f"n reduced from {n} to {n_eff}: the data holds {held_count} "
                          f"held-out images")
    if classes and model is not None:
        sample_labels = (seed + np.arange(n_eff)) % classes
        report["samples"].update(_accuracy(model, samples, sample_labels, classes, batch or 256))
    if model is not None and labels is not None and labels.max() < model.output_shape[-1]:
        report["floor"].update(_accuracy(model, held_out, labels[n_train:n_train + n_eff],
                                         model.output_shape[-1], batch or 256))
    if "negative_elbo" in source.evaluation_metrics:
        vae = _keras_file(source, keras_path)
        if vae is None:
            report["note_elbo"] = (f"negative ELBO needs the .keras model: pass --keras "
                                   f"runs/{source.name}/best.keras")
        else:
            report["test"] = _negative_elbo(vae, held_out, batch or 256, seed)
    return report


# === Audio ===


def _load_real_audio(data, sample_rate, length):
    """The real clips at the model's rate and length, and the held-out
    mask: the FSDD's test takes (0-4) when every name is an FSDD name, else
    the last 10%."""
    from kgen.data import DataError
    from kgen.data.audio import fsdd_test_mask
    from kgen.data.audio import load_audio

    if data is None:
        raise EvaluateError("--data: needed, the folder of real WAV files (e.g. the "
                            "FSDD's recordings/) the samples are compared with")
    try:
        clips, labels, info = load_audio(data, sample_rate=sample_rate, length=length)
    except DataError as e:
        raise EvaluateError(f"--data {data}: {e}") from None
    if labels is None:
        raise EvaluateError(f"--data {data}: the clips have no labels (from file names "
                            "or sub-folders), so no accuracy can be measured")
    try:
        held = fsdd_test_mask(info["files"])
    except DataError:
        held = np.arange(len(clips)) >= len(clips) - int(round(len(clips) * HELD_OUT_FRACTION))
    if held.sum() < 2:
        raise EvaluateError(f"--data {data}: {len(clips)} clips are too few to hold out "
                            "at least 2")
    return clips[held], labels[held]


def clip_statistics(clips, sample_rate, window_s=0.032, floor_db=30.0):
    """How long and how loud clips are: the mean peak (full scale 1), the
    mean RMS in dBFS, and the mean seconds sounding (32 ms windows whose RMS
    is within `floor_db` dB of the clip's loudest window)."""
    clips = np.asarray(clips, "float64")
    window = max(1, int(round(window_s * sample_rate)))
    frames = clips[:, :clips.shape[1] // window * window].reshape(len(clips), -1, window)
    frame_db = 10 * np.log10(np.mean(frames ** 2, axis=-1) + 1e-12)
    sounding = frame_db >= frame_db.max(axis=1, keepdims=True) - floor_db
    rms_db = 10 * np.log10(np.mean(clips ** 2, axis=1) + 1e-12)
    return {"peak": float(np.abs(clips).max(axis=1).mean()),
            "rms_dbfs": float(rms_db.mean()),
            "sounding_s": float(sounding.sum(axis=1).mean() * window / sample_rate)}


def _evaluate_audio(source, *, data, n, classifier, seed, batch, settings, progress, **_):
    from kgen.metrics.audio import load_classifier
    from kgen.metrics.audio import score_audio

    if n > MAX_AUDIO_N:
        raise EvaluateError(
            f"--n {n}: an audio evaluation scores at most {MAX_AUDIO_N} generated clips "
            "(it holds them all in memory); ask for fewer")
    if classifier is None:
        raise EvaluateError(
            "--classifier: needed for audio models (train one with `kgen train "
            "digit_classifier_fsdd --set data=DIR`; it is saved as "
            "runs/digit_classifier_fsdd/best.keras)")
    try:
        model = load_classifier(classifier)
    except (FileNotFoundError, ValueError) as e:
        raise EvaluateError(f"--classifier {classifier}: {first_line(e)}") from None
    length = int(model.input_shape[-1])
    rate = source.sample_rate
    real, real_labels = _load_real_audio(data, rate, length)
    classes = source.num_classes
    if classes and model.output_shape[-1] < classes:
        raise EvaluateError(
            f"--classifier {classifier}: it knows {model.output_shape[-1]} classes, the "
            f"model makes {classes}")
    samples = _sample_rows(source, n, seed, batch or 64, settings, progress)
    if samples.ndim != 2 or samples.shape[1] != length:
        raise EvaluateError(f"the model made clips of shape {samples.shape[1:]}, the "
                            f"classifier takes {length} samples")
    if not np.isfinite(samples).all():
        raise EvaluateError("the model produced non-finite values (NaN or inf); its weights "
                            "are probably not finite")
    report = {"family": source.family, "n": n, "seed": seed, "classifier": str(classifier),
              "sample_rate": rate, "settings": dict(settings or {}),
              "samples": clip_statistics(samples, rate),
              "floor": clip_statistics(real, rate)}
    if classes:
        scored = score_audio(model, samples, (seed + np.arange(n)) % classes, rate)
        report["samples"].update(accuracy=scored["accuracy"], per_class=scored["per_class"])
    scored = score_audio(model, real, real_labels, rate)
    report["floor"].update(accuracy=scored["accuracy"], per_class=scored["per_class"],
                           clips=int(len(real)))
    return report


# === Text ===


def _evaluate_text(source, *, data, n, seed, batch, keras_path, progress, **_):
    from kgen import metrics
    from kgen.data import DataError
    from kgen.data.text import load_text
    from kgen.data.text import split_text

    model = _keras_file(source, keras_path)
    if model is None:
        raise EvaluateError(
            f"--keras: a language model's bits per character need its .keras file "
            f"(e.g. --keras runs/{source.name}/best.keras)")
    if data is None:
        raise EvaluateError("--data: needed, the text file (or 'pydoc') held out for the test")
    try:
        text = load_text(data)
    except DataError as e:
        raise EvaluateError(f"--data {data}: {e}") from None
    _, held_text = split_text(text, HELD_OUT_FRACTION)
    try:
        ids = np.asarray(model.tokenizer.encode(held_text, name="the held-out text"), "int32")
    except (DataError, ValueError) as e:
        raise EvaluateError(f"--data {data}: {first_line(e)}") from None
    context = model.context
    windows = (len(ids) - 1) // context
    if windows < 1:
        raise EvaluateError(
            f"--data {data}: the held-out text has {len(ids)} tokens, fewer than one "
            f"window of the model's context ({context} + 1)")
    count = min(n, windows)
    rows = np.stack([ids[i * context:(i + 1) * context + 1] for i in range(count)])
    bits, perplexity = metrics.BitsPerToken(), metrics.Perplexity()
    bar = _Progress("held-out windows", count, progress)
    step = batch or 32
    for start in range(0, count, step):
        part = rows[start:start + step]
        logits = model(part[:, :-1], training=False)
        bits.update_state(part[:, 1:], logits)
        perplexity.update_state(part[:, 1:], logits)
        bar.add(len(part))
    vocabulary = int(model.tokenizer.vocabulary_size)
    return {
        "family": source.family, "n": int(count), "seed": seed,
        "test": {"bits_per_token": _number(bits.result()),
                 "perplexity": _number(perplexity.result()),
                 "tokens": int(count * context)},
        "floor": {"uniform_bits_per_token": math.log2(vocabulary)},
    }


# === Entry point ===


def evaluate(model, *, version=None, data=None, n=1000, classifier=None, seed=0,
             batch=None, keras_path=None, features="classifier", inception_weights=None,
             settings=None, progress=True):
    """Every metric that applies to `model`'s family, and the real floor.

    Args:
        model: `saved_models/NAME` (or one version's directory), or a
            `.keras` file.
        version: the export version (default: the newest).
        data: the real data: images as `kgen train` reads them (`digits`,
            an MNIST IDX directory, ...), or a text file for a language model.
        n: samples (and real images) compared; at most the held-out split
            (images), its windows (text) or `MAX_AUDIO_N` clips (audio).
        classifier: a classifier `.keras` (see `kgen.metrics.features`):
            its features for FID/KID, its labels for conditional accuracy.
        seed: seed of the first sample; row `i` uses `seed + i`.
        batch: rows per call (default 256, at most the export's max_rows).
        keras_path: the `.keras` model for the VAE's ELBO and the LM's bits
            (default: the source itself or `runs/<NAME>/best.keras`).
        features: `"classifier"` or `"inception"` (InceptionV3's features;
            the classifier still gives the accuracies).
        inception_weights: InceptionV3 weights file (see
            `kgen.metrics.features.inception_weights_path`).
        settings: `{generate input: text}` (`--set NAME=VALUE`), one value
            for every row over the export's default, e.g. `num_steps` or
            `guidance_scale` of a diffusion model.
        progress: draw progress bars on stderr.

    Returns:
        A JSON-ready dict: `family`, `n`, `samples` (or `test`) and `floor`.
    """
    n = _check_n(n)
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise EvaluateError(f"--batch {batch}: must be an integer >= 1")
    source = _source(model, version)
    source.check(settings)
    from kgen.family import evaluator_for

    evaluator = _EVALUATIONS.get(source.evaluation) or evaluator_for(source.evaluation)
    if evaluator is None:
        raise EvaluateError(
            f"{model}: cannot evaluate a model of family {source.family!r} (its "
            f"evaluation {source.evaluation!r} is none of {', '.join(_EVALUATIONS)}, "
            "and no model family declares an evaluator for it)")
    return evaluator(source, data=data, n=n, classifier=classifier, seed=seed, batch=batch,
                     keras_path=keras_path, features=features,
                     inception_weights=inception_weights, settings=settings,
                     progress=progress)


# The evaluations kgen runs itself, named by the kind of what a family
# generates (`kgen.family.Family.evaluation`); a family with another
# evaluation declares it (`kgen.family.Family.evaluator`).
_EVALUATIONS = {"images": _evaluate_images, "audio": _evaluate_audio,
                "text": _evaluate_text}


def format_report(report):
    """The report as aligned lines for a terminal."""
    lines = [f"family: {report['family']}   n: {report['n']}   seed: {report['seed']}"]
    if "features" in report:
        lines.append(f"features: {report['features']}")
    for key in ("note", "note_elbo"):
        if key in report:
            lines.append(f"note: {report[key]}")
    samples, floor = report.get("samples"), report.get("floor", {})
    if samples is not None:
        width = max([12] + [len(k) + 2 for k in (*samples, *floor)])
        lines.append(f"{'metric':<{width}}{'samples':>24}{'real floor':>24}")
        known = ("fid", "kid", "precision", "recall", "accuracy", "peak", "rms_dbfs",
                 "sounding_s")
        # Then an evaluator's own metrics, in its report's order.
        others = [k for k in (*samples, *floor) if k not in known and k != "kid_std"
                  and isinstance((samples.get(k) if k in samples else floor.get(k)),
                                 (int, float))]
        for name in (*known, *dict.fromkeys(others)):
            if name not in samples and name not in floor:
                continue
            cells = []
            for where in (samples, floor):
                value = where.get(name)
                if value is None:
                    cells.append("-")
                elif name == "kid":
                    cells.append(f"{value:.4g} ± {where['kid_std']:.2g}")
                else:
                    cells.append(f"{value:.4f}")
            lines.append(f"{name:<{width}}{cells[0]:>24}{cells[1]:>24}")
        if "per_class" in samples:
            lines.append("per-class accuracy (samples / real):")
            real = floor.get("per_class") or [None] * len(samples["per_class"])
            for k, (a, b) in enumerate(zip(samples["per_class"], real)):
                if a is None and b is None:
                    continue
                fa = "-" if a is None else f"{a:.3f}"
                fb = "-" if b is None else f"{b:.3f}"
                lines.append(f"  class {k:<3} {fa:>8} {fb:>8}")
    test = report.get("test")
    if test:
        rows = [(f"test {name}", value) for name, value in test.items()]
        if "samples" not in report:
            rows += [(f"floor {name}", value) for name, value in floor.items()]
        width = max(len(label) for label, _ in rows) + 2
        for label, value in rows:
            cell = f"{value:.4f}" if isinstance(value, float) else f"{value}"
            lines.append(f"{label:<{width}}{cell:>12}")
    return "\n".join(lines)
