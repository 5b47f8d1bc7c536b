"""The only backend switch in kgen.

Keras' own trainers serve every family whose loss is one `compute_loss()`.
A GAN needs two optimizers and alternating updates, so it gets a train step
per backend here; its losses stay in `keras.ops` in `kgen/models/gan.py`.
`EMATrainer` runs Keras' own step and then the model's `update_ema()` (the
diffusion model's EMA of its denoiser, `kgen.models.ema`).

`GANTrainer` is the mixin of the backend Keras runs on:

- TensorFlow: a `tf.GradientTape` per phase.
- JAX: a stateless `train_step(state, data)`; both optimizers' variables
  travel in the trainer's `optimizer_variables` as the sub-optimizers of
  one public `keras.optimizers.MultiOptimizer`.
- PyTorch: `zero_grad()` / `backward()` per phase, fakes detached for D.

`DistributedTrainer` (every kgen model) lets Keras' TensorFlow `fit()` run
under `MultiWorkerMirroredStrategy`; on JAX and PyTorch it adds nothing.

Data parallelism: `replica_position()` says which replica's step is being
traced and `scale_loss()` divides a loss averaged over one replica's rows by
the replica count, so that the gradients `tf.distribute` sums across
replicas are those of the global batch's mean (TensorFlow; JAX's
`keras.distribution` runs one global program, and PyTorch one device, so
both are identities there). `kgen.trainers.jax_distribution` makes JAX's
data-parallel distribution, across processes too.

`prefer_xla(model)` turns XLA on for a compiled model's steps on a
TensorFlow machine without a GPU, where Keras' `"auto"` leaves it off.

Sampling loops are compiled per backend in `kgen/inference.py`.
"""

import keras

_BACKEND = keras.backend.backend()

if _BACKEND == "tensorflow":
    from kgen.trainers.stateful import EMATrainer
    from kgen.trainers.tensorflow import DistributedTrainer
    from kgen.trainers.tensorflow import GANTrainer
    from kgen.trainers.tensorflow import replica_position
    from kgen.trainers.tensorflow import scale_loss
elif _BACKEND == "jax":
    from kgen.trainers.jax import EMATrainer
    from kgen.trainers.jax import GANTrainer
elif _BACKEND == "torch":
    from kgen.trainers.stateful import EMATrainer
    from kgen.trainers.torch import GANTrainer
else:  # pragma: no cover - Keras itself rejects other backends first
    raise ImportError(f"kgen supports tensorflow, jax and torch, not {_BACKEND}")

if _BACKEND != "tensorflow":

    class DistributedTrainer:
        """Keras' own trainer as it is: the multi-worker fix is TensorFlow's
        (`kgen.trainers.tensorflow.DistributedTrainer`)."""

    def replica_position():
        """`(0, 1)`: one program computes the whole global batch."""
        return 0, 1

    def scale_loss(loss):
        """The loss as it is: gradients are those of the global batch."""
        return loss


def prefer_xla(model):
    """Run a compiled `model`'s train, test and predict steps with XLA on
    TensorFlow, outside a `tf.distribute` strategy; elsewhere leave Keras'
    choice (`"auto"`: XLA on JAX, eager on PyTorch, off under a strategy).

    Keras' `"auto"` turns XLA off on every TensorFlow machine without a GPU,
    but a step of many small ops (the Transformer LM's) runs about twice as
    fast with it on this project's CPU (`bench/char_lm.py`). Only the
    model's current setting changes: its saved compile config keeps what
    `compile()` got, so a `.keras` file still loads on every backend.
    Call it after `compile()`; returns `model.jit_compile`.
    """
    if _BACKEND == "tensorflow":
        import tensorflow as tf

        if not tf.distribute.has_strategy():
            model.jit_compile = True
    return model.jit_compile


__all__ = ["DistributedTrainer", "EMATrainer", "GANTrainer", "prefer_xla",
           "replica_position", "scale_loss"]
