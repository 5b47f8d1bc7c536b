"""Class-conditional video diffusion on Moving MNIST, built from MNIST IDX files: `--set data=DIR`.

Clips of one digit bouncing in a 32x32 canvas, 10 frames, made from the
MNIST digits in DIR (train and validation clips from disjoint digits, see
`kgen.data.video`). One space-time U-Net both generates a clip for a label
and continues a clip from its first frames (`extend`): a share of the
training clips has a known prefix, given to the network beside the noisy
clip.
"""

import keras

from kgen import models
from kgen import networks
from kgen import schedulers
from kgen.data import video as video_data

CONFIG = dict(
    data=None,                 # an MNIST IDX directory (or a folder of GIF/MP4 clips)
    frames=10,                 # frames per clip
    size=32,                   # canvas height and width
    digit_size=14,             # the 28x28 digits, halved
    num_digits=1,              # digits per clip (kgen evaluate judges clips of one)
    train_clips=10000,         # Moving MNIST clips of the training digits
    validation_clips=256,      # of the held-out digits
    filters=(32, 64),          # U-Net levels: 32x32 -> 16x16 (temporal attention at 16x16)
    blocks_per_level=1,
    num_train_timesteps=1000,
    beta_schedule="cosine",
    prediction_type="epsilon",
    min_snr_gamma=5.0,         # Min-SNR-gamma loss weights
    label_dropout=0.1,         # classifier-free guidance trains the "no label" class
    extend_fraction=0.5,       # share of training clips with a known prefix (extension)
    ema_decay=0.995,
    sampler="ddim",            # generate(), extend() and the export's default
    sample_steps=20,           # per-epoch frame strips
    guidance_scale=3.0,
    epochs=10,
    steps_per_epoch=150,       # clips are drawn from an endless shuffled stream
    batch_size=16,
    learning_rate=1e-3,
    sample_count=10,           # one clip per class in the per-epoch strips
    seed=0,
)


def build(config):
    ds = video_data.load_video_data(
        config["data"],
        batch_size=config["batch_size"],
        frames=config["frames"],
        size=config["size"],
        digit_size=config["digit_size"],
        num_digits=config["num_digits"],
        train_clips=config["train_clips"],
        validation_clips=config["validation_clips"],
        seed=config["seed"],
        repeat=config["steps_per_epoch"] is not None,
    )
    scheduler = schedulers.DDPMScheduler(
        config["num_train_timesteps"], config["beta_schedule"],
        prediction_type=config["prediction_type"],
    )
    model = models.VideoDiffusionModel(
        networks.video_unet(ds.video_shape, config["filters"], config["blocks_per_level"],
                            num_classes=ds.num_classes),
        scheduler, num_classes=ds.num_classes, label_dropout=config["label_dropout"],
        extend_fraction=config["extend_fraction"], ema_decay=config["ema_decay"],
        sampler=config["sampler"], guidance_scale=config["guidance_scale"],
        min_snr_gamma=config["min_snr_gamma"], clip_settings=ds.clip_settings,
        seed=config["seed"],
    )
    model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]))
    return model, ds


def sample_kwargs(config):
    """Per-epoch frame strips: guided, a few solver steps (SampleLogger asks
    for the classes in turn)."""
    return dict(num_steps=config["sample_steps"],
                guidance_scale=config["guidance_scale"])
