"""Compile an inference function (a sampling loop) once per backend.

The one place where sampling loops are compiled per backend, in the shape of
keras-hub's `CausalLM.make_generate_function`: TensorFlow wraps the function
in `tf.function` (the same graph an export holds: sampling code writes its
buffers with `kgen.ops.cache_update`, so the graph has core ops only);
JAX `jax.jit`s it over the *values* of the variables it reads, mapped back
onto the variables with a `keras.StatelessScope` (so new weights after more
training need no retrace); PyTorch runs it eagerly under `torch.no_grad()`.
"""

import keras


def compile_inference(fn, variables, autograph=True, tiny_ops=False):
    """A compiled version of `fn(*tensors)` that reads `variables`.

    Args:
        fn: a function of tensors written in `keras.ops` (it may call layers
            and models whose weights are among `variables`); it must not
            assign variables.
        variables: every variable `fn` reads.
        autograph: let `tf.function` convert Python control flow (TensorFlow).
        tiny_ops: `fn` is a long chain of small ops (one-token decoding
            steps). PyTorch then runs it on one intra-op thread (restored
            after): splitting an op of a few thousand numbers across threads
            costs more than the op, and on a busy machine each op waits for
            a thread to be scheduled (figures: docs/results.md).

    Returns:
        A function with `fn`'s signature; arguments may be numpy arrays.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, autograph=autograph, reduce_retracing=True)
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

        def run(*args):
            with torch.no_grad():
                return fn(*(keras.ops.convert_to_tensor(a) for a in args))

        if not tiny_ops:
            return run

        def compiled(*args):
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return run(*args)
            finally:
                torch.set_num_threads(threads)

        return compiled
    raise NotImplementedError(f"no inference compiler for backend {backend!r}")
