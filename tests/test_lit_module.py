"""LitVAE: hyperparameter checks, the KL warm-up schedule and what it logs, in real loops."""

import csv
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from tiny import tiny_trainer

from vaelab.data.datamodule import VAEDataModule
from vaelab.errors import ConfigError, TrainingError
from vaelab.estimators import MeansMetric
from vaelab.lit_module import LitVAE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "resnet"}, "model.arch"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": 2.5}, "latent_dim"),
        ({"beta": -0.1}, "beta"),
        ({"beta": "4"}, "beta"),
        ({"num_samples": 0}, "num_samples"),
        ({"kl_warmup_epochs": -1}, "kl_warmup_epochs"),
        ({"lr": 0}, "lr"),
        ({"likelihood": "gaussian", "obs_scale": 0}, "likelihood.obs_scale must be a number > 0"),
        (
            {
                "likelihood": {
                    "_target_": "vaelab.likelihoods.LogisticMixtureLikelihood",
                    "components": 0,
                }
            },
            "likelihood.components must be a positive integer",
        ),
        ({"likelihood": {"_target_": "pathlib.Path"}}, "likelihood._target_ names pathlib.Path"),
        ({"n_importance": -1}, "n_importance"),
        ({"optimizer": "sgd"}, "optimizer must be one of adam, adam_normgrad"),
    ],
)
def test_bad_hyperparameters_are_refused_with_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        LitVAE(**kwargs)
    assert "\n" not in str(info.value)


class RecordBeta(L.Callback):
    def __init__(self):
        self.betas = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.betas.append(pl_module.kl_weight())


def test_kl_warmup_ramps_beta_linearly_then_holds(mnist_idx_root, tmp_path):
    datamodule = VAEDataModule(
        data_dir=str(mnist_idx_root), download=False, allow_fallback=False, batch_size=64
    )
    model = LitVAE(arch="mlp", latent_dim=2, beta=2.0, kl_warmup_epochs=1, n_importance=0)
    record = RecordBeta()
    trainer = tiny_trainer(
        tmp_path, max_epochs=2, limit_train_batches=4, limit_val_batches=1, callbacks=[record]
    )
    trainer.fit(model, datamodule=datamodule)
    # One epoch of 4 steps: beta * (1/4, 2/4, 3/4, 1), then beta.
    assert record.betas == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0])
    model.eval()
    assert model.kl_weight() == 2.0  # validation and test use the target beta


def test_cyclical_schedule_restarts_beta_every_cycle(mnist_idx_root, tmp_path):
    datamodule = VAEDataModule(
        data_dir=str(mnist_idx_root), download=False, allow_fallback=False, batch_size=64
    )
    schedule = {"_target_": "vaelab.models.schedules.Cyclical", "cycles": 2, "ratio": 0.5}
    model = LitVAE(arch="mlp", latent_dim=2, beta=2.0, n_importance=0, beta_schedule=schedule)
    record = RecordBeta()
    trainer = tiny_trainer(
        tmp_path, max_epochs=2, limit_train_batches=4, limit_val_batches=1, callbacks=[record]
    )
    trainer.fit(model, datamodule=datamodule)
    # 8 steps in 2 cycles of 4: beta rises over the first half of each (Fu et al. 2019).
    assert record.betas == pytest.approx([0.0, 1.0, 2.0, 2.0, 0.0, 1.0, 2.0, 2.0])


class RecordingObjective:
    """Wraps an objective and records the beta of every call."""

    def __init__(self, objective):
        self.objective, self.betas = objective, []
        self.own_beta, self.extras = objective.own_beta, objective.extras

    @property
    def kl_kind(self):
        return self.objective.kl_kind

    def __call__(self, vae, x, beta, qz_x=None):
        self.betas.append(beta)
        return self.objective(vae, x, beta, qz_x)


def test_beta_tc_gets_the_schedules_fraction_and_keeps_its_own_beta(mnist_idx_root, tmp_path):
    datamodule = VAEDataModule(
        data_dir=str(mnist_idx_root), download=False, allow_fallback=False, batch_size=64
    )
    objective = {"_target_": "vaelab.models.objectives.BetaTCObjective", "beta": 6.0}
    model = LitVAE(
        arch="mlp", latent_dim=2, beta=6.0, n_importance=0, kl_warmup_epochs=1, objective=objective
    )
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=1)
    trainer.fit(model, datamodule=datamodule)  # builds the objective with the data's size
    assert model.objective.dataset_size == datamodule.hparams.n_train == 270
    recording = model._objective = RecordingObjective(model.objective)
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    # The warm-up's fraction (1/4 ... 4/4), not 6 times it: beta-TC holds its beta of 6.
    assert recording.betas == pytest.approx([0.25, 0.5, 0.75, 1.0])


class RecordLosses(L.Callback):
    """The per-image training losses of every batch, as the step computed them."""

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(pl_module.last_values["loss"])


def test_batch_means_every_n_steps_and_exact_epoch_means(mnist_idx_root, tmp_path, monkeypatch):
    # 270 training images in batches of 64: 5 steps per epoch, the last of 14 images.
    datamodule = VAEDataModule(
        data_dir=str(mnist_idx_root), download=False, allow_fallback=False, batch_size=64
    )
    model = LitVAE(arch="mlp", latent_dim=2, n_importance=0)
    step = LitVAE._step

    def keep_values(self, batch, stage):
        values = step(self, batch, stage)
        self.last_values = {k: v.detach().clone() for k, v in values.items()}
        return values

    monkeypatch.setattr(LitVAE, "_step", keep_values)
    record = RecordLosses()
    trainer = tiny_trainer(
        tmp_path,
        max_epochs=2,
        limit_val_batches=1,
        log_every_n_steps=3,
        logger=CSVLogger(tmp_path),
        callbacks=[record],
    )
    trainer.fit(model, datamodule=datamodule)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    step_rows = [r for r in rows if r["train/loss_step"]]
    assert [int(r["step"]) for r in step_rows] == [2, 5, 8]  # steps 3, 6 and 9 of 10
    assert float(step_rows[0]["train/loss_step"]) == pytest.approx(
        float(record.losses[2].mean()), rel=1e-6
    )
    epoch_rows = [r for r in rows if r["train/loss_epoch"]]
    assert [int(r["epoch"]) for r in epoch_rows] == [0, 1]
    for epoch, row in enumerate(epoch_rows):
        # The mean over images, not over batches: the small last batch weighs 14/270.
        images = torch.cat(record.losses[5 * epoch : 5 * epoch + 5])
        assert len(images) == 270  # 10% of 300 held out for validation
        assert float(row["train/loss_epoch"]) == pytest.approx(float(images.mean()), rel=1e-6)
    assert trainer.callback_metrics["val/elbo"] < 0


def test_means_metric_weights_every_example_alike():
    metric = MeansMetric(2)
    metric.update(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    metric.update(torch.tensor([[5.0], [3.0]]))
    assert metric.compute().tolist() == [2.0, 0.75]  # not the means of batch means (3, 1.5)


def _fit_three_steps(model: LitVAE, data_dir: Path, root: Path) -> L.Trainer:
    L.seed_everything(0)
    datamodule = VAEDataModule(data_dir=str(data_dir), download=False, allow_fallback=False)
    trainer = tiny_trainer(root, max_steps=3, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    return trainer


@pytest.mark.slow
def test_compiled_networks_compute_and_train_like_eager_ones(mnist_idx_root, tmp_path):
    L.seed_everything(0)
    eager = LitVAE(arch="conv", latent_dim=4, n_importance=0)
    compiled = LitVAE(arch="conv", latent_dim=4, n_importance=0)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_networks()
    x = torch.rand(32, 1, 28, 28).round()
    grads = []
    for model in (eager, compiled):
        torch.manual_seed(1)  # sampling is not compiled: the same seed draws the same z
        rec, kl = model.vae.elbo_terms(x)
        (-(rec - kl).mean()).backward()
        grads.append([p.grad for p in model.parameters()])
        model.zero_grad()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    for eager_grad, compiled_grad in zip(*grads, strict=True):
        assert torch.allclose(compiled_grad, eager_grad, rtol=1e-4, atol=1e-6)

    initial = {name: value.clone() for name, value in compiled.state_dict().items()}
    trainer = _fit_three_steps(compiled, mnist_idx_root, tmp_path)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["fused"]
    weights = compiled.state_dict()
    assert weights.keys() == initial.keys()  # checkpoints keep the weights' names
    assert not all(torch.equal(initial[name], value) for name, value in weights.items())
    assert all(torch.isfinite(value).all() for value in weights.values())


class RecordGradients(L.Callback):
    """The weights before each optimizer step and the gradients that step gets, as the
    backward pass left them (callbacks' hooks run before the LightningModule's)."""

    def __init__(self):
        self.steps = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        params = [p.detach().clone() for p in pl_module.parameters()]
        grads = [p.grad.clone() for p in pl_module.parameters()]
        self.steps.append((params, grads))


def adam_updates(steps, lr, normalise):
    """torch.optim.Adam (its plain loop) replayed on the recorded gradients from the first
    recorded weights, each gradient divided by its L2 norm (+1e-7) if `normalise`."""
    params = [p.clone().requires_grad_() for p in steps[0][0]]
    adam = torch.optim.Adam(params, lr=lr, foreach=False)
    for _, grads in steps:
        for p, g in zip(params, grads, strict=True):
            p.grad = g / (g.norm() + 1e-7) if normalise else g.clone()
        adam.step()
    return [p.detach() for p in params]


def test_adam_normgrad_is_adam_on_gradients_of_unit_norm(mnist_idx_root, tmp_path):
    datamodule = VAEDataModule(
        data_dir=str(mnist_idx_root), download=False, allow_fallback=False, batch_size=64
    )
    # A large lr, so that the difference from Adam on the raw gradients is far above
    # rounding: Adam's first step is the same for any scale of the gradient, the later ones
    # differ as the gradients' norms change from step to step.
    lr = 0.05
    model = LitVAE(arch="mlp", latent_dim=2, n_importance=0, lr=lr, optimizer="adam_normgrad")
    record = RecordGradients()
    trainer = tiny_trainer(
        tmp_path, max_steps=4, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[record]
    )
    trainer.fit(model, datamodule=datamodule)
    trained = [p.detach() for p in model.parameters()]
    start = record.steps[0][0]

    def largest_gap(a, b):
        return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))

    normalised = adam_updates(record.steps, lr, normalise=True)
    raw = adam_updates(record.steps, lr, normalise=False)
    assert len(record.steps) == 4
    assert largest_gap(trained, start) > lr  # it trained: 4 steps of about lr each
    assert largest_gap(trained, normalised) < 1e-6
    assert largest_gap(trained, raw) > 100 * largest_gap(trained, normalised)


@pytest.mark.parametrize(
    ("old", "name"),
    [
        ({"arch": "mlp", "hidden_dim": 8, "activation": "tanh", "top_dim": None}, "MLPVAE"),
        ({"arch": "hvae", "hidden_dim": 8, "activation": "gated", "top_dim": 2}, "HierarchicalVAE"),
        ({"hidden_dim": 8, "activation": "relu", "top_dim": None}, "ConvVAE"),  # arch's default
    ],
)
def test_an_old_checkpoints_model_keys_build_the_class_its_arch_named(old, name):
    """Checkpoints made before the model options named their class hold the model node's
    keys at the top of their hyperparameters: read once into the `model` node, saved so."""
    model = LitVAE(latent_dim=2, n_importance=0, **old)
    assert type(model.vae).__name__ == name
    assert model.hparams.model["_target_"].endswith(f".{name}")
    assert model.hparams.model["hidden_dim"] == 8 and "arch" not in model.hparams
    assert not {"hidden_dim", "activation", "top_dim"} & set(model.hparams)


def test_an_old_checkpoints_likelihood_is_saved_as_the_node_it_is_read_as():
    """Checkpoints made before conf/likelihood/ hold an option's name and a top-level
    obs_scale: read once into the likelihood node, which is what is saved (as the model's)."""
    model = LitVAE(latent_dim=2, n_importance=0, likelihood="gaussian", obs_scale=0.2)
    assert model.vae.likelihood.obs_scale == 0.2
    assert model.hparams.likelihood == {
        "_target_": "vaelab.likelihoods.GaussianLikelihood",
        "name": "gaussian",
        "obs_scale": 0.2,
    }
    assert "obs_scale" not in model.hparams


class OverflowAtStep(L.Callback):
    """Makes one weight's gradient infinite at `step` (as an overflow in the backward pass
    would), and records the weights before each optimizer step."""

    def __init__(self, step):
        self.step, self.weights = step, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.weights.append([p.detach().clone() for p in pl_module.parameters()])
        if trainer.global_step == self.step:
            next(pl_module.parameters()).grad[0] = float("inf")


def test_a_step_with_non_finite_gradients_never_reaches_the_weights(mnist_idx_root, tmp_path):
    datamodule = VAEDataModule(
        data_dir=str(mnist_idx_root), download=False, allow_fallback=False, batch_size=64
    )
    model = LitVAE(
        model={"_target_": "vaelab.models.architectures.MLPVAE"}, latent_dim=2, n_importance=0
    )
    overflow = OverflowAtStep(1)
    trainer = tiny_trainer(
        tmp_path, max_steps=3, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[overflow]
    )
    # Training goes on without a host sync per step; the record is read at the end.
    with pytest.raises(TrainingError, match="the gradients are not finite at epoch 0, step 1 "):
        trainer.fit(model, datamodule=datamodule)
    before_0, before_1, before_2 = overflow.weights
    assert not all(torch.equal(a, b) for a, b in zip(before_0, before_1, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before_1, before_2, strict=True))  # skipped
    assert all(torch.isfinite(p).all() for p in model.parameters())


class CudaCheckSetting(L.Callback):
    """Lightning's PYTORCH_NVML_BASED_CUDA_CHECK at each optimizer step (inside it, where
    torch's Adam asks for CUDA); the step `fail_at` raises there."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.seen: list[str | None] = []
        self.fail_at = fail_at

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.seen.append(os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"))
        if trainer.global_step == self.fail_at:
            raise RuntimeError("a step that fails")


@pytest.mark.parametrize("fail_at", [None, 1])
def test_training_on_a_cpu_lifts_lightnings_nvml_cuda_check_and_gives_it_back(
    mnist_idx_root, tmp_path, monkeypatch, fail_at
):
    # With it, torch's Adam loaded NVML through ctypes at every step to ask for CUDA.
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # as Lightning's import sets it
    model = LitVAE(
        model={"_target_": "vaelab.models.architectures.MLPVAE"}, latent_dim=2, n_importance=0
    )
    setting = CudaCheckSetting(fail_at)
    datamodule = VAEDataModule(data_dir=str(mnist_idx_root), download=False, batch_size=64)
    trainer = tiny_trainer(
        tmp_path, max_steps=2, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[setting]
    )
    if fail_at is None:
        trainer.fit(model, datamodule=datamodule)
    else:
        with pytest.raises(RuntimeError, match="a step that fails"):
            trainer.fit(model, datamodule=datamodule)

    assert setting.seen == [None, None]  # lifted in each step
    # Given back after training, also when a step failed (a later fork in this process).
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
