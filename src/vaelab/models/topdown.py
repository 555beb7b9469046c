"""A VAE with L stochastic layers and top-down inference (Sønderby et al. 2016, the Ladder
VAE; Vahdat & Kautz 2020, NVAE; Child 2021, the Very Deep VAE): z = (z₁, ..., z_L), z_L the
top layer.

    generative:  p(z_L) (the prior group's),  p(z_l | z_{>l}) for l < L,  p(x | z)
    inference:   q(z_L | x),  q(z_l | x, z_{>l}) for l < L

A bottom-up pass over x gives one feature vector d_l per layer (d₁ nearest to the pixels).
The top-down pass then starts from z_L with a state s and, for l = L-1 down to 1, updates s
by a residual block, reads p(z_l | z_{>l}) = N(μ_p(s), σ_p(s)²) from it, draws z_l, and adds
an embedding of z_l to s; x's parameters come from the final state. Generation and
inference share this one top-down path: the posterior of layer l combines the bottom-up
features d_l with the top-down state s.

How it combines them: the residual parameterisation of NVAE (their eq. 2, also VDVAE's),
relative to the layer's prior, q(z_l | x, z_{>l}) = N(μ_p + Δμ(s, d_l), (σ_p · exp Δρ(s, d_l))²),
rather than the Ladder VAE's precision-weighted merge of a bottom-up and a top-down Gaussian.
Why: (1) the KL of each layer then depends only on Δμ/σ_p and Δρ, so with Δ's layer
initialised to zero every posterior starts equal to its prior, the KL starts at zero and
deep stacks start stable; (2) one network reads both s and d_l, so the posterior may use
features of x that a product of two Gaussians cannot express (the merge fixes how they
combine); (3) it is what the two models with the best published likelihoods use.

The latent z is the concatenation (z₁, ..., z_L), and the prior and the posterior are
`TopDown` distributions over it (`rsample`, `sample`, `log_prob`), so every objective and
estimator that reads only `posterior`, `prior` and `observation` works unchanged (elbo,
iwae, the importance-sampled and the naive estimates). No closed-form KL exists between two
of them: the KL is the Monte Carlo estimate at the training draws. With one layer the model
is the one-layer VAE (its posterior is q(z₁|x) itself, its networks those of model=mlp).

Latents are vectors at every layer, also for images (the convolutional networks end in
dense layers); NVAE and VDVAE use spatial latent maps, which this small model does not.
"""

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution, Independent, Normal, constraints

from vaelab.errors import ConfigError
from vaelab.likelihoods import Likelihood, Observation
from vaelab.models.capabilities import OwnPosterior, OwnPosteriorConvNetworks, kl_splits
from vaelab.models.encoders import (
    ACTIVATIONS,
    MIN_SCALE,
    GaussianHead,
    conv_stages,
    dense_layers,
)
from vaelab.models.parts import build_prior
from vaelab.models.posteriors import GaussianPosterior
from vaelab.models.vae import VAE, as_likelihood

_NO_SHAPE = Size()


def _normal(loc: Tensor, scale: Tensor) -> Independent:
    return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)


class ResidualDense(nn.Module):
    """h + W(act(dense(h))): a residual block of width h, its last layer zero-initialised
    so that each block starts as the identity (a deep stack then starts as a shallow one)."""

    def __init__(self, width: int, activation: str):
        super().__init__()
        self.body = nn.Sequential(*dense_layers([width, width], activation))
        self.out = nn.Linear(width, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.out(self.body(h))


class ResidualCell(nn.Module):
    """x + conv(act(conv(act(x)))), 3 x 3 convolutions keeping channels and size (a small
    version of NVAE's and VDVAE's residual cells, without normalisation: the batches of a
    CPU budget are small)."""

    def __init__(self, channels: int, activation: str):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.body = nn.Sequential(
            act(),
            nn.Conv2d(channels, channels, 3, padding=1),
            act(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _conv_widths(channels: int, stages: int) -> list[int]:
    return [channels, 32, *[64] * (stages - 1)]


class BottomUp(nn.Module):
    """The bottom-up pass: `features(x)` gives d₁, ..., d_L (B, hidden_dim) each;
    `forward(x)` the (loc, scale) of q(z_L|x), which the VampPrior encodes its pseudo-inputs
    with. Dense: two dense layers (model=mlp's encoder), then a residual block per layer
    above the first; conv: stride-2 convolutions each followed by a residual cell, then a
    dense layer."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        latent_dims: tuple[int, ...],
        hidden_dim: int,
        activation: str,
        conv: bool,
    ):
        super().__init__()
        h = hidden_dim
        if conv:
            channels, height, width = image_shape
            stages = conv_stages(height, width)
            layers: list[nn.Module] = []
            widths = _conv_widths(channels, stages)
            for c_in, c_out in itertools.pairwise(widths):
                layers += [
                    nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
                    ResidualCell(c_out, activation),
                ]
            grid = 64 * (height // 2**stages) * (width // 2**stages)
            act = ACTIVATIONS[activation]
            self.body = nn.Sequential(*layers, act(), nn.Flatten(), nn.Linear(grid, h), act())
        else:
            sizes = [math.prod(image_shape), h, h]
            self.body = nn.Sequential(nn.Flatten(), *dense_layers(sizes, activation))
        self.head = GaussianHead(h, latent_dims[-1])
        self.up = nn.ModuleList(ResidualDense(h, activation) for _ in latent_dims[1:])

    def features(self, x: Tensor) -> list[Tensor]:
        d = [self.body(x)]
        for block in self.up:
            d.append(block(d[-1]))
        return d

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.features(x)[-1])


class TopDownPath(nn.Module):
    """The top-down pass, shared by generation and inference (`descend`), and x's
    parameters from its final state (`output`). `forward(z)` decodes a whole z
    (N, D₁ + ... + D_L), every layer given."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        latent_dims: tuple[int, ...],
        hidden_dim: int,
        activation: str,
        conv: bool,
    ):
        super().__init__()
        h = hidden_dim
        self.latent_dims = latent_dims
        self.input = nn.Sequential(*dense_layers([latent_dims[-1], h], activation))
        if conv:
            channels, height, width = image_shape
            stages = conv_stages(height, width)
            grid = (64, height // 2**stages, width // 2**stages)
            act = ACTIVATIONS[activation]
            widths = _conv_widths(channels, stages)[::-1]
            layers: list[nn.Module] = []
            for c_in, c_out in itertools.pairwise(widths):
                layers += [ResidualCell(c_in, activation), act()]
                layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            self.output = nn.Sequential(
                nn.Linear(h, math.prod(grid)), act(), nn.Unflatten(-1, grid), *layers
            )
        else:
            self.output = nn.Sequential(
                *dense_layers([h, h], activation),
                nn.Linear(h, math.prod(image_shape)),
                nn.Unflatten(-1, tuple(image_shape)),
            )
        lower = latent_dims[:-1]  # z₁ ... z_{L-1}; index l - 1 for layer l
        self.blocks = nn.ModuleList(ResidualDense(h, activation) for _ in lower)
        self.prior_heads = nn.ModuleList(GaussianHead(h, d) for d in lower)
        self.posterior_heads = nn.ModuleList(nn.Linear(2 * h, 2 * d) for d in lower)
        for head in self.posterior_heads:  # q = p at the start: every KL starts at 0
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.merges = nn.ModuleList(nn.Linear(d, h) for d in lower)

    def descend(
        self,
        z_top: Tensor,
        features: list[Tensor] | None = None,
        given: list[Tensor] | None = None,
        temperature: float = 1.0,
        prior_below: int = 0,
    ) -> "Descent":
        """The top-down pass from z_L (..., D_L) through the layers below.

        Args:
            z_top: the top layer's values.
            features: the bottom-up features d_l (B, H) of x: the layers are drawn from (or
                scored under) the posterior; None: the prior.
            given: the values of z₁ ... z_{L-1} (..., D_l) to score rather than draw.
            temperature: draws from the prior's layers with their scales times this.
            prior_below: with `features`, the layers z₁ ... z_{prior_below} are drawn from
                the prior all the same (reconstructions from the top layers only).
        """
        s = self.input(z_top)
        zs: list[Tensor] = [None] * len(self.blocks)  # type: ignore[list-item]
        log_p, log_q = [], []
        for i in reversed(range(len(self.blocks))):
            s = self.blocks[i](s)
            p_loc, p_scale = self.prior_heads[i](s)
            p = _normal(p_loc, p_scale)
            q = None
            if features is not None and i >= prior_below:
                d = features[i].expand(s.shape)
                d_loc, d_rho = self.posterior_heads[i](torch.cat([s, d], -1)).chunk(2, -1)
                q = _normal(p_loc + d_loc, p_scale * torch.exp(d_rho) + MIN_SCALE)
            if given is not None:
                z = given[i]
            elif q is not None:
                z = q.rsample()
            else:
                z = _normal(p_loc, p_scale * temperature).rsample()
            zs[i] = z
            log_p.append(p.log_prob(z))
            if q is not None:
                log_q.append(q.log_prob(z))
            s = s + self.merges[i](z)
        return Descent(zs, log_p[::-1], log_q[::-1] or None, s)

    def forward(self, z: Tensor) -> Tensor:
        *lower, z_top = z.split(self.latent_dims, dim=-1)
        return self.output(self.descend(z_top, given=lower).state)


class Descent:
    """One top-down pass: the layers' values z₁ ... z_{L-1}, their log p(z_l|z_{>l}) and
    log q(z_l|x, z_{>l}) (lists of (...), bottom first; log_q None under the prior), and the
    final state (..., H) that x's parameters come from."""

    def __init__(self, zs, log_p, log_q, state):
        self.zs, self.log_p, self.log_q, self.state = zs, log_p, log_q, state


class TopDown(Distribution):
    """z = (z₁, ..., z_L) with z_L ~ `top` and the layers below from a top-down pass of
    `model`: the posterior given the bottom-up `features` of x, the prior without.

    The pass that draws z also gives, at that z, log p and log q of every layer below the
    top and the state x's parameters come from; `model` keeps the last draw's pass, so that
    the objectives' `log_prob`s and `observation` of that very z reuse it instead of running
    the networks again.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        model: "TopDownVAE",
        top: Distribution,
        features: list[Tensor] | None,
        temperature: float = 1.0,
    ):
        self.model, self.top, self.features = model, top, features
        self.temperature = temperature
        event = Size([sum(model.latent_dims)])
        super().__init__(top.batch_shape, event, validate_args=False)

    def rsample(self, sample_shape: Size = _NO_SHAPE) -> Tensor:
        return self._draw(self.top.rsample(sample_shape))

    def sample(self, sample_shape: Size = _NO_SHAPE) -> Tensor:
        with torch.no_grad():  # the top may have no rsample (a mixture prior)
            return self._draw(self.top.sample(sample_shape))

    def _draw(self, z_top: Tensor) -> Tensor:
        path = self.model.decoder
        descent = path.descend(z_top, self.features, temperature=self.temperature)
        z = torch.cat([*descent.zs, z_top], dim=-1)
        self.model.remember(z, descent, self)
        return z

    def log_prob(self, z: Tensor) -> Tensor:
        *lower, z_top = z.split(self.model.latent_dims, dim=-1)
        descent = self.model.recalled(z, self if self.features is not None else None)
        if descent is None:
            descent = self.model.decoder.descend(z_top, self.features, given=lower)
        terms = descent.log_q if self.features is not None else descent.log_p
        return self.top.log_prob(z_top) + sum(terms)

    def log_ratio_per_layer(self, z: Tensor, pz_top: Distribution) -> Tensor:
        """log q(z_l|x, z_{>l}) - log p(z_l|z_{>l}) of each layer at z drawn from this
        posterior: (L, ...), z₁ first; the top's against `pz_top`."""
        *lower, z_top = z.split(self.model.latent_dims, dim=-1)
        descent = self.model.recalled(z, self)
        if descent is None:
            descent = self.model.decoder.descend(z_top, self.features, given=lower)
        per_layer = [q - p for q, p in zip(descent.log_q, descent.log_p, strict=True)]
        top = self.top.log_prob(z_top) - pz_top.log_prob(z_top)
        return torch.stack([*per_layer, top])


class TopDownVAE(VAE, OwnPosterior):
    """The top-down hierarchy with dense networks (conf/model/topdown.yaml; 28 x 28 images):
    z₁ ... z_L, `depth` layers of `latent_dim` each, or of the sizes `latent_dims` (any
    L >= 1); `prior` is the prior option's node for p(z_L) (None: N(0, I); or a mixture or
    VampPrior over z_L). Its posterior is its own (`OwnPosterior`): q(z_L|x) Π q(z_l|x, z>l).

    Args:
        image_shape: (C, H, W) of one x.
        latent_dim: the size of each layer, with `depth`.
        likelihood: p(x|z), a `vaelab.likelihoods.Likelihood`, whose parameters the
            output network gives (`param_shape`).
        obs_scale: of a likelihood given by its name only, see `VAE`.
        hidden_dim: width of every dense layer and of the top-down state.
        activation: relu, tanh, or gated (dense layers only).
        depth: L, the number of stochastic layers, each of `latent_dim` (None: 1 without
            `latent_dims`).
        latent_dims: the layers' sizes, z₁ (nearest to x) first, instead of depth and
            latent_dim (None: `depth` of `latent_dim`).
        prior: the prior option's node, a prior over z_L.
        value_range: the interval x's values lie in (`VAE.check_data`).

    Raises:
        ConfigError: `depth` and `latent_dims` that disagree.
    """

    # Convolutional bottom-up and output networks with residual cells (`TopDownConvVAE`).
    conv: ClassVar[bool] = False

    def __init__(
        self,
        image_shape: tuple[int, ...],
        latent_dim: int,
        likelihood: Likelihood | str,
        obs_scale: float | None = None,
        hidden_dim: int = 256,
        activation: str = "relu",
        depth: int | None = 3,
        latent_dims: Sequence[int] | None = None,
        prior: Mapping[str, Any] | None = None,
        value_range: tuple[float, float] | None = (0.0, 1.0),
    ):
        if depth is not None and latent_dims is not None and depth != len(latent_dims):
            raise ConfigError(
                f"model.latent_dims has {len(latent_dims)} layers and model.depth={depth}: set "
                "one of them (model.depth=null with latent_dims)"
            )
        image_shape, likelihood = tuple(image_shape), as_likelihood(likelihood, obs_scale)
        if latent_dims is not None:
            latent_dims = tuple(latent_dims)
        else:
            latent_dims = (latent_dim,) * (depth or 1)
        top_dim, conv = latent_dims[-1], self.conv
        super().__init__(
            BottomUp(image_shape, latent_dims, hidden_dim, activation, conv),
            TopDownPath(
                likelihood.param_shape(image_shape), latent_dims, hidden_dim, activation, conv
            ),
            sum(latent_dims),
            likelihood,
            obs_scale,
            value_range,
            prior=build_prior(prior, top_dim, image_shape),
            posterior=GaussianPosterior(top_dim),
        )
        self.latent_dims = latent_dims
        self._last: tuple[Tensor, Descent, TopDown] | None = None

    @property
    def depth(self) -> int:
        """L, the number of stochastic layers."""
        return len(self.latent_dims)

    @property
    def layers(self) -> tuple[tuple[str, int], ...]:
        return tuple((f"z{i + 1}", d) for i, d in enumerate(self.latent_dims))

    @property
    def kl_splits(self) -> bool:
        """Below the top, q(z_l|x, z_{>l}) depends on the layers above: with more than one
        layer the KL does not split into dimensions; with one, q(z|x) is the posterior
        part's (q(z₁|x)), as in the one-layer VAE."""
        return self.depth == 1 and kl_splits(self.posterior_model, self.prior_model)

    @property
    def diagonal_gaussian_posterior(self) -> bool:
        """With one layer, q(z|x) is the diagonal Gaussian q(z₁|x) itself."""
        return self.depth == 1 and self.posterior_model.diagonal_gaussian

    # The last draw's top-down pass, reused by the log-densities and p(x|z) of that z.

    def remember(self, z: Tensor, descent: Descent, drawn_by: TopDown) -> None:
        self._last = (z, descent, drawn_by)

    def recalled(self, z: Tensor, posterior: TopDown | None) -> Descent | None:
        """The pass that drew this very z (identity, not equality), if any; for a posterior's
        log q, only if that posterior drew it (log p is the same under either)."""
        last = self._last
        if last is None or last[0] is not z:
            return None
        if posterior is not None and last[2] is not posterior:
            return None
        return last[1]

    def posterior(self, x: Tensor) -> Distribution:
        """q(z|x) = q(z_L|x) Π_l q(z_l|x, z_{>l}): batch shape (B,), event shape (Σ D_l,)."""
        if self.depth == 1:
            return super().posterior(x)
        features = self.encoder.features(x)
        top = self.posterior_model(*self.encoder.head(features[-1]))
        return TopDown(self, top, features[:-1])

    def prior(self, temperature: float = 1.0) -> Distribution:
        """p(z) = p(z_L) Π_l p(z_l|z_{>l}): event shape (Σ D_l,); its draws from the layers
        below the top with their scales times `temperature`. Build it once per batch."""
        top = self.prior_model.distribution(self._encode_gaussian)
        if self.depth == 1:
            return top
        return TopDown(self, top, None, temperature)

    def _encode_gaussian(self, u: Tensor) -> Distribution:
        return GaussianPosterior(self.latent_dims[-1])(*self.encoder(u))

    def observation(self, z: Tensor) -> Observation:
        """p(x|z) for z (..., Σ D_l); for the z of the last draw, from that draw's pass."""
        descent = self.recalled(z, None)
        if descent is None:
            return super().observation(z)
        state = descent.state
        params = self.decoder.output(state.reshape(-1, state.shape[-1]))
        params = params.reshape(*z.shape[:-1], *params.shape[1:])
        event_dims = params.dim() - (z.dim() - 1)
        return self.likelihood.observation(params, event_dims, self.log_obs_scale)

    def kl_per_layer(self, qz_x: Distribution) -> Tensor:
        """KL(q || p) of each layer at one draw z ~ q(z|x), the Monte Carlo estimate
        E_q[log q(z_l|x, z_{>l}) - log p(z_l|z_{>l})]: (B, L) nats, z₁ first; they sum to
        the model's (Monte Carlo) KL at that draw."""
        if self.depth == 1:
            z = qz_x.rsample()
            return (qz_x.log_prob(z) - self.prior().log_prob(z))[:, None]
        z = qz_x.rsample()
        return qz_x.log_ratio_per_layer(z, self.prior().top).T

    # The user-facing API, beyond `VAE`'s: samples at a temperature, reconstructions
    # that keep only the top layers of x's code.

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Decode n draws z ~ p(z): (n, C, H, W) means of p(x|z); the layers below the top
        drawn with their scales times `temperature` (NVAE's and VDVAE's lower-temperature
        samples; the top's p(z_L) is the prior group's, at its own scale)."""
        if self.depth == 1 or temperature == 1.0:
            return super().sample(n, generator)
        device = self.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if generator is not None:
                torch.manual_seed(generator.initial_seed())
            return self.decode(self.prior(temperature).sample((n,)))

    @torch.no_grad()
    def reconstruct_from_top(self, x: Tensor, k: int, temperature: float = 1.0) -> Tensor:
        """Means of p(x|z) where the top k layers are x's posterior means (z_L's) and draws
        given them, and the layers below are drawn from the prior given those: (B, C, H, W).
        k = L is a (stochastic) reconstruction; smaller k shows what the top layers hold."""
        self.check_data(x)
        if not 1 <= k <= self.depth:
            raise ValueError(f"k must be in [1, {self.depth}], got {k}")
        features = self.encoder.features(x)
        z_top = self.encoder.head(features[-1])[0]
        descent = self.decoder.descend(z_top, features[:-1], prior_below=self.depth - k)
        return self.decode(torch.cat([*descent.zs, z_top], dim=-1))


class TopDownConvVAE(TopDownVAE, OwnPosteriorConvNetworks):
    """The top-down hierarchy of `TopDownVAE` with convolutional residual cells in the
    bottom-up and output networks (conf/model/topdown_conv.yaml; 32 x 32 and 64 x 64
    colour images; latents are vectors); `activation`: relu or tanh. Arguments:
    `TopDownVAE`'s."""

    conv = True
