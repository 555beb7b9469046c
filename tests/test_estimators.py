"""Estimators of log p(x) against the exact answer of a linear-Gaussian model; metrics."""

import json
import math
import re

import pytest
import torch
from oracles import LinearGaussian
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

from vaelab.estimators import (
    CPU_BUDGET,
    ActiveUnitsMetric,
    LogLikelihoodMetric,
    active_units,
    default_max_batch,
    evaluate_log_likelihood,
    evaluation_bytes,
    has_mass,
    iw_log_likelihood,
    kl_per_dim,
    naive_log_likelihood,
)
from vaelab.likelihoods import MIN_LOG_SCALE
from vaelab.lit_module import LitVAE
from vaelab.models import build_vae
from vaelab.models.architectures import MLPVAE
from vaelab.models.priors import StandardPrior
from vaelab.models.vae import VAE
from vaelab.runs import Run

# The perturbed encoder: means off by half a posterior std, stds 1.5 times too wide, so
# ELBO is about 1 nat below log p(x) and the weights have a finite variance.
PERTURBATION = {"loc_shift": 0.5, "scale_factor": 1.5}


@pytest.fixture(scope="module")
def model() -> LinearGaussian:
    return LinearGaussian()


@pytest.fixture(scope="module")
def x(model) -> torch.Tensor:
    return model.sample(10)


def pooled(estimates: torch.Tensor, repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over repeats (rows of a repeated batch) and its standard error, per image."""
    estimates = estimates.double().view(repeats, -1)
    return estimates.mean(0), estimates.std(0) / math.sqrt(repeats)


def test_iw_converges_to_exact_and_beats_naive(model, x):
    torch.manual_seed(0)
    vae = model.vae(**PERTURBATION)
    exact = model.log_px(x)
    log_px, ess = iw_log_likelihood(vae, x, 4000)
    iw_error = log_px.double() - exact
    naive_error = naive_log_likelihood(vae, x, 4000).double() - exact
    assert not log_px.requires_grad
    assert iw_error.mean().abs() < 0.025
    assert iw_error.abs().max() < 0.08
    assert ((ess >= 1) & (ess <= 4000)).all()
    # Prior samples almost never land where the posterior (std ~ 0.03) is.
    assert naive_error.abs().mean() > 1.0
    assert naive_error.abs().mean() > 20 * iw_error.abs().mean()


def test_elbo_below_iw_below_exact(model, x):
    torch.manual_seed(0)
    vae = model.vae(**PERTURBATION)
    repeats = 50
    log_px, _ = iw_log_likelihood(vae, x.repeat(repeats, 1), 100)
    iw, standard_error = pooled(log_px, repeats)
    assert (model.elbo(vae, x) < iw - 4 * standard_error).all()
    assert (iw < model.log_px(x) + 4 * standard_error).all()


def test_iw_bound_grows_with_num_samples(model, x):
    torch.manual_seed(0)
    vae = model.vae(**PERTURBATION)
    repeats = 200
    means, errors = [], []
    for num_samples in (1, 10, 100, 1000):
        log_px, _ = iw_log_likelihood(vae, x.repeat(repeats, 1), num_samples)
        per_image, standard_error = pooled(log_px, repeats)
        means.append(per_image.mean())
        errors.append(standard_error.square().sum().sqrt() / len(x))
    # L_1 is the ELBO in expectation.
    assert (means[0] - model.elbo(vae, x).mean()).abs() < 4 * errors[0]
    assert means[0] < means[1] < means[2]
    # From K = 100 on the remaining gap (~0.005 nats) is comparable with the MC error.
    assert means[3] > means[2] - 3 * math.hypot(errors[2], errors[3])
    assert means[3] < model.log_px(x).mean() + 3 * errors[3]


def test_exact_encoder_gives_equal_weights(model, x):
    vae = model.vae()
    for max_batch in (len(x), 2**15):  # chunks of one sample, and all samples at once
        log_px, ess = iw_log_likelihood(vae, x, 500, max_batch=max_batch)
        assert torch.allclose(log_px.double(), model.log_px(x), rtol=0, atol=1e-4)
        assert torch.allclose(ess, torch.full_like(ess, 500.0), rtol=1e-4)


class FixedWeights:
    """Stands in for a VAE: hands out a fixed (K, B) table of log-weights chunk by chunk."""

    def __init__(self, log_w: torch.Tensor):
        self.log_w, self.used = log_w, 0

    def posterior(self, x: torch.Tensor) -> None:
        return None

    def prior(self) -> None:
        return None

    def log_importance_weights(
        self, x: torch.Tensor, num_samples: int, qz_x=None, pz=None
    ) -> torch.Tensor:
        chunk = self.log_w[self.used : self.used + num_samples]
        self.used += num_samples
        return chunk


@pytest.mark.parametrize("max_batch", [4, 3 * 4, 7 * 4, 2**15])
def test_streaming_logsumexp_is_chunk_invariant(max_batch):
    # Widely spread log-weights: a naive exp-sum would overflow or underflow.
    log_w = torch.cat([torch.randn(50, 4) * 300 - 1000, torch.randn(50, 4)])
    log_w = log_w[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    stand_in = FixedWeights(log_w)  # no check_data: it is no model
    log_px, ess = iw_log_likelihood(stand_in, torch.zeros(4, 1), 100, max_batch, check=False)
    expected_ess = torch.exp(2 * log_w.logsumexp(0) - (2 * log_w).logsumexp(0))
    assert torch.allclose(log_px, log_w.logsumexp(0) - math.log(100), rtol=0, atol=1e-4)
    assert torch.allclose(ess, expected_ess.clamp(1, 100), rtol=1e-5)


def test_chunking_bounds_decoder_batch_and_keeps_statistics(model, x):
    torch.manual_seed(0)
    vae = model.vae(**PERTURBATION)
    rows = []
    vae.decoder.register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    repeats = 20
    batch = x.repeat(repeats, 1)
    chunked, chunked_ess = iw_log_likelihood(vae, batch, 300, max_batch=1000)
    naive_log_likelihood(vae, batch, 300, max_batch=1000)
    assert max(rows) <= 1000
    whole, whole_ess = iw_log_likelihood(vae, batch, 300, max_batch=300 * len(batch))
    assert max(rows) == 300 * len(batch)
    rows.clear()  # fewer evaluations per chunk than images: groups of 70 images
    grouped, grouped_ess = iw_log_likelihood(vae, batch, 300, max_batch=70)
    naive_log_likelihood(vae, batch, 300, max_batch=70)
    assert max(rows) <= 70 and grouped.shape == grouped_ess.shape == (len(batch),)
    for a, b in ((chunked, whole), (chunked_ess, whole_ess), (grouped, whole)):
        (mean_a, se_a), (mean_b, se_b) = pooled(a, repeats), pooled(b, repeats)
        assert ((mean_a - mean_b).abs() < 4 * (se_a**2 + se_b**2).sqrt()).all()


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_default_chunks_keep_decoder_memory_within_the_cpu_budget(arch):
    vae = LitVAE(arch=arch, latent_dim=8).vae.eval()
    x = torch.rand(16, 1, 28, 28).round()
    rows = []
    vae.decoder.register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    iw_log_likelihood(vae, x, 1000)
    per_evaluation = evaluation_bytes(vae)
    # conv layers hold more per evaluation than the mlp's: it gets smaller chunks
    assert per_evaluation > (40_000 if arch == "conv" else 6_000)
    assert max(rows) == default_max_batch(vae, x.device) // len(x) * len(x)
    assert max(rows) * per_evaluation <= CPU_BUDGET
    assert sum(rows) == 1000 * len(x)


def test_kl_per_dim_sums_to_the_vae_kl(model, x):
    vae = model.vae(**PERTURBATION)
    with torch.no_grad():
        qz_x, pz = vae.posterior(x), vae.prior()
        per_dim = kl_per_dim(vae, qz_x)
        kl = kl_divergence(qz_x, pz)
    assert per_dim.shape == (len(x), model.latent_dim)
    assert (per_dim >= 0).all()
    assert torch.allclose(per_dim.sum(-1), kl)
    d = model.latent_dim
    standard = Independent(Normal(torch.zeros(2, d), torch.ones(2, d)), 1)  # p(z) itself
    assert torch.equal(kl_per_dim(vae, standard), torch.zeros(2, d))


class RenamedStandardPrior(StandardPrior):
    """A user's N(0, I) under another class name: factorised, as it declares."""


MODELS = "vaelab.models."


@pytest.mark.parametrize(
    ("parts", "splits"),
    [
        ({}, True),
        ({"prior": {"_target_": MODELS + "priors.MixturePrior", "components": 4}}, False),
        (
            {
                "posterior": {
                    "_target_": MODELS + "posteriors.IAFPosterior",
                    "steps": 1,
                    "hidden_dim": 4,
                }
            },
            False,
        ),
        ({"prior": {"_target_": f"{__name__}.RenamedStandardPrior"}}, True),
        ({"model": MODELS + "hvae.HierarchicalVAE"}, False),  # q(z1|x, z2): its own posterior
    ],
)
def test_kl_per_dim_is_defined_where_the_parts_declare_a_factorised_kl(parts, splits):
    """By what the model's parts declare (`kl_splits`), not by their class names: None for
    a mixture prior, a flow posterior or a model with its own posterior."""
    torch.manual_seed(0)
    model = {"_target_": parts.pop("model", MODELS + "architectures.MLPVAE"), "hidden_dim": 4}
    vae = build_vae(model, (1, 4, 4), 3, "bernoulli", 0.1, **parts)
    x = torch.bernoulli(torch.full((2, 1, 4, 4), 0.5))
    per_dim = kl_per_dim(vae, vae.posterior(x))
    assert (per_dim is not None) == splits == vae.kl_splits
    if splits:
        assert torch.allclose(per_dim.sum(-1), kl_divergence(vae.posterior(x), vae.prior()))


def test_active_units_counts_the_dims_that_vary():
    g = torch.Generator().manual_seed(0)
    stds = torch.tensor([1.0, 0.05, 0.5, 0.0, 0.05, 0.2])  # variances 1, .0025, .25, 0, .0025, .04
    means = 3.0 + torch.randn(1000, 6, generator=g) * stds  # offset: the mean must be removed
    count, variances = active_units(means)
    assert count == 3
    assert torch.allclose(variances, stds.square(), rtol=0.15)

    scales = torch.rand(1000, 6, generator=g) + 0.1
    q = Independent(Normal(means, scales), 1)
    kl_dims = kl_per_dim(MLPVAE((1, 2, 2), 6, "bernoulli", hidden_dim=4), q)  # p(z) = N(0, I)
    metric = ActiveUnitsMetric(latent_dim=6)
    metric.update(means[:300], kl_dims[:300])
    metric.update(means[300:], kl_dims[300:])
    out = metric.compute()
    assert int(out["active_units"]) == 3
    assert torch.allclose(out["variance"], variances, atol=1e-4)
    assert torch.allclose(out["kl_per_dim"], kl_dims.mean(0))
    without_kl = ActiveUnitsMetric(latent_dim=6)  # a flow posterior or a mixture prior
    without_kl.update(means)
    assert "kl_per_dim" not in without_kl.compute()  # undefined: not logged, never faked


def test_log_likelihood_metric_weights_batches_by_size():
    log_px = torch.tensor([-90.0, -100.0, -110.0, -80.0, -95.0])
    ess = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0])
    iwae = LogLikelihoodMetric(num_dims=784, suffix="iwae")
    iwae.update(log_px[:2], ess[:2], log_px[:2])  # a mass: log P(x) = log p(x)
    iwae.update(log_px[2:], ess[2:], log_px[2:])
    out = iwae.compute()
    assert set(out) == {"nll_iwae", "bpd_iwae", "ess_iwae"}
    assert torch.isclose(out["nll_iwae"], -log_px.mean())
    assert torch.isclose(out["bpd_iwae"], -log_px.mean() / (784 * math.log(2)))
    assert torch.isclose(out["ess_iwae"], ess.mean())

    naive = LogLikelihoodMetric(num_dims=784, suffix="naive")
    naive.update(log_px)
    assert set(naive.compute()) == {"nll_naive"}  # no log P(x) given: no bpd
    # The bits count the data's probability log P(x), not the model's log p(x).
    masses = LogLikelihoodMetric(num_dims=784, suffix="naive")
    masses.update(log_px[:2], log_mass=log_px[:2] - 700)
    masses.update(log_px[2:], log_mass=log_px[2:] - 700)
    out = masses.compute()
    assert torch.isclose(out["nll_naive"], -log_px.mean())
    assert torch.isclose(out["bpd_naive"], (700 - log_px.mean()) / (784 * math.log(2)))


def uniform_bytes(n: int, d: int) -> torch.Tensor:
    """n images of d uniformly random bytes k, as the model gets them: k / 255."""
    return torch.randint(0, 256, (n, d), generator=torch.Generator().manual_seed(0)) / 255


class Staircase(nn.Module):
    """A decoder whose mean is the 8-bit level k/255 on the k-th of 256 intervals of
    z ∈ R of equal prior mass, 1/256 each: p(x) = Σ_k N(x; k/255, σ²) / 256."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        levels = (Normal(0.0, 1.0).cdf(z) * 256).floor().clamp(0, 255)
        return (levels / 255).view(-1, 1, 1, 1)


class PriorEncoder(nn.Module):
    """q(z|x) = p(z): the importance-sampled estimate is the naive one, whose only error is
    its Monte Carlo noise (a Gaussian q inside the level's interval of z is a loose one)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(len(x), 1), torch.ones(len(x), 1)


def test_a_sharp_density_on_uniform_bytes_costs_at_least_8_bits():
    """gaussian_learned at its scale's floor (9e-4), its mean on each level with prior
    mass 1/256: its density at x = k/255 is 443 / 256 = 1.73, so p(x) / 256 claimed 7.2
    bits, below the 8 bits that uniform bytes cost under any model. The masses of the
    levels' bins, from the same draws: P(k) = 0.97 / 256 for every k, 8.04 bits."""
    torch.manual_seed(0)
    vae = VAE(PriorEncoder(), Staircase(), 1, "gaussian_learned", math.exp(MIN_LOG_SCALE))
    x = uniform_bytes(512, 1).view(512, 1, 1, 1)
    out = evaluate_log_likelihood(vae, [x], num_samples=8192, binary=False)
    level_mass = 1 - 2 * Normal(0.0, math.exp(MIN_LOG_SCALE)).cdf(torch.tensor(-0.5 / 255))
    expected = 8 - math.log2(level_mass)  # (the levels 0 and 255 hold a little more)
    for name in ("iwae", "naive"):
        # With 32 draws per level, log (1/K) Σ is low by about 1/64 nats (Jensen): the
        # bound holds in expectation, up to the Monte Carlo noise of one estimate.
        assert out[f"bpd_{name}"] >= 8.0 - 0.01
        assert out[f"bpd_{name}"] == pytest.approx(expected, abs=0.05)
        # nll stays the nats of the density, negative where it exceeds 1: 443 / 256.
        assert out[f"nll_{name}"] == pytest.approx(-math.log(443.3 / 256), abs=0.05)
        riemann = out[f"nll_{name}"] / math.log(2) + 8  # what the first pass reported
        assert riemann < 7.3


@pytest.mark.parametrize("likelihood", ["gaussian_learned", "continuous_bernoulli", "bernoulli"])
def test_log_P_comes_from_the_draws_and_weights_of_log_p(likelihood):
    """One pass over the decoder: the masses draw nothing, so log p(x) is the same with
    them; a mass's log P(x) is its log p(x); images in groups (max_batch 8 < 12 images)."""
    vae = MLPVAE((1, 4, 4), 2, likelihood, 0.1, hidden_dim=8).eval()
    x = uniform_bytes(12, 16).view(12, 1, 4, 4)
    if likelihood == "bernoulli":
        x = x.round()
    torch.manual_seed(0)
    plain, plain_ess = iw_log_likelihood(vae, x, 20, max_batch=8)
    torch.manual_seed(0)
    log_px, ess, log_mass = iw_log_likelihood(vae, x, 20, max_batch=8, mass=True)
    assert log_mass.shape == (12,)
    assert torch.equal(log_px, plain) and torch.equal(ess, plain_ess)
    torch.manual_seed(0)
    naive = naive_log_likelihood(vae, x, 20, max_batch=8, mass=True)
    assert naive.shape == (2, 12)
    assert (naive[1] <= 0).all()  # a mean of probabilities P(x|z_k) ≤ 1
    if likelihood == "bernoulli":
        assert torch.equal(log_mass, log_px) and torch.equal(naive[0], naive[1])
    else:  # a density's nats are not the data's
        assert not torch.allclose(log_mass, log_px, atol=1.0)


def test_a_density_of_binary_pixels_has_no_bits_per_dimension():
    """0 and 1 are no bins of [0, 1]: a Gaussian of scale 0.1 has density 4 at either."""
    assert has_mass(density=False, binary=True)  # a mass is the data's own
    assert has_mass(density=False, binary=False)
    assert has_mass(density=True, binary=False)  # the masses of the 8-bit levels' bins
    assert not has_mass(density=True, binary=True)
    assert not has_mass(density=True, binary=None)  # unknown quantisation
    metric = LogLikelihoodMetric(784, "iwae")
    metric.update(torch.tensor([500.0]), torch.tensor([3.0]))
    assert set(metric.compute()) == {"nll_iwae", "ess_iwae"}


@pytest.mark.parametrize(
    ("likelihood", "binary", "bits"),
    [
        ("continuous_bernoulli", False, "masses"),
        ("gaussian_learned", False, "masses"),
        ("continuous_bernoulli", True, None),
        ("gaussian", None, None),
        ("bernoulli", True, "nll"),
        ("discretized_logistic", False, "nll"),
    ],
)
def test_evaluate_log_likelihood_reads_what_the_likelihood_is(likelihood, binary, bits):
    torch.manual_seed(0)
    vae = MLPVAE((1, 4, 4), 2, likelihood, 0.1, hidden_dim=8)
    x = uniform_bytes(20, 16).view(20, 1, 4, 4)
    if likelihood == "bernoulli":
        x = x.round()
    out = evaluate_log_likelihood(vae, [x], num_samples=4, binary=binary)
    if bits is None:
        assert "bpd_iwae" not in out and "bpd_naive" not in out
        return
    for name in ("iwae", "naive"):
        density_bits = out[f"nll_{name}"] / (16 * math.log(2))
        if bits == "nll":  # a mass: the model's log p(x) is the data's
            assert out[f"bpd_{name}"] == pytest.approx(density_bits, rel=1e-5)
        else:  # a density on uniform bytes: the masses of their levels, 8 bits or more
            assert out[f"bpd_{name}"] > 8


def test_evaluate_log_likelihood(model):
    torch.manual_seed(0)
    vae = model.vae(**PERTURBATION)
    vae.train()
    x = model.sample(200, seed=1)
    batches = [x[:50], (x[50:], torch.zeros(150))]  # bare tensors and (images, labels)
    # Real-valued data under a Gaussian density: no bits per dimension.
    out = evaluate_log_likelihood(vae, batches, num_samples=1000)
    assert set(out) == {"nll_iwae", "ess_iwae", "nll_naive", "elbo"}
    assert vae.training
    assert abs(out["nll_iwae"] + model.log_px(x).mean().item()) < 0.02
    assert 1 <= out["ess_iwae"] <= 1000
    assert out["nll_naive"] > out["nll_iwae"] + 1
    assert out["elbo"] < -out["nll_iwae"] - 0.5


def test_num_samples_must_be_positive(model, x):
    with pytest.raises(ValueError, match="num_samples"):
        iw_log_likelihood(model.vae(), x, 0)


def test_active_units_of_a_flow_posterior_do_not_count_monte_carlo_noise():
    """A flow's E_q[z|x] is a mean of draws: its noise (Var_q / S, here 1/64 > 0.01) would
    make every dimension of an encoder that ignores x look active."""
    from vaelab.models.posteriors import IAFPosterior
    from vaelab.models.vae import posterior_mean_and_noise

    torch.manual_seed(0)
    flow = IAFPosterior(4, steps=1, context_dim=2, hidden_dim=8)  # starts as its base
    loc = torch.zeros(2000, 4)
    loc[:, 0] = torch.randn(2000)  # only dimension 0 varies with x
    qz_x = flow(loc, torch.ones(2000, 4), torch.zeros(2000, 2))
    means, noise = posterior_mean_and_noise(qz_x)
    assert means[:, 1:].var(0).min() > 1e-2  # the raw Monte Carlo means would count them
    metric = ActiveUnitsMetric(latent_dim=4)
    metric.update(means, None, noise)
    out = metric.compute()
    assert int(out["active_units"]) == 1
    assert out["variance"][1:].max() < 5e-3 and out["variance"][0] > 0.9


@pytest.mark.slow
def test_a_density_on_uniform_bytes_costs_8_bits_and_the_console_shows_it(
    train_cli, mnist_idx_root
):
    """MNIST files of uniformly random bytes: no model codes them below 8 bits a sub-pixel
    (before, likelihood=gaussian_learned reported about 2: its density's nats alone).
    Binarized, a density's nll is no bpd of the data, and none is reported."""
    result = train_cli(
        "-m",
        f"data.data_dir={mnist_idx_root}",
        "data.binarize=none,dynamic",
        "likelihood=gaussian_learned",
        "obs_scale=0.3",  # starts near the bytes' spread, the best Gaussian's scale (0.29)
        "model=mlp",
        "latent_dim=2",
        "trainer=debug",
        "batch_size=32",
        "n_importance=4",
        "logger=none",
        "callbacks.pictures.every_n_epochs=100",
    )
    runs = {Run(d).config()["data"]["binarize"]: d for d in result.run_dirs}
    grey = json.loads((runs["none"] / "metrics.json").read_text())
    assert grey["data_source"].startswith("idx:")
    assert grey["test/bpd_iwae"] >= 8.0 and grey["test/bpd_naive"] >= 8.0
    density_bits = grey["test/nll_iwae"] / (784 * math.log(2))
    assert density_bits < 8  # what the density alone claims: fewer bits than the bytes hold
    # The masses of the levels' bins: about p(k/255) / 255 for a density this smooth.
    assert grey["test/bpd_iwae"] == pytest.approx(density_bits + math.log2(255), abs=0.1)
    binary = json.loads((runs["dynamic"] / "metrics.json").read_text())
    assert "test/nll_iwae" in binary and "test/bpd_iwae" not in binary
    # The console's Final metrics show the 8-bit run's headline figure, and only its.
    shown = re.findall(r"^bpd_iwae +(\S+)$", result.output, re.MULTILINE)
    assert shown == [f"{grey['test/bpd_iwae']:.4g}"]
