"""Plain functional networks that the model families are built from."""

from kgen.networks.conv_vae import conv_decoder
from kgen.networks.conv_vae import conv_encoder
from kgen.networks.conv_vae import conv_vae_networks
from kgen.networks.unet import SinusoidalEmbedding
from kgen.networks.unet import unet
