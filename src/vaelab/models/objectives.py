"""Training objectives: what is minimised, and the bounds reported beside it.

Each objective is called as `objective(vae, x, beta=1.0, qz_x=None)` and returns per-image
(B,) tensors in nats: "loss" (what is minimised; its batch mean is the training loss),
"elbo" (the beta = 1 bound rec - kl from the same draws), "rec" (E_q log p(x|z)), "kl", and
the objective's extras. `beta` is the schedule's weight at this step (see
`vaelab.models.schedules`); pass `qz_x` when the caller already has `vae.posterior(x)`.

Objectives use only `vae.posterior(x)`, `vae.prior()` and `vae.observation(z)`. The KL is in
closed form where torch.distributions registers the pair, otherwise the Monte Carlo estimate
log q(z|x) - log p(z) at the draws of the reconstruction term; after each call
`objective.kl_kind` says which ("closed_form" or "monte_carlo").
"""

import math
from typing import Protocol

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, kl_divergence

from vaelab.config.rules import integer
from vaelab.config.schemas import checked
from vaelab.errors import ConfigError
from vaelab.models.capabilities import (
    ImportanceWeighted,
    ObjectiveCapabilities,
    TotalCorrelation,
)
from vaelab.models.posteriors import kl_term

KL_KINDS = ("closed_form", "monte_carlo")


class LatentModel(Protocol):
    """What objectives use of a model (`vaelab.models.VAE` is one): its distributions, and
    what its parts declare of them (`kl_splits`, `diagonal_gaussian_posterior`)."""

    kl_splits: bool  # the KL is a sum over latent dimensions
    diagonal_gaussian_posterior: bool  # q(z|x) is Independent(Normal(loc, scale), 1)

    def posterior(self, x: Tensor) -> Distribution: ...  # q(z|x): batch (B,), event (D,)

    def prior(self) -> Distribution: ...  # p(z): event (D,)

    def observation(self, z: Tensor) -> Distribution: ...  # p(x|z) for z (..., D)


class Objective(ObjectiveCapabilities):
    """The interface; `kl_kind` is None until the first call; what it can do and needs:
    `ObjectiveCapabilities` (`extras`, `own_beta`, ...)."""

    kl_kind: str | None = None

    def __call__(
        self, vae: LatentModel, x: Tensor, beta: float = 1.0, qz_x: Distribution | None = None
    ) -> dict[str, Tensor]:
        raise NotImplementedError


class ElboObjective(Objective):
    """The beta-ELBO: loss = -(rec - beta * kl), rec averaged over `num_samples` draws.

    Free bits (Kingma et al. 2016, IAF paper): the KL in the loss becomes
    sum_d max(free_bits, mean_b KL_bd), the per-dimension KL averaged over the batch as in the
    paper, so a dimension whose batch-mean KL is under `free_bits` nats gets no gradient to
    shrink it further. Per image, the loss carries KL_bd for the dimensions above the floor
    and `free_bits` for those below, so its batch mean is exactly the paper's objective.
    "elbo" and "kl" stay the true bound and KL. Free bits need the KL per dimension, so a
    factorised q(z|x) and p(z) (e.g. diagonal Gaussians; not a flow posterior or a mixture
    prior): anything else is refused.

    Args:
        num_samples: reparameterized draws of z per image.
        free_bits: the KL floor per latent dimension, nats (0: off).
    """

    @checked("objective.")
    def __init__(self, num_samples: int = 1, free_bits: float = 0.0):
        self.num_samples = num_samples
        self.free_bits = free_bits

    def __call__(
        self, vae: LatentModel, x: Tensor, beta: float = 1.0, qz_x: Distribution | None = None
    ) -> dict[str, Tensor]:
        qz_x = vae.posterior(x) if qz_x is None else qz_x
        pz = vae.prior()
        z = qz_x.rsample((self.num_samples,))  # (S, B, D)
        rec = vae.observation(z).log_prob(x).mean(0)
        kl, self.kl_kind = kl_term(qz_x, pz, z)
        kl_loss = kl if self.free_bits == 0 else self._free_bits_kl(vae, qz_x, pz, z)
        return {"loss": -(rec - beta * kl_loss), "elbo": rec - kl, "rec": rec, "kl": kl}

    def _free_bits_kl(
        self, vae: LatentModel, qz_x: Distribution, pz: Distribution, z: Tensor
    ) -> Tensor:
        if not vae.kl_splits:
            raise ConfigError(
                "free bits need the KL per latent dimension, so a factorised q(z|x) and a "
                "factorised p(z), which this model's posterior and prior do not declare: set "
                "free_bits=0, or use a Gaussian posterior and the standard prior"
            )
        kl_dims = _kl_per_dim(qz_x, pz, z)  # (B, D)
        above_floor = kl_dims.mean(0) > self.free_bits  # (D,)
        return torch.where(above_floor, kl_dims, self.free_bits).sum(-1)


class IwaeObjective(Objective, ImportanceWeighted):
    """The importance weighted bound (Burda et al. 2016) with k draws z_i ~ q(z|x):

    iwae = log (1/k) sum_i w_i,   log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x),

    reported as "iwae"; loss = -iwae when beta = 1. With a schedule, beta weights the log
    density ratio inside the weights, log w_i = log p(x|z_i) - beta (log q(z_i|x) - log p(z_i)),
    so beta = 0 drops the prior and the posterior from the bound and beta = 1 is IWAE; "iwae"
    is always the beta = 1 bound. "rec" and "kl" (hence "elbo") come from the same k draws.

    gradient="dreg": the doubly reparameterized gradient (Tucker et al. 2019). The loss is a
    surrogate whose value is -bound and whose gradient is the estimator: decoder (and prior)
    parameters get the IWAE gradient sum_i w~_i grad log w_i (w~ the normalised weights);
    the encoder gets only the path through z, sum_i c_i d(log w_i)/dz_i dz_i/dphi with log q
    evaluated at detached posterior parameters and c_i = (1 - beta) w~_i + beta w~_i^2 (the
    squared weights of the paper at beta = 1). The coefficients are applied by a gradient
    hook on z, so with "dreg" only "loss" may be differentiated: the reported values are
    detached. DReG needs a posterior whose parameters can be detached: an Independent Normal.

    Args:
        k: importance samples per image.
        gradient: "standard" (the IWAE gradient) or "dreg".
    """

    @checked("objective.")
    def __init__(self, k: int = 5, gradient: str = "standard"):
        self.k = k
        self.gradient = gradient

    def __call__(
        self, vae: LatentModel, x: Tensor, beta: float = 1.0, qz_x: Distribution | None = None
    ) -> dict[str, Tensor]:
        qz_x = vae.posterior(x) if qz_x is None else qz_x
        dreg = self.gradient == "dreg"
        pz = vae.prior()
        z = qz_x.rsample((self.k,))  # (k, B, D)
        log_px_z = vae.observation(z).log_prob(x)  # (k, B)
        # DReG: q's parameters detached, so the encoder reaches the weights only through z.
        qz_x_in_weights = _detached(vae, qz_x) if dreg else qz_x
        log_ratio = qz_x_in_weights.log_prob(z) - pz.log_prob(z)  # log q(z|x) - log p(z)
        iwae = _log_mean_exp(log_px_z - log_ratio)
        log_w = log_px_z - beta * log_ratio
        bound = iwae if beta == 1 else _log_mean_exp(log_w)
        rec = log_px_z.mean(0)
        kl, self.kl_kind = kl_term(qz_x, pz, z, log_ratio)
        values = {"elbo": rec - kl, "rec": rec, "kl": kl, "iwae": iwae}
        if not dreg:
            return {"loss": -bound, **values}
        weights = torch.softmax(log_w.detach(), 0)
        if z.requires_grad:
            # The surrogate below gives the encoder w~_i d(log w_i)/dz_i per draw; DReG wants
            # c_i = (1 - beta) w~_i + beta w~_i^2 of it.
            coefficient = ((1 - beta) + beta * weights).unsqueeze(-1)
            z.register_hook(lambda grad: grad * coefficient)
        surrogate = (weights * log_w).sum(0)
        loss = -(bound.detach() + surrogate - surrogate.detach())
        return {"loss": loss, **{name: value.detach() for name, value in values.items()}}


class BetaTCObjective(Objective, TotalCorrelation):
    """beta-TCVAE (Chen et al. 2018): the KL split into index-code mutual information, total
    correlation and dimension-wise KL, each with its own weight:

    loss = -(rec - beta_t * (alpha * mi + beta * tc + gamma * dwkl)),
    mi = log q(z|x) - log q(z),
    tc = log q(z) - sum_j log q(z_j),
    dwkl = sum_j log q(z_j) - log p(z)

    at one draw z ~ q(z|x) per image, so mi + tc + dwkl = log q(z|x) - log p(z), the Monte
    Carlo KL, exactly. beta_t is the schedule's weight (the call's `beta`, a warm-up of all
    three terms; 1 leaves alpha, beta, gamma as they are). The aggregate posterior q(z) and
    its marginals q(z_j) are estimated from the batch, see `minibatch_log_qz`: they need the
    per-dimension densities of a diagonal Gaussian q(z|x), so any other posterior is refused.
    "kl" and "elbo" are the usual ones (closed-form KL where registered).

    Args:
        alpha: weight of the mutual information.
        beta: weight of the total correlation (conf/objective/betatc.yaml: the top-level
            beta, whose default is this one).
        gamma: weight of the dimension-wise KL.
        dataset_size: N, the number of training images.
    """

    @checked("objective.")
    def __init__(
        self, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0, *, dataset_size: int
    ):
        if not integer(1).ok(dataset_size):  # the data's size, not a knob
            raise ConfigError(f"dataset_size must be an integer >= 1, got {dataset_size!r}")
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.dataset_size = dataset_size

    def __call__(
        self, vae: LatentModel, x: Tensor, beta: float = 1.0, qz_x: Distribution | None = None
    ) -> dict[str, Tensor]:
        qz_x = vae.posterior(x) if qz_x is None else qz_x
        _require_diagonal_gaussian(vae, "beta-TC needs the per-dimension densities of q(z|x)")
        pz = vae.prior()
        z = qz_x.rsample()  # (B, D)
        rec = vae.observation(z).log_prob(x)
        log_qz_x = qz_x.log_prob(z)
        log_pz = pz.log_prob(z)
        log_qz, log_prod_qzj = minibatch_log_qz(qz_x, z, self.dataset_size)
        mi = log_qz_x - log_qz
        tc = log_qz - log_prod_qzj
        dwkl = log_prod_qzj - log_pz
        kl, self.kl_kind = kl_term(qz_x, pz, z[None], (log_qz_x - log_pz)[None])
        penalty = self.alpha * mi + self.beta * tc + self.gamma * dwkl
        return {
            "loss": -(rec - beta * penalty),
            "elbo": rec - kl,
            "rec": rec,
            "kl": kl,
            "mi": mi,
            "tc": tc,
            "dwkl": dwkl,
        }


def minibatch_log_qz(qz_x: Distribution, z: Tensor, dataset_size: int) -> tuple[Tensor, Tensor]:
    """Minibatch estimates of log q(z_i) and sum_j log q(z_ij) for z_i ~ q(z|x_i): (M,) each.

    q(z) = (1/N) sum_n q(z|x_n) over the N training images is estimated from the M images of
    the batch by importance weights: z_i was drawn given x_i, so x_i's own term gets its true
    weight 1/N, and the other M - 1 images, a uniform draw from the other N - 1, stand for
    them with weight (N - 1) / (N (M - 1)) each. The estimate of q(z_i) is then unbiased, and
    exact when the batch is the whole dataset; the marginals q(z_ij) are estimated the same way.
    The weights sum to 1, unlike the 1/(NM) of each term in Chen et al.'s minibatch weighted
    sampling, which sum to 1/N: that shifts log q(z) by up to log N and the total correlation
    by up to (D - 1) log N (TC ~ (D - 1) log N for an encoder that ignores x), constants for
    the gradient but wrong as reported values. A batch of one image has only its own term
    (weight 1): mi = tc = 0 there.

    Args:
        qz_x: q(z|x), an Independent Normal with batch (M,) and event (D,).
        z: (M, D), z_i drawn from q(z|x_i).
        dataset_size: N >= M.
    """
    # A function of a distribution (users call it with their own): what it reads, the
    # per-dimension Normals, is the object's own, so the object is what is checked.
    _require_diagonal_normal(qz_x, "the aggregate posterior needs per-dimension densities")
    num = z.shape[0]
    if num > dataset_size:
        raise ConfigError(
            f"dataset_size ({dataset_size}) is smaller than the batch ({num} images); pass the "
            "number of training images"
        )
    normal = qz_x.base_dist
    # log q(z_ij | x_k) for every pair of batch members: (M, M, D), indexed [i, k, j].
    log_qzj_xk = normal.log_prob(z.unsqueeze(1))
    if num == 1:
        log_weights = z.new_zeros(1, 1)
    else:
        other = math.log((dataset_size - 1) / (dataset_size * (num - 1)))
        log_weights = torch.full((num, num), other, dtype=z.dtype, device=z.device)
        log_weights.fill_diagonal_(-math.log(dataset_size))
    log_qz = torch.logsumexp(log_weights + log_qzj_xk.sum(-1), dim=1)
    log_prod_qzj = torch.logsumexp(log_weights.unsqueeze(-1) + log_qzj_xk, dim=1).sum(-1)
    return log_qz, log_prod_qzj


def _kl_per_dim(qz_x: Distribution, pz: Distribution, z: Tensor) -> Tensor:
    """KL(q(z_d|x) || p(z_d)) per latent dimension of a factorised q(z|x) and p(z) (their
    parts declare it: `kl_splits`): (B, D) nats, closed form where torch registers one for
    the two distributions, else Monte Carlo at the draws z (S, B, D)."""
    try:
        return kl_divergence(qz_x.base_dist, pz.base_dist)
    except NotImplementedError:
        return (qz_x.base_dist.log_prob(z) - pz.base_dist.log_prob(z)).mean(0)


def _require_diagonal_normal(qz_x: Distribution, why: str) -> None:
    if not (
        isinstance(qz_x, Independent)
        and isinstance(qz_x.base_dist, Normal)
        and qz_x.reinterpreted_batch_ndims == 1
    ):
        raise ConfigError(
            f"{why}: it works with a diagonal Gaussian posterior only, got "
            f"{type(qz_x).__name__}; use the Gaussian posterior"
        )


def _require_diagonal_gaussian(vae: LatentModel, why: str) -> None:
    """What the model's posterior declares (`diagonal_gaussian_posterior`)."""
    if not vae.diagonal_gaussian_posterior:
        raise ConfigError(
            f"{why}: it works with a diagonal Gaussian posterior only, which this model's "
            "q(z|x) is not; use the Gaussian posterior (and a model without its own posterior)"
        )


def _detached(vae: LatentModel, qz_x: Distribution) -> Distribution:
    """q(z|x) with its parameters cut from the graph: same density, no gradient to them."""
    _require_diagonal_gaussian(vae, "gradient=dreg evaluates q(z|x) at detached parameters")
    normal = qz_x.base_dist
    return Independent(
        Normal(normal.loc.detach(), normal.scale.detach(), validate_args=False),
        1,
        validate_args=False,
    )


def _log_mean_exp(values: Tensor) -> Tensor:
    """log (1/k) sum_i exp(values_i) over the first dimension."""
    return torch.logsumexp(values, 0) - math.log(values.shape[0])
