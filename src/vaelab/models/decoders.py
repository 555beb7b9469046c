"""Decoders map latents (B, D) to unconstrained likelihood parameters (B, C, H, W).

What the output means (logits, or a Gaussian mean) is decided in `vaelab.likelihoods`.
"""

import itertools
import math

from torch import Tensor, nn

from vaelab.models.encoders import ACTIVATIONS, conv_stages, dense_layers


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
    """Mirror of `ConvEncoder`: dense layers, then as many stride-2 transposed convolutions
    as it has convolutions."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        latent_dim: int,
        hidden_dim: int = 256,
        activation: str = "relu",
    ):
        super().__init__()
        channels, height, width = image_shape
        stages = conv_stages(height, width)
        grid = (64, height // 2**stages, width // 2**stages)
        act = ACTIVATIONS[activation]
        widths = [*[64] * (stages - 1), 32, channels]
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), act()]
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            act(),
            nn.Linear(hidden_dim, math.prod(grid)),
            act(),
            nn.Unflatten(-1, grid),
            *layers[:-1],  # no activation after the last: it gives logits or locations
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
