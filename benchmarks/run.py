"""Speed and memory of vaelab against hand-written baselines and floors: figures and ratios.

    python benchmarks/run.py [--quick] [--sections train,step,eval,...] [--threads N] [--profile]

Each contender of a comparison runs in this one process (or, for start-up and memory, in
fresh subprocesses) and the contenders alternate round by round (A B C A B C ...), so that
a machine busy with other work slows them alike; the median round is reported, with the
range. Sections:

  train    training images/s, batch 128, models mlp and conv, on Fashion-MNIST and on the
           MNIST fallback: vaelab (the `vaelab train` code path, timed inside the Trainer
           from the end of the warm-up steps' call of Lightning's loop to the end of the
           last batch), the same network and loss in a hand-written loop over a torchvision
           DataLoader, and that loop over batches already binarized in memory (the compute
           floor) and over uint8 batches in memory binarized per batch as vaelab draws
           them; and vaelab with `trainer.compile=true` (its compilation falls in the
           warm-up).
  step     CPU µs per training step of a tiny network (mlp, hidden 16, z 2, batch 32, on
           Fashion-MNIST): the `vaelab train` Trainer with the default callbacks, a CSV
           logger and the progress bar, the same Trainer lean, lean with
           `trainer.compile=true`, and the first two with one step per call of Lightning's
           loop (`trainer.steps_per_call=1`: the path before grouped steps), against the
           network and `VAE.elbo_terms` in a plain loop
           with vaelab's fused Adam (and that loop compiled whole); what a step costs
           beyond the plain loop is the framework's. `--profile`: a cProfile of the
           default path's steps, Lightning's and vaelab's functions by cumulative time.
  parts    training images/s of the model parts on the MNIST fallback, model=mlp with
           `objective=iwae objective.k=5`, `prior=vamp` (500 pseudo-inputs, encoded once per
           step) or `posterior=iaf`, and `model=hvae` (two stochastic layers), each
           through the `vaelab train` code path against the same maths written out in a
           plain loop over batches in memory (the floor); and
           the mixture density log p(z) of 500 components (vaelab's matrix form against
           torch's MixtureSameFamily); and the discretized logistic likelihood's log p(x|z)
           with its gradient (vaelab's tail-safe form against the plain formula), and the
           mixture of 10 discretized logistics with coupled channels (PixelCNN++'s) against
           that one discretized logistic: what the mixture's likelihood costs.
  eval     decoder evaluations/s of `iw_log_likelihood` (K = 1,000, model=mlp, untrained)
           against the decoder alone at its best chunk size, the decoder and the
           likelihood's log-density of the images at that size (what any estimator must
           compute), and a per-image loop; and the peak RSS each adds, in a fresh subprocess.
  startup  seconds from launch to the start of the first training step of
           `python train.py trainer=debug logger=none` and to the end of the imports of
           `python -c "import torch, torchvision, lightning, hydra, wandb"` (each prints a
           clock, then is stopped); and to the exit of `python train.py latent_dim=0`
           (exit 2) and of that import line.
  memory   peak RSS of the default `python train.py` by phase: on the MNIST fallback, and
           one epoch on the 60,000 images of Fashion-MNIST.
  profile  (not in the default set) cProfile of vaelab training steps: the top functions.

A ratio is vaelab's figure over the other's: below 1 means vaelab is slower. Every process
uses `--threads` torch threads; on a machine busy with other work, `--threads 1` gives
steady figures where two threads on two busy cores are both slow and erratic.
"""

import argparse
import contextlib
import cProfile
import datetime
import io
import json
import logging
import math
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from data_loading import write_idx
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from probes import MARK, WARMUP, images_of_call, peak_rss_kib, reset_peak_rss, rss_kib
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from vaelab import dashboards
from vaelab.checkpoints import Preemption
from vaelab.config import config_dir, instantiate
from vaelab.data.datamodule import VAEDataModule
from vaelab.estimators import iw_log_likelihood
from vaelab.lit_module import NVML_CHECK
from vaelab.models.vae import VAE
from vaelab.runs import Run
from vaelab.tasks.train import build_module, build_trainer

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
SECTIONS = ("train", "step", "parts", "eval", "startup", "memory")
BATCH = 128
TRAIN_OVERRIDES = (
    "logger=none",
    "callbacks=none",
    "trainer.limit_val_batches=0",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "trainer.max_epochs=1",
    f"batch_size={BATCH}",
    "data.download=false",
)
DECODER_CHUNKS = (256, 512, 1024, 2048, 4096)


@dataclass
class Row:
    section: str
    measure: str
    contender: str
    figure: str
    ratio: str = ""


@dataclass
class Settings:
    rounds: int
    batches: int  # training batches per round, after the warm-up
    eval_images: int
    eval_samples: int
    startup_rounds: int
    probe_rounds: int  # fresh processes per eval contender for its peak RSS
    memory_overrides: tuple[str, ...]  # added to the default command of the memory section
    step_batches: int  # steps per round of the step section, after the warm-up
    step_compiled: bool = True  # the step section's compiled rows


# Quick: one epoch and one test batch (of 256 images, as every test batch) for the memory run.
QUICK = Settings(
    rounds=3,
    batches=40,
    eval_images=16,
    eval_samples=1000,
    startup_rounds=2,
    probe_rounds=1,
    memory_overrides=("max_epochs=1", "trainer.limit_test_batches=1"),
    step_batches=200,
)
FULL = Settings(
    rounds=5,
    batches=100,
    eval_images=64,
    eval_samples=1000,
    startup_rounds=5,
    probe_rounds=3,
    memory_overrides=(),
    step_batches=600,
)


def alternate(contenders: dict[Any, Callable[[], float]], rounds: int) -> dict[Any, list[float]]:
    """Run the contenders in turn, `rounds` times: {name: one figure per round}."""
    threads = torch.get_num_threads()
    results: dict[Any, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            results[name].append(run())
            if torch.get_num_threads() != threads:
                raise RuntimeError(f"{name} changed the torch threads to {torch.get_num_threads()}")
    return results


def spread(values: list[float], fmt: str = ",.0f") -> str:
    """The median, with the range of the rounds."""
    median = statistics.median(values)
    return f"{median:{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def ratio(a: list[float], b: list[float]) -> str:
    return f"{statistics.median(a) / statistics.median(b):.2f}x"


def compose_train(*overrides: str) -> DictConfig:
    """conf/train.yaml composed with overrides, as `python train.py ...` would."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


# --- train -----------------------------------------------------------------------------


class StepClock(L.Callback):
    """The end time (of `clock`) of every call of Lightning's training loop, and the images
    it trained on (several batches with `trainer.steps_per_call`)."""

    steps_per_call_safe = True

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.ends: list[float] = []
        self.sizes: list[int] = []
        self.steps: list[int] = []
        self.clock = clock

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.ends.append(self.clock())
        self.sizes.append(images_of_call(trainer, batch, self.steps[-1] if self.steps else 0))
        self.steps.append(trainer.global_step)


def images_per_second(ends: list[float], sizes: list[int], steps: list[int] | None = None) -> float:
    """Images after the warm-up over the time from the end of the warm-up: each timed
    interval holds whole steps, fetching and converting their batches included. `ends`,
    `sizes`: of each batch, or of each call of Lightning's loop (several batches with
    `trainer.steps_per_call`), `steps` the steps taken by the end of each (None: one per
    entry); the warm-up is the calls that end the first `WARMUP` steps."""
    steps = steps or list(range(1, len(ends) + 1))
    warm = next(i for i, step in enumerate(steps) if step >= WARMUP)
    if warm == len(ends) - 1:
        raise ValueError(f"no call after the {steps[warm]} warm-up steps: give more batches")
    return sum(sizes[warm + 1 :]) / (ends[-1] - ends[warm])


def vaelab_fit(
    cfg: DictConfig,
    datamodule: VAEDataModule,
    extra_callbacks: Iterable[L.Callback] = (),
    clock: Callable[[], float] = time.perf_counter,
    loggers: bool = False,
) -> Callable[[], float]:
    """One round: the Trainer of tasks/train.py (`build_trainer`), fitting `limit_train_batches`,
    with the loggers of `cfg.logger` if `loggers`: images per second of `clock`."""
    module = build_module(cfg, datamodule.image_shape)
    Run(cfg.paths.output_dir).start(OmegaConf.to_container(cfg, resolve=True))
    compiled = False

    def run() -> float:
        nonlocal compiled
        steps = StepClock(clock)
        trainer_cfg = cfg if not compiled else _without_compile(cfg)  # compile once
        callbacks = [Preemption(), steps, *extra_callbacks]
        found = dashboards.build(cfg) if loggers else []
        trainer = build_trainer(trainer_cfg, module, found, callbacks)
        compiled = True
        trainer.fit(module, datamodule=datamodule)
        dashboards.finish(found)
        return images_per_second(steps.ends, steps.sizes, steps.steps)

    return run


def _without_compile(cfg: DictConfig) -> DictConfig:
    cfg = cfg.copy()
    cfg.trainer.compile = False
    return cfg


def elbo_loss(vae: VAE, x: Tensor) -> Tensor:
    rec, kl = vae.elbo_terms(x)
    return -(rec - kl).mean()


def binarized_loss(vae: VAE, images: Tensor) -> Tensor:
    """`elbo_loss` of uint8 images drawn binary as the datamodule draws a training batch."""
    x = images.float() / 255
    return elbo_loss(vae, (torch.rand_like(x) < x).float())


def hand_loop(
    cfg: DictConfig,
    batches: Iterable,
    n_batches: int,
    loss_of: Callable[[VAE, Tensor], Tensor] = elbo_loss,
) -> Callable[[], float]:
    """One round: the same network, optimizer and loss in a plain loop over `batches`."""
    module = build_module(cfg, (1, 28, 28))
    vae = module.vae.train()
    optimizer = module.configure_optimizers()

    def run() -> float:
        ends, sizes = [], []
        for x, _ in batches:
            loss = loss_of(vae, x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            ends.append(time.perf_counter())
            sizes.append(len(x))
            if len(ends) == n_batches:
                break
        return images_per_second(ends, sizes)

    return run


def torchvision_loader(datamodule: VAEDataModule, name: str, root: Path) -> DataLoader:
    """The usual DataLoader over IDX files holding vaelab's training split (and test set)."""
    tv_class = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    raw = root / tv_class.__name__ / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for loader, prefix in (
        (datamodule.train_dataloader(), "train"),
        (datamodule.test_dataloader(), "t10k"),
    ):
        images, labels = loader.dataset.tensors
        write_idx(images.squeeze(1), labels, raw, prefix)
    binarize = transforms.Compose([transforms.ToTensor(), torch.bernoulli])
    dataset = tv_class(root, train=True, transform=binarize)
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0)


def train_section(settings: Settings, data_dir: str, work: Path) -> list[Row]:
    rows = []
    for data in ("fashion_mnist", "mnist"):
        datamodule = None
        for model in ("mlp", "conv"):
            common = (*TRAIN_OVERRIDES, f"data={data}", f"model={model}",
                      f"paths.data_dir={data_dir}", f"paths.output_dir={work / 'run'}")  # fmt: skip
            base = compose_train(*common)
            if datamodule is None:
                L.seed_everything(base.seed, workers=True)
                datamodule = instantiate(base.data, L.LightningDataModule, "data")
                datamodule.prepare_data()
                datamodule.setup("fit")
                images = datamodule.train_dataloader().dataset.tensors[0]
                loader = torchvision_loader(datamodule, data, work / data)
            # A round is one epoch cut short: at most the full batches of the training split.
            n_batches = min(WARMUP + settings.batches, len(images) // BATCH)
            cfg = compose_train(*common, f"trainer.limit_train_batches={n_batches}")
            in_memory = [
                (torch.bernoulli(x.float() / 255), None)
                for x in images[: n_batches * BATCH].split(BATCH)
            ]
            # The floor with dynamic binarization, as the datamodule draws it per batch.
            grey = [(x, None) for x in images[: n_batches * BATCH].split(BATCH)]
            compiled = compose_train(
                *common, f"trainer.limit_train_batches={n_batches}", "trainer.compile=true"
            )
            results = alternate(
                {
                    "vaelab": vaelab_fit(cfg, datamodule),
                    "vaelab compiled": vaelab_fit(compiled, datamodule),
                    "loop+DataLoader": hand_loop(cfg, loader, n_batches),
                    "floor": hand_loop(cfg, in_memory, n_batches),
                    "floor, binarized per batch": hand_loop(cfg, grey, n_batches, binarized_loss),
                },
                settings.rounds,
            )
            n = datamodule.hparams.n_train
            measure = f"train img/s, {data} ({n:,} imgs) model={model}, {n_batches - WARMUP} b."
            for name, values in results.items():
                row = Row("train", measure, name, spread(values))
                if name.startswith("vaelab"):
                    row.ratio = (
                        f"{ratio(values, results['floor'])} of floor "
                        f"({ratio(values, results['floor, binarized per batch'])} binarized), "
                        f"{ratio(values, results['loop+DataLoader'])} of loop+DataLoader"
                    )
                rows.append(row)
                print(f"  {measure:<62} {name:<16} {spread(values)}", flush=True)
    return rows


# --- step ------------------------------------------------------------------------------

# The tiny network of the per-step section: what is left of a step is the framework's.
STEP_MODEL = ("model=mlp", "model.hidden_dim=16", "latent_dim=2", "batch_size=32")
# The default command's callbacks, a CSV logger and the progress bar (its output thrown away),
# with validation and testing cut off: only training steps are timed.
STEP_DEFAULT = (
    "logger=csv",
    "trainer.limit_val_batches=0",
    "trainer.max_epochs=1",
    "n_importance=0",
    "data.download=false",
)


def plain_step_loop(
    cfg: DictConfig, images: Tensor, n_batches: int, compiled: bool = False
) -> Callable[[], float]:
    """One round: the network and `VAE.elbo_terms` in a plain loop with vaelab's optimizer,
    over batches gathered from the uint8 images and binarized as the datamodule does: µs
    of `STEP_CLOCK` per step. `compiled`: the whole step (forward, loss, backward,
    optimizer) under torch.compile, as a user's own loop would write it."""
    module = build_module(cfg, tuple(images.shape[1:]))
    vae = module.vae.train()
    optimizer = module.configure_optimizers()
    batch = cfg.batch_size

    def step(x: Tensor) -> None:
        rec, kl = vae.elbo_terms(x)
        loss = -(rec - kl).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    run_step = torch.compile(step) if compiled else step

    def run() -> float:
        order = torch.randperm(len(images))
        ends = []
        # A loop without Lightning has torch's own CUDA check: Lightning's import set the
        # NVML one, which loads NVML at each optimizer step while CUDA is not initialised.
        nvml_check = os.environ.pop(NVML_CHECK, None)
        try:
            for i in range(n_batches):
                x = images[order[i * batch : (i + 1) * batch]].float() / 255
                run_step((torch.rand_like(x) < x).float())
                ends.append(STEP_CLOCK())
        finally:
            if nvml_check is not None:
                os.environ[NVML_CHECK] = nvml_check
        return 1e6 * (ends[-1] - ends[WARMUP - 1]) / (n_batches - WARMUP)

    return run


# The step section's clock: this process's CPU time. Every contender runs on one thread,
# so it counts their work and not the time other processes on a shared machine take.
STEP_CLOCK = time.process_time


def step_section(
    settings: Settings, data_dir: str, work: Path, profile: bool, extra: tuple[str, ...] = ()
) -> list[Row]:
    """CPU µs per training step of the tiny network through `vaelab train`'s Trainer
    (default callbacks, CSV logger and bar; and lean), with its steps grouped per call of
    Lightning's loop (`trainer.steps_per_call=auto`, the default) and one a call, against
    the plain loop; with `profile`,
    a cProfile of the default path's steps, Lightning's and vaelab's functions by
    cumulative time. `extra`: overrides of every vaelab contender (e.g. the accelerator)."""
    n_batches = WARMUP + settings.step_batches
    common = (
        *STEP_MODEL, "data=fashion_mnist", f"paths.data_dir={data_dir}",
        f"paths.output_dir={work / 'run'}", f"trainer.limit_train_batches={n_batches}", *extra,
    )  # fmt: skip
    default = compose_train(*STEP_DEFAULT, *common)
    lean = compose_train(*TRAIN_OVERRIDES, *common)
    compiled = compose_train(*TRAIN_OVERRIDES, *common, "trainer.compile=true")
    one = "trainer.steps_per_call=1"
    default_one = compose_train(*STEP_DEFAULT, *common, one)
    lean_one = compose_train(*TRAIN_OVERRIDES, *common, one)
    L.seed_everything(default.seed, workers=True)
    datamodule = instantiate(default.data, L.LightningDataModule, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    images = datamodule.train_dataloader().dataset.tensors[0]

    def per_step(cfg: DictConfig, loggers: bool = False) -> Callable[[], float]:
        rate = vaelab_fit(cfg, datamodule, clock=STEP_CLOCK, loggers=loggers)
        return lambda: 1e6 * cfg.batch_size / rate()

    contenders = {
        "python train.py (callbacks, csv logger, bar)": per_step(default, loggers=True),
        "the same Trainer, lean": per_step(lean),
        "python train.py, steps_per_call=1": per_step(default_one, loggers=True),
        "lean, steps_per_call=1": per_step(lean_one),
        "plain loop": plain_step_loop(default, images, n_batches),
    }
    if settings.step_compiled:
        contenders["lean, trainer.compile=true"] = per_step(compiled)
        contenders["plain loop, compiled"] = plain_step_loop(default, images, n_batches, True)
    with _silenced():  # the progress bar
        results = alternate(contenders, settings.rounds)
    measure = f"CPU µs per step, mlp hidden 16, z 2, batch 32, {n_batches - WARMUP} steps"
    floor = statistics.median(results["plain loop"])
    rows = []
    for name, values in results.items():
        row = Row("step", measure, name, spread(values))
        if name != "plain loop":
            cost = statistics.median(values) - floor
            row.ratio = f"{floor / statistics.median(values):.2f}x plain loop, {cost:+,.0f} µs"
        rows.append(row)
        print(f"  {measure:<56} {name:<44} {spread(values)}  {row.ratio}", flush=True)
    if profile:
        steps = ProfileSteps()
        with _silenced():
            vaelab_fit(default, datamodule, extra_callbacks=[steps], loggers=True)()
        out = io.StringIO()
        stats = pstats.Stats(steps.profiler, stream=out).sort_stats("cumulative")
        stats.print_stats("lightning|vaelab|torchmetrics|optim", 30)
        print(f"\n--- cProfile, the default path, {settings.step_batches} steps, by cumtime")
        print(out.getvalue().strip())
    return rows


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """The progress bar's output (stdout, stderr) thrown away."""
    with (
        open(os.devnull, "w") as null,
        contextlib.redirect_stdout(null),
        contextlib.redirect_stderr(null),
    ):
        yield


# --- parts -----------------------------------------------------------------------------

PARTS = {
    "objective=iwae k=5": ("model=mlp", "objective=iwae", "objective.k=5"),
    "prior=vamp": ("model=mlp", "prior=vamp"),
    "posterior=iaf": ("model=mlp", "posterior=iaf"),
    "model=hvae": ("model=hvae",),  # two stochastic layers, gated, 300 units
}


def parts_floor_loss(vae: VAE, x: Tensor, part: str) -> Tensor:
    """The training loss of `part` written out: the 5-sample bound, or the ELBO with the
    Monte Carlo KL (no closed form for a VampPrior or a flow), one p(z) per batch."""
    qz_x, pz = vae.posterior(x), vae.prior()
    if part.startswith("objective=iwae"):
        z = qz_x.rsample((5,))
        log_w = vae.observation(z).log_prob(x) + pz.log_prob(z) - qz_x.log_prob(z)
        return -(log_w.logsumexp(0) - math.log(5)).mean()
    z = qz_x.rsample()
    return -(vae.observation(z).log_prob(x) - qz_x.log_prob(z) + pz.log_prob(z)).mean()


def parts_section(settings: Settings, data_dir: str, work: Path) -> list[Row]:
    rows = []
    common = (*TRAIN_OVERRIDES, "data=mnist", f"paths.data_dir={data_dir}",
              f"paths.output_dir={work / 'run'}")  # fmt: skip
    base = compose_train(*common, "model=mlp")
    L.seed_everything(base.seed, workers=True)
    datamodule = instantiate(base.data, L.LightningDataModule, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    images = datamodule.train_dataloader().dataset.tensors[0]
    n_batches = min(WARMUP + settings.batches, len(images) // BATCH)
    in_memory = [
        (torch.bernoulli(x.float() / 255), None) for x in images[: n_batches * BATCH].split(BATCH)
    ]
    for part, overrides in PARTS.items():
        cfg = compose_train(*common, *overrides, f"trainer.limit_train_batches={n_batches}")
        results = alternate(
            {
                "vaelab": vaelab_fit(cfg, datamodule),
                "floor": hand_loop(cfg, in_memory, n_batches, partial(parts_floor_loss, part=part)),
            },
            settings.rounds,
        )
        model = "" if part.startswith("model=") else "model=mlp "
        measure = f"train img/s, mnist fallback, {model}{part}, {n_batches - WARMUP} b."
        rows += against("parts", measure, results, "floor")
    rows += mixture_density_rows(settings)
    rows += discretized_logistic_rows(settings)
    rows += logistic_mixture_rows(settings)
    return rows


def _log_prob_rate(log_prob: Callable[[], Tensor], n: int) -> Callable[[], float]:
    """A contender of the likelihood rows: images per second of 5 evaluations of
    `log_prob` (a batch of `n` images) and their backward passes."""

    def run() -> float:
        start = time.perf_counter()
        for _ in range(5):
            log_prob().sum().backward()
        return 5 * n / (time.perf_counter() - start)

    return run


def discretized_logistic_rows(settings: Settings) -> list[Row]:
    """log p(x|z) and its gradient for a batch of 128 CIFAR-sized images (3,072 sub-pixels):
    vaelab's `DiscretizedLogistic` (the side of the logistic where the sigmoids do not
    cancel) against the plain formula log(max(σ(a) − σ(b), 1e-12)) with the end bins, the
    floor of any discretized logistic."""
    from vaelab.likelihoods import DiscretizedLogistic

    g = torch.Generator().manual_seed(0)
    n = 128 if settings is FULL else 32
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g).float() / 255
    loc = torch.rand(n, 3, 32, 32, generator=g).requires_grad_()
    log_scale = torch.full((3, 32, 32), -3.0).requires_grad_()

    def plain() -> Tensor:
        s = torch.exp(-log_scale)
        upper = torch.where(x > 1 - 1 / 510, 1.0, torch.sigmoid((x + 1 / 510 - loc) * s))
        lower = torch.where(x < 1 / 510, 0.0, torch.sigmoid((x - 1 / 510 - loc) * s))
        return torch.log((upper - lower).clamp(min=1e-12))

    def ours() -> Tensor:
        return DiscretizedLogistic(loc, log_scale).log_prob(x)

    contenders = {"vaelab": _log_prob_rate(ours, n), "plain formula": _log_prob_rate(plain, n)}
    results = alternate(contenders, settings.rounds)
    measure = f"images/s, log p(x|z) + backward, discretized logistic, {n} x 3x32x32"
    return against("parts", measure, results, "plain formula")


def logistic_mixture_rows(settings: Settings) -> list[Row]:
    """log p(x|z) and its gradient for the batch of `discretized_logistic_rows`: vaelab's
    `DiscretizedLogisticMixture` of 10 components, RGB coupled (100 decoder channels, as
    `likelihood=logistic_mixture`), against one `DiscretizedLogistic` of a learned scale
    per sub-pixel (`likelihood=discretized_logistic`): the mixture's cost."""
    from vaelab.likelihoods import DiscretizedLogistic, LogisticMixtureLikelihood

    g = torch.Generator().manual_seed(0)
    n = 128 if settings is FULL else 32
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g).float() / 255
    likelihood = LogisticMixtureLikelihood(components=10, coupled=True)
    params = torch.randn(n, likelihood.param_channels(3), 32, 32, generator=g).requires_grad_()
    loc = torch.rand(n, 3, 32, 32, generator=g).requires_grad_()
    log_scale = torch.full((3, 32, 32), -3.0).requires_grad_()

    def mixture() -> Tensor:
        return likelihood.observation(params, 3).log_prob(x)

    def single() -> Tensor:
        return DiscretizedLogistic(loc, log_scale).log_prob(x)

    contenders = {"vaelab": _log_prob_rate(mixture, n), "one logistic": _log_prob_rate(single, n)}
    results = alternate(contenders, settings.rounds)
    measure = f"images/s, log p(x|z) + backward, 10-logistic mixture, {n} x 3x32x32"
    return against("parts", measure, results, "one logistic")


def against(section: str, measure: str, results: dict[str, list[float]], other: str) -> list[Row]:
    """A row per contender of `results`, vaelab's with its ratio to `other`'s; printed."""
    rows = []
    for name, values in results.items():
        row = Row(section, measure, name, spread(values))
        if name == "vaelab":
            row.ratio = f"{ratio(values, results[other])} of {other}"
        rows.append(row)
        print(f"  {measure:<62} {name:<16} {spread(values)}", flush=True)
    return rows


def mixture_density_rows(settings: Settings) -> list[Row]:
    """log p(z) of a 500-component diagonal Gaussian mixture (the VampPrior's, z of 40) for
    one chunk of a K = 1,000 test (25,600 latents): vaelab's `DiagonalNormalMixture` (two
    matrix products, float64) against torch's `MixtureSameFamily` (the (N, K, D) broadcast)."""
    from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

    from vaelab.models.priors import DiagonalNormalMixture

    g = torch.Generator().manual_seed(0)
    k, d, n = 500, 40, 25_600 if settings is FULL else 6_400
    loc, scale = torch.randn(k, d, generator=g), 0.05 + torch.rand(k, d, generator=g)
    z = torch.randn(n, d, generator=g)
    logits = torch.zeros(k)
    broadcast = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, scale), 1))
    matrix = DiagonalNormalMixture(logits, loc, scale)

    def timed(density: Any) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            with torch.no_grad():
                density.log_prob(z)
            return n / (time.perf_counter() - start)

        return run

    results = alternate({"vaelab": timed(matrix), "MixtureSameFamily": timed(broadcast)}, 3)
    measure = f"log p(z)/s, 500-component mixture, D=40, {n:,} latents"
    return against("parts", measure, results, "MixtureSameFamily")


# --- eval ------------------------------------------------------------------------------


def eval_setup(data_dir: str, work: Path, n_images: int) -> tuple[VAE, Tensor]:
    """An untrained model=mlp VAE in eval mode and the first fallback test images."""
    cfg = compose_train(
        *TRAIN_OVERRIDES, "model=mlp", "data=mnist",
        f"paths.data_dir={data_dir}", f"paths.output_dir={work / 'run'}",
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    datamodule = instantiate(cfg.data, L.LightningDataModule, "data")
    datamodule.setup("test")
    x, _ = datamodule.test_images(n_images)
    return build_module(cfg, datamodule.image_shape).vae.eval(), x


@torch.no_grad()
def per_image_loop(vae: VAE, x: Tensor, num_samples: int) -> Tensor:
    """log p(x) ≈ L_K one image at a time, its K samples in one batch: (B,) nats."""
    return torch.stack(
        [vae.log_importance_weights(xi[None], num_samples).logsumexp(0)[0] for xi in x]
    ) - math.log(num_samples)


@torch.no_grad()
def decoder_only(vae: VAE, evaluations: int, chunk: int) -> int:
    """At least `evaluations` decoder forwards in batches of `chunk` latents: how many."""
    z = torch.randn(chunk, vae.latent_dim)
    n = -(-evaluations // chunk)
    for _ in range(n):
        vae.decoder(z)
    return n * chunk


@torch.no_grad()
def decoder_and_density(vae: VAE, x: Tensor, evaluations: int, chunk: int) -> int:
    """At least `evaluations` decoder forwards and log p(x|z) of the images, in chunks of
    about `chunk` latents (a whole number of latents per image): how many."""
    per_image = max(1, chunk // len(x))
    z = torch.randn(per_image, len(x), vae.latent_dim)
    n = -(-evaluations // (per_image * len(x)))
    for _ in range(n):
        vae.observation(z).log_prob(x)
    return n * per_image * len(x)


def eval_contenders(vae: VAE, x: Tensor, num_samples: int, chunk: int) -> dict[str, Callable]:
    evaluations = num_samples * len(x)
    return {
        "iw_log_likelihood": lambda: iw_log_likelihood(vae, x, num_samples),
        "decoder floor": lambda: decoder_only(vae, evaluations, chunk),
        "decoder+density floor": lambda: decoder_and_density(vae, x, evaluations, chunk),
        "per-image loop": lambda: per_image_loop(vae, x, num_samples),
    }


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def best_decoder_chunk(vae: VAE, evaluations: int) -> tuple[int, float]:
    """The chunk size at which the decoder alone is fastest, and its evaluations/s."""
    rates = {}
    for chunk in DECODER_CHUNKS:  # each size gets a share of the evaluations, two chunks at least
        start = time.perf_counter()
        done = decoder_only(vae, max(2 * chunk, evaluations // len(DECODER_CHUNKS)), chunk)
        rates[chunk] = done / (time.perf_counter() - start)
    chunk = max(rates, key=rates.get)
    return chunk, rates[chunk]


def memory_probe(spec: str, settings: Settings, data_dir: str, work: Path) -> None:
    """In a fresh process: the peak RSS one call of a contender adds, as a JSON line."""
    name, chunk = spec.rsplit(":", 1)
    vae, x = eval_setup(data_dir, work, settings.eval_images)
    run = eval_contenders(vae, x, settings.eval_samples, int(chunk))[name]
    exact = reset_peak_rss()
    before = rss_kib() if exact else peak_rss_kib()
    run()
    print(json.dumps({"added_kib": peak_rss_kib() - before, "exact": exact}))


def eval_section(settings: Settings, data_dir: str, work: Path, threads: int) -> list[Row]:
    vae, x = eval_setup(data_dir, work, settings.eval_images)
    evaluations = settings.eval_samples * len(x)
    chunks: list[int] = []

    def floor() -> float:  # the best chunk size, chosen again each round
        chunk, rate = best_decoder_chunk(vae, evaluations)
        chunks.append(chunk)
        return rate

    def density_floor() -> float:  # at the chunk size the decoder floor just chose
        start = time.perf_counter()
        done = decoder_and_density(vae, x, evaluations, chunks[-1])
        return done / (time.perf_counter() - start)

    contenders = eval_contenders(vae, x, settings.eval_samples, 0)
    floors = {"decoder floor": floor, "decoder+density floor": density_floor}
    rates = alternate(
        {
            name: floors.get(name, lambda run=run: evaluations / timed(run))
            for name, run in contenders.items()
        },
        settings.rounds,
    )
    chunk = statistics.mode(chunks)
    measure = f"eval decoder evals/s, K={settings.eval_samples:,}, {len(x)} images, mlp"
    rows = []
    for name, values in rates.items():
        label = f"{name} (chunk {chunk})" if name in floors else name
        row = Row("eval", measure, label, spread(values))
        if name not in floors:
            row.ratio = ", ".join(f"{ratio(values, rates[f])} of {f}" for f in floors)
        rows.append(row)
        print(f"  {measure:<62} {label:<24} {spread(values)}", flush=True)
    measure = "eval peak RSS added by one call (MiB), fresh process"
    added = {name: [] for name in contenders}
    for _ in range(settings.probe_rounds):  # the subprocesses alternate too
        for name in contenders:
            command = [sys.executable, __file__, "--probe", f"{name}:{chunk}",
                       "--data-dir", data_dir, "--threads", str(threads)]  # fmt: skip
            if settings is QUICK:
                command.append("--quick")
            out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=work)
            added[name].append(json.loads(out.stdout.splitlines()[-1])["added_kib"] / 1024)
    for name, values in added.items():
        rows.append(Row("eval", measure, name, spread(values, ",.1f")))
        print(f"  {measure:<62} {name:<24} {spread(values, ',.1f')}", flush=True)
    return rows


# --- startup and memory: the real commands in subprocesses -----------------------------


def child_env() -> dict[str, str]:
    """The environment of the measured commands: probes importable, W&B never online."""
    env = dict(os.environ, WANDB_MODE="offline")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BENCHMARKS), str(ROOT / "src"), env.get("PYTHONPATH")) if p
    )
    return env


def seconds_to_mark(command: list[str], mark: str, work: Path) -> float:
    """Launch `command` and stop it when it prints `VAELAB_BENCH <mark> <clock>` (the
    system-wide monotonic clock): seconds from launch to that moment."""
    start = time.clock_gettime(time.CLOCK_MONOTONIC)
    with subprocess.Popen(
        command, cwd=work, env=child_env(), text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    ) as process:  # fmt: skip
        for line in process.stderr:
            if line.startswith(f"{MARK} {mark} "):
                process.kill()  # what follows is not start-up
                return float(line.split()[-1]) - start
    raise RuntimeError(f"{' '.join(command)} exited {process.returncode} without {mark!r}")


def seconds_to_exit(command: list[str], work: Path, expected_code: int) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=work, env=child_env(), capture_output=True, text=True)
    if done.returncode != expected_code:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    return time.perf_counter() - start


IMPORTS = "import torch, torchvision, lightning, hydra, wandb"


def startup_section(settings: Settings, work: Path) -> list[Row]:
    """Import floor and first step: to the moment they print a clock (the process is then
    stopped); the config error and the import floor with exit: to the end of the process."""
    clock = (
        f"import sys, time; print('{MARK} imported', time.clock_gettime(time.CLOCK_MONOTONIC),"
        " file=sys.stderr, flush=True)"
    )
    train = [sys.executable, str(ROOT / "train.py")]
    first_step = [*train, "trainer=debug", "logger=none",
                  "+callbacks.bench_clock._target_=probes.FirstStepClock"]  # fmt: skip
    contenders = {  # (measure, contender): one round
        ("import floor (s)", f"python -c '{IMPORTS}'"): lambda: seconds_to_mark(
            [sys.executable, "-c", f"{IMPORTS}; {clock}"], "imported", work
        ),
        ("to the first training step (s)", "python train.py trainer=debug logger=none"): (
            lambda: seconds_to_mark(first_step, "first_step", work)
        ),
        ("import floor, to exit (s)", f"python -c '{IMPORTS}'"): lambda: seconds_to_exit(
            [sys.executable, "-c", IMPORTS], work, 0
        ),
        ("to a config error, to exit (s)", "python train.py latent_dim=0 (exit 2)"): (
            lambda: seconds_to_exit([*train, "latent_dim=0"], work, 2)
        ),
    }
    results = alternate(contenders, settings.startup_rounds)
    floors = list(results.values())
    rows = []
    for i, ((measure, name), values) in enumerate(results.items()):
        row = Row("startup", measure, name, spread(values, ".2f"))
        if i % 2:  # against the import floor measured the same way
            row.ratio = f"{ratio(values, floors[i - 1])} of import floor"
        rows.append(row)
        print(f"  {measure:<32} {name:<62} {spread(values, '.2f')}", flush=True)
    return rows


def memory_section(settings: Settings, work: Path) -> list[Row]:
    """Peak RSS of the default command by phase (one run: phases are measured apart), on the
    MNIST fallback and for one epoch on the 60,000 images of Fashion-MNIST."""
    rows = []
    for data in ((), ("data=fashion_mnist", "max_epochs=1")):
        command = [sys.executable, str(ROOT / "train.py"),
                   "+callbacks.bench_rss._target_=probes.PhasePeakRSS"]  # fmt: skip
        command += dict.fromkeys([*settings.memory_overrides, *data])  # each once, in order
        done = subprocess.run(command, cwd=work, env=child_env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
        phases = {}
        for line in done.stderr.splitlines():
            if line.startswith(f"{MARK} rss"):
                _, _, phase, kib, exact = line.split()
                phases[phase] = int(kib) / 1024
        source = "Fashion-MNIST" if data else "MNIST fallback"
        name = " ".join(["python train.py", *command[3:]]) + f" ({source}, W&B offline)"
        found = [
            Row("memory", f"peak RSS, {phase} phase (MiB)", name, f"{mib:,.0f}")
            for phase, mib in phases.items()
        ]
        overall = max(phases.values())
        found.append(
            Row("memory", "peak RSS, whole run to end of test (MiB)", name, f"{overall:,.0f}")
        )
        if exact == "0":
            found.append(
                Row(
                    "memory",
                    "(peak RSS could not be reset: each phase is the peak so far)",
                    name,
                    "",
                )
            )
        for row in found:
            print(f"  {row.measure:<42} {row.figure}  {source}", flush=True)
        rows += found
    return rows


# --- profile ---------------------------------------------------------------------------


class ProfileSteps(L.Callback):
    """cProfile from the end of the warm-up (`WARMUP` steps, in the call of the training
    loop that takes them) to the end of the last training batch."""

    steps_per_call_safe = True

    def __init__(self) -> None:
        self.profiler = cProfile.Profile()
        self.started = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            self.profiler.disable()
        elif not self.started and trainer.global_step >= WARMUP:
            self.profiler.enable()
            self.started = True


def profile_section(settings: Settings, data_dir: str, work: Path) -> list[Row]:
    """cProfile of vaelab's training steps on Fashion-MNIST: the top functions by own time,
    and vaelab's, Lightning's, torchmetrics' and the optimizer's functions by total time."""
    n_batches = WARMUP + settings.batches
    for model in ("mlp", "conv"):
        cfg = compose_train(
            *TRAIN_OVERRIDES, "data=fashion_mnist", f"model={model}",
            f"paths.data_dir={data_dir}", f"paths.output_dir={work / 'run'}",
            f"trainer.limit_train_batches={n_batches}",
        )  # fmt: skip
        datamodule = instantiate(cfg.data, L.LightningDataModule, "data")
        steps = ProfileSteps()
        rate = vaelab_fit(cfg, datamodule, extra_callbacks=[steps])()
        print(f"\n--- cProfile, model={model}, {settings.batches} steps, {rate:,.0f} img/s")
        ours = "vaelab|lightning|torchmetrics|optim"
        for order, restrictions in (("tottime", (20,)), ("cumulative", (ours, 30))):
            out = io.StringIO()
            pstats.Stats(steps.profiler, stream=out).sort_stats(order).print_stats(*restrictions)
            print(f"by {order}:", out.getvalue().strip(), sep="\n")
    return []


# --- the report ------------------------------------------------------------------------


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return model


def markdown(rows: list[Row], threads: int, command: str, load: tuple[float, float]) -> str:
    lines = [
        f"Machine: {machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads} torch threads in every process, "
        f"{datetime.date.today().isoformat()}; load average {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end. Command: `{command}`. Figures: median of the rounds "
        "(min–max).",
        "",
        "| section | measure | contender | figure | ratio |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.section} | {r.measure} | {r.contender} | {r.figure} | {r.ratio} |" for r in rows
    ]
    return "\n".join(lines)


def quiet() -> None:
    warnings.filterwarnings("ignore")  # fallback notices, Lightning's advice
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and batches")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of {', '.join(SECTIONS)}, profile")  # fmt: skip
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads in every process (default: torch's, as `vaelab train` uses); "
        "on a machine busy with other work, 1 gives steadier figures",
    )
    parser.add_argument("--data-dir", default="data", help="as paths.data_dir")
    parser.add_argument(
        "--profile", action="store_true", help="the step section: a cProfile of its steps too"
    )
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # one memory measurement
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # torch's default in the subprocesses
    quiet()
    data_dir = str(Path(args.data_dir).resolve())
    with tempfile.TemporaryDirectory(prefix="vaelab-bench-") as tmp:
        work = Path(tmp)
        if args.probe:
            memory_probe(args.probe, settings, data_dir, work)
            return
        command = "python benchmarks/run.py " + " ".join(sys.argv[1:])
        load_start = os.getloadavg()[0]
        mode = "quick" if args.quick else "full"
        print(f"{args.threads} torch threads; {mode} settings: {settings}")
        rows: list[Row] = []
        for section in args.sections.split(","):
            print(f"\n## {section}", flush=True)
            if section == "train":
                rows += train_section(settings, data_dir, work)
            elif section == "step":
                rows += step_section(settings, data_dir, work, args.profile)
            elif section == "parts":
                rows += parts_section(settings, data_dir, work)
            elif section == "eval":
                rows += eval_section(settings, data_dir, work, args.threads)
            elif section == "startup":
                rows += startup_section(settings, work)
            elif section == "memory":
                rows += memory_section(settings, work)
            elif section == "profile":
                rows += profile_section(settings, data_dir, work)
            else:
                parser.error(f"unknown section {section!r}")
        print(
            "\n" + markdown(rows, args.threads, command.strip(), (load_start, os.getloadavg()[0]))
        )


if __name__ == "__main__":
    main()
