"""The one place observation distributions p(x|z) are built from decoder outputs."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    ContinuousBernoulli,
    Distribution,
    Independent,
    Normal,
    constraints,
)
from torch.distributions.utils import broadcast_all

# The names, those whose support is {0, 1} (they need binarized data) and those with a
# learned scale: the schema's.
from vaelab.schema import BINARY_LIKELIHOODS, LEARNED_SCALE_LIKELIHOODS, LIKELIHOODS

__all__ = [
    "BINARY_LIKELIHOODS",
    "LEARNED_SCALE_LIKELIHOODS",
    "LIKELIHOODS",
    "DiscretizedLogistic",
    "observation_dist",
]

_BINS = 255  # 8-bit values k / 255, k = 0 .. 255: the bins are 1 / 255 wide
MIN_LOG_SCALE = -7.0  # as PixelCNN++: a scale of 9e-4, a quarter of a bin's width
_NO_SHAPE = torch.Size()


def _log1mexp(t: Tensor) -> Tensor:
    """log(1 − exp(t)) for t ≤ 0, accurate at both ends (Mächler 2012)."""
    return torch.where(t > -math.log(2), torch.log(-torch.expm1(t)), torch.log1p(-torch.exp(t)))


class DiscretizedLogistic(Distribution):
    """8-bit values x ∈ {0, 1/255, ..., 1}: the mass that a logistic of location `loc` and
    scale exp(`log_scale`) puts on each value's bin, [x − 1/510, x + 1/510], the end bins
    open to ±∞ so that the 256 masses sum to 1 (PixelCNN++, Salimans et al. 2017).

    `log_prob` is the log of a difference of two sigmoids, computed on the side of the
    logistic where they are not both near 1, so it stays accurate far in the tails.
    """

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}  # noqa: RUF012
    support = constraints.interval(0.0, 1.0)
    has_rsample = False

    def __init__(self, loc: Tensor, log_scale: Tensor, validate_args: bool | None = None):
        self.loc, self.log_scale = broadcast_all(loc, log_scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def _standardised(self, edge: Tensor) -> Tensor:
        return (edge - self.loc) * torch.exp(-self.log_scale.clamp(min=MIN_LOG_SCALE))

    def cdf(self, value: Tensor) -> Tensor:
        """P(X ≤ value) for a bin's upper edge `value` (any real, not only k/255 + 1/510)."""
        return torch.sigmoid(self._standardised(value))

    def log_prob(self, value: Tensor) -> Tensor:
        half = 0.5 / _BINS
        upper = self._standardised(value + half)  # a: the bin's upper edge, standardised
        lower = self._standardised(value - half)  # b
        # log(σ(a) − σ(b)): on the left, log σ(a) + log(1 − σ(b)/σ(a)); on the right, the
        # same of the mirrored logistic, log σ(−b) + log(1 − σ(−a)/σ(−b)).
        log_sig_a, log_sig_b = F.logsigmoid(upper), F.logsigmoid(lower)
        log_sig_neg_a, log_sig_neg_b = F.logsigmoid(-upper), F.logsigmoid(-lower)
        left = log_sig_a + _log1mexp(log_sig_b - log_sig_a)
        right = log_sig_neg_b + _log1mexp(log_sig_neg_a - log_sig_neg_b)
        inner = torch.where(upper + lower > 0, right, left)
        # The end bins: P(X ≤ 1/510) = σ(a) at 0, P(X > 1 − 1/510) = σ(−b) at 1.
        return torch.where(
            value < half, log_sig_a, torch.where(value > 1 - half, log_sig_neg_b, inner)
        )

    @property
    def mean(self) -> Tensor:
        # E[X] = Σ_{k=1}^{255} P(X ≥ k/255) / 255 = Σ_k (1 − F((k − 1/2) / 255)) / 255.
        total = torch.zeros_like(self.loc)
        for k in range(1, _BINS + 1):
            total = total + torch.sigmoid(-self._standardised(torch.tensor((k - 0.5) / _BINS)))
        return total / _BINS

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
            scale = torch.exp(self.log_scale.clamp(min=MIN_LOG_SCALE))
            y = self.loc + scale * (torch.log(u) - torch.log1p(-u))
            return torch.round(y * _BINS).clamp(0, _BINS) / _BINS


def observation_dist(
    name: str,
    params: Tensor,
    event_dims: int,
    obs_scale: float = 0.1,
    log_scale: Tensor | None = None,
) -> Distribution:
    """p(x|z) with `event_dims` trailing dimensions summed in `log_prob`.

    Args:
        name: one of `LIKELIHOODS`.
        params: unconstrained decoder output: logits, or the Gaussian or logistic location.
        event_dims: how many trailing dimensions of `params` make one observation.
        obs_scale: standard deviation of the Gaussian likelihood (fixed, not learned).
        log_scale: the learned log-scale of `LEARNED_SCALE_LIKELIHOODS`, one per
            sub-pixel (the shape of one x), broadcast over the batch.
    """
    # Densities in float32 even under mixed precision: log-probs sum hundreds of terms.
    params = params.float()
    # No argument validation: its check that x is in the support is a full pass over x and
    # a host sync in every log_prob (with K samples, over x expanded K times). The data
    # module and the config check (`vaelab.schema.check_likelihood`) guarantee the support.
    if name in LEARNED_SCALE_LIKELIHOODS and log_scale is None:
        raise ValueError(f"likelihood={name} needs its learned log_scale")
    if name == "bernoulli":
        base = Bernoulli(logits=params, validate_args=False)
    elif name == "continuous_bernoulli":
        base = ContinuousBernoulli(logits=params, validate_args=False)
    elif name == "gaussian":
        base = Normal(params, obs_scale, validate_args=False)
    elif name == "gaussian_learned":
        scale = torch.exp(log_scale.float().clamp(min=MIN_LOG_SCALE))
        base = Normal(params, scale.expand_as(params), validate_args=False)
    elif name == "discretized_logistic":
        base = DiscretizedLogistic(params, log_scale.float().expand_as(params), validate_args=False)
    else:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    return Independent(base, event_dims, validate_args=False)
