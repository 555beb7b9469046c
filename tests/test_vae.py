"""The maths of `VAE`: KL, reparameterization, the ELBO against an exact log p(x), shapes;
the check of the data its public methods and the estimators are given."""

import math

import pytest
import torch
from conftest import options
from omegaconf import OmegaConf
from oracles import LinearGaussian
from tiny import tiny_trainer
from torch.distributions import kl_divergence
from torch.utils.data import DataLoader, TensorDataset

from vaelab.config import config_dir
from vaelab.errors import InputError
from vaelab.estimators import evaluate_log_likelihood, iw_log_likelihood, naive_log_likelihood
from vaelab.likelihoods import LIKELIHOODS
from vaelab.lit_module import LitVAE

ARCHS = options("model")


def small_vae(arch: str = "mlp", likelihood: str = "bernoulli") -> LitVAE:
    """The model option `arch` (its option file), with hidden layers of 32 units."""
    node = {**OmegaConf.load(config_dir() / "model" / f"{arch}.yaml"), "hidden_dim": 32}
    return LitVAE(model=node, latent_dim=4, likelihood=likelihood)


def images(likelihood: str, batch_size: int = 3) -> torch.Tensor:
    x = torch.rand(batch_size, 1, 28, 28)
    return x.round() if likelihood == "bernoulli" else (x * 255).round() / 255  # 8-bit levels


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    vae = small_vae().vae
    with torch.no_grad():
        qz_x, pz = vae.posterior(images("bernoulli", 4)), vae.prior()
        z = qz_x.sample((200_000,))
        log_ratio = qz_x.log_prob(z) - pz.log_prob(z)  # (S, B)
        kl = kl_divergence(qz_x, pz)
    standard_error = log_ratio.std(0) / math.sqrt(log_ratio.shape[0])
    assert (kl > 0).all()
    assert ((log_ratio.mean(0) - kl).abs() < 4 * standard_error).all()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("with_kl", [True, False], ids=["elbo", "rec_only"])
def test_gradients_reach_encoder_through_rsample(arch, with_kl):
    # The reconstruction term alone depends on the encoder only through z = loc + scale * eps.
    torch.manual_seed(0)
    vae = small_vae(arch).vae
    rec, kl = vae.elbo_terms(images("bernoulli"))
    loss = -(rec - kl).mean() if with_kl else -rec.mean()
    loss.backward()
    for name, param in vae.encoder.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_oracle_elbo_is_exact_for_the_exact_posterior():
    model = LinearGaussian()
    x = model.sample(5)
    exact = model.log_px(x)
    assert torch.allclose(model.elbo(model.vae(), x), exact, rtol=0, atol=1e-8)
    # Every ELBO integrand log p(x|z) + log p(z) - log q(z|x) equals log p(x), up to float32.
    with torch.no_grad():
        log_w = model.vae().log_importance_weights(x, 1000)
    assert (log_w.double() - exact).abs().max() < 1e-4


@pytest.mark.parametrize("perturbed", [False, True])
def test_elbo_terms_match_closed_form_elbo_and_bound_log_px(perturbed):
    torch.manual_seed(0)
    model = LinearGaussian()
    vae = model.vae(loc_shift=0.5, scale_factor=1.5) if perturbed else model.vae()
    x = model.sample(5)
    num_samples = 100_000
    with torch.no_grad():
        rec, kl = vae.elbo_terms(x, num_samples)
        log_px_z = vae.observation(vae.posterior(x).sample((num_samples,))).log_prob(x)
    standard_error = log_px_z.double().std(0) / math.sqrt(num_samples)
    elbo, exact = (rec - kl).double(), model.log_px(x)
    assert ((elbo - model.elbo(vae, x)).abs() < 4 * standard_error).all()
    if perturbed:
        assert (elbo < exact - 4 * standard_error).all()
        assert (exact - elbo > 0.5).all()  # the gap KL(q || p(z|x)) is about 1 nat here
    else:
        assert ((elbo - exact).abs() < 4 * standard_error).all()


def test_more_samples_same_mean_smaller_variance():
    torch.manual_seed(0)
    model = LinearGaussian()
    vae = model.vae(loc_shift=0.5, scale_factor=1.5)
    # Rows of one repeated x are independent repeats of the estimator.
    x = model.sample(1).expand(4000, -1)
    num_samples = 16
    with torch.no_grad():
        rec_1, kl_1 = vae.elbo_terms(x, 1)
        rec_s, kl_s = vae.elbo_terms(x, num_samples)
    assert torch.equal(kl_1, kl_s)
    var_1, var_s = rec_1.var(), rec_s.var()
    assert (rec_1.mean() - rec_s.mean()).abs() < 4 * ((var_1 + var_s) / len(x)).sqrt()
    assert 0.75 * num_samples < var_1 / var_s < 1.25 * num_samples


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_signs(arch, likelihood):
    torch.manual_seed(0)
    vae = small_vae(arch, likelihood).vae
    x = images(likelihood)
    with torch.no_grad():
        loc, scale = vae.encoder(x)
        rec, kl = vae.elbo_terms(x, num_samples=2)
        log_w = vae.log_importance_weights(x, 5)
    assert loc.shape == scale.shape == (3, 4)
    assert (scale > 0).all()
    assert rec.shape == kl.shape == (3,)
    assert torch.isfinite(rec).all() and torch.isfinite(kl).all()
    assert (kl >= 0).all()
    assert log_w.shape == (5, 3)
    assert torch.isfinite(log_w).all()


# --- the data check of the public entry points ------------------------------------------

ENTRY_POINTS = {
    "encode": lambda vae, x: vae.encode(x),
    "reconstruct": lambda vae, x: vae.reconstruct(x),
    "iw_log_likelihood": lambda vae, x: iw_log_likelihood(vae, x, 10),
    "naive_log_likelihood": lambda vae, x: naive_log_likelihood(vae, x, 10),
    "evaluate_log_likelihood": lambda vae, x: evaluate_log_likelihood(vae, [(x, None)], 10),
}
GREY = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
BAD_INPUTS = {
    # (likelihood, x, what the error says): the mistakes the API made silently before.
    "uint8": ("bernoulli", (GREY * 255).to(torch.uint8), r"uint8 values 0\.\.255: .*/ 255"),
    "0..255 floats": ("bernoulli", (GREY * 255).round(), r"values in \[0, 255\].*x / 255"),
    "0..255 floats, gaussian": ("gaussian", (GREY * 255).round(), r"\[0, 1\].*x / 255"),
    "grey levels, bernoulli": (
        "bernoulli",
        GREY,
        r"likelihood=bernoulli needs binary pixels \(0 or 1\).*torch\.bernoulli\(x\)",
    ),
    "below 0": ("continuous_bernoulli", GREY - 0.5, r"values in \[-0\.\d+, 0\.\d+\]"),
    "int64": ("gaussian", GREY.round().long(), r"dtype torch\.int64, not floating point"),
    "NaN": ("gaussian", GREY.masked_fill(GREY > 0.9, math.nan), "NaN or infinite"),
    "flattened": ("bernoulli", GREY.round().flatten(1), r"shape \(3, 784\), .*\(B, 1, 28, 28\)"),
    "no batch dimension": ("bernoulli", GREY[0].round(), r"\(B, 1, 28, 28\): add .*x\[None\]"),
    "other image size": ("gaussian", torch.rand(3, 1, 32, 32), r"shape \(3, 1, 32, 32\)"),
}


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_data_is_refused_with_one_line_saying_what_to_do(case, entry_point):
    likelihood, x, message = BAD_INPUTS[case]
    vae = small_vae(likelihood=likelihood).vae.eval()
    with pytest.raises(InputError, match=message) as info:
        ENTRY_POINTS[entry_point](vae, x)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
    if "dimension" not in case and "NaN" not in case:
        assert "vaelab.model_batches(run_dir, split)" in str(info.value)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_model_ready_data_passes_the_check(arch, likelihood):
    vae = small_vae(arch, likelihood).vae.eval()
    assert vae.data_shape == (1, 28, 28)
    for x in (images(likelihood), torch.zeros(2, 1, 28, 28), torch.ones(1, 1, 28, 28)):
        assert vae.encode(x).shape == (len(x), vae.latent_dim)  # hvae: z1 and z2 of 4
        log_px, _ = iw_log_likelihood(vae, x, 10)
        assert torch.isfinite(log_px).all()


def test_the_estimators_check_once_per_call_and_batch_not_per_chunk(monkeypatch):
    vae = small_vae().vae.eval()
    calls = []
    monkeypatch.setattr(vae, "check_data", lambda x: calls.append(len(x)))
    x = images("bernoulli", batch_size=8)
    iw_log_likelihood(vae, x, 10, max_batch=4)  # groups of 4 images, chunks of 1 sample
    naive_log_likelihood(vae, x, 10, max_batch=4)
    assert calls == [8, 8]
    evaluate_log_likelihood(vae, [x[:5], x[5:]], 10, max_batch=4)
    assert calls == [8, 8, 5, 3]


def test_training_validation_and_test_steps_do_not_check_their_batches(tmp_path):
    # Data the check refuses (values outside [0, 1]) that a Gaussian likelihood still
    # scores: a check anywhere in the steps would stop this run.
    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28) * 3 - 1
    model = LitVAE(arch="mlp", latent_dim=2, hidden_dim=32, likelihood="gaussian", n_importance=5)
    with pytest.raises(InputError, match="values in"):
        model.vae.check_data(x)
    loader = DataLoader(TensorDataset(x, torch.zeros(64)), batch_size=32)
    trainer = tiny_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    (results,) = trainer.test(model, dataloaders=loader)
    assert math.isfinite(results["test/nll_iwae"])
