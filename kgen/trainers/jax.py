"""GAN train step on JAX: stateless, both optimizers in the trainer state.

Keras' JAX trainer jits `train_step(state, data)` with
`state = (trainable, non_trainable, optimizer, metrics)` variable values, the
optimizer part being `model.optimizer.variables`. The GAN's `optimizer` is a
public `keras.optimizers.MultiOptimizer` whose `variables` are its own
followed by each sub-optimizer's (generator's, then discriminator's), so both
optimizers' state travels through the jitted step with no private Keras
method patched. `kgen.models.GAN.compile()` checks that layout and fails
loudly if a Keras release changes it.

The losses are the model's `keras.ops` code, run inside a
`keras.StatelessScope` that binds every variable to the traced values, the
same way Keras' own `stateless_call` works.
"""

import functools

import jax
import keras


def bound(model, fn, trainable, non_trainable):
    """Run `fn()` with `model`'s variables bound to the given values (a public
    `keras.StatelessScope`); returns `(fn's result, new non-trainable values)`."""
    mapping = list(zip(model.trainable_variables, trainable))
    mapping += list(zip(model.non_trainable_variables, non_trainable))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        out = fn()
    return out, [scope.get_current_value(v) for v in model.non_trainable_variables]


class EMATrainer:
    """Keras' own stateless `train_step(state, data)`, then `update_ema()`
    (`kgen.models.ema`) on the new values, inside the same jitted step."""

    def train_step(self, state, data):
        logs, state = super().train_step(state, data)
        trainable, non_trainable, *rest = state
        _, non_trainable = bound(self, self.update_ema, trainable, non_trainable)
        return logs, (trainable, non_trainable, *rest)


class GANTrainer:
    """Mixin giving `kgen.models.GAN` its JAX train step."""

    def input_gradients(self, fn, x):
        """d sum(fn(x)) / dx, differentiable again (for gradient penalties)."""
        return jax.grad(lambda x: keras.ops.sum(fn(x)))(x)

    # --- binding values to variables -----------------------------------

    def _bound(self, fn, trainable, non_trainable):
        return bound(self, fn, trainable, non_trainable)

    def _split(self, values, index):
        return [values[i] for i in index]

    def _merge(self, values, index, part):
        values = list(values)
        for i, v in zip(index, part):
            values[i] = v
        return values

    def _phase(self, which, trainable, non_trainable, optimizer_vars, real, labels):
        index, opt_slice, optimizer = (
            (self._d_index, self._d_opt_slice, self.d_optimizer)
            if which == "discriminator"
            else (self._g_index, self._g_opt_slice, self.g_optimizer)
        )

        def loss_fn(part, non_trainable):
            def run():
                if which == "discriminator":
                    return self.discriminator_loss(real, labels)
                loss = self.generator_loss(real, labels)
                return loss, loss

            (loss, aux), non_trainable = self._bound(
                run, self._merge(trainable, index, part), non_trainable
            )
            # Under mixed_float16 a LossScaleOptimizer scales the loss by its
            # current scale (its variables' traced values) and
            # `stateless_apply` unscales the gradients; others return it as is.
            mapping = list(zip(optimizer.variables, optimizer_vars[opt_slice]))
            with keras.StatelessScope(state_mapping=mapping):
                loss = optimizer.scale_loss(loss)
            return loss, (aux, non_trainable)

        part = self._split(trainable, index)
        grads, (aux, non_trainable) = jax.grad(loss_fn, has_aux=True)(part, non_trainable)
        part, opt_part = optimizer.stateless_apply(
            list(optimizer_vars[opt_slice]), grads, part
        )
        optimizer_vars = list(optimizer_vars)
        optimizer_vars[opt_slice] = opt_part
        return self._merge(trainable, index, part), non_trainable, optimizer_vars, aux

    # --- the step --------------------------------------------------------

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_vars, metrics_vars = state
        real, labels = self.unpack(data)
        for _ in range(self.d_steps):
            trainable, non_trainable, optimizer_vars, d_aux = self._phase(
                "discriminator", trainable, non_trainable, optimizer_vars, real, labels)
        trainable, non_trainable, optimizer_vars, g_loss = self._phase(
            "generator", trainable, non_trainable, optimizer_vars, real, labels)
        _, non_trainable = self._bound(self.update_ema, trainable, non_trainable)
        optimizer_vars = list(optimizer_vars)
        i = self._iterations_index
        optimizer_vars[i] = optimizer_vars[i] + 1
        with keras.StatelessScope(
            state_mapping=list(zip(self.metrics_variables, metrics_vars))
        ) as scope:
            logs = self.update_metrics(d_aux, g_loss)
        metrics_vars = [scope.get_current_value(v) for v in self.metrics_variables]
        return logs, (trainable, non_trainable, optimizer_vars, metrics_vars)

    def test_step(self, state, data):
        """Keras' stateless `test_step`: the model's `evaluation_logs` with
        the variables bound to `state`'s values."""
        trainable, non_trainable, metrics_vars = state
        variables = (self.trainable_variables, self.non_trainable_variables,
                     self.metrics_variables)
        mapping = [pair for vs, values in zip(variables, state)
                   for pair in zip(vs, values)]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = self.evaluation_logs(data)
        non_trainable = [scope.get_current_value(v) for v in self.non_trainable_variables]
        metrics_vars = [scope.get_current_value(v) for v in self.metrics_variables]
        return logs, (trainable, non_trainable, metrics_vars)

    def train_phase(self, phase, data):
        """Run one `"discriminator"` or `"generator"` update eagerly and
        write the new values back to the variables."""
        real, labels = self.unpack(data)
        cache = self._compiled_functions.functions  # jitted once per phase
        key = ("train_phase", self._check_phase(phase))
        if key not in cache:
            cache[key] = jax.jit(functools.partial(self._phase, phase))
        phase_fn = cache[key]
        trainable, non_trainable, optimizer_vars, _ = phase_fn(
            [v.value for v in self.trainable_variables],
            [v.value for v in self.non_trainable_variables],
            [v.value for v in self.optimizer.variables],
            real, labels,
        )
        for variables, values in ((self.trainable_variables, trainable),
                                  (self.non_trainable_variables, non_trainable),
                                  (self.optimizer.variables, optimizer_vars)):
            for variable, value in zip(variables, values):
                variable.assign(value)
