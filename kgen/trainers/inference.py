"""Compile an inference function (a sampling loop) once per backend.

The one place where sampling code looks at the backend, in the shape of
keras-hub's `CausalLM.make_generate_function`: TensorFlow wraps the function
in `tf.function`; JAX `jax.jit`s it over the *values* of the variables it
reads, mapped back onto the variables with a `keras.StatelessScope` (so new
weights after more training need no retrace); torch runs it eagerly under
`torch.no_grad()`.
"""

import keras


def compile_inference(fn, variables):
    """A compiled version of `fn(*tensors)` that reads `variables`.

    Args:
        fn: a function of tensors written in `keras.ops` (it may call layers
            and models whose weights are among `variables`); it must not
            assign variables.
        variables: every variable `fn` reads.

    Returns:
        A function with `fn`'s signature; arguments may be numpy arrays.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True)
    if backend == "jax":
        import jax

        variables = list(variables)

        @jax.jit
        def stateless(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)

        def compiled(*args):
            return stateless([v.value for v in variables], *args)

        return compiled
    if backend == "torch":
        import torch

        def compiled(*args):
            with torch.no_grad():
                return fn(*(keras.ops.convert_to_tensor(a) for a in args))

        return compiled
    raise NotImplementedError(f"no inference compiler for backend {backend!r}")
