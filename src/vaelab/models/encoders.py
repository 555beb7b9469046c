"""Encoders map images (B, C, H, W) to the parameters (loc, scale) of q(z|x), each (B, D).

With `with_context=True` they also give their last hidden features h (B, hidden_dim), the
context a flow posterior conditions on (`vaelab.models.posteriors.IAFPosterior`).
"""

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.errors import ConfigError

# Keeps posterior scales away from 0 so log q(z|x) stays finite in low precision.
MIN_SCALE = 1e-4
# Hidden-layer nonlinearities (Burda et al. 2015 use tanh); `model.activation=gated` makes
# each dense layer a `GatedDense` instead (a layer, not a nonlinearity after one).
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
GATED = "gated"


class GatedDense(nn.Module):
    """h = (W₁x + b₁) ⊙ σ(W₂x + b₂) (Dauphin et al. 2017), the dense layer of Tomczak &
    Welling (2018) and Norouzi et al. (2020): both products in one matrix multiply."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * out_features)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(gate)


def dense_layers(sizes: list[int], activation: str) -> list[nn.Module]:
    """Dense layers sizes[0] -> sizes[1] -> ..., each followed by the activation (or gated):
    a flat list, so that the weights of the relu/tanh networks keep their checkpoint names."""
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        if activation == GATED:
            layers.append(GatedDense(n_in, n_out))
        else:
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
    return layers


class GaussianHead(nn.Module):
    """Splits features into loc and a positive scale of a diagonal Gaussian."""

    def __init__(self, in_features: int, latent_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * latent_dim)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw_scale = self.linear(h).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + MIN_SCALE


class MLPEncoder(nn.Module):
    """Two hidden layers of `hidden_dim` units."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        latent_dim: int,
        hidden_dim: int = 512,
        activation: str = "relu",
    ):
        super().__init__()
        sizes = [math.prod(image_shape), hidden_dim, hidden_dim]
        self.body = nn.Sequential(nn.Flatten(), *dense_layers(sizes, activation))
        self.head = GaussianHead(hidden_dim, latent_dim)

    def forward(self, x: Tensor, with_context: bool = False) -> tuple[Tensor, ...]:
        h = self.body(x)
        return (*self.head(h), h) if with_context else self.head(h)


def conv_stages(height: int, width: int) -> int:
    """How many stride-2 convolutions `model=conv` uses for images of this size: two (28 ->
    14 -> 7, 32 -> 8), and one more each time that leaves a grid above 8 (64 -> 8 in three).
    One-line ConfigError unless each stage can halve the sides exactly."""
    stages = max(2, math.ceil(math.log2(max(height, width) / 8)))
    if height % 2**stages or width % 2**stages:  # the decoder could not give the size back
        raise ConfigError(
            f"model=conv halves {height} x {width} images {stages} times, so it needs sides "
            f"divisible by {2**stages}: set data.image_size to a multiple of {2**stages}, "
            "or use model=mlp"
        )
    return stages


class ConvEncoder(nn.Module):
    """Stride-2 convolutions of 4 x 4 (`conv_stages`: two for 28 and 32 pixels, three for
    64), then a dense layer."""

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
        act = ACTIVATIONS[activation]
        # 32 then 64 channels, as the two-stage network has always had (and its weights' names).
        widths = [channels, 32, *[64] * (stages - 1)]
        convs = [
            layer
            for c_in, c_out in itertools.pairwise(widths)
            for layer in (nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), act())
        ]
        grid = 64 * (height // 2**stages) * (width // 2**stages)
        self.body = nn.Sequential(*convs, nn.Flatten(), nn.Linear(grid, hidden_dim), act())
        self.head = GaussianHead(hidden_dim, latent_dim)

    def forward(self, x: Tensor, with_context: bool = False) -> tuple[Tensor, ...]:
        h = self.body(x)
        return (*self.head(h), h) if with_context else self.head(h)
