"""Posteriors q(z|x) built from encoder features, and the KL term of the ELBO.

A posterior maps the encoder's (loc, scale), each (B, D), and for flows a context h
(B, context_dim), to a Distribution with batch shape (B,) and event shape (D,).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Distribution,
    Independent,
    Normal,
    Transform,
    TransformedDistribution,
    constraints,
    kl_divergence,
)

from vaelab.models.capabilities import DiagonalGaussianPosterior, PosteriorCapabilities


class Posterior(nn.Module, PosteriorCapabilities):
    """q(z|x) over D latent dimensions; `context_dim` is the size of the context h the
    encoder must give besides (loc, scale) (0: none); what it can do:
    `PosteriorCapabilities`."""

    context_dim = 0

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim


class GaussianPosterior(Posterior, DiagonalGaussianPosterior):
    """q(z|x) = N(loc, diag scale²)."""

    def forward(self, loc: Tensor, scale: Tensor) -> Distribution:
        """loc, scale (B, D) -> q(z|x): batch shape (B,), event shape (D,)."""
        return _diagonal_normal(loc, scale)


class IAFPosterior(Posterior):
    """Inverse autoregressive flow (Kingma et al. 2016) on top of N(loc, diag scale²).

    z_0 = loc + scale * eps, then for t = 1..T: z_t = z_{t-1} * exp(s_t) + m_t, where
    (m_t, s_t) = MADE_t(z_{t-1}, h) and coordinate i of m_t, s_t depends only on the
    coordinates before i of z_{t-1}, in an order that is reversed from one step to the next.

    Reversing each MADE's order is the paper's reverse permutation between steps moved into
    the steps (R∘S∘R is S in the reversed order), so that there is no leftover permutation
    after the last step: coordinate i of z stays latent i, and with zero last layers q is
    its base Gaussian for any T. Each step is affine, not the gated z * σ + (1 - σ) * m of
    the paper, for the same reason: a zero last layer makes it exactly the identity.

    Args:
        latent_dim: D.
        steps: T, the number of autoregressive steps.
        context_dim: size of the context h that the encoder gives besides (loc, scale).
        hidden_dim: units of each of the two hidden layers of every MADE.
    """

    def __init__(self, latent_dim: int, steps: int, context_dim: int, hidden_dim: int):
        super().__init__(latent_dim)
        self.context_dim = context_dim
        self.mades = nn.ModuleList(
            MADE(latent_dim, context_dim, hidden_dim, reverse=t % 2 == 1) for t in range(steps)
        )

    def forward(self, loc: Tensor, scale: Tensor, context: Tensor) -> Distribution:
        """loc, scale (B, D), context (B, context_dim) -> q(z|x): batch (B,), event (D,).

        Samples z (S, B, D) from `rsample((S,))`; `log_prob` of the latest draw reuses the
        flow's forward pass (cached), of any other z it inverts the flow in D passes a step.
        """
        base = _diagonal_normal(loc, scale)
        steps = [IAFStep(made, context) for made in self.mades]
        return TransformedDistribution(base, steps, validate_args=False)


class MADE(nn.Module):
    """(shift, log_scale), each (..., D), from z (..., D) and context h (..., context_dim):
    output `order[i]` depends on z[order[:i]] and on all of h (Germain et al. 2015).

    Args:
        reverse: the order D-1, ..., 0 instead of 0, ..., D-1.
    """

    def __init__(self, latent_dim: int, context_dim: int, hidden_dim: int, reverse: bool = False):
        super().__init__()
        order = torch.arange(latent_dim)
        self.register_buffer("order", order.flip(0) if reverse else order, persistent=False)
        # Degree of input order[i]: i + 1. A hidden unit of degree m sees the inputs of
        # degree <= m; degrees cycle through 1..D-1. With D = 1 no unit sees z (degree 0)
        # and the outputs use h only.
        input_degrees = torch.empty(latent_dim, dtype=torch.long)
        input_degrees[self.order] = torch.arange(1, latent_dim + 1)
        hidden_degrees = torch.arange(hidden_dim) % max(latent_dim - 1, 1) + min(latent_dim - 1, 1)
        self.input = MaskedLinear(hidden_degrees[:, None] >= input_degrees)
        self.context = nn.Linear(context_dim, hidden_dim)
        self.hidden = MaskedLinear(hidden_degrees[:, None] >= hidden_degrees)
        output_degrees = input_degrees.repeat(2)  # shift and log_scale
        self.output = MaskedLinear(output_degrees[:, None] > hidden_degrees)
        # Zero last layer: the step starts as the identity (shift 0, scale 1).
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        h = F.elu(self.input(z) + self.context(context))
        h = F.elu(self.hidden(h))
        # Densities in float32 even under mixed precision: the log-det sums D terms.
        shift, raw = _at_least_float32(self.output(h)).chunk(2, dim=-1)
        # A soft bound |log_scale| < 3 (the identity near 0) keeps exp finite whatever a
        # bad step does to the weights.
        return shift, 3 * torch.tanh(raw / 3)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out, in)."""

    def __init__(self, mask: Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class IAFStep(Transform):
    """z -> z * exp(log_scale) + shift, with (shift, log_scale) = made(z, context).

    `context` (B, context_dim) broadcasts against z (..., B, D), e.g. samples (S, B, D).
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, made: MADE, context: Tensor):
        super().__init__(cache_size=1)
        self.made = made
        self.context = context
        self._log_scale: tuple[Tensor | None, Tensor | None] = (None, None)  # (x, log_scale)

    def _call(self, x: Tensor) -> Tensor:
        shift, log_scale = self.made(x, self.context)
        self._log_scale = (x, log_scale)
        return x * log_scale.exp() + shift

    def _inverse(self, y: Tensor) -> Tensor:
        # Pass k fixes the k-th coordinate in the MADE's order, which depends only on those
        # before it; the last pass's log_scale saw all but the last, so it is exact.
        x = torch.zeros_like(y)
        for _ in range(y.shape[-1]):
            shift, log_scale = self.made(x, self.context)
            x = (y - shift) * torch.exp(-log_scale)
        self._log_scale = (x, log_scale)
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """log |det dy/dx| = Σ_i log_scale_i: shape z.shape[:-1] broadcast with the batch."""
        cached_x, log_scale = self._log_scale
        if x is not cached_x:
            _, log_scale = self.made(x, self.context)
        return log_scale.sum(-1)


def kl_term(
    qz_x: Distribution, pz: Distribution, z: Tensor, log_ratio: Tensor | None = None
) -> tuple[Tensor, str]:
    """KL(q(z|x) || p(z)): (B,) nats, and how it was computed.

    In closed form where torch.distributions registers one ("closed_form"); otherwise the
    Monte Carlo estimate mean_s [log q(z_s|x) - log p(z_s)] over the given draws z (S, B, D)
    ("monte_carlo"): pass the draws of the reconstruction term, so the ELBO uses one set,
    and `log_ratio` (S, B) if the caller already has log q(z_s|x) - log p(z_s).
    """
    try:
        return kl_divergence(qz_x, pz), "closed_form"
    except NotImplementedError:
        if log_ratio is None:
            log_ratio = qz_x.log_prob(z) - pz.log_prob(z)
        return log_ratio.mean(0), "monte_carlo"


def _diagonal_normal(loc: Tensor, scale: Tensor) -> Distribution:
    """N(loc, diag scale²), event shape (D,), in float32 even under mixed precision. Not
    validated: the encoder's softplus keeps scale positive, and validation would cost host
    syncs in every training step."""
    normal = Normal(_at_least_float32(loc), _at_least_float32(scale), validate_args=False)
    return Independent(normal, 1, validate_args=False)


def _at_least_float32(t: Tensor) -> Tensor:
    """t in float32 if it is in a lower precision (mixed precision); float64 stays."""
    return t.to(torch.promote_types(t.dtype, torch.float32))
