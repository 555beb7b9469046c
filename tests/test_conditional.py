"""The conditional VAE (condition=labels, issue 24 §2): through the real CLI, and an
independent check that it generates the class it is asked for."""

import json
import math
import re

import pytest
import torch
from conftest import cli, tiny
from PIL import Image
from torch.distributions import Bernoulli, Independent, Normal

import vaelab
from vaelab.errors import ConfigError, InputError
from vaelab.estimators import evaluate_log_likelihood, iw_log_likelihood, naive_log_likelihood
from vaelab.lit_module import LitVAE
from vaelab.models import build_vae
from vaelab.models.conditional import TARGET, ConditionalVAE, given
from vaelab.runs import Run

CLASSIFY = "experiments/conditional/classify.py"


def test_the_log_weights_are_those_of_p_x_given_y_computed_from_the_networks():
    """log p(x|z, y) + log p(z|y) - log q(z|x, y) at z ~ q(z|x, y), the importance weights
    of every estimate of log p(x|y), against the networks called by hand on [x, y], [z, y]
    and the per-class prior's Gaussian of each image's class."""
    torch.manual_seed(0)
    condition = {"_target_": TARGET, "sizes": [3], "columns": None, "names": ["class"]}
    prior = {"_target_": "vaelab.models.conditional.ClassPrior"}
    model = {"_target_": "vaelab.models.architectures.MLPVAE", "hidden_dim": 8}
    vae = build_vae(model, (1, 4, 4), 2, "bernoulli", 0.1, prior, None, condition)
    with torch.no_grad():  # per-class Gaussians apart (they start equal, at N(0, I))
        vae.prior_model.loc.normal_()
        vae.prior_model.log_scale.normal_(0, 0.3)
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.5))
    y = torch.tensor([0, 1, 2, 1, 0])
    with given(vae, y):
        torch.manual_seed(1)
        log_w = vae.log_importance_weights(x, 7)  # (7, 5)

    code = torch.nn.functional.one_hot(y, 3).float()
    loc, scale = vae.encoder(torch.cat([x.flatten(1), code], 1))
    qz_x = Independent(Normal(loc, scale), 1)
    torch.manual_seed(1)
    z = qz_x.sample((7,))
    logits = vae.decoder(torch.cat([z, code.expand(7, -1, -1)], -1).flatten(0, 1))
    log_px_z = Bernoulli(logits=logits.view(7, 5, 1, 4, 4)).log_prob(x).sum((-3, -2, -1))
    pz_y = Independent(Normal(vae.prior_model.loc[y], vae.prior_model.log_scale[y].exp()), 1)
    expected = log_px_z + pz_y.log_prob(z) - qz_x.log_prob(z)
    torch.testing.assert_close(log_w, expected)

    # The naive estimate draws z ~ p(z|y) for each image, not one set for the batch.
    with given(vae, y):
        torch.manual_seed(2)
        naive = naive_log_likelihood(vae, x, 6)
    torch.manual_seed(2)
    z = pz_y.sample((6,))  # (6, 5, 2)
    logits = vae.decoder(torch.cat([z, code.expand(6, -1, -1)], -1).flatten(0, 1))
    log_px_z = Bernoulli(logits=logits.view(6, 5, 1, 4, 4)).log_prob(x).sum((-3, -2, -1))
    torch.testing.assert_close(naive, log_px_z.logsumexp(0) - math.log(6))


def test_the_conditional_model_is_the_model_option_s_class_networks_joined_as_declared():
    """condition=labels builds the networks of the model node's class with its arguments
    (the class's defaults where the node has none), y's code joined as the class declares
    (`label_input`); a model that declares none, or an argument its class does not take,
    is refused in one line."""
    condition = {"_target_": TARGET, "sizes": [3], "columns": None, "names": ["class"]}
    mlp = {"_target_": "vaelab.models.architectures.MLPVAE"}
    vae = build_vae(mlp, (1, 4, 4), 2, "bernoulli", 0.1, None, None, condition)
    assert not vae.channels and vae.encoder.body[1].in_features == 16 + 3
    assert vae.encoder.body[1].out_features == 512  # MLPVAE's default hidden_dim
    conv = {"_target_": "vaelab.models.architectures.ConvVAE", "hidden_dim": 8}
    vae = build_vae(conv, (1, 8, 8), 2, "bernoulli", 0.1, None, None, condition)
    assert vae.channels and vae.encoder.body[0].in_channels == 1 + 3
    hvae = {"_target_": "vaelab.models.hvae.HierarchicalVAE"}
    with pytest.raises(ConfigError, match="declares label_input"):
        build_vae(hvae, (1, 4, 4), 2, "bernoulli", 0.1, None, None, condition)
    with pytest.raises(ConfigError, match=r"model\.depth is not an argument of MLPVAE"):
        build_vae({**mlp, "depth": 3}, (1, 4, 4), 2, "bernoulli", 0.1, None, None, condition)


@pytest.mark.slow
def test_a_classifier_of_the_real_images_labels_each_class_s_samples_as_that_class(
    train_cli, tmp_path
):
    """A CVAE of MNIST trained a few epochs through the CLI; a classifier that
    classify.py trains on the real training images (never on the VAE's output) gives
    each class's conditional samples that class far above chance (0.1)."""
    overrides = tiny(
        "condition=labels", "trainer=cpu", "max_epochs=4", "batch_size=64", "latent_dim=2",
        "model.hidden_dim=256", "callbacks.pictures.every_n_epochs=100",
    )  # fmt: skip
    (run_dir,) = train_cli(*overrides).run_dirs
    out = tmp_path / "table.md"
    args = (str(run_dir), "--steps", "200", "--per-class", "50", "--out", str(out))
    proc = cli(CLASSIFY, *args, cwd=tmp_path / "classify")
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    real, generated = torch.tensor(found["real"]), torch.tensor(found["generated"])
    assert real.mean() > 0.8, found  # the classifier itself works
    assert generated.mean() > 0.5 and (generated > 0.2).sum() >= 8, found
    assert re.search(r"^\| mean \| 0\.\d+ \| 0\.\d+ \|$", out.read_text(), re.MULTILINE)


@pytest.mark.slow
def test_a_conditional_run_trains_tests_evaluates_samples_and_resumes(train_cli, tmp_path):
    """prior=per_class (a learned p(z|y)) with objective=iwae: the test's estimates are of
    log p(x|y), the pictures a row per class, eval, sample and resume work from its files."""
    overrides = tiny(
        "condition=labels", "prior=per_class", "objective=iwae", "n_importance=3",
        "callbacks.pictures.every_n_epochs=100",
    )  # fmt: skip
    (run_dir,) = train_cli(*overrides).run_dirs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"test/nll_iwae", "test/nll_naive", "test/iwae", "test/elbo"} <= set(metrics)
    pictures = {p.stem for p in (run_dir / "pictures" / "test").glob("*.png")}
    assert {"samples", "traversals", "reconstructions", "latent_scatter"} <= pictures
    samples = Image.open(run_dir / "pictures" / "test" / "samples.png")
    # A row per class (10) of `nrow` (8) images of 28 pixels and 2-pixel padding, x2.
    assert samples.size == (2 * (8 * 30 + 2), 2 * (10 * 30 + 2))

    vae = vaelab.load_run(run_dir)
    assert isinstance(vae, ConditionalVAE)
    x, y = next(iter(vaelab.model_batches(run_dir, "test")))
    x, y = x[:16], y[:16]
    with given(vae, y):
        log_px_y = iw_log_likelihood(vae, x, 4)[0]
        # p(z|y) differs per class: the same images given other labels score otherwise.
    with given(vae, (y + 1) % 10):
        other = iw_log_likelihood(vae, x, 4)[0]
    assert log_px_y.shape == (16,) and not torch.allclose(log_px_y, other)
    with pytest.raises(InputError, match="give the labels"):
        vae.posterior(x)
    assert evaluate_log_likelihood(vae, [(x, y)], 3)["nll_iwae"] > 0  # (x, y) batches

    evaluated = cli("eval.py", f"run_dir={run_dir}", "n_importance=5", cwd=tmp_path / "e")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    evaluation = Run(run_dir).evaluation()
    assert evaluation["n_importance"] == 5 and evaluation["test/nll_iwae"] > 0
    sampled = cli("sample.py", f"run_dir={run_dir}", "n=20", cwd=tmp_path / "s")
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert (run_dir / "samples.png").is_file()

    train_cli(*overrides, f"resume={run_dir}", "trainer.max_epochs=2")
    history = Run(run_dir).history()
    assert [row["epoch"] for row in history] == [0, 1]


@pytest.mark.slow
def test_conditioning_on_a_chosen_factor_of_shapes(train_cli):
    """data=shapes: condition.factors=[shape] conditions on the first factor only, its
    pictures' rows are its values."""
    result = train_cli(
        *tiny(
            "data=shapes",
            "data.image_size=32",
            "data.grid.scales=2",
            "data.grid.orientations=2",
            "data.grid.positions=4",
            "condition=labels",
            "condition.factors=[shape]",
            "callbacks.pictures.every_n_epochs=100",
        )
    )
    (run_dir,) = result.run_dirs
    ckpt = torch.load(next((run_dir / "checkpoints").glob("*.ckpt")), weights_only=False)
    condition = ckpt["hyper_parameters"]["condition"]
    assert condition["columns"] == [0] and condition["sizes"] == [3], condition
    samples = Image.open(run_dir / "pictures" / "test" / "samples.png")
    assert samples.size[1] == 2 * (3 * 34 + 2)  # a row per shape, 32-pixel images


def _flat_folder(path):
    """Six grey PNGs in one folder: images without classes."""
    path.mkdir(parents=True)
    for i in range(6):
        Image.new("L", (8, 8), 40 * i).save(path / f"{i}.png")
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model=hvae",), "condition=labels needs a model whose networks take the labels"),
        (("prior=vamp",), "runs the encoder on its pseudo-inputs"),
        (("condition.factors=[shape]",), "condition.factors is for data with ground-truth"),
    ],
)
def test_conditional_combinations_that_are_not_defined_are_refused_in_one_line(
    train_cli, overrides, message
):
    result = train_cli(*tiny("condition=labels", *overrides), check=False)
    assert result.returncode != 0 and message in result.output
    assert "Traceback" not in result.output


def test_a_per_class_prior_without_a_condition_and_data_without_labels_are_refused(
    train_cli, tmp_path
):
    result = train_cli(*tiny("prior=per_class"), check=False)
    assert result.returncode != 0 and "add condition=labels" in result.output
    with pytest.raises(ConfigError, match="add condition=labels"):  # and from Python
        LitVAE(
            model={"_target_": "vaelab.models.architectures.MLPVAE"},
            prior={"_target_": "vaelab.models.conditional.ClassPrior"},
        )
    folder = _flat_folder(tmp_path / "flat")
    result = train_cli(
        *tiny("data=folder", f"data.path={folder}", "data.image_size=8", "condition=labels"),
        check=False,
    )
    assert result.returncode != 0 and "condition=labels needs labels" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.parametrize(
    "parts",
    [
        ("posterior=iaf", "objective=iwae", "prior=mog"),  # the flow's context: [x, y]'s
        ("objective=betatc", "prior=per_class"),  # the aggregate q(z) over (x, y) pairs
    ],
)
def test_the_convolutional_cvae_trains_with_other_parts(train_cli, parts):
    """model=conv takes y as constant channels of x; a flow posterior, the mixture prior,
    iwae and betatc work with it."""
    overrides = tiny("model=conv", "condition=labels", "n_importance=3", *parts)
    (run_dir,) = train_cli(*overrides, "callbacks.pictures.every_n_epochs=100").run_dirs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["test/nll_iwae"]) and math.isfinite(metrics["test/elbo"])
    vae = vaelab.load_run(run_dir)
    assert vae.channels and vae.encoder.body[0].in_channels == 1 + 10
    assert vae.sample(10, y=torch.arange(10)).shape == (10, 1, 28, 28)
