"""One round of progressive distillation (Salimans & Ho, 2022): a student
`DiffusionModel` learns to take in one deterministic DDIM step what its
frozen teacher takes in two.

The model trains with `fit()` on every backend: `call()` draws a batch's
noise and grid timesteps, runs the teacher's two DDIM steps and the
student's denoiser, and `compute_loss()` compares where they land, all in
`keras.ops`. Keras' own trainers compute the student's gradients (the
teacher's weights are not trainable) and `kgen.trainers.EMATrainer` then
updates the student's EMA weights, as `kgen train` does for a diffusion
model. Like every kgen model it mixes in `kgen.trainers.DistributedTrainer`,
so that TensorFlow's `fit()` traces its step once, not twice (see
`kgen.compat.keras`). `kgen.distill` chains the rounds.
"""

import keras
from keras import ops

from kgen.api import kgen_export
from kgen.precision import to_float32
from kgen.trainers import DistributedTrainer
from kgen.trainers import EMATrainer


def _rows(values, like):
    """`(batch,)` coefficients broadcast over `like` `(batch, h, w, c)`."""
    return ops.reshape(ops.cast(values, like.dtype), (-1,) + (1,) * (len(like.shape) - 1))


@kgen_export("kgen.models.ProgressiveDistillation")
class ProgressiveDistillation(EMATrainer, DistributedTrainer, keras.Model):
    """Distil two DDIM steps of `teacher` into one step of `student`.

    A training row: clean images `x` (in [0, 1], scaled to [-1, 1]), a
    step `i` of the student's `student_steps`-step grid drawn uniformly, and
    noise `eps`. The grids are the DDIM scheduler's own
    (`Scheduler.timestep`): the student's step `i` goes from `t =
    timestep(i, N)` to `t'' = timestep(i + 1, N)`, and the teacher's steps
    `2i` and `2i + 1` of its `2N`-step grid go from `t` through `t' =
    timestep(2i + 1, 2N)` to the same `t''` (the trailing spacing nests:
    `timestep(2i, 2N) == timestep(i, N)`). So the student learns exactly
    the steps `generate(num_steps=N)` takes.

    From `z_t = alpha_t x + sigma_t eps` the teacher takes two DDIM steps
    (eta 0, its clipping of the predicted clean sample included) to
    `z_t''`. The one clean sample `x~` whose single DDIM step from `z_t`
    lands on `z_t''` is the target:

        x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - sigma_t'' alpha_t / sigma_t)

    and the loss is Salimans & Ho's truncated-SNR weighted x-space error
    `w_t * |x^ - x~|^2`, `w_t = max(SNR_t, 1)`, with `x^` the clean sample
    the student's output gives in its own parameterization (unclipped, as
    in the paper; sampling clips it as the teacher's steps do). Since one
    DDIM step from `z_t` lands on `(alpha_t'' - sigma_t'' alpha_t /
    sigma_t) x^ + (sigma_t'' / sigma_t) z_t`, this is the distance between
    where the student's one step lands and where the teacher's two land,
    scaled back to x-space.

    An epsilon-predicting student recovers `x^ = (z_t - sigma_t eps^) /
    alpha_t`, so its x-space error is its epsilon error over `sqrt(SNR_t)`,
    without bound at the noisiest step (`alpha_{T-1}` is nearly 0 on the
    cosine schedule): there the truncated weight would weigh the epsilon
    error by `1 / SNR_t`. An epsilon student is weighted `w_t = SNR_t`
    instead, which is the plain epsilon loss `|eps^ - eps~|^2` against the
    target's epsilon `eps~ = (z_t - alpha_t x~) / sigma_t` (Ho et al.'s
    weighting). Such a student cannot change the clean sample its first
    step (from `T - 1`) predicts; a v-predicting teacher's student can.

    Guidance: for a conditional teacher the target is its guided prediction
    `uncond + guidance_scale * (cond - uncond)` (the "no label" class gives
    `uncond`); the student learns it in its conditional pass, so it samples
    with one denoiser pass a step (`DiffusionModel.guidance_distilled`). A
    `label_dropout` share of rows gets the "no label" class, so the
    student's unconditional samples follow the teacher's too.

    Args:
        teacher: a `DiffusionModel`; its sampling denoiser (the EMA copy
            when it has one) is the teacher, frozen.
        student: a `DiffusionModel` with the teacher's schedule and
            parameterization; its `denoiser` trains, its EMA follows.
        student_steps: N, the student's step count (the teacher takes 2N).
        guidance_scale: the teacher's guidance (conditional models).
        label_dropout: share of rows distilled on the "no label" class.
        seed: seed of the noise, grid steps and label dropout.

    Example:

    ```python
    distiller = ProgressiveDistillation(teacher, student, student_steps=4,
                                        guidance_scale=3.0)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-4))
    distiller.fit(dataset, epochs=2, steps_per_epoch=100)
    student.generate(16, seed=0, num_steps=4, scheduler="ddim")
    ```
    """

    def __init__(self, teacher, student, student_steps, guidance_scale=1.0,
                 label_dropout=0.1, seed=None, **kwargs):
        super().__init__(**kwargs)
        if student.image_shape != teacher.image_shape \
                or student.num_classes != teacher.num_classes:
            raise ValueError("student and teacher must share image shape and classes")
        if int(student_steps) < 1 or 2 * int(student_steps) > \
                teacher.scheduler.num_train_timesteps:
            raise ValueError(f"student_steps={student_steps}: must be in [1, "
                             f"num_train_timesteps / 2]")
        # === Layers ===
        self.teacher = teacher
        self.student = student
        teacher.trainable = False
        # === Config ===
        self.student_steps = int(student_steps)
        self.guidance_scale = float(guidance_scale)
        self.label_dropout = float(label_dropout)
        self.scheduler = student.get_scheduler("ddim")
        self.teacher_scheduler = teacher.get_scheduler("ddim")
        # === State ===
        self.seed_generator = keras.random.SeedGenerator(seed)
        # Teacher and student arrive built: a backup's weights load before
        # the first step.
        self.built = True

    def build(self, input_shape):
        pass  # teacher and student arrive built

    def update_ema(self):
        self.student.update_ema()

    # --- one training row ------------------------------------------------

    def teacher_output(self, x, t, labels):
        """The teacher's (guided) denoiser output at per-row timesteps `t`."""
        teacher = self.teacher
        net = teacher.sampling_denoiser
        if labels is None:
            return to_float32(net([x, t], training=False))
        if teacher.guidance_distilled:  # an earlier round's student
            return to_float32(net([x, t, labels], training=False))
        batch = ops.shape(x)[0]
        both = to_float32(net([
            ops.concatenate([x, x], axis=0), ops.concatenate([t, t], axis=0),
            ops.concatenate([labels, ops.full_like(labels, teacher.num_classes)], axis=0),
        ], training=False))
        cond, uncond = both[:batch], both[batch:]
        return uncond + ops.cast(self.guidance_scale, cond.dtype) * (cond - uncond)

    def teacher_steps(self, z, t, t_mid, t_end, labels):
        """Two DDIM steps of the teacher: `z_t -> z_t' -> z_t''`."""
        scheduler = self.teacher_scheduler
        state = scheduler.initial_state(z)
        z_mid, _ = scheduler.step(self.teacher_output(z, t, labels), t, t_mid, z, state)
        z_end, _ = scheduler.step(self.teacher_output(z_mid, t_mid, labels), t_mid,
                                  t_end, z_mid, state)
        return z_end

    def call(self, inputs, training=False):
        images = inputs["images"] if isinstance(inputs, dict) else inputs
        labels = inputs.get("labels") if isinstance(inputs, dict) else None
        x = ops.cast(images, "float32") * 2.0 - 1.0
        batch = ops.shape(x)[0]
        n = self.student_steps
        index = keras.random.randint((batch,), 0, n, dtype="int32",
                                     seed=self.seed_generator)
        eps = keras.random.normal(ops.shape(x), seed=self.seed_generator)
        if self.student.num_classes is None:
            labels = None
        else:
            labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
            if self.label_dropout > 0:
                drop = keras.random.uniform((batch,), seed=self.seed_generator)
                labels = ops.where(drop < self.label_dropout,
                                   ops.full_like(labels, self.student.num_classes), labels)
        sched = self.scheduler
        t = sched.timestep(index, n)
        t_mid = sched.timestep(2 * index + 1, 2 * n)
        t_end = sched.timestep(index + 1, n)
        z = sched.add_noise(x, eps, t)
        z_end = ops.stop_gradient(self.teacher_steps(z, t, t_mid, t_end, labels))
        a_t, a_end = sched.alpha_bar(t), sched.alpha_bar(t_end)
        alpha, sigma = ops.sqrt(a_t), ops.sqrt(1.0 - a_t)
        alpha_end, sigma_end = ops.sqrt(a_end), ops.sqrt(1.0 - a_end)
        ratio = sigma_end / sigma
        target = (z_end - _rows(ratio, z) * z) / _rows(alpha_end - ratio * alpha, z)
        student_inputs = [z, t] if labels is None else [z, t, labels]
        output = to_float32(self.student.denoiser(student_inputs, training=training))
        kind = sched.prediction_type
        if kind == "epsilon":
            x_pred = (z - _rows(sigma, z) * output) / _rows(alpha, z)
        elif kind == "v_prediction":
            x_pred = _rows(alpha, z) * z - _rows(sigma, z) * output
        else:
            x_pred = output
        snr = a_t / ops.maximum(1.0 - a_t, 1e-12)
        weight = snr if kind == "epsilon" else ops.maximum(snr, 1.0)
        return {"prediction": x_pred, "target": ops.stop_gradient(target),
                "weight": weight}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        error = ops.square(y_pred["prediction"] - y_pred["target"])
        per_row = ops.mean(error, axis=tuple(range(1, len(error.shape))))
        return ops.mean(per_row * ops.cast(y_pred["weight"], per_row.dtype))

    def get_config(self):
        # Saved only as weights (backups); the round's student is the model.
        return {**super().get_config(), "student_steps": self.student_steps,
                "guidance_scale": self.guidance_scale,
                "label_dropout": self.label_dropout}
