"""Estimators of log p(x) and latent diagnostics; plain functions and metrics, no Trainer.

All log-likelihoods are nats per image; anything named `nll` is positive nats.
"""

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence
from torchmetrics import Metric

from vaelab.models.conditional import given
from vaelab.models.vae import VAE

# Memory that the decoder evaluations of one chunk may hold at once. On a CPU a chunk
# that fits in the caches is the fastest: for K=128 on 64 images the conv decoder's
# estimate ran 14.3k evaluations/s in chunks of 256-512 (about 25-50 MB) and 9.0k/s in
# chunks of 2,048 (200 MB); the mlp decoder was flat from 512 up. A GPU wants large chunks.
CPU_BUDGET = 32 * 2**20
GPU_BUDGET_SHARE = 4  # a quarter of the free memory
MAX_CHUNK = {"cpu": 4096, "gpu": 2**15}


def evaluation_bytes(vae: VAE, mass: bool = False) -> int:
    """Bytes one decoder evaluation holds: the outputs of the decoder's layers and the
    log-density's temporaries (about three copies of the likelihood's parameters),
    measured on one latent; with `mass`, a density's masses of 8-bit levels add about
    eight float64 copies (`vaelab.likelihoods.BinnedNormal.log_mass`)."""
    sizes: list[int] = []

    def record(module: torch.nn.Module, inputs: object, output: Tensor) -> None:
        sizes.append(output.numel() * output.element_size())

    leaves = [m for m in vae.decoder.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.no_grad():
            # `forward`, not the call: a compiled decoder would recompile for the hooks.
            params = vae.decoder.forward(torch.zeros(1, vae.decoder_input_dim, device=vae.device))
    finally:
        for hook in hooks:
            hook.remove()
    masses = 8 * params.numel() * 8 if mass and vae.density else 0
    return sum(sizes) + 3 * params.numel() * 4 + masses


def default_max_batch(vae: VAE, device: torch.device, mass: bool = False) -> int:
    """Decoder evaluations per chunk when the caller gives none: the device's memory budget
    over what one evaluation holds (`evaluation_bytes`)."""
    if device.type == "cuda":
        budget, kind = torch.cuda.mem_get_info(device)[0] // GPU_BUDGET_SHARE, "gpu"
    else:
        budget, kind = CPU_BUDGET, "cpu"
    return max(64, min(MAX_CHUNK[kind], budget // evaluation_bytes(vae, mass)))


def _chunk_sizes(num_samples: int, batch_size: int, max_batch: int) -> Iterator[int]:
    """Split K samples into chunks of at most max(1, max_batch // B) samples per image."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    chunk = max(1, max_batch // batch_size)
    for start in range(0, num_samples, chunk):
        yield min(chunk, num_samples - start)


@torch.no_grad()
def iw_log_likelihood(
    vae: VAE,
    x: Tensor,
    num_samples: int,
    max_batch: int | None = None,
    *,
    check: bool = True,
    mass: bool = False,
) -> tuple[Tensor, ...]:
    """Importance-weighted estimate of log p(x) (the IWAE bound L_K) and its ESS.

    log p(x) ≈ log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x). Samples are drawn in
    chunks so that at most `max_batch` decoder evaluations are alive at once (images are
    taken in groups of `max_batch` if there are more), and the chunks are combined with a
    running logsumexp, so memory grows neither with K nor with B. The encoder runs once per
    group; put the model in eval mode first.

    Args:
        vae: the model.
        x: a batch of observations (B, ...), model-ready (`VAE.check_data`).
        num_samples: K, importance samples per image.
        max_batch: bound on decoder evaluations per chunk (chunk size × B); None: by
            the device's memory budget (`default_max_batch`).
        check: check x first with `vae.check_data`, once per call; False skips it, for
            callers whose batches are model-ready by construction (LitVAE's test step).
        mass: also estimate log P(x), the probability of the discrete data, from the same
            draws and weights with log P(x|z_k) for log p(x|z_k) (`VAE.log_px_z`): the
            same as log_px for a likelihood of discrete values; for a density of 8-bit
            levels, of the masses of their bins. Not for a density of binary data.

    Returns:
        log_px: (B,) nats; E[log_px] <= log p(x), non-decreasing in K, = ELBO at K = 1.
        ess: (B,) effective sample size 1 / Σ_k w̃_k² of the normalised weights, in [1, K].
        log_mass: with `mass` only, (B,) nats; E[log_mass] <= log P(x), as log_px.

    Raises:
        InputError: x is not model-ready (uint8, grey levels for a Bernoulli, wrong shape).
    """
    if check:
        vae.check_data(x)
    max_batch = max_batch or default_max_batch(vae, x.device, mass)
    if len(x) > max_batch:  # more images than a chunk holds: a group of images at a time
        parts = [
            iw_log_likelihood(vae, group, num_samples, max_batch, check=False, mass=mass)
            for group in x.split(max_batch)
        ]
        return tuple(torch.cat(estimates) for estimates in zip(*parts, strict=True))
    # Row 0: the weights of log p(x|z); with `mass`, row 1: those of log P(x|z).
    lse = torch.full((1 + mass, x.shape[0]), -math.inf, device=x.device)
    lse2 = torch.full((x.shape[0],), -math.inf, device=x.device)
    qz_x, pz = vae.posterior(x), vae.prior()
    for k in _chunk_sizes(num_samples, x.shape[0], max_batch):
        if mass:
            log_w = vae.log_importance_weights(x, k, qz_x, pz, mass=True)  # (2, k, B)
        else:
            log_w = vae.log_importance_weights(x, k, qz_x, pz)[None]  # (1, k, B)
        lse = torch.logaddexp(lse, log_w.logsumexp(1))
        lse2 = torch.logaddexp(lse2, (2 * log_w[0]).logsumexp(0))
    # (Σw)² / Σw²; rounding can put it a few ulps outside [1, K].
    ess = torch.exp(2 * lse[0] - lse2).clamp(1, num_samples)
    log_px, *log_mass = lse - math.log(num_samples)
    return (log_px, ess, *log_mass)


@torch.no_grad()
def naive_log_likelihood(
    vae: VAE,
    x: Tensor,
    num_samples: int,
    max_batch: int | None = None,
    *,
    check: bool = True,
    mass: bool = False,
) -> Tensor:
    """Naive Monte Carlo estimate log (1/K) Σ_k p(x|z_k), z_k ~ p(z): (B,) nats; with
    `mass`, (2, B): stacked with the estimate of log P(x) from the same draws, as
    `iw_log_likelihood`'s.

    Unbiased for p(x) but, with a posterior much narrower than the prior, almost every
    sample misses it: at equal K it is far below the importance-weighted estimate. The
    prior draws do not depend on x, so one set of K draws serves the whole batch: the
    decoder runs K times instead of K·B times. Each image's estimate is the usual one;
    only the errors of different images are correlated. A conditional model's p(z|y)
    differs per image: its K draws are drawn per image, of log p(x|y). Chunked, and x checked, like
    `iw_log_likelihood`.
    """
    if check:
        vae.check_data(x)
    max_batch = max_batch or default_max_batch(vae, x.device, mass)
    if len(x) > max_batch:  # more images than a chunk holds: a group of images at a time
        return torch.cat(
            [
                naive_log_likelihood(vae, group, num_samples, max_batch, check=False, mass=mass)
                for group in x.split(max_batch)
            ],
            dim=-1,
        )
    lse = torch.full((1 + mass, x.shape[0]), -math.inf, device=x.device)
    pz = vae.prior()
    for k in _chunk_sizes(num_samples, x.shape[0], max_batch):
        # (k, 1, D), broadcast over the batch; a p(z|y) per image (batch shape (B,)): (k, B, D)
        z = pz.sample((k,) if pz.batch_shape else (k, 1))
        log_px_z = vae.log_px_z(vae.observation(z), x, mass)  # (k, B) or (2, k, B)
        lse = torch.logaddexp(lse, log_px_z.logsumexp(-2))
    estimate = lse - math.log(num_samples)
    return estimate if mass else estimate[0]


def kl_per_dim(vae: VAE, qz_x: Distribution) -> Tensor | None:
    """KL(q(z_d|x) || p(z_d)) per latent dimension: (B, D) nats that sum to the KL, where
    the model's posterior and prior declare a factorised KL (`VAE.kl_splits`) and torch has
    its closed form per dimension (diagonal Gaussians); else None: the KL of a flow
    posterior or a mixture prior does not split into dimensions.

    Args:
        vae: the model whose q(z|x) it is; its prior p(z) is built here.
        qz_x: `vae.posterior(x)`, batch shape (B,).
    """
    if not vae.kl_splits:
        return None
    pz = vae.prior()
    try:  # whether torch registers a closed form is a fact of the two distributions' types
        kl = kl_divergence(qz_x.base_dist, pz.base_dist)
    except NotImplementedError:
        return None
    return kl.expand(qz_x.batch_shape + qz_x.event_shape)


def active_units(posterior_means: Tensor, threshold: float = 1e-2) -> tuple[int, Tensor]:
    """Active units of Burda et al. (2015): dimensions u with Cov_x(E_q(u|x)[u]) > threshold.

    Args:
        posterior_means: (N, D) posterior means E_q(z|x)[z] over a dataset.
        threshold: variance above which a unit counts as active.

    Returns:
        The number of active units and the per-dimension variances (D,) (divided by N).
    """
    variances = posterior_means.var(0, correction=0)
    return int((variances > threshold).sum()), variances


def has_mass(density: bool, binary: bool | None) -> bool:
    """Whether the data have a probability under the model, which bits per dimension
    count: always for a likelihood of discrete values (`bernoulli` of binary pixels,
    `discretized_logistic` of 8-bit levels), whose log p(x) is it; for a density
    (`vaelab.models.vae.VAE.density`) only of 8-bit data (`binary` False), whose levels
    have bins (`vaelab.likelihoods.Observation.log_mass`). Not for a density of binary
    data, or of data whose quantisation is unknown (`binary` None): 0 and 1 are no bins of
    [0, 1], and a Gaussian of scale 0.1 has density 4 at either.

    Args:
        density: the model's log-likelihood is a density of x.
        binary: the data hold 0s and 1s only (binarized); False: 8-bit levels k/255.
    """
    return not density or binary is False


class LogLikelihoodMetric(Metric):
    """Dataset mean of per-image log p(x) estimates, DDP-correct (sums of states).

    `compute` returns {"nll"}, "bpd" if the estimates of log P(x), the probability of the
    discrete data, were given to `update`, and "ess" if the ESS was, each name followed by
    `_{suffix}` when a suffix is set (e.g. `nll_iwae`). nll is positive nats per image of
    what the model's log-likelihood is (for a density, nats of the density); bpd is
    −log P(x) / (num_dims · ln 2), bits per sub-pixel of the discrete data.

    Args:
        num_dims: D_x, the number of sub-pixels of one image (784 for MNIST).
        suffix: name of the estimator, appended to the keys.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, num_dims: int, suffix: str = "", **kwargs):
        super().__init__(**kwargs)
        self.num_dims = num_dims
        self.suffix = f"_{suffix}" if suffix else ""
        self.add_state("sum_log_px", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("sum_log_mass", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("sum_ess", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("count_mass", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("count_ess", torch.tensor(0), dist_reduce_fx="sum")

    def update(
        self, log_px: Tensor, ess: Tensor | None = None, log_mass: Tensor | None = None
    ) -> None:
        """log_px: (B,) nats; ess: (B,) effective sample sizes, if the estimator has them;
        log_mass: (B,) nats, the estimates of log P(x), where the data have one (`has_mass`)."""
        self.sum_log_px += log_px.detach().sum()
        self.count += log_px.numel()
        if ess is not None:
            self.sum_ess += ess.detach().sum()
            self.count_ess += ess.numel()
        if log_mass is not None:
            self.sum_log_mass += log_mass.detach().sum()
            self.count_mass += log_mass.numel()

    def compute(self) -> dict[str, Tensor]:
        out = {"nll": -self.sum_log_px / self.count}
        if self.count_mass > 0:
            out["bpd"] = -self.sum_log_mass / (self.count_mass * self.num_dims * math.log(2))
        if self.count_ess > 0:
            out["ess"] = self.sum_ess / self.count_ess
        return {f"{key}{self.suffix}": value for key, value in out.items()}


def update_estimates(
    iwae: LogLikelihoodMetric,
    naive: LogLikelihoodMetric,
    vae: VAE,
    x: Tensor,
    num_samples: int,
    max_batch: int | None = None,
    *,
    mass: bool,
) -> None:
    """Add a model-ready batch's importance-sampled and naive estimates to their metrics:
    log p(x), the ESS and, with `mass` (`has_mass`), log P(x) from the same draws."""
    iwae.update(*iw_log_likelihood(vae, x, num_samples, max_batch, check=False, mass=mass))
    naive_estimates = naive_log_likelihood(vae, x, num_samples, max_batch, check=False, mass=mass)
    if mass:
        naive.update(naive_estimates[0], log_mass=naive_estimates[1])
    else:
        naive.update(naive_estimates)


class MeansMetric(Metric):
    """Means over a dataset of several per-example values at once, DDP-correct.

    One update per batch, whatever the number of values: `update` takes them stacked as
    (T, B); `compute` returns the (T,) means over every example seen. A MeanMetric per value
    would cost T updates per batch, each checking its input for NaNs with a host sync.

    Args:
        num_values: T.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, num_values: int, **kwargs):
        super().__init__(**kwargs)
        self.add_state("sums", torch.zeros(num_values), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        """values: (T, B), T values for each of B examples."""
        self.sums += values.detach().float().sum(1)
        self.count += values.shape[1]

    def compute(self) -> Tensor:
        return self.sums / self.count


class ActiveUnitsMetric(Metric):
    """Active units and per-dimension mean KL of q(z|x) over a dataset, DDP-correct.

    Keeps Σ E_q[z|x], Σ E_q[z|x]², Σ KL per dimension and a count: all sum-reducible, so
    nothing is gathered across processes. Float32 sums suffice: the variance is compared
    with 1e-2 and the KL term keeps the aggregate posterior mean near 0, so the sum of
    squares is not dominated by the squared mean (float64 states would break on MPS).

    `compute` returns {"active_units": () count, "variance": (D,) Cov_x of the posterior
    means} and, when every update had it, "kl_per_dim": (D,) mean nats per image; log the
    entries e.g. as `val/active_units` and `val/kl_dim/{i}`.

    Args:
        latent_dim: D.
        layers: the stochastic layers' (name, size), in the order of z's dimensions; with
            more than one, `compute` also gives "active_units_<name>" per layer.
        threshold: variance above which a unit counts as active (Burda et al. 2015: 1e-2).
    """

    full_state_update = False
    is_differentiable = False

    def __init__(
        self,
        latent_dim: int,
        layers: Sequence[tuple[str, int]] = (),
        threshold: float = 1e-2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if layers and sum(size for _, size in layers) != latent_dim:
            raise ValueError(f"the layers {layers} do not add up to latent_dim={latent_dim}")
        self.layers = tuple(layers)
        self.threshold = threshold
        self.add_state("sum_loc", torch.zeros(latent_dim), dist_reduce_fx="sum")
        self.add_state("sum_loc_sq", torch.zeros(latent_dim), dist_reduce_fx="sum")
        self.add_state("sum_kl", torch.zeros(latent_dim), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("count_kl", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("sum_noise", torch.zeros(latent_dim), dist_reduce_fx="sum")

    def update(
        self,
        posterior_means: Tensor,
        kl_dims: Tensor | None = None,
        mean_noise: Tensor | None = None,
    ) -> None:
        """posterior_means: (B, D) E_q[z|x]; kl_dims: (B, D) nats, or None where undefined;
        mean_noise: (B, D) the variance of Monte Carlo means (a flow posterior's), which
        would otherwise count as variation across the data: subtracted from the variance."""
        loc = posterior_means.detach().float()
        self.sum_loc += loc.sum(0)
        self.sum_loc_sq += loc.square().sum(0)
        self.count += loc.shape[0]
        if mean_noise is not None:
            self.sum_noise += mean_noise.detach().float().sum(0)
        if kl_dims is not None:
            self.sum_kl += kl_dims.detach().float().sum(0)
            self.count_kl += loc.shape[0]

    def compute(self) -> dict[str, Tensor]:
        mean = self.sum_loc / self.count
        spread = self.sum_loc_sq / self.count - mean.square() - self.sum_noise / self.count
        variance = spread.clamp(min=0)
        active = variance > self.threshold
        out = {"active_units": active.sum(), "variance": variance}
        if len(self.layers) > 1:
            per_layer = active.split([size for _, size in self.layers])
            for (name, _), layer in zip(self.layers, per_layer, strict=True):
                out[f"active_units_{name}"] = layer.sum()
        if 0 < self.count_kl == self.count:
            out["kl_per_dim"] = self.sum_kl / self.count
        return out


@torch.no_grad()
def evaluate_log_likelihood(
    vae: VAE,
    batches: Iterable[Tensor | tuple[Tensor, ...]],
    num_samples: int,
    max_batch: int | None = None,
    *,
    binary: bool | None = None,
) -> dict[str, float]:
    """IWAE and naive estimates of log p(x) plus the ELBO, averaged over a dataset.

    Runs the model in eval mode (restored afterwards) on its own device; no Trainer.

    Args:
        vae: the model.
        batches: model-ready images (B, ...), or tuples whose first entry is the images:
            e.g. `vaelab.model_batches(run_dir)`. Each batch is checked once. A conditional
            VAE (`vaelab.models.conditional`) needs the tuples (x, y): its estimates are
            then of log p(x|y).
        num_samples: K for both estimators.
        max_batch: bound on decoder evaluations per chunk; None: by the device.
        binary: the images are binarized (True) or 8-bit levels (False); None: unknown,
            which leaves out the bits per dimension of a density (see `has_mass`).

    Returns:
        Per-image means: nll_iwae, bpd_iwae, ess_iwae, nll_naive, bpd_naive (positive nats
        of the model's log-likelihood, a density's for a density, and bits per sub-pixel of
        the discrete data; no bpd where `has_mass` is False) and elbo (nats, one sample
        per image).

    Raises:
        InputError: a batch is not model-ready (see `VAE.check_data`).
    """
    device = vae.device
    mass = has_mass(vae.density, binary)
    iwae = naive = None
    sum_elbo, count = 0.0, 0
    was_training = vae.training
    vae.eval()
    try:
        for batch in batches:
            x = (batch[0] if isinstance(batch, tuple | list) else batch).to(device)
            vae.check_data(x)
            if iwae is None:
                iwae = LogLikelihoodMetric(x[0].numel(), "iwae").to(device)
                naive = LogLikelihoodMetric(x[0].numel(), "naive").to(device)
            labelled = isinstance(batch, tuple | list) and len(batch) > 1
            # A conditional VAE's estimates are given the batch's labels: of log p(x|y).
            with given(vae, batch[1]) if labelled else nullcontext():
                update_estimates(iwae, naive, vae, x, num_samples, max_batch, mass=mass)
                rec, kl = vae.elbo_terms(x)
            sum_elbo += float((rec - kl).sum())
            count += x.shape[0]
    finally:
        vae.train(was_training)
    if iwae is None:
        raise ValueError("evaluate_log_likelihood got no batches")
    results = {**iwae.compute(), **naive.compute(), "elbo": sum_elbo / count}
    return {key: float(value) for key, value in results.items()}
