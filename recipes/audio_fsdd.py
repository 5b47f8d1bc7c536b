"""Say a chosen digit: diffusion over log-mel spectrograms of the FSDD, `--set data=DIR`.

A class-conditional U-Net learns 32 mel bands x 64 frames images of
one-second 8 kHz clips (`kgen.audio.LogMel`); sampling runs the diffusion
loop and Griffin-Lim in one graph, so `generate()` and the export return
waveforms. Each epoch logs one clip per digit to TensorBoard and as WAV
files; training time and scores at the defaults are in docs/results.md.
"""

import keras

from kgen import audio, data, models, networks, schedulers
from kgen.data.errors import DataError

CONFIG = dict(
    data=None,                 # the FSDD's recordings/ folder (not embedded)
    sample_rate=8000,          # the FSDD's own rate
    length=8000,               # one second (shorter takes are padded with silence)
    split="fsdd",              # takes 0-4 validate (the FSDD's test split)
    fft_length=256,            # 32 ms frames
    hop_length=128,            # 16 ms hops: 64 frames per second
    num_mels=32,               # spectrogram image 32 x 64
    griffin_lim_iters=32,      # phase recovery steps of every generated clip
    filters=(16, 32, 64),      # U-Net levels: 32x64 -> 16x32 -> 8x16 (attention at 8x16)
    blocks_per_level=1,
    num_train_timesteps=1000,
    beta_schedule="cosine",
    prediction_type="epsilon",
    label_dropout=0.1,         # classifier-free guidance trains the "no label" class
    min_snr_gamma=5.0,         # Min-SNR-gamma loss weights: class-typical clips sooner
    # "auto": bfloat16 where the device computes it natively (docs/precision.md)
    precision="auto",
    ema_decay=0.995,
    sampler="dpm_solver",      # generate() and the export's default
    sample_steps=25,           # per-epoch clips
    guidance_scale=5.0,        # the default of generate() and the export (docs/results.md)
    sample_count=10,           # one clip per digit each epoch
    epochs=30,
    steps_per_epoch=None,      # None: one pass over the training split
    batch_size=32,
    learning_rate=1e-3,
    limit=None,                # at most this many clips per split (quick runs)
    on_bad_file="error",       # or "skip": skip and count unreadable files
    seed=0,
)


def build(config):
    if config["data"] is None:
        raise DataError(
            "data=None: audio_fsdd needs the Free Spoken Digit Dataset's recordings "
            "folder (github.com/Jakobovski/free-spoken-digit-dataset): "
            "--set data=DIR/recordings")
    ds = data.load_audio_data(
        config["data"],
        sample_rate=config["sample_rate"],
        length=config["length"],
        batch_size=config["batch_size"],
        split=config["split"],
        with_labels=True,
        repeat=config["steps_per_epoch"] is not None,  # steps_per_epoch: an endless stream
        seed=config["seed"],
        limit=config["limit"],
        on_bad_file=config["on_bad_file"],
    )
    codec = audio.LogMel(
        ds.sample_rate, ds.length, fft_length=config["fft_length"],
        hop_length=config["hop_length"], num_mels=config["num_mels"],
        griffin_lim_iters=config["griffin_lim_iters"],
    )
    scheduler = schedulers.DDPMScheduler(
        config["num_train_timesteps"], config["beta_schedule"],
        prediction_type=config["prediction_type"],
    )
    model = models.AudioDiffusionModel(
        networks.unet(codec.image_shape, config["filters"], config["blocks_per_level"],
                      num_classes=ds.num_classes),
        codec, scheduler, num_classes=ds.num_classes,
        label_dropout=config["label_dropout"], ema_decay=config["ema_decay"],
        sampler=config["sampler"], guidance_scale=config["guidance_scale"],
        min_snr_gamma=config["min_snr_gamma"], seed=config["seed"],
    )
    model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]))
    return model, ds


def sample_kwargs(config):
    """Per-epoch clips: guided, a few solver steps (SampleLogger asks for
    the digits in turn)."""
    return dict(num_steps=config["sample_steps"],
                guidance_scale=config["guidance_scale"])
