"""The one place that switches on the Keras backend.

`compile_inference(model, fn)` compiles a function that reads the model's
variables and runs a `keras.ops.while_loop` (the shape of keras-hub's
`CausalLM.make_generate_function`): `tf.function` on TensorFlow (traced
with core ops only, the same graph an export holds), `jax.jit`
over a stateless call (the variables passed in as arguments, so training
later is seen) on JAX, plain eager code under `torch.no_grad()` on PyTorch.
"""

import keras


def compile_inference(model, fn):
    """A compiled `fn(*tensors)` that uses `model`'s current variables."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        from kgen.trainers.tensorflow import core_ops_only

        def traced(*args):
            with core_ops_only():
                return fn(*args)

        return tf.function(traced, autograph=False, reduce_retracing=True)
    if backend == "jax":
        import jax

        @jax.jit
        def stateless(values, *args):
            mapping = list(zip(model.variables, values))
            with keras.StatelessScope(state_mapping=mapping):
                return fn(*args)

        def call(*args):
            return stateless([v.value for v in model.variables], *args)

        return call
    if backend == "torch":
        import torch

        def call(*args):
            with torch.no_grad():
                return fn(*args)

        return call
    return fn
