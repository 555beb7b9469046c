"""LightningModule around `VAE`: steps, reduction to per-image means, logging, optimizer."""

import math

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from vaelab.errors import ConfigError, TrainingError
from vaelab.estimators import (
    ActiveUnitsMetric,
    LogLikelihoodMetric,
    iw_log_likelihood,
    naive_log_likelihood,
)
from vaelab.likelihoods import LIKELIHOODS
from vaelab.models import ACTIVATIONS, ARCHS, VAE, build_decoder, build_encoder

STAGES = ("train", "val", "test")
TERMS = ("loss", "elbo", "rec", "kl")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _is_number(value: object, minimum: float, strict: bool = False) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return value > minimum if strict else value >= minimum


class LitVAE(L.LightningModule):
    """A VAE trained by maximising beta-weighted ELBO; all metrics are nats per image.

    Logged per stage: `loss` (what is minimised: -(rec - beta * kl), with warm-up in
    training), `elbo` (the true bound rec - kl), `rec` (E_q log p(x|z)) and `kl`. Val and
    test add `active_units` and `kl_dim/<i>` (posterior collapse diagnostics); test adds
    the importance-sampled `nll_iwae`, `bpd_iwae`, `ess_iwae` and the naive prior-sampling
    `nll_naive`, `bpd_naive`, each with `n_importance` samples per image (0: skip).
    """

    def __init__(
        self,
        arch: str = "conv",
        latent_dim: int = 16,
        hidden_dim: int = 256,
        activation: str = "relu",
        likelihood: str = "bernoulli",
        obs_scale: float = 0.1,
        beta: float = 1.0,
        num_samples: int = 1,
        kl_warmup_epochs: float = 0.0,
        lr: float = 1e-3,
        n_importance: int = 100,
        image_shape: tuple[int, int, int] = (1, 28, 28),
    ):
        super().__init__()
        _require(arch in ARCHS, f"model.arch={arch!r} is unknown; choose one of {ARCHS}")
        _require(
            activation in ACTIVATIONS,
            f"model.activation={activation!r} is unknown; choose one of {', '.join(ACTIVATIONS)}",
        )
        _require(
            likelihood in LIKELIHOODS,
            f"likelihood={likelihood!r} is unknown; choose one of {', '.join(LIKELIHOODS)}",
        )
        _require(
            isinstance(latent_dim, int) and latent_dim > 0,
            f"latent_dim must be a positive integer, got {latent_dim!r}",
        )
        _require(_is_number(beta, 0), f"beta must be >= 0 (1 is the true ELBO), got {beta!r}")
        _require(
            isinstance(num_samples, int) and num_samples >= 1,
            f"num_samples (z samples per image in the ELBO) must be an integer >= 1, "
            f"got {num_samples!r}",
        )
        _require(
            _is_number(kl_warmup_epochs, 0),
            f"kl_warmup_epochs must be >= 0, got {kl_warmup_epochs}",
        )
        _require(_is_number(lr, 0, strict=True), f"lr must be > 0, got {lr!r}")
        _require(
            isinstance(n_importance, int) and n_importance >= 0,
            f"n_importance must be an integer >= 0 (0 skips it), got {n_importance!r}",
        )
        _require(_is_number(obs_scale, 0, strict=True), f"obs_scale must be > 0, got {obs_scale!r}")
        self.save_hyperparameters()
        image_shape = tuple(image_shape)
        self.vae = VAE(
            build_encoder(arch, image_shape, latent_dim, hidden_dim, activation),
            build_decoder(arch, image_shape, latent_dim, hidden_dim, activation),
            latent_dim,
            likelihood,
            obs_scale,
        )
        # Keyed "stage_term": a ModuleDict may not have a key named "train".
        self.metrics = nn.ModuleDict({f"{s}_{t}": MeanMetric() for s in STAGES for t in TERMS})
        self.latent_stats = nn.ModuleDict(
            {s: ActiveUnitsMetric(latent_dim) for s in ("val", "test")}
        )
        num_pixels = math.prod(image_shape)
        self.nll_iwae = LogLikelihoodMetric(num_pixels, "iwae")
        self.nll_naive = LogLikelihoodMetric(num_pixels, "naive")

    def kl_weight(self) -> float:
        """beta, ramped up linearly over the first `kl_warmup_epochs` of training."""
        if not self.training or self.hparams.kl_warmup_epochs <= 0:
            return self.hparams.beta
        warmup_steps = self.hparams.kl_warmup_epochs * self.trainer.num_training_batches
        return self.hparams.beta * min(1.0, (self.global_step + 1) / warmup_steps)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        x, _ = batch
        qz_x = self.vae.posterior(x)
        rec, kl = self.vae.elbo_terms(x, self.hparams.num_samples, qz_x=qz_x)
        beta = self.kl_weight()
        values = {"loss": -(rec - beta * kl), "elbo": rec - kl, "rec": rec, "kl": kl}
        for term, value in values.items():
            metric = self.metrics[f"{stage}_{term}"]
            metric(value)  # per-image values (B,): the epoch mean is exact across batches
            self.log(
                f"{stage}/{term}",
                metric,
                on_step=stage == "train",
                on_epoch=True,
                prog_bar=term == "elbo" and stage == "val",
            )
        if stage == "train":
            self.log("train/beta", beta, on_step=True, on_epoch=False)
        else:
            self.latent_stats[stage].update(qz_x.base_dist.loc, qz_x.base_dist.scale)
        return values

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        values = self._step(batch, "train")
        loss = values["loss"].mean()
        # One host sync per step buys stopping before the optimizer writes NaN into the
        # weights, so the last checkpoint stays good.
        if not torch.isfinite(loss):
            terms = {"reconstruction term": values["rec"], "KL": values["kl"]}
            bad = [name for name, value in terms.items() if not torch.isfinite(value).all()]
            raise TrainingError(
                f"the loss is not finite at epoch {self.current_epoch}, step {self.global_step} "
                f"({' and '.join(bad) or 'the loss'} went non-finite): training diverged; lower "
                f"lr (now {self.hparams.lr:g}) or set trainer.gradient_clip_val (e.g. 1.0); the "
                "last checkpoint is from before the divergence"
            )
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")
        if self.hparams.n_importance > 0:
            x, _ = batch
            self.nll_iwae.update(*iw_log_likelihood(self.vae, x, self.hparams.n_importance))
            self.nll_naive.update(naive_log_likelihood(self.vae, x, self.hparams.n_importance))

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val", [self.latent_stats["val"]])

    def on_test_epoch_end(self) -> None:
        estimators = [self.nll_iwae, self.nll_naive] if self.hparams.n_importance > 0 else []
        self._log_epoch_metrics("test", [self.latent_stats["test"], *estimators])

    def _log_epoch_metrics(self, stage: str, metrics: list) -> None:
        """Log dict-valued metrics (already reduced across processes by compute)."""
        for metric in metrics:
            for name, value in metric.compute().items():
                if name == "variance":
                    continue
                if value.dim() == 0:
                    self.log(f"{stage}/{name}", value.float())
                else:  # per latent dimension
                    for i, v in enumerate(value):
                        self.log(f"{stage}/{name.removesuffix('_per_dim')}_dim/{i}", v)
            metric.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
