"""The 8-bit likelihoods against direct float64 computations: the discretized logistic's
masses, tails, gradients, mean and draws, the masses a density puts on the 8-bit levels,
the learned scales inside a VAE, and the mixture of discretized logistics (PixelCNN++)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import cli, tiny
from scipy.stats import norm

from vaelab import load_run
from vaelab.likelihoods import (
    MIN_LOG_SCALE,
    BinnedContinuousBernoulli,
    BinnedNormal,
    DiscretizedLogistic,
    DiscretizedLogisticLikelihood,
    DiscretizedLogisticMixture,
    GaussianLikelihood,
    LearnedGaussianLikelihood,
    LogisticMixtureLikelihood,
)
from vaelab.lit_module import LitVAE
from vaelab.runs import Run
from vaelab.tasks import compare

LEVELS = torch.arange(256, dtype=torch.float64) / 255


def direct_masses(loc: float, log_scale: float) -> torch.Tensor:
    """The 256 masses as differences of the logistic's CDF at the bins' edges, float64; to
    the right of loc as differences of its survival function, which do not cancel there."""
    inner = LEVELS[1:] - 0.5 / 255
    edges = torch.cat([torch.tensor([-math.inf]), inner, torch.tensor([math.inf])])
    t = (edges - loc) / math.exp(log_scale)
    cdf, survival = torch.sigmoid(t), torch.sigmoid(-t)
    right = loc < LEVELS
    return torch.where(right, survival[:-1] - survival[1:], cdf[1:] - cdf[:-1])


@pytest.mark.parametrize("loc", [-0.5, 0.0, 0.3, 0.5, 1.0, 1.5])
@pytest.mark.parametrize("log_scale", [-7.0, -4.0, -1.0, 1.0])
def test_the_masses_of_the_256_values_sum_to_one_and_match_the_cdf_differences(loc, log_scale):
    p = DiscretizedLogistic(
        torch.tensor(loc, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64)
    )
    log_p = p.log_prob(LEVELS)
    expected = direct_masses(loc, log_scale)
    assert torch.logsumexp(log_p, 0).exp() == pytest.approx(1.0, abs=1e-12)
    shown = expected > 1e-300  # where float64's differences have not underflowed
    assert torch.allclose(log_p[shown], expected[shown].log(), rtol=1e-9, atol=1e-9)


# The bins of the 8-bit levels k/255: [k − 1/2, k + 1/2] / 255, the end bins open.
INNER_EDGES = (np.arange(255) + 0.5) / 255


@pytest.mark.parametrize("loc", [-3.0, -0.5, 0.0, 0.3, 0.5, 1.0, 4.0])
@pytest.mark.parametrize("scale", [1e-4, math.exp(MIN_LOG_SCALE), 0.01, 0.3, 3.0])
def test_a_gaussian_puts_on_the_256_levels_masses_that_sum_to_one_and_are_its_cdf_steps(loc, scale):
    """Against scipy's CDF in float64 (its survival function above loc, where the CDF's
    steps cancel); before, a density had no masses, only p(k/255) / 256."""
    log_mass = BinnedNormal(
        torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)
    ).log_mass(LEVELS)
    assert log_mass.dtype == torch.float64
    assert torch.logsumexp(log_mass, 0).exp() == pytest.approx(1.0, abs=1e-12)
    lower = np.concatenate([[-np.inf], INNER_EDGES])
    upper = np.concatenate([INNER_EDGES, [np.inf]])
    above = LEVELS.numpy() > loc
    expected = np.where(
        above,
        norm.sf(lower, loc, scale) - norm.sf(upper, loc, scale),
        norm.cdf(upper, loc, scale) - norm.cdf(lower, loc, scale),
    )
    shown = expected > 1e-250  # where scipy's differences have not underflowed
    assert shown.sum() >= 1
    assert np.allclose(log_mass.numpy()[shown], np.log(expected[shown]), rtol=1e-6, atol=1e-9)
    assert torch.isfinite(log_mass).all()  # where scipy's underflow, still a log-mass


@pytest.mark.parametrize("probs", [1e-9, 1e-3, 0.3, 0.4999, 0.5, 0.5001, 0.9, 1 - 1e-9])
def test_a_continuous_bernoulli_puts_on_the_256_levels_masses_that_sum_to_one(probs):
    """Against the CDF written out, F(x) = (λ^x (1 − λ)^(1−x) + λ − 1) / (2λ − 1), in
    float64 (the uniform's at λ = 1/2), on the bins clipped to [0, 1]."""
    logits = torch.tensor(math.log(probs) - math.log1p(-probs), dtype=torch.float64)
    log_mass = BinnedContinuousBernoulli(logits=logits).log_mass(LEVELS)
    assert torch.logsumexp(log_mass, 0).exp() == pytest.approx(1.0, abs=1e-12)
    edges = np.concatenate([[0.0], INNER_EDGES, [1.0]])
    if probs == 0.5:
        cdf = edges
    else:
        cdf = (probs**edges * (1 - probs) ** (1 - edges) + probs - 1) / (2 * probs - 1)
    expected = np.diff(cdf)
    shown = expected > 1e-9  # where the written-out steps do not cancel
    assert np.allclose(log_mass.numpy()[shown], np.log(expected[shown]), rtol=0, atol=1e-6)
    assert torch.isfinite(log_mass).all()


def test_a_sharp_density_at_a_black_pixel_has_a_mass_of_at_most_one():
    """gaussian_learned at its scale's floor (9e-4) with its mean at x = 0: the density
    is 443 there, and p(0) / 256 = 1.73 claimed negative bits; the mass of the level is
    P(X ≤ 1/510) ≤ 1 (0.985)."""
    x = torch.zeros(1, 1, 2, 2)
    px_z = LearnedGaussianLikelihood().observation(
        torch.zeros(1, 1, 2, 2), 3, log_scale=torch.full((1, 2, 2), -9.0)
    )
    riemann = px_z.log_prob(x) - 4 * math.log(256)  # the bins' width of the first pass
    assert float(riemann) > 0  # a "probability" above 1
    log_mass = px_z.log_mass(x)
    assert log_mass.shape == (1,) and log_mass.dtype == torch.float32
    expected = 4 * norm.logcdf(0.5 / 255, 0, math.exp(MIN_LOG_SCALE))
    assert float(log_mass) <= 0
    assert float(log_mass) == pytest.approx(expected, rel=1e-5)


def test_far_tails_stay_finite_and_accurate_in_float32():
    # loc 0, scale e^-4: at x = 0.9 both sigmoids are 1 - 1e-10 in float32, whose direct
    # difference is 0 (log -inf); the mirrored form keeps it.
    loc, log_scale = torch.zeros(3), torch.full((3,), -4.0)
    x = torch.tensor([0.5, 0.9, 200 / 255])
    log_p = DiscretizedLogistic(loc, log_scale).log_prob(x)
    exact = DiscretizedLogistic(loc.double(), log_scale.double()).log_prob(x.double())
    assert torch.isfinite(log_p).all()
    assert torch.allclose(log_p.double(), exact, rtol=1e-5)
    half, s = 0.5 / 255, math.exp(-4.0)
    for value, got in zip(x.double().tolist(), exact.tolist(), strict=True):
        a, b = (value + half) / s, (value - half) / s  # σ(−b) − σ(−a), exact in float64 here
        assert got == pytest.approx(
            math.log(1 / (1 + math.exp(b)) - 1 / (1 + math.exp(a))), rel=1e-9
        )


def test_the_gradients_are_those_of_the_direct_formula():
    loc = torch.tensor([0.2, 0.7, -0.1, 1.2], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor([-3.0, -2.0, -1.0, -4.0], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([0.2, 100 / 255, 0.0, 1.0], dtype=torch.float64)
    ours = torch.autograd.grad(
        DiscretizedLogistic(loc, log_scale).log_prob(x).sum(), (loc, log_scale)
    )

    def direct(loc, log_scale):
        s = torch.exp(log_scale)
        upper = torch.where(
            x > 1 - 0.5 / 255, torch.ones_like(x), torch.sigmoid((x + 0.5 / 255 - loc) / s)
        )
        lower = torch.where(
            x < 0.5 / 255, torch.zeros_like(x), torch.sigmoid((x - 0.5 / 255 - loc) / s)
        )
        return torch.log(upper - lower).sum()

    expected = torch.autograd.grad(direct(loc, log_scale), (loc, log_scale))
    for a, b in zip(ours, expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-8)


def test_the_mean_and_the_draws_follow_the_masses():
    loc, log_scale = torch.tensor([0.1, 0.5, 0.97]), torch.tensor([-3.0, -1.5, -2.0])
    p = DiscretizedLogistic(loc, log_scale)
    masses = torch.stack(
        [direct_masses(m, s) for m, s in zip(loc.tolist(), log_scale.tolist(), strict=True)]
    )
    assert torch.allclose(p.mean.double(), masses @ LEVELS, atol=1e-5)
    torch.manual_seed(0)
    draws = p.sample((20000,))
    assert ((draws * 255).round() == draws * 255).all() and draws.min() >= 0 and draws.max() <= 1
    counts = torch.stack(
        [torch.bincount((draws[:, i] * 255).round().long(), minlength=256) for i in range(3)]
    )
    assert (counts / 20000 - masses).abs().max() < 0.01


@pytest.mark.parametrize("likelihood", ["discretized_logistic", "gaussian_learned"])
def test_a_vae_learns_one_scale_per_sub_pixel_starting_at_obs_scale(likelihood):
    torch.manual_seed(0)
    module = LitVAE(
        arch="mlp",
        latent_dim=2,
        hidden_dim=8,
        likelihood=likelihood,
        obs_scale=0.2,
        image_shape=(3, 4, 4),
    )
    vae = module.vae
    assert vae.log_obs_scale.shape == (3, 4, 4) and "vae.log_obs_scale" in module.state_dict()
    assert torch.allclose(vae.log_obs_scale, torch.full((3, 4, 4), math.log(0.2)))
    x = (torch.rand(5, 3, 4, 4) * 255).round() / 255
    rec, _ = vae.elbo_terms(x)
    rec.sum().backward()
    assert vae.log_obs_scale.grad is not None and vae.log_obs_scale.grad.abs().sum() > 0
    z = torch.zeros(5, 2)
    params = vae.decoder(z)
    scale = torch.exp(vae.log_obs_scale.detach())
    if likelihood == "gaussian_learned":
        expected = torch.distributions.Normal(params, scale).log_prob(x).sum((1, 2, 3))
    else:
        expected = (
            DiscretizedLogistic(params, vae.log_obs_scale.detach().expand_as(params))
            .log_prob(x)
            .sum((1, 2, 3))
        )
    assert torch.allclose(vae.observation(z).log_prob(x), expected, rtol=1e-5)


def test_a_learned_likelihood_without_its_scale_is_refused():
    with pytest.raises(ValueError, match="needs its learned log_scale"):
        DiscretizedLogisticLikelihood(name="discretized_logistic").observation(
            torch.zeros(2, 1, 4, 4), 3
        )


# --- the mixture of discretized logistics -------------------------------------------------


def mixture_params(k: int, c: int, coupled: bool, pixels: int = 1, seed: int = 0) -> torch.Tensor:
    """Random float64 parameters (1, K (1 + 2C [+ C(C-1)/2]), pixels, 1) of a mixture:
    locations in [0, 1], log-scales in [-3.5, -1.5], logits and raw coefficients N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    per = 1 + 2 * c + (c * (c - 1) // 2 if coupled else 0)
    p = torch.randn(1, k * per, pixels, 1, generator=g, dtype=torch.float64)
    p[:, k : k + k * c] = torch.rand(k * c, pixels, 1, generator=g, dtype=torch.float64)
    p[:, k + k * c : k + 2 * k * c] = -1.5 - 2 * torch.rand(k * c, pixels, 1, generator=g)
    return p


def direct_pixel_mass(params: torch.Tensor, k: int, x: list[float]) -> float:
    """P(x) of one RGB pixel x from the raw parameters (1, 10 K, 1, 1), written out as in
    PixelCNN++: weights by softmax, G's location shifted by tanh(a) r, B's by tanh(b) r +
    tanh(c) g, each channel's mass a float64 difference of the logistic's CDF."""
    p = params[0, :, 0, 0].tolist()
    logits, loc, log_scale, raw = p[:k], p[k : 4 * k], p[4 * k : 7 * k], p[7 * k :]
    weights = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0).tolist()
    total = 0.0
    for j in range(k):
        a, b, c = (math.tanh(v) for v in raw[3 * j : 3 * j + 3])
        locs = [loc[3 * j], loc[3 * j + 1] + a * x[0], loc[3 * j + 2] + b * x[0] + c * x[1]]
        mass = weights[j]
        for ch in range(3):
            level = round(x[ch] * 255)
            mass *= direct_masses(locs[ch], log_scale[3 * j + ch])[level].item()
        total += mass
    return total


@pytest.mark.parametrize("k", [1, 4])
def test_a_grey_mixtures_masses_of_the_256_levels_sum_to_one(k):
    params = mixture_params(k, 1, coupled=True)
    log_p = DiscretizedLogisticMixture(params, k, True).log_prob(LEVELS.view(256, 1, 1, 1))
    assert log_p.shape == (256,)
    assert torch.logsumexp(log_p, 0).exp() == pytest.approx(1.0, abs=1e-12)


def test_an_rgb_mixtures_masses_sum_over_a_sub_pixels_levels_to_its_marginals():
    """Per sub-pixel: B's 256 levels, for fixed R and G, sum to P(R, G) (the direct sum of
    the CDF differences). Per pixel, jointly, on a coarse grid of R: all 65,536 levels of G
    and B sum to P(R), the weighted masses of R's logistics alone, and those sum to one
    over R's 256 levels: so do the 256³ colours."""
    k = 3
    params = mixture_params(k, 3, True)
    mixture = DiscretizedLogisticMixture(params, k, True)
    r, g = 100 / 255, 30 / 255
    blue = torch.stack([torch.full((256,), r), torch.full((256,), g), LEVELS], 1)
    p_rg = torch.logsumexp(mixture.log_prob(blue.view(256, 3, 1, 1)), 0).exp().item()
    direct_rg = sum(direct_pixel_mass(params, k, [r, g, b / 255]) for b in range(256))
    assert p_rg == pytest.approx(direct_rg, rel=1e-9)
    p = params[0, :, 0, 0]
    weights, loc, log_scale = torch.softmax(p[:k], 0), p[k : 4 * k : 3], p[4 * k : 7 * k : 3]
    p_r = sum(w * direct_masses(m, s) for w, m, s in zip(weights, loc, log_scale, strict=True))
    assert p_r.sum().item() == pytest.approx(1.0, abs=1e-12)
    greens, blues = LEVELS.repeat_interleave(256), LEVELS.repeat(256)
    for level in range(0, 256, 17):  # 16 levels of R, each with all of G and B
        x = torch.stack([torch.full_like(greens, level / 255), greens, blues], 1)
        total = torch.logsumexp(mixture.log_prob(x.view(-1, 3, 1, 1)), 0).exp().item()
        assert total == pytest.approx(p_r[level].item(), rel=1e-9, abs=1e-15)


def test_an_rgb_mixtures_mass_is_the_cdf_differences_of_its_coupled_channels():
    k = 5
    params = mixture_params(k, 3, True, seed=1)
    mixture = DiscretizedLogisticMixture(params, k, True)
    torch.manual_seed(1)
    x = (torch.rand(20, 3, dtype=torch.float64) * 255).round() / 255
    x[0], x[1] = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0])  # end bins
    ours = mixture.log_prob(x.view(20, 3, 1, 1))
    direct = [math.log(direct_pixel_mass(params, k, v)) for v in x.tolist()]
    assert torch.allclose(ours, torch.tensor(direct, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_one_uncoupled_component_is_the_discretized_logistic():
    torch.manual_seed(0)
    loc, log_scale = torch.rand(4, 3, 5, 5), -1 - 3 * torch.rand(4, 3, 5, 5)
    params = torch.cat([torch.randn(4, 1, 5, 5), loc, log_scale], 1)  # K = 1: one logit
    likelihood = LogisticMixtureLikelihood(components=1, coupled=False)
    assert likelihood.param_channels(3) == 7
    x = (torch.rand(4, 3, 5, 5) * 255).round() / 255
    ours = likelihood.observation(params, 3).log_prob(x)
    expected = DiscretizedLogistic(loc, log_scale).log_prob(x).sum((1, 2, 3))
    assert ours.shape == (4,) and torch.allclose(ours, expected, rtol=1e-6)
    assert torch.allclose(likelihood.observation(params, 3).log_mass(x), expected, rtol=1e-6)


@pytest.mark.parametrize("coupled", [True, False])
def test_a_mixtures_draws_are_8_bit_and_follow_its_masses(coupled):
    k = 3
    params = mixture_params(k, 1, coupled, pixels=1).float()
    mixture = DiscretizedLogisticMixture(params, k, coupled)
    masses = mixture.log_prob(LEVELS.float().view(256, 1, 1, 1)).exp()
    torch.manual_seed(0)
    draws = mixture.sample((20000,))
    assert draws.shape == (20000, 1, 1, 1, 1)
    assert ((draws * 255).round() == draws * 255).all() and draws.min() >= 0 and draws.max() <= 1
    counts = torch.bincount((draws.flatten() * 255).round().long(), minlength=256)
    assert (counts / 20000 - masses).abs().max() < 0.01
    assert mixture.mean.item() == pytest.approx((masses * LEVELS.float()).sum().item(), abs=1e-5)
    rgb = DiscretizedLogisticMixture(mixture_params(k, 3, coupled, pixels=6).float(), k, coupled)
    colours = rgb.sample((50,))
    assert colours.shape == (50, 1, 3, 6, 1) and colours.min() >= 0 and colours.max() <= 1
    assert ((colours * 255).round() == colours * 255).all()


# --- runs: the likelihood options through the real CLI, and runs made before them ----------


def _old_form(run_dir: Path, likelihood: str, obs_scale: float) -> None:
    """Rewrite a run as runs made before conf/likelihood/ wrote it: config.yaml and every
    checkpoint's hyperparameters name the option and give a top-level obs_scale."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["likelihood"]["name"] == likelihood  # today's form, written by train.py
    old = {"likelihood": likelihood, "obs_scale": obs_scale}
    config = {**old, **{k: v for k, v in config.items() if k not in old}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["hyper_parameters"].update(old)
        torch.save(checkpoint, path)


def test_a_run_made_before_the_likelihood_options_evaluates_loads_compares_and_resumes(
    train_cli, tmp_path
):
    """A real run of likelihood=gaussian with a standard deviation of 0.2, rewritten into
    the old form (`likelihood: gaussian`, `obs_scale: 0.2` at the top): eval.py gives the
    figures training gave (so the old top-level scale is read: 0.1, the default, gives
    others), load_run builds its likelihood, compare labels it, and it resumes."""
    overrides = tiny(
        "likelihood=gaussian",
        "likelihood.obs_scale=0.2",
        "data.binarize=none",
        "latent_dim=2",
        "n_importance=4",
        "callbacks.pictures.every_n_epochs=100",
    )
    (run_dir,) = train_cli(*overrides).run_dirs
    trained = Run(run_dir).metrics()
    _old_form(run_dir, "gaussian", 0.2)

    args = (f"run_dir={run_dir}", "n_importance=4", "trainer.limit_test_batches=2")
    result = cli("eval.py", *args, cwd=tmp_path / "eval")  # the batches training tested
    assert result.returncode == 0, result.stderr[-3000:]
    (evaluation,) = Run(run_dir).evaluations()
    for key in ("test/nll_iwae", "test/bpd_iwae"):
        assert evaluation[key] == pytest.approx(trained[key], rel=1e-5), key

    vae = load_run(run_dir)
    assert type(vae.likelihood) is GaussianLikelihood and vae.likelihood.obs_scale == 0.2
    (row,) = compare.run([run_dir], out_dir=tmp_path / "compare").rows
    assert row.data.endswith(", 8-bit, likelihood=gaussian")  # mnist or its stand-in set

    train_cli(*overrides, f"resume={run_dir}", "trainer.max_epochs=2")
    run = Run(run_dir)
    assert run.state == "finished" and [row["epoch"] for row in run.history()] == [0, 1]
    assert run.config()["likelihood"]["obs_scale"] == 0.2


def test_a_run_on_mnists_grey_levels_trains_with_a_mixture_of_discretized_logistics(train_cli):
    """Two components of one channel: the decoder gives 2 (1 + 2) = 6 values per pixel;
    a discrete likelihood, so the bits per sub-pixel are the nats over 784 ln 2, above 0."""
    overrides = tiny(
        "likelihood=logistic_mixture",
        "likelihood.components=2",
        "data.binarize=none",
        "latent_dim=2",
        "n_importance=4",
        "callbacks.pictures.every_n_epochs=100",
    )
    (run_dir,) = train_cli(*overrides).run_dirs
    metrics = Run(run_dir).metrics()
    assert metrics["test/bpd_iwae"] * 784 * math.log(2) == pytest.approx(metrics["test/nll_iwae"])
    assert metrics["test/bpd_iwae"] > 0
    vae = load_run(run_dir)
    assert type(vae.likelihood) is LogisticMixtureLikelihood and vae.likelihood.components == 2
    assert vae.decoder(torch.zeros(1, 2)).shape == (1, 6, 28, 28)
    assert vae.data_shape == (1, 28, 28) and vae.sample(3).shape == (3, 1, 28, 28)
