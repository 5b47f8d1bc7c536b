"""Plain functional networks that the model families are built from."""

from kgen.networks.conv_vae import conv_decoder
from kgen.networks.conv_vae import conv_encoder
from kgen.networks.conv_vae import conv_vae_networks
from kgen.networks.dcgan import dcgan_discriminator
from kgen.networks.dcgan import dcgan_generator
from kgen.networks.transformer import DecoderBlock
from kgen.networks.transformer import transformer_lm
from kgen.networks.unet import SinusoidalEmbedding
from kgen.networks.unet import unet
from kgen.networks.video_unet import TemporalAttention
from kgen.networks.video_unet import video_unet
