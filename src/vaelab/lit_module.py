"""LightningModule around `VAE`: steps, reduction to per-image means, logging, optimizer."""

import math

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from vaelab.errors import TrainingError
from vaelab.estimators import (
    ActiveUnitsMetric,
    LogLikelihoodMetric,
    iw_log_likelihood,
    naive_log_likelihood,
)
from vaelab.models import VAE, build_decoder, build_encoder
from vaelab.schema import check

STAGES = ("train", "val", "test")
TERMS = ("loss", "elbo", "rec", "kl")


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
        check({"arch": arch, "hidden_dim": hidden_dim, "activation": activation}, "model.")
        check(
            {
                "latent_dim": latent_dim,
                "likelihood": likelihood,
                "obs_scale": obs_scale,
                "beta": beta,
                "num_samples": num_samples,
                "kl_warmup_epochs": kl_warmup_epochs,
                "lr": lr,
                "n_importance": n_importance,
            }
        )
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
