"""LightningModule around `VAE`: steps, reduction to per-image means, logging, optimizer."""

import copy
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, Timer
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from torchmetrics import CatMetric

from vaelab.config.schemas import check_fields, checked
from vaelab.errors import ConfigError, TrainingError
from vaelab.estimators import (
    ActiveUnitsMetric,
    LogLikelihoodMetric,
    MeansMetric,
    has_mass,
    kl_per_dim,
    update_estimates,
)
from vaelab.models import build_likelihood, build_objective, build_part_class, build_vae
from vaelab.models.capabilities import likelihood_node, model_node
from vaelab.models.conditional import given
from vaelab.models.objectives import ElboObjective, Objective
from vaelab.models.schedules import BetaSchedule, build_schedule
from vaelab.models.vae import posterior_mean_and_noise

STAGES = ("train", "val", "test")
# LitVAE's arguments of old checkpoints: their model node's keys, at the top level.
LEGACY_MODEL_KEYS = ("arch", "hidden_dim", "activation", "top_dim")
TERMS = ("loss", "elbo", "rec", "kl")
# How the epoch metrics are logged. Their values come from a torchmetrics compute(), which
# has already reduced them across DDP processes: they are equal on every process. Lightning
# cannot know that of a tensor and warns, unless sync_dist=True, that it should reduce them;
# its reduction by max returns equal values exactly (a mean could round them), one small
# all-reduce per key and epoch, and none without DDP.
# batch_size=1: they are no batch's means, and Lightning asks for one where the training step
# reads its batches itself (`steps_per_call`).
REDUCED = {"sync_dist": True, "reduce_fx": "max", "batch_size": 1}
# Attributes assigned in every training step that are never parameters, buffers or modules:
# `LitVAE.__setattr__` sets them directly. Lightning sets `_current_fx_name` around each of
# its hooks (about 40 times a step) and nn.Module.__setattr__'s registry checks cost about
# 1 µs each.
PLAIN_ATTRIBUTES = frozenset({"_current_fx_name", "_loss", "_beta_sum", "_beta_images"})
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"  # `LitVAE.optimizer_step`
# trainer.steps_per_call=auto: the training steps one call of Lightning's loop runs, where
# nothing asks for a call per step (`LitVAE.why_one_step_per_call`). Lightning's own cost
# per call (its callback hooks, closure and precision wrappers, bookkeeping: about 0.4-0.6
# ms on a CPU) is shared by this many steps; a preemption's signal is answered within
# this many steps.
AUTO_STEPS_PER_CALL = 16
# The Callback hooks Lightning calls once per training step (per call of its loop).
STEP_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
)

log = logging.getLogger(__name__)


def _compiler_missing() -> str | None:
    """Why torch.compile cannot generate code here (inductor's C++ compiler for the CPU,
    Triton for a GPU); None if it can."""
    compiler = os.environ.get("CXX", "g++")
    if not shutil.which(compiler):
        return f"no C++ compiler ({compiler}) on the PATH"
    if torch.cuda.is_available():
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed"
    return None


def _steps_taken(*counts: dict) -> dict:
    """Of the two counts of optimizer steps (the state dicts of Lightning's progress of
    automatic and of manual optimization; its global_step is the one of the mode it runs
    in), the count of the mode that took the steps, for both to hold."""
    return copy.deepcopy(max(counts, key=lambda count: count["total"]["completed"]))


def _steps_counted_alike(checkpoint: dict) -> None:
    """Give a checkpoint's two counts of optimizer steps the steps taken (`_steps_taken`):
    a run resumes with one step per call of Lightning's loop or several
    (`LitVAE.steps_per_call`), whichever it was saved with, earlier runs too."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    automatic = loops.get("epoch_loop.automatic_optimization.optim_progress", {})
    counts = [automatic.get("optimizer", {}).get("step")]
    counts.append(loops.get("epoch_loop.manual_optimization.optim_step_progress"))
    if None in counts:
        return
    taken = _steps_taken(*counts)
    for count in counts:
        count.update(copy.deepcopy(taken))


class LitVAE(L.LightningModule):
    """A VAE trained by maximising beta-weighted ELBO; all metrics are nats per image.

    Logged per stage: `loss` (what is minimised: -(rec - beta * kl), with warm-up in
    training), `elbo` (the true bound rec - kl), `rec` (E_q log p(x|z)) and `kl`: epoch
    means over images (in training `train/<term>_epoch`), and in training also the batch
    means `train/<term>_step` with `train/beta_step`, every `log_every_n_steps` steps, and
    `train/beta_epoch`, the epoch's mean KL weight over images, and with
    `grad_skip_threshold`, `train/skipped_steps`, the steps skipped so far. Val and
    test add `active_units` (and, for a model of several stochastic layers, per layer:
    `active_units_z1`, ...; for one whose KL splits by layer, `kl_per_layer`, the top-down
    hierarchy, also `kl_z1`, ...: Monte Carlo at one draw) and `kl_dim/<i>` (posterior
    collapse diagnostics); test adds
    the importance-sampled `nll_iwae`, `bpd_iwae`, `ess_iwae` and the naive prior-sampling
    `nll_naive`, `bpd_naive`, each with `n_importance` samples per image (0: skip); nll
    is nats of the likelihood's log p(x) (a density's for a density), bpd bits of the
    discrete data: for a density on 8-bit data, of the masses of the levels' bins, and a
    density on binarized data (or on a datamodule without `is_binary`) has none
    (`estimators.has_mass`). On data whose labels are ground-truth factors (B, K), test
    adds the disentanglement metrics of the test images' posterior means
    (`vaelab.disentanglement.scores`): `mig`, `dci_disentanglement`, `dci_completeness`,
    `dci_informativeness`, `sap`, `factor_vae`, with the sample sizes and seed of
    `disentanglement` (None: the defaults).

    Each validation and test epoch draws its random numbers (z, the estimators' samples)
    from the global generator seeded with `eval_seed` (plus the process rank), and gives
    training its own generator state back afterwards: the same weights on the same data
    give the same figures wherever they are computed (history.jsonl, metrics.json,
    eval.py with the same seed and K), and evaluating does not change the training run.

    The model is `vaelab.models.build_vae`'s: the `model` node (a conf/model option: its
    `_target_`, a `VAE` subclass, and its arguments; None: conv), the prior and posterior
    configs. `arch`, `hidden_dim`, `activation` and `top_dim` are the hyperparameters of a
    checkpoint made before the model options named their class (the old model node's keys,
    at the top level): they are read once into `model` (`capabilities.model_node`), which
    is what is saved; give `model` instead. The likelihood is a node of conf/likelihood/
    (`{"_target_": ..., "obs_scale": 0.1}`); a checkpoint made before them holds an
    option's name and a top-level `obs_scale`, read once as that option's node
    (`capabilities.likelihood_node`), which is what is saved.
    With `condition` (condition=labels, resolved from the data) the conditional VAE of the
    model's class, whose every term and estimate is given the batch's labels: elbo, iwae,
    nll_iwae and nll_naive are then of log p(x|y).
    """

    eval_seed: int = 0

    def __setattr__(self, name: str, value: object) -> None:
        if name in PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)  # nothing for nn.Module to register
        else:
            super().__setattr__(name, value)

    @checked("")
    def __init__(
        self,
        model: dict | None = None,
        latent_dim: int = 16,
        likelihood: dict | str | None = None,
        obs_scale: float | None = None,
        beta: float = 1.0,
        num_samples: int = 1,
        kl_warmup_epochs: float = 0.0,
        lr: float = 1e-3,
        optimizer: str = "adam",
        n_importance: int = 100,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        prior: dict | None = None,
        posterior: dict | None = None,
        objective: dict | None = None,
        beta_schedule: dict | None = None,
        disentanglement: dict | None = None,
        grad_skip_threshold: float | None = None,
        condition: dict | None = None,
        arch: str | None = None,
        hidden_dim: int | None = None,
        activation: str | None = None,
        top_dim: int | None = None,
    ):
        super().__init__()
        check_fields(disentanglement or {}, "disentanglement.")
        old = {"arch": arch, "hidden_dim": hidden_dim, "activation": activation}
        old = {key: value for key, value in old.items() if value is not None}
        if old and model is not None:
            raise ConfigError(
                f"LitVAE takes the model node (model=) or an old checkpoint's {', '.join(old)}, "
                "not both: give them as model={'_target_': ..., 'hidden_dim': ...}"
            )
        model = model_node({**old, "top_dim": top_dim} if old else model)
        check_fields({k: v for k, v in model.items() if k != "_target_"}, "model.")
        likelihood = likelihood_node(likelihood, obs_scale)
        self.save_hyperparameters(ignore=["model", "likelihood", "obs_scale", *LEGACY_MODEL_KEYS])
        self.save_hyperparameters({"model": model, "likelihood": likelihood})
        image_shape = tuple(image_shape)
        self.vae = build_vae(
            model,
            image_shape,
            latent_dim,
            build_likelihood(likelihood),
            None,
            prior,
            posterior,
            condition,
        )
        self._objective: Objective | None = None
        self.schedule: BetaSchedule = build_schedule(beta_schedule, kl_warmup_epochs)
        # The objective's class, for its extras: built in `setup`, with the data's size.
        extras = build_part_class(objective, ElboObjective, Objective, "objective").extras
        self.terms = (*TERMS, *extras)
        # Epoch means of the terms. One metric per stage, updated with every batch and logged
        # once per epoch: a `self.log` per term and step cost more than a small step's maths.
        # Keyed "<stage>_means": a ModuleDict may not have a key named "train".
        self.means = nn.ModuleDict({f"{s}_means": MeansMetric(len(self.terms)) for s in STAGES})
        self.latent_stats = nn.ModuleDict(
            {s: ActiveUnitsMetric(self.vae.latent_dim, self.vae.layers) for s in ("val", "test")}
        )
        # A model that splits its KL by stochastic layer (`kl_per_layer`, the top-down
        # hierarchy): val and test log `kl_<layer>`, the epoch mean of each layer's KL.
        self.layer_kls = None
        if hasattr(self.vae, "kl_per_layer") and len(self.vae.layers) > 1:
            layers = len(self.vae.layers)
            self.layer_kls = nn.ModuleDict({s: MeansMetric(layers) for s in ("val", "test")})
        num_pixels = math.prod(image_shape)
        self.nll_iwae = LogLikelihoodMetric(num_pixels, "iwae")
        self.nll_naive = LogLikelihoodMetric(num_pixels, "naive")
        # The test images' posterior means and factors, gathered across processes.
        self.test_codes, self.test_factors = CatMetric(), CatMetric()
        self._beta_sum = self._beta_images = 0.0  # the epoch's KL weights, image-weighted
        self._rng_fork: AbstractContextManager | None = None
        self._mass = True  # the test's data have a probability (`has_mass`), set per test
        # 1 once a training step's loss or gradients were not finite, on the device: Adam
        # skips every step from then on (`on_before_optimizer_step`).
        self._found_inf: Tensor | None = None
        self._loss = torch.zeros(())  # the last training step's
        self._compile_step = False  # `compile_networks`
        self._compiled_objective = None
        # Optimizer steps skipped for a gradient norm above grad_skip_threshold, over the
        # whole run (the checkpoint holds the count, so a resumed run counts on).
        self.skipped_steps = 0
        # Training steps per call of Lightning's loop: "auto" or a number (trainer.steps_per_call,
        # set by `build_trainer`); what a fit runs is chosen in `setup` (`_steps`).
        self.steps_per_call: int | str = "auto"
        self._steps = 1
        self._step_marks: tuple[int, ...] = ()  # `on_train_start`
        self._batch_hooks: tuple[Callable, ...] = ()  # `on_train_start`

    def compile_networks(self) -> None:
        """torch.compile the encoder and decoder in place, and the training step's maths as
        a whole (`_training_values`: the forward pass and the loss, and with them their
        backward pass) at the first training step: the names of the weights, and so
        checkpoints, stay as they are. The first steps take longer while it compiles.

        On a CUDA device the training step is compiled with mode="reduce-overhead" (CUDA
        graphs: each batch size is captured once); on a CPU its random draws are those of
        eager torch (inductor's `fallback_random`), so that a compiled run's figures equal
        an eager run's. Where torch cannot compile (no C++ compiler for a CPU, no Triton for
        a GPU), one line says so and training runs eager.
        """
        missing = _compiler_missing()
        if missing:
            log.warning("trainer.compile=true: %s; the model runs eager", missing)
            return
        self.vae.encoder.compile()
        self.vae.decoder.compile()
        self._compile_step = True

    def _training_values(self, x: Tensor, weight: float) -> dict[str, Tensor]:
        """The objective's per-image values of a training batch, under torch.compile if
        `compile_networks` asked (its weight as a tensor: a float would recompile whenever
        the schedule changes it)."""
        if not self._compile_step:
            return self.objective(self.vae, x, weight)
        if self._compiled_objective is None:
            cuda = x.device.type == "cuda"
            if not cuda:
                from torch._inductor import config as inductor

                inductor.fallback_random = True
            mode = "reduce-overhead" if cuda else None
            self._compiled_objective = torch.compile(self.objective, mode=mode)
        if x.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graphs are done
        return self._compiled_objective(self.vae, x, torch.tensor(weight, device=x.device))

    @property
    def objective(self) -> Objective:
        """What training minimises (`vaelab.models.objectives`), built on first use: the
        objectives that need the training set's size (beta-TCVAE) read it from the data."""
        if self._objective is None:
            datamodule = self._trainer and self.trainer.datamodule
            size = datamodule.hparams.get("n_train") if datamodule is not None else None
            self._objective = build_objective(
                self.hparams.objective, self.hparams.num_samples, size
            )
        return self._objective

    @property
    def kl_kind(self) -> str | None:
        """How the KL is computed: "closed_form" or "monte_carlo" (None before a step)."""
        return self.objective.kl_kind

    def schedule_weight(self) -> float:
        """The fraction of beta that the schedule (`beta_schedule`, `vaelab.models.schedules`)
        gives this training step, in [0, 1]; 1 outside training."""
        if not self.training:
            return 1.0
        schedule = self.schedule
        # Only what the schedule reads: a step without a warm-up needs no Trainer.
        total = self.trainer.estimated_stepping_batches if schedule.needs_total_steps else 0
        per_epoch = self.trainer.num_training_batches if schedule.warmup_epochs else 1.0
        return schedule.weight(self.global_step, total, per_epoch)

    def kl_weight(self) -> float:
        """beta times the schedule's fraction: the KL weight of this step."""
        return self.hparams.beta * self.schedule_weight()

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        with given(self.vae, batch[1]):  # a conditional VAE's terms are given y (issue 24)
            return self._conditioned_step(batch, stage)

    def _conditioned_step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        x, _ = batch
        beta = self.kl_weight()
        weight = self.schedule_weight() if self.objective.own_beta else beta
        if stage == "train":
            values = self._training_values(x, weight)
        else:
            qz_x = self.vae.posterior(x)
            values = self.objective(self.vae, x, weight, qz_x=qz_x)
        # Per-image values (B,) each: the epoch means are exact across batches and processes.
        self.means[f"{stage}_means"].update(
            torch.stack([values[term].detach() for term in self.terms])
        )
        if stage != "train":
            kl_dims = kl_per_dim(self.vae, qz_x)
            means, noise = posterior_mean_and_noise(qz_x)
            self.latent_stats[stage].update(means, kl_dims, noise)
            if self.layer_kls is not None:
                self.layer_kls[stage].update(self.vae.kl_per_layer(qz_x).T.detach())
            if stage == "test" and batch[1].ndim == 2:  # ground-truth factors
                self.test_codes.update(means)
                self.test_factors.update(batch[1])
            return values
        self._beta_sum += beta * len(x)
        self._beta_images += len(x)
        if self._trainer and (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            # The steps Lightning sends to the loggers (its own rule, for one optimizer).
            self._log_batch_means(values, beta)
        return values

    def _log_batch_means(self, values: dict[str, Tensor], beta: float) -> None:
        """train/<term>_step and train/beta_step, straight to the loggers as Lightning would
        send them (with the epoch, at this step): one host sync, where a `self.log` per key
        cost about 0.5 ms of Lightning's bookkeeping each (3 ms every n-th step)."""
        if not self.loggers:
            return
        means = torch.stack([values[t].detach().mean() for t in self.terms]).tolist()
        metrics = {f"train/{t}_step": m for t, m in zip(self.terms, means, strict=True)}
        metrics |= {"train/beta_step": beta, "epoch": self.current_epoch}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)
            logger.save()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")["loss"].mean()
        self._loss = loss.detach()  # checked with the gradients, `on_before_optimizer_step`
        return loss

    def setup(self, stage: str) -> None:
        if stage == "fit":
            steps, why = self._steps_for_fit()
            self._group_steps(steps)
            if self.trainer.is_global_zero:
                if steps > 1:
                    log.info("Steps: %d per call of Lightning's loop", steps)
                else:
                    log.info("Steps: one per call of Lightning's loop (%s)", why)

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            # The steps taken, counted by manual optimization, also in automatic's count,
            # which is Lightning's global_step once the module is back to one step a call.
            loop = self.trainer.fit_loop.epoch_loop
            counts = (
                loop.automatic_optimization.optim_progress.optimizer.step,
                loop.manual_optimization.optim_step_progress,
            )
            taken = _steps_taken(*(count.state_dict() for count in counts))
            for count in counts:
                count.load_state_dict(taken)
            self._group_steps(1)

    def _steps_for_fit(self) -> tuple[int, str | None]:
        """The training steps each call of Lightning's loop runs in this fit, from
        `steps_per_call`, and why one where it is one: "auto" groups `AUTO_STEPS_PER_CALL`
        steps where nothing needs a call per step (`why_one_step_per_call`), else one; a
        number is refused in one line where something does.

        Raises:
            ConfigError: steps_per_call above 1 where a call per step is needed.
        """
        setting = self.steps_per_call
        if setting == 1:
            return 1, "trainer.steps_per_call=1"
        why = self.why_one_step_per_call()
        if why is None:
            return (AUTO_STEPS_PER_CALL if setting == "auto" else int(setting)), None
        if setting == "auto":
            return 1, why
        raise ConfigError(
            f"trainer.steps_per_call={setting}: {why}; give trainer.steps_per_call=auto or 1"
        )

    def why_one_step_per_call(self) -> str | None:
        """Why this fit needs a call of Lightning's loop for every training step (None: it
        does not): Lightning's own per-step work (accumulation, clipping, a gradient scaler)
        or a callback's hook per step, which grouped steps would call once per group. A
        callback is fine with groups if it is a progress bar, a ModelCheckpoint (its
        `every_n_train_steps` end groups), a Timer, or says so (`steps_per_call_safe`)."""
        trainer = self.trainer
        if trainer.accumulate_grad_batches != 1:
            return "trainer.accumulate_grad_batches accumulates over calls of Lightning's loop"
        if trainer.gradient_clip_val:
            return "trainer.gradient_clip_val clips in Lightning's optimizer step"
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return f"precision {trainer.precision} scales gradients in Lightning's optimizer step"
        if trainer.val_check_interval != 1.0:
            return "trainer.val_check_interval validates inside an epoch"
        safe = (ProgressBar, ModelCheckpoint, Timer)
        for callback in trainer.callbacks:
            if isinstance(callback, safe) or getattr(callback, "steps_per_call_safe", False):
                continue
            hooks = [hook for hook in STEP_HOOKS if is_overridden(hook, callback, L.Callback)]
            if hooks:
                return f"callback {type(callback).__name__} has {hooks[0]}, called once per call"
        return None

    def _group_steps(self, steps: int) -> None:
        """Run `steps` training steps per call of Lightning's loop: more than one by manual
        optimization, the step reading its batches from Lightning's iterator (Lightning
        hands it the iterator when the training step's signature names `dataloader_iter`)."""
        self._steps = steps
        self.automatic_optimization = steps == 1
        if steps == 1:
            self.__dict__.pop("training_step", None)
        else:
            self.training_step = self._training_steps
            # Lightning calls that signature experimental at every fit; what vaelab asks of
            # it, the same run as one step a call, tests/test_steps_per_call.py holds it to.
            warnings.filterwarnings("ignore", "Found `dataloader_iter` argument in the `train")

    def on_train_start(self) -> None:
        # Where a group of steps ends early: the steps at which a callback saves a checkpoint.
        marks = [getattr(c, "every_n_train_steps", None) for c in self.trainer.callbacks]
        marks += [getattr(c, "_every_n_train_steps", None) for c in self.trainer.callbacks]
        self._step_marks = tuple(sorted({m for m in marks if isinstance(m, int) and m > 0}))
        # The batch hooks a group's batches go through, those Lightning's loop would call
        # (its rule: the datamodule's where it has its own, else the module's), found once:
        # Lightning looks for them at every batch, three times (about 40 µs a step).
        datamodule = self.trainer.datamodule
        names = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
        owners = [
            datamodule if datamodule is not None and is_overridden(name, datamodule) else self
            for name in names
        ]
        self._batch_hooks = tuple(getattr(o, n) for o, n in zip(owners, names, strict=True))

    def _training_steps(self, dataloader_iter: Iterator) -> None:
        """Up to `_steps` training steps, each on the next batch of `dataloader_iter`, as
        Lightning's loop would run them one per call: the batch moved and converted by the
        same hooks, the same forward pass, loss and backward pass, the same checks of the
        gradients (`on_before_optimizer_step`) and optimizer step, and the loop's counts of
        batches and steps kept as a call per step keeps them, so that a run's weights,
        figures, logged steps and checkpoints equal a run of one step per call. A group ends
        early at the epoch's last batch and where `_group_ends` says. What is left per step
        of Lightning's loop: its callbacks' step hooks (`why_one_step_per_call`)."""
        trainer = self.trainer
        loop = trainer.fit_loop.epoch_loop
        batches = loop.batch_progress
        steps = loop.manual_optimization.optim_step_progress
        optimizer = trainer.optimizers[0]
        before, transfer, after = self._batch_hooks
        device = trainer.strategy.root_device
        with self._nvml_lifted():
            for n in range(self._steps):
                if n:
                    if dataloader_iter.done or self._group_ends():
                        return
                    # Lightning counted the call's first batch; the others as its loop would.
                    batches.increment_ready()
                    batches.increment_started()
                batch, _, _ = next(dataloader_iter)
                batch = before(trainer.precision_plugin.convert_input(batch), 0)
                batch = after(transfer(batch, device, 0), 0)
                # The class's step of one batch (the instance's `training_step` is this one).
                loss = type(self).training_step(self, batch, loop.batch_idx)
                optimizer.zero_grad()
                trainer.strategy.pre_backward(loss)  # DDP: ready to reduce the gradients
                loss.backward()
                self.on_before_optimizer_step(optimizer)
                steps.increment_ready()
                optimizer.step()
                steps.increment_completed()
                if n:
                    batches.increment_processed()
                    batches.increment_completed()
                    loop._batches_that_stepped += 1

    def _group_ends(self) -> bool:
        """Whether a group of steps ends before its next step: at `max_steps`, at a step a
        checkpoint is written at, and at a SIGTERM (a preemption is answered at the next
        step, as one step a call answers it)."""
        step, trainer = self.global_step, self.trainer
        if 0 < trainer.max_steps <= step or trainer.received_sigterm:
            return True
        return any(step % every == 0 for every in self._step_marks)

    def check_finite(self) -> None:
        """Raise if a training step's loss or gradients were not finite (one host sync). From that
        step on the optimizer left the weights as they were (`on_before_optimizer_step`),
        so every checkpoint holds finite weights: it is read at each epoch's end and before
        each checkpoint is written.

        Raises:
            TrainingError: training diverged, with the epoch and step where it did.
        """
        if self._found_inf is None or not self._found_inf:
            return
        # Adam counts the steps it took: none since the first skipped one.
        optimizer = self.trainer.optimizers[0]
        state = next(iter(optimizer.state.values()), {})
        step = int(state.get("step", 0))
        # The epoch's sums of the terms (`means`) hold a non-finite value if one step had one.
        sums = dict(zip(self.terms, self.means["train_means"].sums.tolist(), strict=True))
        terms = {"reconstruction term": sums["rec"], "KL": sums["kl"]}
        bad = [name for name, value in terms.items() if not math.isfinite(value)]
        what = "loss is" if not math.isfinite(sums["loss"]) else "gradients are"
        raise TrainingError(
            f"the {what} not finite at epoch {self.current_epoch}, step {step} "
            f"({' and '.join(bad) or what.split()[0]} went non-finite): training diverged; "
            f"lower lr (now {self.hparams.lr:g}) or set trainer.gradient_clip_val (e.g. 1.0); "
            "the last checkpoint is from before the divergence"
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_finite()  # a diverged run writes no checkpoint of its later steps
        checkpoint["skipped_steps"] = self.skipped_steps
        _steps_counted_alike(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_steps = checkpoint.get("skipped_steps", 0)  # older runs: none
        _steps_counted_alike(checkpoint)  # before Lightning restores its loops from it

    def on_train_batch_end(self, outputs: Tensor, batch: object, batch_idx: int) -> None:
        # Logged here, at the epoch's last batch, rather than in on_train_epoch_end, which
        # Lightning calls after the callbacks' (RunHistory reads the epoch's metrics there).
        trainer = self.trainer
        if trainer.is_last_batch or 0 < trainer.max_steps <= self.global_step:
            self.check_finite()
            self._log_means("train", suffix="_epoch")
            if self.hparams.get("grad_skip_threshold") is not None:
                skipped = float(self.skipped_steps)
                self.log("train/skipped_steps", skipped, on_step=False, on_epoch=True, **REDUCED)
            if self._beta_images:
                beta = self._beta_sum / self._beta_images
                self.log("train/beta_epoch", beta, on_step=False, on_epoch=True, **REDUCED)
            self._beta_sum = self._beta_images = 0.0

    def _seed_evaluation(self) -> None:
        devices = [self.device] if self.device.type == "cuda" else []
        self._rng_fork = torch.random.fork_rng(devices=devices)
        self._rng_fork.__enter__()
        torch.manual_seed(self.eval_seed + self.global_rank)

    def _restore_training_rng(self) -> None:
        if self._rng_fork is not None:
            self._rng_fork.__exit__(None, None, None)
            self._rng_fork = None

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        hp = getattr(datamodule, "hparams", {})
        if self.trainer.is_global_zero and "n_train" in hp:
            shape = " x ".join(map(str, self.hparams.image_shape))
            held = getattr(datamodule, "held_on", self.device)
            where = f"held on {held}"
            if held.type == "cpu" and self.device.type == "cuda":
                where = "held in host memory, batches pinned"
            log.info(
                "Data: %s (%s), %s train, %s val, %s test images of %s, %s",
                hp["name"], hp["source"], f"{hp['n_train']:,}", f"{hp['n_val']:,}",
                f"{hp['n_test']:,}", shape, where,
            )  # fmt: skip

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        with self._nvml_lifted():  # the forward and backward passes too: Lightning's closure
            return super().optimizer_step(*args, **kwargs)

    @contextmanager
    def _nvml_lifted(self) -> Iterator[None]:
        # Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 on import, so that asking whether
        # CUDA is there does not poison a later fork. torch's Adam asks at every step, and
        # until CUDA is initialised (never, training on a CPU) each answer loads NVML through
        # ctypes (about 30 µs of a step). A step forks nothing: off CUDA the setting is
        # lifted for the step (or a call's steps) and given back however they end.
        if self.device.type == "cuda":
            yield
            return
        lifted = os.environ.pop(NVML_CHECK, None)
        try:
            yield
        finally:
            if lifted is not None:
                os.environ[NVML_CHECK] = lifted

    def on_validation_epoch_start(self) -> None:
        self._seed_evaluation()

    def on_test_epoch_start(self) -> None:
        self._seed_evaluation()
        # The data, not the model, knows its quantisation: the bits of a density depend on it.
        binary = getattr(self.trainer.datamodule, "is_binary", None)
        self._mass = has_mass(self.vae.density, binary)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")
        if self.hparams.n_importance > 0:
            x, y = batch
            k = self.hparams.n_importance  # the datamodule's batches are model-ready
            with given(self.vae, y):  # a conditional VAE's: of log p(x|y)
                update_estimates(self.nll_iwae, self.nll_naive, self.vae, x, k, mass=self._mass)

    def on_validation_epoch_end(self) -> None:
        self._log_means("val", prog_bar=["elbo"])
        self._log_epoch_metrics("val", [self.latent_stats["val"]])
        self._restore_training_rng()

    def on_test_epoch_end(self) -> None:
        self._log_means("test")
        estimators = [self.nll_iwae, self.nll_naive] if self.hparams.n_importance > 0 else []
        self._log_epoch_metrics("test", [self.latent_stats["test"], *estimators])
        if self.test_factors.update_called:
            self._log_disentanglement()
        self._restore_training_rng()

    def _log_disentanglement(self) -> None:
        """test/mig, ...: the scores of the gathered test codes against their factors."""
        from vaelab import disentanglement  # sklearn: a second of every start, for this only

        codes, factors = self.test_codes.compute(), self.test_factors.compute()
        self.test_codes.reset()
        self.test_factors.reset()
        knobs = self.hparams.disentanglement or {}
        found = disentanglement.scores(codes.float(), factors.long(), **knobs)
        for name, value in found.items():  # equal on every process: computed from gathered
            self.log(f"test/{name}", value, **REDUCED)

    def _log_means(self, stage: str, suffix: str = "", prog_bar: Sequence[str] = ()) -> None:
        """Log the epoch means of the terms (reduced across processes by compute), reset;
        in val and test also each layer's KL, `<stage>/kl_<layer>`, where the model has them."""
        if self.layer_kls is not None and stage in self.layer_kls:
            layer_kls = self.layer_kls[stage]
            if layer_kls.update_called:
                names = [name for name, _ in self.vae.layers]
                for name, value in zip(names, layer_kls.compute(), strict=True):
                    self.log(f"{stage}/kl_{name}", value, **REDUCED)
                layer_kls.reset()
        metric = self.means[f"{stage}_means"]
        if not metric.update_called:  # e.g. limit_val_batches=0
            return
        for term, value in zip(self.terms, metric.compute(), strict=True):
            self.log(
                f"{stage}/{term}{suffix}",
                value,
                on_step=False,
                on_epoch=True,
                prog_bar=term in prog_bar,
                **REDUCED,
            )
        metric.reset()

    def _log_epoch_metrics(self, stage: str, metrics: list) -> None:
        """Log dict-valued metrics (already reduced across processes by compute)."""
        for metric in metrics:
            for name, value in metric.compute().items():
                if name == "variance":
                    continue
                if value.dim() == 0:
                    self.log(f"{stage}/{name}", value.float(), **REDUCED)
                else:  # per latent dimension
                    for i, v in enumerate(value):
                        self.log(f"{stage}/{name.removesuffix('_per_dim')}_dim/{i}", v, **REDUCED)
            metric.reset()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after the gradients are accumulated, reduced across processes
        # and unscaled, before they are clipped.
        # The optimizer's parameters (all of the module's): `self.parameters()` would walk
        # the modules' tree at every step.
        params = (p for group in optimizer.param_groups for p in group["params"])
        grads = [p.grad for p in params if p.grad is not None]
        # grad_skip_threshold (VDVAE's skip_threshold): a step whose gradient norm is above
        # it, or not finite, is skipped: the gradients are dropped, so the optimizer leaves
        # those weights and its moments as they are. The norm is of the accumulated
        # (unscaled, DDP-reduced) gradients, the same on every process.
        threshold = self.hparams.get("grad_skip_threshold")
        if threshold is not None:
            norm = torch.nn.utils.get_total_norm(grads)
            if not norm.item() <= threshold:  # NaN too
                optimizer.zero_grad(set_to_none=True)
                self.skipped_steps += 1
                return
        if self.hparams.optimizer == "adam_normgrad":
            # Each parameter's gradient divided by its L2 norm (+1e-7, as vae_vampprior's
            # AdamNormGrad) before Adam's step; the foreach kernels normalise every tensor
            # in three calls (as clip_grad_norm_).
            torch._foreach_div_(grads, torch._foreach_add(torch._foreach_norm(grads), 1e-7))
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # 16-mixed: GradScaler skips the steps whose scaled gradients overflow
        # A non-finite loss or gradients (any process's, after DDP's reduction) never reach
        # the weights, without a host sync: GradScaler's check sets `found_inf` to 1 on the
        # device, and the fused Adam skips its steps while it is 1 (it is never reset: the
        # run stops at the next `check_finite`).
        if self._found_inf is None:
            self._found_inf = torch.zeros((), device=self._loss.device)
            self._unit = torch.ones((), device=self._loss.device)
        checked = [*grads, self._loss.float()]
        torch._amp_foreach_non_finite_check_and_unscale_(checked, self._found_inf, self._unit)
        if self.trainer.world_size > 1:  # a process's own loss: every process skips alike
            torch.distributed.all_reduce(self._found_inf, op=torch.distributed.ReduceOp.MAX)
        if optimizer.defaults.get("fused"):
            optimizer.found_inf = self._found_inf
        else:  # another device's Adam has no such flag: a sync per step there
            self.check_finite()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The fused kernel updates all parameters in one call: on a CPU, Adam's default
        # per-tensor loop took 2 ms of an 11 ms mlp step (benchmarks/run.py).
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, fused=fused or None)
