"""vaelab.load_run: a trained run back as a VAE, from its directory or one of its checkpoints."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import vaelab
from vaelab.api import load_run
from vaelab.config import instantiate
from vaelab.errors import VaelabError
from vaelab.estimators import iw_log_likelihood
from vaelab.lit_module import LitVAE
from vaelab.models.vae import VAE


def best_checkpoint(run_dir: Path) -> Path:
    (ckpt,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    return ckpt


def test_import_vaelab_is_light_and_exports_load_run():
    # `import vaelab` loads neither torch nor Lightning: vaelab.load_run imports them lazily.
    code = "import sys, vaelab; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert vaelab.load_run is load_run


@pytest.mark.slow
@pytest.mark.parametrize("given", ["run_dir", "checkpoint_file"])
def test_load_run_gives_the_trained_vae_in_eval_mode(trained_run, given):
    vae = vaelab.load_run(trained_run if given == "run_dir" else best_checkpoint(trained_run))

    assert isinstance(vae, VAE)
    assert not any(module.training for module in vae.modules())
    expected = LitVAE.load_from_checkpoint(best_checkpoint(trained_run), map_location="cpu").vae
    for name, value in expected.state_dict().items():
        assert torch.equal(vae.state_dict()[name], value), name

    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.3))
    z = vae.encode(x)
    assert z.shape == (5, 2)
    for images in (vae.decode(z), vae.reconstruct(x), vae.sample(7)):
        assert images.shape[1:] == (1, 28, 28)
        assert images.min() >= 0 and images.max() <= 1  # Bernoulli means
    assert vae.sample(7).shape == (7, 1, 28, 28)


@pytest.mark.slow
def test_load_run_last_checkpoint(trained_run):
    vae = vaelab.load_run(trained_run, checkpoint="last")
    expected = LitVAE.load_from_checkpoint(trained_run / "checkpoints" / "last.ckpt").vae
    for name, value in expected.state_dict().items():
        assert torch.equal(vae.state_dict()[name], value), name


@pytest.mark.slow
def test_importance_sampled_log_likelihood_is_above_the_elbo(trained_run):
    data = instantiate(OmegaConf.load(trained_run / "config.yaml").data)
    data.setup("test")
    x, _ = data.test_images(32)
    vae = vaelab.load_run(trained_run)
    torch.manual_seed(0)

    log_px, _ = iw_log_likelihood(vae, x, num_samples=500)
    with torch.no_grad():
        rec, kl = vae.elbo_terms(x, num_samples=1000)  # E_q by Monte Carlo, the bound itself

    assert log_px.shape == (32,) and torch.isfinite(log_px).all()
    # E[L_K] >= ELBO for every image; averaged over 32 images the estimates' noise is small.
    assert log_px.mean() >= (rec - kl).mean() - 0.5
    assert log_px.mean() < 0  # a probability of binary pixels


def test_load_run_of_a_missing_directory_says_what_to_give(tmp_path):
    with pytest.raises(VaelabError, match="does not exist: give a run directory") as error:
        vaelab.load_run(tmp_path / "no-such-run")
    assert "\n" not in str(error.value)


def test_load_run_without_checkpoints_suggests_the_other_one(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").touch()
    with pytest.raises(VaelabError, match=r"no best checkpoint .*: use checkpoint=last"):
        vaelab.load_run(tmp_path)


def test_load_run_of_a_directory_without_checkpoints(tmp_path):
    with pytest.raises(VaelabError, match=r"no checkpoints in .*: give a run directory"):
        vaelab.load_run(tmp_path)


def test_load_run_refuses_to_guess_between_several_best_checkpoints(tmp_path):
    for epoch in (3, 7):
        (tmp_path / "checkpoints").mkdir(exist_ok=True)
        (tmp_path / "checkpoints" / f"best-epoch{epoch:03d}.ckpt").touch()
    with pytest.raises(VaelabError, match="several best checkpoints"):
        vaelab.load_run(tmp_path)


@pytest.mark.parametrize("checkpoint", ["worst", "best-epoch003.ckpt"])
def test_load_run_checkpoint_is_best_or_last(tmp_path, checkpoint):
    with pytest.raises(VaelabError, match="must be one of best, last"):
        vaelab.load_run(tmp_path, checkpoint=checkpoint)


def test_load_run_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "config.yaml").touch()
    with pytest.raises(VaelabError, match=r"not a \.ckpt file"):
        vaelab.load_run(tmp_path / "config.yaml")
