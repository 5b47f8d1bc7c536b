"""One model family per file; every class registers for `.keras` files."""

from kgen.models.audio_diffusion import AudioDiffusionModel
from kgen.models.autoregressive import CausalLM
from kgen.models.base import GenerativeModel
from kgen.models.diffusion import DiffusionModel
from kgen.models.gan import GAN
from kgen.models.vae import VAE
from kgen.models.video import VideoDiffusionModel
