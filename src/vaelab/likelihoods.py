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
from torch.distributions.utils import _sum_rightmost

# The names, those whose support is {0, 1} (they need binarized data), those whose log_prob
# is a density rather than a discrete mass, and those with a learned scale: the schema's.
from vaelab.config.schemas import (
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
    "BinnedContinuousBernoulli",
    "BinnedNormal",
    "DiscretizedLogistic",
    "Observation",
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

    def log_mass(self, value: Tensor) -> Tensor:
        """log P(x) of 8-bit values: `log_prob`, already the mass of each value's bin."""
        return self.log_prob(value)

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


_SQRT_HALF = math.sqrt(0.5)
_TINY_MASS = 1e-250  # far above float64's smallest normal number, 2e-308


def _bin_edges(value: Tensor) -> tuple[Tensor, Tensor]:
    """The bin of each 8-bit value k/255, [k − 1/2, k + 1/2] / 255 in float64, its end bins
    open to ±∞ (as `DiscretizedLogistic`'s): the 256 bins tile the real line."""
    value = value.double()
    half = 0.5 / _BINS
    lower = torch.where(value < half, -math.inf, value - half)
    upper = torch.where(value > 1 - half, math.inf, value + half)
    return lower, upper


def _log_abs_expm1(t: Tensor) -> Tensor:
    """log |e^t − 1|, without overflow for large t nor cancellation for small |t|."""
    return t.clamp(min=0) + torch.log(-torch.expm1(-t.abs()))


class BinnedNormal(Normal):
    """A Gaussian density whose `log_mass` gives the probability of 8-bit data."""

    def log_mass(self, value: Tensor) -> Tensor:
        """log P(x): the mass the Gaussian puts on each 8-bit value's bin (`_bin_edges`),
        Φ(β) − Φ(α) with α, β the bin's edges standardised, in float64. Computed on the
        side of the mean where the CDFs do not cancel: past the mean, as the difference of
        the two survival functions Φ(−α) − Φ(−β); so the masses are accurate far in both
        tails and for scales from far below to far above a bin's width. Masses below
        `_TINY_MASS`, where Φ underflows, from the logs of Φ (`torch.special.log_ndtr`,
        three times slower, so only there). Returns float64."""
        lower, upper = _bin_edges(value)
        loc, scale = self.loc.double(), self.scale.double()
        alpha, beta = (lower - loc) / scale, (upper - loc) / scale
        past = alpha + beta > 0  # the bin's centre lies above the mean (edges ±∞ decide)
        near = torch.where(past, -alpha, beta)  # Φ(near) − Φ(far), far < near, near + far ≤ 0
        far = torch.where(past, -beta, alpha)
        # Φ(t) = erfc(−t/√2) / 2, accurate in the lower tail down to about 1e-300.
        log_mass = torch.log(torch.erfc(near * -_SQRT_HALF) - torch.erfc(far * -_SQRT_HALF))
        log_mass = log_mass - math.log(2)
        tail = log_mass < math.log(_TINY_MASS)
        if tail.any():
            near, far = near[tail], far[tail]
            log_near = torch.special.log_ndtr(near)
            log_far = torch.special.log_ndtr(far)
            log_mass[tail] = log_near + torch.log(-torch.expm1(log_far - log_near))
        return log_mass


class BinnedContinuousBernoulli(ContinuousBernoulli):
    """A continuous Bernoulli density whose `log_mass` gives the probability of 8-bit data."""

    def log_mass(self, value: Tensor) -> Tensor:
        """log P(x): the mass the density puts on each 8-bit value's bin (`_bin_edges`,
        clipped to its support [0, 1]), in float64. With η = logit λ, the CDF is
        F(x) = (e^(xη) − 1) / (e^η − 1), so a bin [a, b] has the mass
        e^(aη) (e^((b−a)η) − 1) / (e^η − 1): every factor's log is accurate for any η,
        where torch's `cdf`, a difference of two numbers near 1 in a tail, is not (and is
        replaced by the uniform one for λ in [0.499, 0.501]). η = 0: the uniform, b − a.
        Returns float64."""
        lower, upper = _bin_edges(value)
        lower, upper = lower.clamp(min=0.0), upper.clamp(max=1.0)
        eta = self.logits.double()
        width = upper - lower
        log_mass = lower * eta + _log_abs_expm1(width * eta) - _log_abs_expm1(eta)
        return torch.where(eta == 0, torch.log(width), log_mass)


class Observation(Independent):
    """p(x|z): the likelihood's distribution with one x's dimensions as its event."""

    def log_mass(self, value: Tensor) -> Tensor:
        """log P(x|z) of 8-bit values x = k/255, in nats, summed over one x's dimensions:
        the mass of each value's bin for a density (`BinnedNormal`, ...), `log_prob` for
        `DiscretizedLogistic`. Summed in the precision of the masses (float64 for a
        density), returned in the dtype of `value`.

        Raises:
            ValueError: the likelihood has no mass of 8-bit levels (`bernoulli`).
        """
        log_mass = getattr(self.base_dist, "log_mass", None)
        if log_mass is None:
            raise ValueError(f"{type(self.base_dist).__name__} has no mass of 8-bit levels")
        total = _sum_rightmost(log_mass(value), self.reinterpreted_batch_ndims)
        return total.to(value.dtype)


def observation_dist(
    name: str,
    params: Tensor,
    event_dims: int,
    obs_scale: float = 0.1,
    log_scale: Tensor | None = None,
) -> Observation:
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
    # module and the config check (`vaelab.config.checks.check_likelihood`) guarantee the support.
    if name in LEARNED_SCALE_LIKELIHOODS and log_scale is None:
        raise ValueError(f"likelihood={name} needs its learned log_scale")
    if name == "bernoulli":
        base = Bernoulli(logits=params, validate_args=False)
    elif name == "continuous_bernoulli":
        base = BinnedContinuousBernoulli(logits=params, validate_args=False)
    elif name == "gaussian":
        base = BinnedNormal(params, obs_scale, validate_args=False)
    elif name == "gaussian_learned":
        scale = torch.exp(log_scale.float().clamp(min=MIN_LOG_SCALE))
        base = BinnedNormal(params, scale.expand_as(params), validate_args=False)
    elif name == "discretized_logistic":
        base = DiscretizedLogistic(params, log_scale.float(), validate_args=False)
    else:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    return Observation(base, event_dims, validate_args=False)
