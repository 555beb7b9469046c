"""A VAE with two stochastic layers (Tomczak & Welling 2018, the HVAE of their Table 2 and of
Norouzi et al. 2020): z = (z₁, z₂), z₂ the top layer.

    generative:  p(z₂) (the prior group's),  p(z₁|z₂),  p(x|z₁, z₂)
    inference:   q(z₂|x),  q(z₁|x, z₂)

It is a `VAE` whose latent is the concatenation z = (z₁, z₂) of D₁ + D₂ dimensions, and whose
prior and posterior are `TwoLevel` distributions over it, so that every objective and
estimator (`rsample`, `log_prob`) works unchanged: log p(z) = log p(z₂) + log p(z₁|z₂) and
log q(z|x) = log q(z₂|x) + log q(z₁|x, z₂). No closed-form KL exists between two of them, so
the KL is the Monte Carlo estimate at the training draws, and the run records it as such.
The VampPrior is over z₂: the mixture of q(z₂|u_k).
"""

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution, constraints

from vaelab.likelihoods import Likelihood
from vaelab.models.capabilities import OwnPosterior
from vaelab.models.encoders import GaussianHead, dense_layers
from vaelab.models.parts import build_prior
from vaelab.models.posteriors import GaussianPosterior
from vaelab.models.vae import VAE, as_likelihood

_NO_SHAPE = Size()


class TwoLevel(Distribution):
    """z = (z₁, z₂) with z₂ ~ `top` and z₁ ~ `bottom(z₂)`: event shape (D₁ + D₂,).

    Args:
        top: the distribution of z₂, event shape (D₂,).
        bottom: z₂ (..., D₂) -> the distribution of z₁ given it, batch shape (...), event
            shape (D₁,); called at every `log_prob` and draw (it is a network).
        bottom_dim: D₁.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, top: Distribution, bottom, bottom_dim: int):
        self.top, self.bottom, self.bottom_dim = top, bottom, bottom_dim
        self.top_dim = top.event_shape[0]
        event = Size([bottom_dim + self.top_dim])
        super().__init__(top.batch_shape, event, validate_args=False)

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(z₁, z₂) of z (..., D₁ + D₂)."""
        z1, z2 = z.split([self.bottom_dim, self.top_dim], dim=-1)
        return z1, z2

    def rsample(self, sample_shape: Size = _NO_SHAPE) -> Tensor:
        z2 = self.top.rsample(sample_shape)
        bottom = self.bottom(z2)
        z = torch.cat([bottom.rsample(), z2], dim=-1)
        # The objectives score the draws they made: log_prob of this very z reuses q(z₁|x, z₂)
        # instead of running its network a second time.
        self._last_draw = (z, bottom)
        return z

    def sample(self, sample_shape: Size = _NO_SHAPE) -> Tensor:
        with torch.no_grad():  # the top may have no rsample (a mixture prior)
            z2 = self.top.sample(sample_shape)
            bottom = self.bottom(z2)
            z = torch.cat([bottom.sample(), z2], dim=-1)
        self._last_draw = (z, bottom)  # the estimators score their draws too
        return z

    def log_prob(self, z: Tensor) -> Tensor:
        z1, z2 = self.split(z)
        last = getattr(self, "_last_draw", None)
        bottom = last[1] if last is not None and last[0] is z else self.bottom(z2)
        return self.top.log_prob(z2) + bottom.log_prob(z1)


class TwoLevelEncoder(nn.Module):
    """The inference networks q(z₂|x) and q(z₁|x, z₂), each of two dense layers of
    `hidden_dim` (as in Tomczak & Welling's code, where q(z₁|x, z₂) embeds x and z₂ in one
    layer each, then joins the two embeddings in a second).

    `forward(x)`, what `VAE` compiles and the VampPrior encodes its pseudo-inputs with,
    gives (loc, scale) of q(z₂|x).
    """

    def __init__(
        self,
        image_shape: tuple[int, ...],
        bottom_dim: int,
        top_dim: int,
        hidden_dim: int,
        activation: str,
    ):
        super().__init__()
        pixels, h = math.prod(image_shape), hidden_dim
        self.bottom_dim = bottom_dim
        # q(z₂|x)
        self.top_body = nn.Sequential(nn.Flatten(), *dense_layers([pixels, h, h], activation))
        self.top_head = GaussianHead(h, top_dim)
        # q(z₁|x, z₂)
        self.bottom_x = nn.Sequential(nn.Flatten(), *dense_layers([pixels, h], activation))
        self.bottom_z2 = nn.Sequential(*dense_layers([top_dim, h], activation))
        self.bottom_joint = nn.Sequential(*dense_layers([2 * h, h], activation))
        self.bottom_head = GaussianHead(h, bottom_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.top_head(self.top_body(x))

    def bottom_posterior(self, x: Tensor):
        """z₂ (..., B, D₂) -> q(z₁|x, z₂), the image features computed once for all draws."""
        hx = self.bottom_x(x)  # (B, H)

        def given(z2: Tensor) -> Distribution:
            joint = torch.cat([hx.expand(*z2.shape[:-1], -1), self.bottom_z2(z2)], dim=-1)
            return GaussianPosterior(self.bottom_dim)(*self.bottom_head(self.bottom_joint(joint)))

        return given


class TwoLevelDecoder(nn.Module):
    """The generative networks: p(x|z₁, z₂)'s parameters from z = (z₁, z₂) (N, D₁ + D₂),
    each layer embedded in one dense layer, the two joined in a second, then a linear map
    to the pixels (`forward`); and p(z₁|z₂), two dense layers (`bottom_prior`)."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        bottom_dim: int,
        top_dim: int,
        hidden_dim: int,
        activation: str,
    ):
        super().__init__()
        h = hidden_dim
        self.bottom_dim, self.top_dim = bottom_dim, top_dim
        self.z1 = nn.Sequential(*dense_layers([bottom_dim, h], activation))
        self.z2 = nn.Sequential(*dense_layers([top_dim, h], activation))
        self.joint = nn.Sequential(
            *dense_layers([2 * h, h], activation),
            nn.Linear(h, math.prod(image_shape)),
            nn.Unflatten(-1, tuple(image_shape)),
        )
        self.prior_body = nn.Sequential(*dense_layers([top_dim, h, h], activation))
        self.prior_head = GaussianHead(h, bottom_dim)

    def forward(self, z: Tensor) -> Tensor:
        z1, z2 = z.split([self.bottom_dim, self.top_dim], dim=-1)
        return self.joint(torch.cat([self.z1(z1), self.z2(z2)], dim=-1))

    def bottom_prior(self, z2: Tensor) -> Distribution:
        """p(z₁|z₂): a diagonal Gaussian, batch shape z₂'s (...)."""
        return GaussianPosterior(self.bottom_dim)(*self.prior_head(self.prior_body(z2)))


class HierarchicalVAE(VAE, OwnPosterior):
    """The two-level VAE: z = (z₁, z₂) with z₁ of `latent_dim` and z₂ of `top_dim`
    dimensions; `prior` is the prior option's node for p(z₂) (None: N(0, I); or a mixture
    or VampPrior over z₂). Its posterior is its own (`OwnPosterior`): q(z₂|x) q(z₁|x, z₂).

    `layers` names the two parts of z for the diagnostics (active units per layer).

    Args:
        image_shape: (C, H, W).
        latent_dim: D₁, the size of z₁.
        likelihood: p(x|z), a `vaelab.likelihoods.Likelihood`, whose parameters the
            decoder gives (`Likelihood.param_shape`); or an option's name, see `VAE`.
        obs_scale: of a likelihood given by its name only, see `VAE`.
        hidden_dim: width of every hidden layer.
        activation: relu, tanh or gated (each dense layer a `GatedDense`).
        top_dim: D₂, the size of z₂ (None: latent_dim).
        prior: the prior option's node, a prior over z₂.
        value_range: see `VAE`.
    """

    def __init__(
        self,
        image_shape: tuple[int, ...],
        latent_dim: int,
        likelihood: Likelihood | str,
        obs_scale: float | None = None,
        hidden_dim: int = 300,
        activation: str = "gated",
        top_dim: int | None = None,
        prior: Mapping[str, Any] | None = None,
        value_range: tuple[float, float] | None = (0.0, 1.0),
    ):
        image_shape, bottom_dim, top_dim = tuple(image_shape), latent_dim, top_dim or latent_dim
        likelihood = as_likelihood(likelihood, obs_scale)
        encoder = TwoLevelEncoder(image_shape, bottom_dim, top_dim, hidden_dim, activation)
        decoder = TwoLevelDecoder(
            likelihood.param_shape(image_shape), bottom_dim, top_dim, hidden_dim, activation
        )
        super().__init__(
            encoder,
            decoder,
            bottom_dim + top_dim,
            likelihood,
            None,
            value_range,
            prior=build_prior(prior, top_dim, image_shape),
            posterior=GaussianPosterior(top_dim),
        )
        self.bottom_dim, self.top_dim = bottom_dim, top_dim

    @property
    def layers(self) -> tuple[tuple[str, int], ...]:
        return (("z1", self.bottom_dim), ("z2", self.top_dim))

    def posterior(self, x: Tensor) -> Distribution:
        """q(z|x) = q(z₂|x) q(z₁|x, z₂): batch shape (B,), event shape (D₁ + D₂,)."""
        top = self.posterior_model(*self.encoder(x))
        return TwoLevel(top, self.encoder.bottom_posterior(x), self.bottom_dim)

    def prior(self) -> Distribution:
        """p(z) = p(z₂) p(z₁|z₂): event shape (D₁ + D₂,). Build it once per batch."""
        top = self.prior_model.distribution(self._encode_gaussian)
        return TwoLevel(top, self.decoder.bottom_prior, self.bottom_dim)

    def _encode_gaussian(self, u: Tensor) -> Distribution:
        return GaussianPosterior(self.top_dim)(*self.encoder(u))
