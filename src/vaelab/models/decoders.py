"""Decoders map latents (B, D) to unconstrained likelihood parameters (B, C, H, W).

What the output means (logits, or a Gaussian mean) is decided in `vaelab.likelihoods`.
"""

import math

from torch import Tensor, nn

from vaelab.models.encoders import ACTIVATIONS, dense_layers


class MLPDecoder(nn.Module):
    """Two hidden layers of `hidden_dim` units."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        latent_dim: int,
        hidden_dim: int = 512,
        activation: str = "relu",
    ):
        super().__init__()
        self.net = nn.Sequential(
            *dense_layers([latent_dim, hidden_dim, hidden_dim], activation),
            nn.Linear(hidden_dim, math.prod(image_shape)),
            nn.Unflatten(-1, image_shape),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class ConvDecoder(nn.Module):
    """Mirror of `ConvEncoder`: dense layer, then two stride-2 transposed convolutions."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        latent_dim: int,
        hidden_dim: int = 256,
        activation: str = "relu",
    ):
        super().__init__()
        channels, height, width = image_shape
        grid = (64, height // 4, width // 4)
        act = ACTIVATIONS[activation]
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            act(),
            nn.Linear(hidden_dim, math.prod(grid)),
            act(),
            nn.Unflatten(-1, grid),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            act(),
            nn.ConvTranspose2d(32, channels, 4, stride=2, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


DECODERS = {"mlp": MLPDecoder, "conv": ConvDecoder}


def build_decoder(
    arch: str,
    image_shape: tuple[int, ...],
    latent_dim: int,
    hidden_dim: int,
    activation: str = "relu",
) -> nn.Module:
    return DECODERS[arch](tuple(image_shape), latent_dim, hidden_dim, activation)
