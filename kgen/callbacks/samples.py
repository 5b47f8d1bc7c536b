"""Log generated samples to TensorBoard (and to files) as training goes."""

import pathlib

import keras
import numpy as np

from kgen import io as kgen_io
from kgen import media


class SampleLogger(keras.callbacks.Callback):
    """Every `every` epochs, draw samples from fixed seeds and log them.

    Images go to TensorBoard as one grid (`tf.summary.image`) and to
    `out_dir/epoch_NNN.png`; text (models with `output_kind = "text"`) as
    `tf.summary.text` and `.txt` files; audio (`output_kind = "audio"`,
    float clips `(n, samples)` in [-1, 1] at the model's `sample_rate`) as
    `tf.summary.audio`, one clip per row, and 16-bit WAV files
    `out_dir/epoch_NNN/row_RR_label_L.wav`. Any other output kind is logged
    as images when the model has a `preview_images(samples)` method
    returning `(n, h, w, c)` floats in [0, 1] (a video model's frame
    strips). The seeds stay fixed, so the grids of successive epochs show
    the same draws improving.

    Args:
        log_dir: TensorBoard log directory (samples go to `log_dir/samples`).
        n: number of samples per log.
        seed: seed of the samples (the same every epoch).
        every: log every this many epochs.
        out_dir: optional directory for PNG / text files.
        generate_kwargs: extra keyword arguments of `model.generate()` (e.g.
            prompts). A conditional model without `labels` here is asked
            for the classes in turn.

    Example:

    ```python
    model.fit(data, epochs=10, callbacks=[SampleLogger("runs/vae/logs")])
    ```
    """

    KINDS = ("images", "text", "audio")

    def __init__(self, log_dir, n=16, seed=0, every=1, out_dir=None,
                 generate_kwargs=None):
        super().__init__()
        if every < 1:
            raise ValueError(f"every={every}: must be at least 1")
        self.log_dir = pathlib.Path(log_dir) / "samples"
        self.n = n
        self.seed = seed
        self.every = every
        self.out_dir = pathlib.Path(out_dir) if out_dir else None
        self.generate_kwargs = dict(generate_kwargs or {})
        self._writer = None

    @property
    def writer(self):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        return self._writer

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        kind = getattr(self.model, "output_kind", "images")
        preview = getattr(self.model, "preview_images", None)
        if kind not in self.KINDS and not callable(preview):
            raise ValueError(
                f"{type(self.model).__name__}.output_kind={kind!r}: SampleLogger "
                f"logs one of {', '.join(self.KINDS)}, or what the model's "
                "preview_images(samples) makes of its samples"
            )
        kwargs = dict(self.generate_kwargs)
        classes = getattr(self.model, "num_classes", None)
        if classes and "labels" not in kwargs:
            # One class per row, in turn (each row's seed mod num_classes).
            kwargs["labels"] = (self.seed + np.arange(self.n)) % classes
        samples = self.model.generate(self.n, seed=self.seed, **kwargs)
        if kind not in self.KINDS:
            self._log_images(preview(samples), epoch, columns=1)
        elif kind == "audio":
            self._log_audio(samples, epoch, kwargs.get("labels"))
        else:
            getattr(self, f"_log_{kind}")(samples, epoch)
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _log_images(self, images, epoch, columns=None):
        import tensorflow as tf

        grid = media.image_grid(images, columns=columns)
        with self.writer.as_default():
            tf.summary.image("samples", grid[None], step=epoch)
        if self.out_dir:
            kgen_io.atomic_write(self.out_dir / f"epoch_{epoch + 1:03d}.png",
                                 lambda p: media.save_image_grid(p, images, columns=columns),
                                 suffix=".png")

    def _log_text(self, texts, epoch):
        import tensorflow as tf

        texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
                 for t in np.asarray(texts).reshape(-1)]
        with self.writer.as_default():
            tf.summary.text("samples", "\n\n---\n\n".join(texts), step=epoch)
        if self.out_dir:
            kgen_io.write_text(self.out_dir / f"epoch_{epoch + 1:03d}.txt",
                               "\n\n---\n\n".join(texts))

    def _log_audio(self, clips, epoch, labels=None):
        import tensorflow as tf

        clips = np.clip(np.asarray(clips, "float32"), -1.0, 1.0)
        rate = int(self.model.sample_rate)
        with self.writer.as_default():
            tf.summary.audio("samples", clips[..., None], rate, step=epoch,
                             max_outputs=len(clips), encoding="wav")
        if self.out_dir:
            labels = None if labels is None else np.broadcast_to(labels, (len(clips),))
            names = [f"row_{i:02d}" + ("" if labels is None else f"_label_{int(labels[i])}")
                     for i in range(len(clips))]
            media.save_wavs(self.out_dir / f"epoch_{epoch + 1:03d}", clips, rate, names)
