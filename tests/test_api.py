"""vaelab.load_run and vaelab.model_batches: a trained run back as a VAE, from its
directory or one of its checkpoints, and its data as the model sees them."""

import math
import re
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch
from lightning import LightningDataModule
from omegaconf import OmegaConf
from tiny import tiny_trainer

import vaelab
from vaelab.api import load_run, model_batches, run_datamodule
from vaelab.config import instantiate
from vaelab.datamodule import VAEDataModule
from vaelab.errors import InputError, VaelabError
from vaelab.estimators import evaluate_log_likelihood, iw_log_likelihood
from vaelab.lit_module import LitVAE
from vaelab.models.vae import VAE

ROOT = Path(__file__).resolve().parents[1]


def best_checkpoint(run_dir: Path) -> Path:
    (ckpt,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    return ckpt


def test_import_vaelab_is_light_and_exports_load_run_and_model_batches():
    # `import vaelab` loads neither torch nor Lightning: vaelab.load_run imports them lazily.
    code = "import sys, vaelab; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert vaelab.load_run is load_run
    assert vaelab.model_batches is model_batches


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
    data = instantiate(
        OmegaConf.load(trained_run / "config.yaml").data, LightningDataModule, "data"
    )
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


def test_a_run_made_before_data_source_class_reads_its_data_by_its_data_name(trained_run, tmp_path):
    """Its config.yaml gives `data.name: mnist` alone: the source of conf/data/mnist.yaml."""
    config = OmegaConf.load(trained_run / "config.yaml")
    assert config.data.source_class == "vaelab.data.sources.MNIST"
    del config.data["source_class"]
    OmegaConf.save(config, tmp_path / "config.yaml")
    old = run_datamodule(tmp_path)
    assert old.hparams.source_class is None and type(old.data_source).__name__ == "MNIST"
    (x_old, _), (x_new, _) = (next(iter(model_batches(r))) for r in (tmp_path, trained_run))
    assert torch.equal(x_old, x_new)


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


# --- model-ready batches ----------------------------------------------------------------


@pytest.mark.parametrize("binarize", ["dynamic", "static", "none"])
def test_model_batches_are_the_batches_a_trainer_hands_the_model(mnist_idx_root, binarize):
    dm = VAEDataModule(
        data_dir=str(mnist_idx_root),
        download=False,
        allow_fallback=False,
        binarize=binarize,
        batch_size=100,
        eval_batch_size=64,
    )
    test = dm.model_batches("test")  # sets the data up itself
    raw = list(dm.test_dataloader())  # the stored uint8 images, for a Trainer to convert

    assert len(test) == len(raw) == 2  # 100 test images, 64 a batch
    for (x, y), (images, labels) in zip(test, raw, strict=True):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
        assert torch.equal(x, dm.on_after_batch_transfer((images, labels), 0)[0])
        assert torch.equal(y, labels)
        if binarize != "none":
            assert set(x.unique().tolist()) == {0.0, 1.0}
        else:
            assert ((x > 0) & (x < 1)).any()
    again = next(iter(test))[0]  # a DataLoader: it iterates again, with the same test draws
    assert torch.equal(again, next(iter(test))[0])
    assert [len(x) for x, _ in dm.model_batches("train")] == [100, 100, 70]
    with pytest.raises(VaelabError, match="no split 'valid': choose one of train, val, test"):
        dm.model_batches("valid")


@pytest.mark.slow
def test_the_datamodules_raw_batches_are_refused_with_what_to_do(trained_run):
    vae = vaelab.load_run(trained_run)
    datamodule = run_datamodule(trained_run)
    datamodule.setup("test")
    images, _ = next(iter(datamodule.test_dataloader()))

    with pytest.raises(InputError, match=r"uint8 values 0\.\.255: use model-ready batches"):
        iw_log_likelihood(vae, images, 10)
    # Before, this returned about -270,000 nats without a word.
    with pytest.raises(InputError, match=r"values in \[0, 255\].*vaelab\.model_batches"):
        iw_log_likelihood(vae, images.float(), 10)


@pytest.mark.slow
def test_model_batches_give_the_log_likelihood_that_testing_reports(trained_run, tmp_path):
    num_samples, batches = 100, 2  # 200 of the 1,000 test images
    torch.manual_seed(0)
    model = LitVAE.load_from_checkpoint(
        best_checkpoint(trained_run), map_location="cpu", n_importance=num_samples
    )
    trainer = tiny_trainer(tmp_path, limit_test_batches=batches)
    (tested,) = trainer.test(model, datamodule=run_datamodule(trained_run, eval_batch_size=100))
    vae = vaelab.load_run(trained_run)
    test = list(islice(vaelab.model_batches(trained_run, "test", eval_batch_size=100), batches))

    ours = evaluate_log_likelihood(vae, test, num_samples)
    # The Monte Carlo error of a mean over these images, from two more estimates of each.
    first, second = (
        torch.cat([iw_log_likelihood(vae, x, num_samples)[0] for x, _ in test]) for _ in range(2)
    )
    tolerance = 4 * float((first - second).std()) / math.sqrt(len(first))
    assert len(first) == 200 and math.isfinite(ours["nll_iwae"]) and ours["nll_iwae"] > 0
    assert abs(ours["nll_iwae"] - tested["test/nll_iwae"]) < tolerance + 1e-3
    assert ours["elbo"] < -ours["nll_iwae"]


@pytest.mark.slow
def test_the_readme_python_example_runs(trained_run):
    section = (ROOT / "README.md").read_text().split("## Evaluate a trained run")[1]
    (code,) = re.findall(r"From Python:\n\n```python\n(.*?)```", section, re.DOTALL)
    # The example's run, and fewer importance samples than its 5,000 to keep the test short.
    code = code.replace('"outputs/runs/<run>"', repr(str(trained_run))).replace("5000", "20")
    names: dict = {}
    exec(code, names)

    x, log_px = names["x"], names["log_px"]
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
    assert names["z"].shape == (len(x), 2) and names["x_rec"].shape == x.shape
    assert log_px.shape == (len(x),) and torch.isfinite(log_px).all() and (log_px < 0).all()
    assert set(names["metrics"]) >= {"nll_iwae", "elbo"}
    assert all(math.isfinite(value) for value in names["metrics"].values())


def test_a_checkpoint_from_before_the_model_parts_loads_as_the_plain_vae(trained_run, tmp_path):
    """Runs trained before prior/posterior/objective existed have none of them in their
    hyperparameters: they load as N(0, I), the diagonal Gaussian and the ELBO."""
    from vaelab.models.objectives import ElboObjective
    from vaelab.models.posteriors import GaussianPosterior
    from vaelab.models.priors import StandardPrior

    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("prior", "posterior", "objective", "beta_schedule"):
        del checkpoint["hyper_parameters"][key]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    model = LitVAE.load_from_checkpoint(old, map_location="cpu")
    assert isinstance(model.vae.prior_model, StandardPrior)
    assert isinstance(model.vae.posterior_model, GaussianPosterior)
    assert isinstance(model.objective, ElboObjective)
    new = load_run(trained_run, checkpoint="last")
    x = torch.bernoulli(torch.full((3, 1, 28, 28), 0.2))
    assert torch.equal(model.vae.encode(x), new.encode(x))


def test_a_checkpoint_with_the_old_kind_form_of_beta_schedule_loads_and_trains_alike(
    trained_run, tmp_path
):
    """Runs trained before the schedules' option files named a class wrote `kind:`; their
    checkpoints still load, with the schedule the kind named."""
    from vaelab.models.schedules import Cyclical, LinearWarmup

    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["beta_schedule"]["_target_"].endswith("LinearWarmup")
    for old, expected in (
        ({"kind": "cyclical", "cycles": 2, "ratio": 0.25}, Cyclical(cycles=2, ratio=0.25)),
        ({"kind": "linear"}, LinearWarmup(warmup_epochs=0.0)),
    ):
        checkpoint["hyper_parameters"]["beta_schedule"] = old
        path = tmp_path / "old.ckpt"
        torch.save(checkpoint, path)
        model = LitVAE.load_from_checkpoint(path, map_location="cpu")
        assert model.schedule == expected
        z = torch.zeros(1, 2)
        assert torch.equal(model.vae.decoder(z), load_run(path).decoder(z))


# The model node of a run made before the model options named their class (config.yaml),
# and, at the top level, of its checkpoints' hyperparameters.
OLD_MODEL = {"arch": "mlp", "hidden_dim": 16, "activation": "relu", "top_dim": None}


@pytest.mark.slow
def test_a_run_from_before_the_model_options_named_a_class_loads_evaluates_and_resumes(
    train_cli, tmp_path
):
    """A run of `model.arch: mlp` (config.yaml, its checkpoints' top-level hyperparameters,
    and vaelab.schema's Hydra callback in .hydra/hydra.yaml): it loads as the class its arch
    names, evaluates, and resumes, translated once into the `_target_` form."""
    import yaml
    from conftest import cli

    tiny = ("model=mlp", "model.hidden_dim=16", "latent_dim=2", "trainer=debug", "logger=none",
            "batch_size=32", "n_importance=0", "callbacks.pictures.every_n_epochs=100")  # fmt: skip
    (run_dir,) = train_cli(*tiny).run_dirs
    x = torch.bernoulli(torch.full((3, 1, 28, 28), 0.2))
    codes = load_run(run_dir, checkpoint="last").encode(x)

    config_file = run_dir / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    assert config["model"]["_target_"] == "vaelab.models.architectures.MLPVAE"
    config_file.write_text(yaml.safe_dump({**config, "model": OLD_MODEL}))
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(path, weights_only=True)
        hyperparameters = checkpoint["hyper_parameters"]
        del hyperparameters["model"]
        hyperparameters.update(OLD_MODEL)
        torch.save(checkpoint, path)
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    hydra = hydra_file.read_text()
    assert "vaelab.config.checks.ValidateBeforeJobs" in hydra
    hydra_file.write_text(hydra.replace("vaelab.config.checks.", "vaelab.schema."))

    vae = load_run(run_dir, checkpoint="last")
    assert type(vae).__name__ == "MLPVAE" and torch.equal(vae.encode(x), codes)
    evaluated = cli("eval.py", f"run_dir={run_dir}", "n_importance=2", cwd=tmp_path / "eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    train_cli(f"resume={run_dir}", "model=mlp", "model.hidden_dim=16", "max_epochs=2")
    model = yaml.safe_load(config_file.read_text())["model"]
    assert model == {"_target_": "vaelab.models.architectures.MLPVAE", "hidden_dim": 16,
                     "activation": "relu"}  # fmt: skip
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["hyper_parameters"]["model"] == model and "arch" not in last["hyper_parameters"]
    assert last["epoch"] == 1  # it trained a second epoch
