from vaelab.models.decoders import build_decoder
from vaelab.models.encoders import ACTIVATIONS, build_encoder
from vaelab.models.vae import VAE

ARCHS = ("mlp", "conv")

__all__ = ["ACTIVATIONS", "ARCHS", "VAE", "build_decoder", "build_encoder"]
