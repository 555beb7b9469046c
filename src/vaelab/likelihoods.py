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

# The names, those whose support is {0, 1} (they need binarized data), those whose log_prob
# is a density rather than a discrete mass, and those with a learned scale: the schema's.
from vaelab.schema import (
    BINARY_LIKELIHOODS,
    DENSITY_LIKELIHOODS,
    LEARNED_SCALE_LIKELIHOODS,
    LIKELIHOODS,
)

__all__ = [
    "BINARY_LIKELIHOODS",
    "DENSITY_LIKELIHOODS",
    "LEARNED_SCALE_LIKELIHOODS",
    "LIKELIHOODS",
    "DiscretizedLogistic",
    "observation_dist",
]

_BINS = 255  # 8-bit values k / 255, k = 0 .. 255: the bins are 1 / 255 wide
MIN_LOG_SCALE = -7.0  # as PixelCNN++: a scale of 9e-4, a quarter of a bin's width
_NO_SHAPE = torch.Size()


class DiscretizedLogistic(Distribution):
    """8-bit values x ∈ {0, 1/255, ..., 1}: the mass that a logistic of location `loc` and
    scale exp(`log_scale`) puts on each value's bin, [x − 1/510, x + 1/510], the end bins
    open to ±∞ so that the 256 masses sum to 1 (PixelCNN++, Salimans et al. 2017).

    `log_prob` is the log of a difference of two sigmoids, σ(a) − σ(b), written as the
    product σ(a) σ(−b) (1 − e^(b−a)), whose logs stay accurate far in both tails.
    """

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}  # noqa: RUF012
    support = constraints.interval(0.0, 1.0)
    has_rsample = False

    def __init__(self, loc: Tensor, log_scale: Tensor, validate_args: bool | None = None):
        # Not broadcast to one shape: the scale is one per sub-pixel, shared by the batch,
        # and whatever depends on it alone is computed at its own size.
        self.loc, self.log_scale = loc, torch.as_tensor(log_scale, dtype=loc.dtype)
        shape = torch.broadcast_shapes(self.loc.shape, self.log_scale.shape)
        super().__init__(shape, validate_args=validate_args)

    def _standardised(self, edge: Tensor) -> Tensor:
        return (edge - self.loc) * torch.exp(-self.log_scale.clamp(min=MIN_LOG_SCALE))

    def cdf(self, value: Tensor) -> Tensor:
        """P(X ≤ value) for a bin's upper edge `value` (any real, not only k/255 + 1/510)."""
        return torch.sigmoid(self._standardised(value))

    def log_prob(self, value: Tensor) -> Tensor:
        half = 0.5 / _BINS
        inv_scale = torch.exp(-self.log_scale.clamp(min=MIN_LOG_SCALE))
        centred = (value - self.loc) * inv_scale
        step = half * inv_scale  # half a bin, standardised
        # a and b, the bin's edges standardised; the end bins open: a = +∞ at 1, b = −∞ at 0.
        top, bottom = value > 1 - half, value < half
        upper = torch.where(top, math.inf, centred + step)
        lower = torch.where(bottom, -math.inf, centred - step)
        # σ(a) − σ(b) = σ(a) σ(−b) (1 − e^(b−a)): logs of three factors in (0, 1], none a
        # difference of two numbers near 1, so it is accurate in both tails. At the ends
        # the third factor is 1 and the mass σ(a) (at 0) or σ(−b) (at 1).
        width = torch.log(-torch.expm1(-2 * step))  # at the scale's own size
        width = torch.where(top | bottom, 0.0, width)
        return F.logsigmoid(upper) + F.logsigmoid(-lower) + width

    @property
    def mean(self) -> Tensor:
        # E[X] = Σ_{k=1}^{255} P(X ≥ k/255) / 255 = Σ_k (1 − F((k − 1/2) / 255)) / 255.
        total = torch.zeros(self.batch_shape, dtype=self.loc.dtype, device=self.loc.device)
        for k in range(1, _BINS + 1):
            total = total + torch.sigmoid(-self._standardised(torch.tensor((k - 0.5) / _BINS)))
        return total / _BINS

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            u = u.clamp(1e-6, 1 - 1e-6)
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
        base = DiscretizedLogistic(params, log_scale.float(), validate_args=False)
    else:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    return Independent(base, event_dims, validate_args=False)
