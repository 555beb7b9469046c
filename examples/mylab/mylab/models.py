"""A model of one's own: an MLP VAE of `depth` hidden layers each way."""

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from vaelab.models.build import build_posterior, build_prior
from vaelab.models.encoders import GaussianHead, dense_layers
from vaelab.models.vae import VAE


class DeepEncoder(nn.Module):
    """x -> (loc, scale) of q(z|x) through `depth` dense layers; with_context: and their last
    features, which a flow posterior conditions on."""

    def __init__(self, image_shape: tuple[int, ...], latent_dim: int, hidden_dim: int, depth: int):
        super().__init__()
        sizes = [math.prod(image_shape), *[hidden_dim] * depth]
        self.body = nn.Sequential(nn.Flatten(), *dense_layers(sizes, "relu"))
        self.head = GaussianHead(hidden_dim, latent_dim)

    def forward(self, x: Tensor, with_context: bool = False) -> tuple[Tensor, ...]:
        h = self.body(x)
        return (*self.head(h), h) if with_context else self.head(h)


class DeepMLPVAE(VAE):
    """Encoder and decoder of `depth` dense layers of `hidden_dim` units (relu). vaelab gives
    image_shape, latent_dim, likelihood, obs_scale and the prior and posterior nodes; the
    option file gives hidden_dim and depth. What it can combine with: `VAE`'s defaults
    (the posterior option's q(z|x); `activations` does not apply, it has no such key)."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        latent_dim: int,
        likelihood: str,
        obs_scale: float = 0.1,
        hidden_dim: int = 64,
        depth: int = 3,
        prior: Mapping[str, Any] | None = None,
        posterior: Mapping[str, Any] | None = None,
    ):
        image_shape = tuple(image_shape)
        decoder = nn.Sequential(
            *dense_layers([latent_dim, *[hidden_dim] * depth], "relu"),
            nn.Linear(hidden_dim, math.prod(image_shape)),
            nn.Unflatten(-1, image_shape),
        )
        super().__init__(
            DeepEncoder(image_shape, latent_dim, hidden_dim, depth),
            decoder,
            latent_dim,
            likelihood,
            obs_scale,
            prior=build_prior(prior, latent_dim, image_shape),
            posterior=build_posterior(posterior, latent_dim, context_dim=hidden_dim),
        )
