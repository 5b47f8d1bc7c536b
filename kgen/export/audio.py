"""Serving signature of `kgen.models.AudioDiffusionModel`: the diffusion
loop over log-mel spectrograms and the Griffin-Lim inversion, both inside
the graph (the model's own `sample()`, traced), behind the diffusion
export's request bounds (`kgen/export/diffusion.py`).

Inputs (one row = one clip; the names are `generate()`'s options):

- `seed` int64 `[batch]`: row `r`'s clip depends on its own seed (and label
  and guidance) alone, and equals `model.generate(1, seed=seed[r],
  labels=label[r], ...)`; the seed also fixes Griffin-Lim's initial phase.
- `label` int32 `[batch]` (conditional models): the class (digit) to say,
  in `[0, num_classes)`, or `num_classes` for the "no label" class.
- `num_steps` int32 `[batch]`: the same in every row, in `[1, T]`.
- `guidance_scale` float32 `[batch]`: one finite weight per row.

Outputs: `audio` float32 `[batch, samples]` in [-1, 1], and `sample_rate`
int32 `[batch]` (the same in every row: TF Serving serves no `kgen.json`,
so a server's answer alone makes WAV files); `kgen.json` records
`sample_rate` and `num_samples` (and the spectrogram's settings) as well.
"""

from kgen.export.diffusion import diffusion_signatures


def audio_diffusion_signatures(model, max_rows, scheduler=None, max_row_steps=None):
    """The `generate` endpoint (audio out) and its metadata.

    Args:
        model: a `kgen.models.AudioDiffusionModel`.
        max_rows: the most rows one request may ask for.
        scheduler: the sampling scheduler (default the model's `sampler`).
        max_row_steps: the most `rows x num_steps` of one request (default
            as the image diffusion export).

    Returns:
        `({"generate": tf.function}, metadata dict)`.
    """
    endpoints, metadata = diffusion_signatures(model, max_rows, scheduler, max_row_steps)
    codec = model.spectrogram
    spectrogram_shape = metadata.pop("image_shape")
    generate = metadata["signatures"]["generate"]
    head, _, bound = generate.partition(" -> ")
    bound = bound.split("; ", 1)[1]
    metadata.update({
        "output_kind": "audio",
        "sample_rate": codec.sample_rate,
        "num_samples": codec.length,
        "spectrogram_shape": spectrogram_shape,
        "spectrogram": codec.get_config(),
        "signatures": {
            "generate": (f"{head} -> audio float32 [batch, {codec.length}] in [-1, 1] "
                         f"at {codec.sample_rate} Hz, sample_rate int32 [batch]; {bound}"),
        },
    })
    return endpoints, metadata
