"""The likelihoods p(x|z): each a class (`Likelihood`) named by its option file,
conf/likelihood/<name>.yaml, that builds the observation distribution from the decoder's
outputs and declares what it is (`vaelab.models.capabilities.LikelihoodCapabilities`:
binary, a density, a mass of 8-bit levels, a learned scale, its parameters per sub-pixel).
The distributions they build are here too: those of 8-bit data with their `log_mass`."""

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

from vaelab.config.schemas import checked
from vaelab.models.capabilities import (
    BinaryLikelihood,
    EightBitDensity,
    EightBitMass,
    LearnedScaleDensity,
    LearnedScaleMass,
    LikelihoodCapabilities,
)

__all__ = [
    "BernoulliLikelihood",
    "BinnedContinuousBernoulli",
    "BinnedNormal",
    "ContinuousBernoulliLikelihood",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "DiscretizedLogisticMixture",
    "GaussianLikelihood",
    "LearnedGaussianLikelihood",
    "Likelihood",
    "LogisticMixtureLikelihood",
    "Observation",
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


class Likelihood(LikelihoodCapabilities):
    """p(x|z) from the decoder's unconstrained outputs. A subclass builds `distribution`
    and declares its capabilities (`vaelab.models.capabilities`); its constructor's typed
    arguments are the keys of its option file.

    Args:
        name: the option's name, the likelihood's label in messages and compare's tables
            (default: the class's name).
    """

    def __init__(self, name: str | None = None):
        self.name = name or type(self).__name__

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def param_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The decoder's output for one x of `data_shape` (C, ...): `param_channels` of C."""
        return (self.param_channels(data_shape[0]), *data_shape[1:])

    def data_channels(self, param_channels: int) -> int:
        """The channels of x whose parameters have `param_channels` channels."""
        channels = range(1, param_channels + 1)
        found = [c for c in channels if self.param_channels(c) == param_channels]
        if not found:
            raise ValueError(f"{self!r} has no data of {param_channels} parameter channels")
        return found[0]

    def distribution(self, params: Tensor, log_scale: Tensor | None) -> Distribution:
        """The distribution of each sub-pixel, batch shape `params`'s."""
        raise NotImplementedError

    def observation(
        self, params: Tensor, event_dims: int, log_scale: Tensor | None = None
    ) -> "Observation":
        """p(x|z) with `event_dims` trailing dimensions of x summed in `log_prob`.

        Args:
            params: the decoder's outputs, (..., *`param_shape`).
            event_dims: how many trailing dimensions make one x.
            log_scale: the VAE's learned log-scale (`learned_scale`), the shape of one x,
                broadcast over the batch.
        """
        # Densities in float32 even under mixed precision: log-probs sum hundreds of terms.
        params = params.float()
        if self.learned_scale and log_scale is None:
            raise ValueError(f"likelihood={self.name} needs its learned log_scale")
        # No argument validation: its check that x is in the support is a full pass over x
        # and a host sync in every log_prob (with K samples, over x expanded K times). The
        # data module and the config check (`vaelab.config.checks.check_likelihood`)
        # guarantee it.
        return Observation(self.distribution(params, log_scale), event_dims, validate_args=False)


class BernoulliLikelihood(Likelihood, BinaryLikelihood):
    """Binary pixels: the decoder gives the logits."""

    def distribution(self, params: Tensor, log_scale: Tensor | None) -> Distribution:
        return Bernoulli(logits=params, validate_args=False)


class ContinuousBernoulliLikelihood(Likelihood, EightBitDensity):
    """Grey levels in [0, 1]: the continuous Bernoulli of the decoder's logits (Loaiza-Ganem
    & Cunningham 2019)."""

    def distribution(self, params: Tensor, log_scale: Tensor | None) -> Distribution:
        return BinnedContinuousBernoulli(logits=params, validate_args=False)


class GaussianLikelihood(Likelihood, EightBitDensity):
    """A Gaussian of the decoder's mean and a fixed standard deviation `obs_scale`."""

    @checked("likelihood.")
    def __init__(self, obs_scale: float = 0.1, name: str | None = None):
        super().__init__(name)
        self.obs_scale = obs_scale

    def distribution(self, params: Tensor, log_scale: Tensor | None) -> Distribution:
        return BinnedNormal(params, self.obs_scale, validate_args=False)


class LearnedGaussianLikelihood(Likelihood, LearnedScaleDensity):
    """A Gaussian of the decoder's mean and a standard deviation per sub-pixel learned with
    the networks, starting at `obs_scale`."""

    @checked("likelihood.")
    def __init__(self, obs_scale: float = 0.1, name: str | None = None):
        super().__init__(name)
        self.obs_scale = obs_scale

    def distribution(self, params: Tensor, log_scale: Tensor | None) -> Distribution:
        scale = torch.exp(log_scale.float().clamp(min=MIN_LOG_SCALE))
        return BinnedNormal(params, scale.expand_as(params), validate_args=False)


class DiscretizedLogisticLikelihood(Likelihood, LearnedScaleMass):
    """8-bit data: `DiscretizedLogistic` of the decoder's location and a scale per
    sub-pixel learned with the networks, starting at `obs_scale`."""

    @checked("likelihood.")
    def __init__(self, obs_scale: float = 0.1, name: str | None = None):
        super().__init__(name)
        self.obs_scale = obs_scale

    def distribution(self, params: Tensor, log_scale: Tensor | None) -> Distribution:
        return DiscretizedLogistic(params, log_scale.float(), validate_args=False)


class LogisticMixtureLikelihood(Likelihood, EightBitMass):
    """8-bit data: `DiscretizedLogisticMixture`, PixelCNN++'s likelihood (Salimans et al.
    2017), of `components` logistics per pixel whose weights, locations and scales (and,
    `coupled`, channel coefficients) the decoder gives.

    Args:
        components: K, the logistics of each pixel's mixture.
        coupled: the location of each channel depends linearly on the pixel's earlier
            channels (RGB: G on R, B on R and G), by coefficients per component.
        name: the option's name.
    """

    @checked("likelihood.")
    def __init__(self, components: int = 10, coupled: bool = True, name: str | None = None):
        super().__init__(name)
        self.components, self.coupled = components, coupled

    def param_channels(self, channels: int) -> int:
        return self.components * (1 + 2 * channels + (_pairs(channels) if self.coupled else 0))

    def observation(
        self, params: Tensor, event_dims: int, log_scale: Tensor | None = None
    ) -> "Observation":
        # The mixture is over whole pixels: its distribution already has one x as its event.
        if event_dims != 3:
            raise ValueError(f"likelihood={self.name} is of images (C, H, W), not {event_dims}-d x")
        mixture = DiscretizedLogisticMixture(
            params.float(), self.components, self.coupled, validate_args=False
        )
        return Observation(mixture, 0, validate_args=False)


def _pairs(channels: int) -> int:
    """The channel coefficients of one component: one per pair j < c."""
    return channels * (channels - 1) // 2


class DiscretizedLogisticMixture(Distribution):
    """Images x (..., C, H, W) of 8-bit values: each pixel a mixture of K components, each
    component a product over the channels of `DiscretizedLogistic`s, the location of
    channel c shifted by Σ_{j<c} a_kcj x_j when `coupled` (PixelCNN++: the mean of G
    depends on R, that of B on R and G). Batch shape (...), event shape (C, H, W).

    Args:
        params: (..., K (1 + 2C + [C (C − 1) / 2]), H, W), along the channels: the K
            mixture logits, the K·C locations, the K·C log-scales and, `coupled`, the
            K·C(C−1)/2 coefficients (through tanh, so in (−1, 1)), each block component-major.
        components: K.
        coupled: whether the coefficients are there.
    """

    arg_constraints = {}  # noqa: RUF012
    support = constraints.interval(0.0, 1.0)
    has_rsample = False

    def __init__(
        self, params: Tensor, components: int, coupled: bool, validate_args: bool | None = None
    ):
        k, *batch, (p, h, w) = components, *params.shape[:-3], params.shape[-3:]
        per_component = p // k
        sizes = {1 + 2 * c + coupled * _pairs(c): c for c in range(1, p + 1)}
        c = sizes.get(per_component, 0)
        if not c or per_component * k != p:
            raise ValueError(f"{p} parameter channels are no mixture of {k} components")
        self.components, self.coupled, self.channels = k, coupled, c
        sizes = [k, k * c, k * c, k * _pairs(c) if coupled else 0]
        logits, loc, log_scale, coeffs = params.split(sizes, dim=-3)
        self.logits = logits  # (..., K, H, W)
        self.loc = loc.unflatten(-3, (k, c))  # (..., K, C, H, W)
        self.log_scale = log_scale.unflatten(-3, (k, c))
        self.coeffs = torch.tanh(coeffs).unflatten(-3, (k, _pairs(c))) if coupled else None
        super().__init__(torch.Size(batch), torch.Size((c, h, w)), validate_args=validate_args)

    def _loc_given(self, x: Tensor, channel: int, loc: Tensor, coeffs: Tensor | None) -> Tensor:
        """The location of `channel` given the earlier channels of x (..., C, H, W):
        loc (..., K or none, C, H, W)'s, shifted by the coefficients of the pairs (channel, j)."""
        shifted = loc[..., channel, :, :]
        if coeffs is not None:
            first = _pairs(channel)  # the pairs (c, j), j < c, ordered (1, 0), (2, 0), (2, 1), ...
            for j in range(channel):
                shifted = shifted + coeffs[..., first + j, :, :] * x[..., j, :, :]
        return shifted

    def _locs(self, x: Tensor) -> Tensor:
        """Each component's locations given x: (..., K, C, H, W)."""
        if not self.coupled or self.channels == 1:
            return self.loc
        xk = x.unsqueeze(-4)  # over the components
        locs = [self._loc_given(xk, c, self.loc, self.coeffs) for c in range(self.channels)]
        return torch.stack(torch.broadcast_tensors(*locs), -3)

    def log_prob(self, value: Tensor) -> Tensor:
        """log P(x): (...) nats, the masses of the 8-bit values of every pixel's channels."""
        per_channel = DiscretizedLogistic(self._locs(value), self.log_scale).log_prob(
            value.unsqueeze(-4)
        )  # (..., K, C, H, W)
        log_weights = torch.log_softmax(self.logits, dim=-3)
        per_pixel = torch.logsumexp(log_weights + per_channel.sum(-3), dim=-3)  # (..., H, W)
        return per_pixel.sum((-2, -1))

    def log_mass(self, value: Tensor) -> Tensor:
        """log P(x) of 8-bit values: `log_prob`, already the mass of each pixel's values."""
        return self.log_prob(value)

    def _component(self, sample_shape: torch.Size) -> tuple[Tensor, Tensor, Tensor | None]:
        """A component per pixel drawn by its weight: its locations, log-scales (each
        (*sample_shape, ..., C, H, W)) and coefficients."""
        weights = torch.distributions.Categorical(logits=self.logits.movedim(-3, -1))
        index = weights.sample(sample_shape).unsqueeze(-3)  # (*s, ..., 1, H, W)

        def pick(t: Tensor) -> Tensor:
            t = t.expand(*sample_shape, *t.shape)
            at = index.unsqueeze(-3).expand(*index.shape[:-3], 1, t.shape[-3], *t.shape[-2:])
            return t.gather(-4, at).squeeze(-4)

        coeffs = pick(self.coeffs) if self.coeffs is not None else None
        return pick(self.loc), pick(self.log_scale), coeffs

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> Tensor:
        """Draws of 8-bit images: a component per pixel, then its channels in order, each
        given the values drawn before it."""
        with torch.no_grad():
            loc, log_scale, coeffs = self._component(torch.Size(sample_shape))
            x = torch.zeros_like(loc)
            for c in range(self.channels):
                at = self._loc_given(x, c, loc, coeffs)
                x[..., c, :, :] = DiscretizedLogistic(at, log_scale[..., c, :, :]).sample()
            return x

    @property
    def mean(self) -> Tensor:
        """E[x]: (..., C, H, W). Exact without coupling; with it, each component's channel
        at the location given its earlier channels' means, exact where the logistics' mass
        lies inside [0, 1] (a bin's mean is linear in its location there)."""
        means = torch.zeros_like(self.loc)  # (..., K, C, H, W)
        for c in range(self.channels):
            at = self._loc_given(means, c, self.loc, self.coeffs)
            means[..., c, :, :] = DiscretizedLogistic(at, self.log_scale[..., c, :, :]).mean
        weights = torch.softmax(self.logits, dim=-3).unsqueeze(-3)  # (..., K, 1, H, W)
        return (weights * means).sum(-4)
