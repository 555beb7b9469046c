"""Objectives against independent answers: the linear-Gaussian model's closed-form ELBO and
log p(x), the ELBO as IWAE with one sample, torch.distributions' mixtures as the exact
aggregate posterior, and the standard IWAE gradient as DReG's expectation."""

import math

import pytest
import torch
from oracles import LinearGaussian, with_monte_carlo_kl
from torch import nn
from torch.distributions import (
    AffineTransform,
    Categorical,
    Independent,
    MixtureSameFamily,
    Normal,
    TransformedDistribution,
    kl_divergence,
)

from vaelab.errors import ConfigError
from vaelab.models import VAE
from vaelab.models.objectives import (
    BetaTCObjective,
    ElboObjective,
    IwaeObjective,
    minibatch_log_qz,
)

# The perturbed encoder of test_estimators: ELBO about 1 nat below log p(x).
PERTURBATION = {"loc_shift": 0.5, "scale_factor": 1.5}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tensors of a few hundred numbers: a second thread only adds synchronisation (a
    # backward pass took 30 ms with two threads on a busy machine, 2 ms with one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> LinearGaussian:
    return LinearGaussian()


@pytest.fixture(scope="module")
def x(model) -> torch.Tensor:
    return model.sample(10)


@pytest.fixture
def vae(model) -> VAE:
    return model.vae(**PERTURBATION)


def seeded(objective, vae, x, seed=0, **kwargs):
    torch.manual_seed(seed)
    return objective(vae, x, **kwargs)


def gradients(loss: torch.Tensor, module: nn.Module) -> list[torch.Tensor]:
    return torch.autograd.grad(loss.mean(), list(module.parameters()))


def pooled(values: torch.Tensor, repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean over images and repeats of a repeated batch, and its standard error."""
    per_image = values.double().view(repeats, -1)
    return per_image.mean(), per_image.mean(1).std() / math.sqrt(repeats)


class ScaledPosteriorVAE(VAE):
    """q(z|x) pushed through z -> 2z: a TransformedDistribution, as a flow posterior is; the
    model's own posterior, not a diagonal Gaussian, as it declares."""

    own_posterior = True

    def posterior(self, x):
        return TransformedDistribution(
            super().posterior(x), [AffineTransform(0.0, 2.0, event_dim=1)]
        )


def as_flow(vae: VAE) -> ScaledPosteriorVAE:
    latent_dim = vae.latent_dim
    return ScaledPosteriorVAE(vae.encoder, vae.decoder, latent_dim, vae.likelihood, vae.obs_scale)


# ELBO and free bits


def test_elbo_objective_is_todays_beta_elbo(vae, x):
    torch.manual_seed(0)
    rec, kl = vae.elbo_terms(x, num_samples=3)
    objective = ElboObjective(num_samples=3)
    out = seeded(objective, vae, x, beta=0.3)
    assert objective.kl_kind == "closed_form"
    torch.testing.assert_close(out["rec"], rec)
    torch.testing.assert_close(out["kl"], kl)
    torch.testing.assert_close(out["elbo"], rec - kl)
    torch.testing.assert_close(out["loss"], -(rec - 0.3 * kl))
    assert all(value.shape == (len(x),) for value in out.values())


@pytest.mark.parametrize("kl_kind", ["closed_form", "monte_carlo"])
def test_elbo_objective_is_unbiased_for_the_closed_form_elbo(model, vae, x, kl_kind):
    vae = vae if kl_kind == "closed_form" else with_monte_carlo_kl(vae)
    objective = ElboObjective()
    repeats = 400
    elbo, standard_error = pooled(seeded(objective, vae, x.repeat(repeats, 1))["elbo"], repeats)
    assert objective.kl_kind == kl_kind
    assert abs(elbo - model.elbo(vae, x).mean()) < 4 * standard_error


def test_free_bits_floor_the_batch_mean_kl_per_dimension(vae, x):
    loc, scale = vae.encoder(x)
    kl_dims = kl_divergence(Normal(loc, scale), Normal(0.0, 1.0))  # (B, D), independent of the code
    kl_means = kl_dims.mean(0).detach()
    # A floor between the dimensions' batch-mean KLs: the lowest is lifted, the others not.
    free_bits = float(kl_means.sort().values[:2].mean())
    below = kl_means < free_bits
    assert below.any() and not below.all()

    beta = 0.7
    out = seeded(ElboObjective(free_bits=free_bits), vae, x, beta=beta)
    plain = seeded(ElboObjective(), vae, x, beta=beta)
    expected = -out["rec"].mean() + beta * torch.clamp(kl_means, min=free_bits).sum()
    torch.testing.assert_close(out["loss"].mean(), expected)
    for term in ("elbo", "rec", "kl"):  # the true bound, unchanged
        torch.testing.assert_close(out[term], plain[term])

    # Lifted dimensions get no KL gradient: only the reconstruction term moves their scales.
    log_scale = vae.encoder.log_scale
    (grad,) = torch.autograd.grad(out["loss"].mean(), log_scale, retain_graph=True)
    (grad_rec,) = torch.autograd.grad(-out["rec"].mean(), log_scale, retain_graph=True)
    (grad_kl,) = torch.autograd.grad(kl_dims.mean(0).sum(), log_scale)
    torch.testing.assert_close(grad, grad_rec + beta * torch.where(below, 0.0, grad_kl))


def test_free_bits_refuse_a_prior_without_per_dimension_kl(vae, x):
    with pytest.raises(ConfigError, match=r"free bits need .* factorised p\(z\)"):
        ElboObjective(free_bits=0.5)(with_monte_carlo_kl(vae), x)
    with pytest.raises(ConfigError, match=r"factorised q\(z\|x\)"):
        ElboObjective(free_bits=0.5)(as_flow(vae), x)


# IWAE and DReG


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_iwae_with_one_sample_is_the_elbo_in_value_and_gradient(vae, x, beta):
    # Both with the Monte Carlo KL, so the ELBO is one draw's log weight, as IWAE's is.
    vae = with_monte_carlo_kl(vae)
    elbo = seeded(ElboObjective(), vae, x, beta=beta)
    iwae = seeded(IwaeObjective(k=1), vae, x, beta=beta)
    torch.testing.assert_close(iwae["iwae"], elbo["elbo"])
    torch.testing.assert_close(iwae["loss"], elbo["loss"])
    for g_iwae, g_elbo in zip(
        gradients(iwae["loss"], vae), gradients(elbo["loss"], vae), strict=True
    ):
        torch.testing.assert_close(g_iwae, g_elbo)


def test_iwae_reports_the_elbo_of_its_own_draws(vae, x):
    # One draw and the closed-form KL: the ELBO objective's values exactly.
    elbo = seeded(ElboObjective(), vae, x)
    iwae = seeded(IwaeObjective(k=1), vae, x)
    for term in ("elbo", "rec", "kl"):
        torch.testing.assert_close(iwae[term], elbo[term])
    # k draws: rec is their mean log p(x|z), so with the Monte Carlo KL the ELBO is the mean
    # log weight, never above the bound.
    out = seeded(IwaeObjective(k=7), with_monte_carlo_kl(vae), x)
    assert (out["elbo"] <= out["iwae"] + 1e-5).all()


@torch.no_grad()
def test_iwae_bound_rises_towards_log_px(model, x):
    # A worse encoder than PERTURBATION's (ELBO about 4 nats below log p(x)), so that each
    # tenfold k still gains well beyond the Monte Carlo error.
    vae = model.vae(loc_shift=1.0, scale_factor=2.0)
    repeats = 200
    log_px = model.log_px(x).mean()
    bounds, errors = [], []
    for k in (1, 5, 50, 500):
        iwae = seeded(IwaeObjective(k=k), vae, x.repeat(repeats, 1))["iwae"]
        bound, standard_error = pooled(iwae, repeats)
        bounds.append(bound)
        errors.append(standard_error)
        assert bound < log_px + 4 * standard_error
    for i in range(3):
        assert bounds[i + 1] - bounds[i] > 4 * math.hypot(errors[i], errors[i + 1])
    assert log_px - bounds[0] > 3
    assert log_px - bounds[-1] < 0.01


def draws_of_gradients(vae, x, objective, repeats, beta):
    """Per-draw gradients of the batch-mean loss: encoder (R, P_enc) and decoder (R, P_dec)."""
    encoder, decoder = [], []
    for seed in range(repeats):
        grads = gradients(seeded(objective, vae, x, seed=seed, beta=beta)["loss"], vae)
        flat = [g.flatten() for g in grads]
        num_encoder = len(list(vae.encoder.parameters()))
        encoder.append(torch.cat(flat[:num_encoder]))
        decoder.append(torch.cat(flat[num_encoder:]))
    return torch.stack(encoder).double(), torch.stack(decoder).double()


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_dreg_gradient_has_the_iwae_mean_and_a_lower_encoder_variance(vae, x, beta):
    x, repeats, k = x[:4], 300, 10
    enc_std, dec_std = draws_of_gradients(vae, x, IwaeObjective(k), repeats, beta)
    enc_dreg, dec_dreg = draws_of_gradients(vae, x, IwaeObjective(k, "dreg"), repeats, beta)
    # The decoder gradient is IWAE's, draw by draw (the same seeds give the same draws), up
    # to float32 rounding: the surrogate sums the same terms in another order.
    torch.testing.assert_close(dec_dreg, dec_std, atol=1e-5 * dec_std.abs().max(), rtol=1e-4)
    # The encoder gradient is unbiased: paired differences average to 0 within their error.
    difference = enc_dreg - enc_std
    standard_error = difference.std(0) / math.sqrt(repeats)
    assert (difference.mean(0).abs() < 4 * standard_error + 1e-6).all()
    # ... with a fraction of the variance.
    assert enc_dreg.var(0).sum() < 0.5 * enc_std.var(0).sum()


def test_dreg_loss_value_is_the_bound(vae, x):
    standard = seeded(IwaeObjective(k=5), vae, x)
    dreg = seeded(IwaeObjective(k=5, gradient="dreg"), vae, x)
    torch.testing.assert_close(dreg["loss"], -standard["iwae"])
    for term in ("iwae", "elbo", "rec", "kl"):
        torch.testing.assert_close(dreg[term], standard[term].detach())
        assert not dreg[term].requires_grad


def test_dreg_refuses_a_flow_posterior(vae, x):
    with pytest.raises(ConfigError, match=r"dreg .* diagonal Gaussian posterior only"):
        IwaeObjective(gradient="dreg")(as_flow(vae), x)


# beta-TC


@pytest.mark.parametrize("kl_kind", ["closed_form", "monte_carlo"])
def test_beta_tc_terms_add_up_to_the_monte_carlo_kl(vae, x, kl_kind):
    vae = vae if kl_kind == "closed_form" else with_monte_carlo_kl(vae)
    objective = BetaTCObjective(alpha=1.0, beta=1.0, gamma=1.0, dataset_size=1000)
    out = seeded(objective, vae, x)
    torch.manual_seed(0)
    qz_x = vae.posterior(x)
    z = qz_x.rsample()
    log_ratio = qz_x.log_prob(z) - vae.prior().log_prob(z)
    torch.testing.assert_close(out["mi"] + out["tc"] + out["dwkl"], log_ratio)
    assert objective.kl_kind == kl_kind
    # With unit weights the loss is the one-draw ELBO with the Monte Carlo KL.
    elbo = seeded(ElboObjective(), with_monte_carlo_kl(vae), x)["elbo"]
    torch.testing.assert_close(-out["loss"], elbo)
    weighted = seeded(BetaTCObjective(0.5, 6.0, 2.0, dataset_size=1000), vae, x, beta=0.1)
    penalty = 0.5 * out["mi"] + 6.0 * out["tc"] + 2.0 * out["dwkl"]
    torch.testing.assert_close(weighted["loss"], -(out["rec"] - 0.1 * penalty))


def test_beta_tc_of_an_encoder_that_ignores_x_is_zero(vae, x):
    # q(z|x) the same diagonal Gaussian for every x: q(z) = q(z|x) factorises, MI = TC = 0.
    # (Chen et al.'s minibatch weighted sampling gives TC = (D - 1) log N here: 13.8 nats.)
    with torch.no_grad():
        vae.encoder.linear.weight.zero_()
    out = seeded(BetaTCObjective(dataset_size=1000), vae, x)
    torch.testing.assert_close(out["mi"], torch.zeros(len(x)), atol=1e-4, rtol=0)
    torch.testing.assert_close(out["tc"], torch.zeros(len(x)), atol=1e-4, rtol=0)
    torch.testing.assert_close(out["dwkl"], out["mi"] + out["tc"] + out["dwkl"])


class LocEncoder(nn.Module):
    """q(z|x) = N(x, scale² I): the images are the posterior means."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x, torch.full_like(x, self.scale)


def aggregate(
    loc: torch.Tensor, scale: torch.Tensor
) -> tuple[MixtureSameFamily, MixtureSameFamily]:
    """q(z) = (1/N) sum_n q(z|x_n) and its marginals, as torch.distributions mixtures."""
    uniform = Categorical(logits=loc.new_zeros(len(loc)))
    joint = MixtureSameFamily(uniform, Independent(Normal(loc, scale), 1))
    # Marginals: a batch of D one-dimensional mixtures, components along the last axis.
    marginals = MixtureSameFamily(
        Categorical(logits=loc.new_zeros(loc.shape[::-1])), Normal(loc.T, scale.T)
    )
    return joint, marginals


def test_beta_tc_on_the_whole_dataset_is_the_exact_decomposition(model, x):
    # Batch = dataset: the estimates are the aggregate posterior's exact densities. Posteriors
    # 10 times too wide, so that they overlap and every image's term counts.
    vae = model.vae(scale_factor=10.0)
    objective = BetaTCObjective(dataset_size=len(x))
    out = seeded(objective, vae, x)
    torch.manual_seed(0)
    qz_x = vae.posterior(x)
    z = qz_x.rsample()
    joint, marginals = aggregate(qz_x.base_dist.loc, qz_x.base_dist.scale)
    log_qz = joint.log_prob(z)
    log_prod_qzj = marginals.log_prob(z).sum(-1)
    torch.testing.assert_close(out["mi"], qz_x.log_prob(z) - log_qz)
    torch.testing.assert_close(out["tc"], log_qz - log_prod_qzj)
    torch.testing.assert_close(out["dwkl"], log_prod_qzj - vae.prior().log_prob(z))
    assert out["tc"].mean() > 0.5  # this aggregate posterior is correlated
    assert out["mi"].mean() < math.log(len(x)) - 0.2  # and its components overlap


def test_beta_tc_of_a_factorised_aggregate_is_zero():
    # Posterior means on a full 4 x 4 grid: q(z) is the product of two 1-D mixtures, TC = 0.
    grid = torch.linspace(-1.5, 1.5, 4)
    x = torch.cartesian_prod(grid, grid)  # (16, 2)
    vae = VAE(LocEncoder(0.4), nn.Linear(2, 2), latent_dim=2, likelihood="gaussian")
    out = seeded(BetaTCObjective(dataset_size=len(x)), vae, x)
    torch.testing.assert_close(out["tc"], torch.zeros(len(x)), atol=1e-5, rtol=0)
    assert (out["mi"] > 0.1).all()  # the code does depend on x


def test_minibatch_estimate_of_the_aggregate_posterior_is_unbiased(model):
    # q(z_0) for z_0 ~ q(z|x_0), from random batches of 8 of the 64 images that contain x_0,
    # against the exact mixture. Posteriors 20 times too wide, so that the other images
    # count: their weights are what is tested. The marginals q(z_0j) are the same estimate
    # in one dimension (their product is not unbiased: its factors share a batch).
    vae = model.vae(scale_factor=20.0)
    data, batch_size, repeats = model.sample(64, seed=1), 8, 4000
    torch.manual_seed(0)
    with torch.no_grad():
        qz_x = vae.posterior(data)
        loc, scale = qz_x.base_dist.loc, qz_x.base_dist.scale
        z = qz_x.rsample()
        joint, marginals = aggregate(loc, scale)
        exact = torch.cat([joint.log_prob(z[:1]), marginals.log_prob(z[:1])[0]]).exp()
        own = torch.cat([qz_x.log_prob(z)[:1], qz_x.base_dist.log_prob(z)[0]]).exp()
        assert (own / len(data) < 0.5 * exact).all()  # x_0's own term is not the answer
        estimates = []
        for _ in range(repeats):
            others = 1 + torch.randperm(len(data) - 1)[: batch_size - 1]
            batch = torch.cat([torch.zeros(1, dtype=torch.long), others])
            dims = [slice(None), *([j] for j in range(z.shape[1]))]  # all, then each alone
            estimate = [
                minibatch_log_qz(
                    Independent(Normal(loc[batch][:, d], scale[batch][:, d]), 1),
                    z[batch][:, d],
                    len(data),
                )[0][0]
                for d in dims
            ]
            estimates.append(torch.stack(estimate).exp())
    estimates = torch.stack(estimates).double()
    standard_error = estimates.std(0) / math.sqrt(repeats)
    assert ((estimates.mean(0) - exact).abs() < 4 * standard_error).all()


def test_beta_tc_refuses_a_flow_posterior(vae, x):
    with pytest.raises(ConfigError, match=r"beta-TC .* diagonal Gaussian posterior only"):
        BetaTCObjective(dataset_size=100)(as_flow(vae), x)


def test_beta_tc_refuses_a_dataset_smaller_than_the_batch(vae, x):
    with pytest.raises(ConfigError, match=r"dataset_size \(5\) is smaller than the batch"):
        BetaTCObjective(dataset_size=5)(vae, x)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ElboObjective(num_samples=0), "objective.num_samples must be a positive integer"),
        (
            lambda: ElboObjective(num_samples=1.5),
            "objective.num_samples must be a positive integer",
        ),
        (lambda: ElboObjective(free_bits=-0.1), "objective.free_bits must be a number >= 0"),
        (lambda: IwaeObjective(k=0), "objective.k must be a positive integer"),
        (
            lambda: IwaeObjective(gradient="sticking_the_landing"),
            "objective.gradient must be one of",
        ),
        (
            lambda: BetaTCObjective(beta=-1.0, dataset_size=10),
            "objective.beta must be a number >= 0",
        ),
        (lambda: BetaTCObjective(dataset_size=0), "dataset_size must be an integer >= 1"),
    ],
)
def test_bad_settings_are_refused(build, message):
    with pytest.raises(ConfigError, match=message):
        build()
