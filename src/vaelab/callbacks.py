"""Callbacks of a run: the history and pictures it writes, and early stopping."""

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelSummary
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics import Metric

from vaelab import dashboards, plots
from vaelab.config.schemas import checked
from vaelab.estimators import kl_per_dim
from vaelab.models.conditional import ConditionalVAE, given
from vaelab.models.vae import VAE, posterior_mean
from vaelab.runs import Run, pictures_folder

log = logging.getLogger(__name__)

PICTURES = (
    "reconstructions", "samples", "interpolations", "traversals", "manifold", "latent_scatter",
    "traversals_by_factor", "reconstructions_by_layers", "samples_by_temperature",
)  # fmt: skip
# The temperatures of `samples_by_temperature`: the scale of the layers below the top.
TEMPERATURES = (1.0, 0.8, 0.6, 0.4)
# Posterior means for the scatter are computed in chunks of this many images: the conv
# encoder holds about 75 MB for 1,024, which set the test stage's peak memory.
_ENCODE_CHUNK = 256
# Draws of a prior other than N(0, I) whose marginal quantiles place the 2-D manifold grid.
_PRIOR_DRAWS = 10_000


class RunHistory(L.Callback):
    """Appends each epoch's metrics to the run directory's history, whatever the logger.

    One row per training epoch, after its validation: the epoch means of `train/*` and
    the `val/*` metrics (per-dimension values left out), with "epoch" and "step". A
    resumed run first drops the rows written after its checkpoint (and so does a
    `RunCSVLogger` from its metrics.csv). Resumed from a
    checkpoint written at an epoch's end, Lightning ends that epoch again (without its
    metrics): its row, already written, is not written twice.
    """

    def __init__(self) -> None:
        self._recorded_step: int | None = None  # the step of the last row, when resumed

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and trainer.global_step > 0:
            run = Run(trainer.default_root_dir)
            run.truncate_history(trainer.global_step)
            dashboards.resumed(trainer.loggers, trainer.global_step)  # the CSV's rows too
            rows = run.history()
            self._recorded_step = rows[-1].get("step") if rows else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.global_step == self._recorded_step:  # the resumed epoch's end, again
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if "_dim/" in key or key.endswith("_step"):
                continue
            row[key.removesuffix("_epoch")] = float(value)
        Run(trainer.default_root_dir).append_history(row)


class WarmupEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping on the run's validation bound (higher is better), with the
    KL warm-up left out: training stops once `monitor` has not improved by more than
    `min_delta` for `patience` epochs, counted from the first epoch after the first
    `kl_warmup_epochs` (read from the LightningModule); the warm-up's epochs neither count
    nor set the score to beat. `patience=None`: never stops (the default config).

    It checks after each validation, before `RunCheckpoint` writes last.ckpt (Lightning
    runs checkpoint callbacks last), so the checkpoint holds the count of its epoch (the
    callback's state, Lightning's) and a resumed run counts on from there.
    """

    @checked("callbacks.early_stopping.")
    def __init__(
        self, monitor: str = "val/elbo", patience: int | None = None, min_delta: float = 0.0
    ):
        super().__init__(
            monitor=monitor,
            patience=patience or 0,
            min_delta=min_delta,
            mode="max",
            check_on_train_epoch_end=False,
        )
        self.enabled = patience is not None

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        warmup = trainer.lightning_module.hparams.get("kl_warmup_epochs", 0)
        if not self.enabled or trainer.current_epoch < warmup:
            return
        stopping = trainer.should_stop
        super()._run_early_stopping_check(trainer)
        if trainer.should_stop and not stopping and trainer.is_global_zero:
            # The run then ends as any other: validated, tested and `finished`.
            log.info(
                "Early stopping after epoch %d: %s",
                trainer.current_epoch,
                self.stopping_reason_message,
            )


class WeightEMA(EMAWeightAveraging):
    """An exponential moving average of the weights, for evaluation (VDVAE's, NVAE's):
    Lightning's `EMAWeightAveraging` during fit only. After every optimizer step
    avg = decay · avg + (1 - decay) · weights; validation runs on the average, every
    checkpoint's `state_dict` holds it (so the best checkpoint's test, `eval.py` and
    `load_run` use it), the raw weights and the average's state beside it
    (`current_model_state`, `averaging_state`), and `resume` restores both. `decay=None`:
    off (the default config). It updates before `StepCheckpoint` writes (conf/callbacks:
    listed before it), so that a step's checkpoint holds that step's average.

    Outside fit (the validation and test of the best checkpoint after training) it does
    nothing: the checkpoint's `state_dict` is already the average, which Lightning's
    callback would swap for its own latest average or replace by the raw weights.

    Args:
        decay: the weight of the average at each step, in (0, 1), e.g. 0.999; None: off.
    """

    @checked("callbacks.ema.")
    def __init__(self, decay: float | None = None):
        super().__init__(decay=decay if decay is not None else 0.999)
        self.enabled = decay is not None

    @property
    def steps_per_call_safe(self) -> bool:
        """Off, it lets a call of Lightning's loop run several steps (`LitVAE.steps_per_call`);
        on, it averages after every step, so Lightning's loop runs one a call."""
        return not self.enabled

    def _fitting(self, trainer: L.Trainer) -> bool:
        return self.enabled and trainer.state.fn == TrainerFn.FITTING

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.enabled:
            super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.enabled:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not Lightning's copy of the average into the weights: a last.ckpt written after
        # it (a run stopped inside an epoch) would hold the average as the raw weights, and
        # a resumed run would train on from it. The test after fit loads a checkpoint,
        # whose weights are the average.
        pass

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer):
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer):
            super().on_validation_epoch_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._fitting(trainer):
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._fitting(trainer):
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


class VAEPictures(L.Callback):
    """Draws pictures of the VAE after validation during fit, and once after testing.

    Writes `<default_root_dir>/pictures/{epoch_NNN,test}/<name>.png` for each name in
    `PICTURES` (`manifold` only when latent_dim == 2) and logs the same files to every
    `WandbLogger` and `TensorBoardLogger` as `{val,test}/pictures/<name>`, and to every
    `MLFlowLogger` as the run's artifacts `pictures/{epoch_NNN,test}/<name>.png`. Only
    global rank 0 draws.

    Args:
        every_n_epochs: draw after the validation of every n-th epoch, and of the last one.
        n_images: test images reconstructed (and whose KL ranks the traversed dims), and
            prior samples drawn.
        n_interpolations: pairs of test images interpolated between, one row each.
        interpolation_steps: images per interpolation, both ends included.
        n_traversal_dims: latent dims traversed, most informative (largest mean KL) first.
        traversal_values: values per traversal, evenly spaced over
            [-traversal_range, traversal_range], around the first test image's code.
        traversal_range: half-width of the traversal, in prior standard deviations.
        manifold_size: the 2-D manifold is a manifold_size x manifold_size grid.
        n_scatter: test images whose posterior means are scattered (PCA when D > 2).
        seed: seeds the prior samples, the same at every call so epochs are comparable.
        nrow: images per row of the reconstruction and sample grids.
        png_scale: integer upscaling (nearest neighbour) of image grids in the PNG files.
    """

    @checked("callbacks.pictures.")
    def __init__(
        self,
        every_n_epochs: int = 5,
        n_images: int = 64,
        n_interpolations: int = 8,
        interpolation_steps: int = 10,
        n_traversal_dims: int = 8,
        traversal_values: int = 11,
        traversal_range: float = 3.0,
        manifold_size: int = 20,
        n_scatter: int = 2000,
        seed: int = 0,
        nrow: int = 8,
        png_scale: int = 2,
    ):
        super().__init__()
        self.every_n_epochs = every_n_epochs
        self.n_images = n_images
        self.n_interpolations = n_interpolations
        self.interpolation_steps = interpolation_steps
        self.n_traversal_dims = n_traversal_dims
        self.traversal_values = traversal_values
        self.traversal_range = traversal_range
        self.manifold_size = manifold_size
        self.n_scatter = n_scatter
        self.seed = seed
        self.nrow = nrow
        self.png_scale = png_scale

    @property
    def n_test_images(self) -> int:
        """How many test images the pictures use."""
        return max(self.n_images, 2 * self.n_interpolations, self.n_scatter)

    @torch.no_grad()
    def make_pictures(
        self,
        vae: VAE,
        x: Tensor,
        y: Tensor | None,
        title: str = "",
        label: str = "label",
        factors: tuple[Tensor, tuple[str, ...]] | None = None,
    ) -> dict[str, Tensor | Figure]:
        """Every picture of `vae` from test images, as grids (3, H, W) or Figures.

        Args:
            vae: the model, in eval mode, on the device of `x`.
            x: (N, C, H, W) test images in [0, 1]; the first `n_images` are reconstructed,
                the first `n_scatter` scattered, pairs (x[2i], x[2i+1]) interpolated.
            y: (N,) their labels, colouring the scatter (None: one colour).
            title: title of the scatter.
            label: what y is, the scatter's legend title.
            factors: the images' ground-truth factors (N, K) and their names, for data
                that has them: adds `traversals_by_factor`.

        Returns:
            {name: picture} for the names in `PICTURES`, without "manifold" unless D == 2,
            "traversals_by_factor" without `factors`, and the last two but for a hierarchy
            (`_hierarchy_pictures`).
        """
        x = x[: self.n_test_images]
        chunks = x.split(_ENCODE_CHUNK)
        loc = torch.cat([posterior_mean(vae.posterior(chunk)) for chunk in chunks])  # (n, D)
        shown, shown_loc = x[: self.n_images], loc[: self.n_images]
        generator = torch.Generator().manual_seed(self.seed)
        pictures: dict[str, Tensor | Figure] = {
            "reconstructions": plots.reconstruction_grid(shown, vae.decode(shown_loc), self.nrow),
            "samples": plots.image_grid(vae.sample(self.n_images, generator), self.nrow),
        }

        pairs = min(self.n_interpolations, len(loc) // 2)
        if pairs > 0:
            ends = loc[: 2 * pairs].view(pairs, 2, -1)
            z = plots.interpolation_latents(ends[:, 0], ends[:, 1], self.interpolation_steps)
            pictures["interpolations"] = plots.image_grid(vae.decode(z), self.interpolation_steps)

        # The most informative dims: by KL where it splits into dims, else by how much the
        # posterior means vary across the images (active units' statistic).
        kl = kl_per_dim(vae, vae.posterior(shown))
        spread = kl if kl is not None else loc.var(0, correction=0)
        dims = plots.most_informative_dims(spread, self.n_traversal_dims)
        values = torch.linspace(-self.traversal_range, self.traversal_range, self.traversal_values)
        z = plots.traversal_latents(loc[0], dims, values)
        pictures["traversals"] = plots.image_grid(vae.decode(z), self.traversal_values)

        if loc.shape[1] == 2:
            draws = None if vae.standard_normal_prior else vae.prior().sample((_PRIOR_DRAWS,))
            z = plots.manifold_latents(self.manifold_size, prior_draws=draws).to(loc)
            pictures["manifold"] = plots.image_grid(vae.decode(z), self.manifold_size)

        pictures["latent_scatter"] = plots.latent_scatter(
            loc[: self.n_scatter], None if y is None else y[: self.n_scatter], title, label
        )
        if factors is not None:
            pictures["traversals_by_factor"] = self._traversals_by_factor(vae, loc, *factors)
        if len(vae.layers) > 1 and hasattr(vae, "reconstruct_from_top"):
            pictures.update(self._hierarchy_pictures(vae, shown))
        return pictures

    def _hierarchy_pictures(self, vae: VAE, x: Tensor) -> dict[str, Figure]:
        """A hierarchy's (`vaelab.models.topdown`): reconstructions keeping only the top k
        of its L layers of x's code, the rest drawn from the prior (what each layer holds),
        and samples with the layers below the top at lower temperatures."""
        x = x[: self.nrow]
        depth = len(vae.layers)
        rows = [x, *(vae.reconstruct_from_top(x, k) for k in range(depth, 0, -1))]
        grid = plots.image_grid(torch.cat(rows), len(x))
        labels = ["x", *(f"top {k} of {depth}" for k in range(depth, 0, -1))]
        by_layers = plots.labelled_rows(grid, labels, "reconstructions from the top layers")
        samples = [
            vae.sample(self.nrow, torch.Generator().manual_seed(self.seed), temperature=t)
            for t in TEMPERATURES
        ]
        grid = plots.image_grid(torch.cat(samples), self.nrow)
        labels = [f"t = {t:g}" for t in TEMPERATURES]
        by_temperature = plots.labelled_rows(grid, labels, "samples at a temperature")
        return {"reconstructions_by_layers": by_layers, "samples_by_temperature": by_temperature}

    def _traversals_by_factor(
        self, vae: VAE, loc: Tensor, factors: Tensor, names: tuple[str, ...]
    ) -> Figure:
        """The traversals of the `n_traversal_dims` dims that capture the most of a factor
        (MIG's normalised mutual information, on these images' posterior means), grouped
        by the factor each captures, each row labelled with it."""
        from vaelab.disentanglement import captured_factors  # sklearn: only for this

        captured, share = captured_factors(loc, factors[: len(loc)])
        dims = sorted(range(len(share)), key=lambda d: -share[d])[: self.n_traversal_dims]
        dims.sort(key=lambda d: (captured[d], -share[d]))
        values = torch.linspace(-self.traversal_range, self.traversal_range, self.traversal_values)
        z = plots.traversal_latents(loc[0], dims, values)
        grid = plots.image_grid(vae.decode(z), self.traversal_values)
        labels = [f"z{d + 1}: {names[captured[d]]} ({share[d]:.2f})" for d in dims]
        span = f"{-self.traversal_range:g} to {self.traversal_range:g}"
        return plots.labelled_rows(grid, labels, f"each row: one latent from {span}")

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> list[Path]:
        """Draw, save under `<default_root_dir>/pictures/`, log to W&B; returns the PNG paths."""
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "test_images"):
            rank_zero_warn("VAEPictures needs a datamodule with test_images(n); no pictures.")
            return []
        folder = pictures_folder(stage, trainer.current_epoch)
        out_dir = Run(trainer.default_root_dir).pictures_dir / folder
        device = pl_module.device
        # Drawing must not change the run: test_images may use the global RNG (binarization).
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            x, y = datamodule.test_images(self.n_test_images)
        was_training = pl_module.training
        pl_module.eval()
        try:
            title = f"posterior means of {min(self.n_scatter, len(x))} test images"
            if stage != "test":  # under test the weights may be an earlier checkpoint's
                title = f"epoch {trainer.current_epoch}: {title}"
            label, factors, labels = "label", None, y
            if y.ndim == 2:  # ground-truth factors: the scatter is coloured by the first
                factors = (y, datamodule.factor_names)
                y, label = y[:, 0], datamodule.factor_names[0]
            if not getattr(datamodule, "labelled", True):
                y = None  # a folder without classes: one colour
            if isinstance(pl_module.vae, ConditionalVAE):  # issue 24: pictures given y
                pictures = conditional_pictures(self, pl_module.vae, x, labels, title)
            else:
                pictures = self.make_pictures(pl_module.vae, x, y, title, label, factors)
        finally:
            pl_module.train(was_training)

        paths = []
        for name, picture in pictures.items():
            if isinstance(picture, Tensor) and self.png_scale > 1:
                picture = picture.repeat_interleave(self.png_scale, 1)
                picture = picture.repeat_interleave(self.png_scale, 2)
            path = plots.save_png(picture, out_dir / f"{name}.png")
            paths.append(path)
            key = f"{stage}/pictures/{name}"
            dashboards.log_picture(trainer.loggers, key, picture, path, trainer.global_step)
        return paths

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only validation inside fit: a later trainer.validate() would mislabel the epoch.
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        epoch = trainer.current_epoch + 1
        due = epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs
        if due and trainer.is_global_zero:
            self.draw(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.draw(trainer, pl_module, "test")


class VAESummary(ModelSummary):
    """Lightning's model summary of the networks: without the rows of the LitVAE's metrics
    (running means, active units, estimators), which hold no parameters and are not the
    model. The totals are the module's, as before."""

    def _summary(self, trainer: L.Trainer, pl_module: L.LightningModule):
        summary = super()._summary(trainer, pl_module)
        rows = summary._layer_summary.items()
        summary._layer_summary = {k: v for k, v in rows if not _metrics_only(v._module)}
        return summary


def _metrics_only(module: torch.nn.Module) -> bool:
    """A torchmetrics Metric, or a container of nothing else."""
    if isinstance(module, Metric):
        return True
    children = list(module.children())
    own = next(module.parameters(recurse=False), None)  # a parameter of its own: a model
    return bool(children) and own is None and all(_metrics_only(child) for child in children)


@torch.no_grad()
def conditional_pictures(
    settings: Any, vae: ConditionalVAE, x: Tensor, y: Tensor, title: str = ""
) -> dict[str, Any]:
    """The pictures of a conditional VAE from test images x and their labels y (N,) or
    (N, K), with the settings of `vaelab.callbacks.VAEPictures`:

    - samples: a row per value of the first conditioned label (per class), `nrow` draws
      z ~ p(z|y) each (the other conditioned factors: the first test image's);
    - reconstructions: decode(E_q[z|x, y], y) of the first `n_images`;
    - traversals: the most informative latent dims around the first test image's code,
      its labels fixed;
    - latent_scatter: the posterior means E_q[z|x, y], coloured by the first label.
    """
    x, y = x[: settings.n_test_images], y[: settings.n_test_images]
    loc = torch.cat(
        [
            vae.encode(chunk, labels)
            for chunk, labels in zip(x.split(256), y.split(256), strict=True)
        ]
    )
    n = settings.n_images
    generator = torch.Generator().manual_seed(settings.seed)
    rows = vae.condition.rows(settings.nrow, base=y[0] if y.ndim == 2 else None).to(y.device)
    samples = vae.sample(len(rows), generator, y=rows)
    pictures: dict[str, Any] = {
        "samples": plots.image_grid(samples, settings.nrow),
        "reconstructions": plots.reconstruction_grid(
            x[:n], vae.decode(loc[:n], y[:n]), settings.nrow
        ),
    }
    with given(vae, y[:n]):  # p(z|y) of a per-class prior: each image's own
        kl = kl_per_dim(vae, vae.posterior(x[:n]))
    spread = kl if kl is not None else loc.var(0, correction=0)
    dims = plots.most_informative_dims(spread, settings.n_traversal_dims)
    span = settings.traversal_range
    values = torch.linspace(-span, span, settings.traversal_values)
    z = plots.traversal_latents(loc[0], dims, values)
    fixed = y[:1].expand(len(z), *y.shape[1:])
    pictures["traversals"] = plots.image_grid(vae.decode(z, fixed), settings.traversal_values)
    first = vae.condition.labels(y)[:, 0]
    pictures["latent_scatter"] = plots.latent_scatter(
        loc[: settings.n_scatter], first[: settings.n_scatter], title, vae.condition.names[0]
    )
    return pictures
