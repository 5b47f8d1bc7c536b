"""One model family per file; every class registers for `.keras` files."""

from kgen.models.base import GenerativeModel
from kgen.models.vae import VAE
from kgen.models.diffusion import DiffusionModel
