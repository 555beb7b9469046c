"""`vaelab train ...`: train one configuration, then validate and test its best checkpoint."""

import logging
import math
import signal
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from vaelab import dashboards, devices
from vaelab.callbacks import RunHistory
from vaelab.checkpoints import AtomicCheckpointIO, Preemption, RngState, verify
from vaelab.config import instantiate, trainer_args
from vaelab.config.checks import check_likelihood
from vaelab.config.schemas import MONITORS
from vaelab.errors import ConfigError, DataError, Interrupted, TrainingError, one_line
from vaelab.lit_module import LitVAE
from vaelab.models.capabilities import named
from vaelab.models.conditional import resolve_condition
from vaelab.runs import DATA, Run

log = logging.getLogger(__name__)

# The training recipe: top-level knobs, read here only (the `model` group is the architecture).
RECIPE = (
    "latent_dim",
    "beta",
    "num_samples",
    "kl_warmup_epochs",
    "lr",
    "optimizer",
    "n_importance",
    "grad_skip_threshold",
)
# The model parts' config groups (conf/likelihood, prior, posterior, objective,
# beta_schedule); a run made before they existed has none of them, and gets each part's default.
PARTS = ("prior", "posterior", "objective", "beta_schedule", "likelihood")


def build_module(
    cfg: DictConfig, image_shape: tuple[int, int, int], condition: dict | None = None
) -> LitVAE:
    """The LitVAE of `cfg`: architecture from `cfg.model`, recipe from the top level;
    `condition`, a conditional model's labels resolved from the data
    (`vaelab.models.conditional.resolve_condition`)."""
    # A run made before a knob existed gets LitVAE's default (optimizer: Adam).
    recipe = {key: cfg[key] for key in RECIPE if key in cfg}
    parts = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in PARTS if key in cfg}
    if "disentanglement" in cfg:  # a run made before it had none
        parts["disentanglement"] = OmegaConf.to_container(cfg.disentanglement, resolve=True)
    if condition:  # issue 24: only a conditional run has the key, as its hyperparameter
        parts["condition"] = condition
    model = OmegaConf.to_container(cfg.model, resolve=True)
    return LitVAE(model=model, **recipe, **parts, image_shape=image_shape)


# The metrics the console shows at the end, those of the data at hand (each where logged:
# bpd_iwae is the headline of 8-bit data, the scores of `vaelab.disentanglement.scores`
# those of data with factors); every metric is in metrics.json.
HEADLINE = (
    "elbo",
    "iwae",
    "rec",
    "kl",
    "nll_iwae",
    "bpd_iwae",
    "ess_iwae",
    "active_units",
    "mig",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "sap",
    "factor_vae",
)


# The headline figures that are not nats per image, and what they count.
OTHER_UNITS = {
    "bpd_iwae": "bits per sub-pixel",
    "ess_iwae": "samples of K",
    "active_units": "latent dimensions",
    **dict.fromkeys(HEADLINE[HEADLINE.index("mig") :], "scores in [0, 1]"),
}


def headline_table(metrics: dict[str, float]) -> str:
    """The headline val and test metrics as a small text table, under a line that gives
    their units: nats per image, but for those `OTHER_UNITS` names."""
    stages = [s for s in ("val", "test") if any(k.startswith(f"{s}/") for k in metrics)]
    rows = {}
    for name in HEADLINE:
        values = [metrics.get(f"{s}/{name}") for s in stages]
        if any(v is not None for v in values):
            rows[name] = "".join(f"{'':>12}" if v is None else f"{v:>12.4g}" for v in values)
    units: dict[str, list[str]] = {}
    for name in rows:
        if name in OTHER_UNITS:
            units.setdefault(OTHER_UNITS[name], []).append(name)
    others = "".join(f"; {', '.join(names)}: {unit}" for unit, names in units.items())
    width = max([14, *(len(name) + 1 for name in rows)])
    lines = [
        f"Final metrics (nats per image{others}):",
        f"{'':<{width}}" + "".join(f"{s:>12}" for s in stages),
    ]
    return "\n".join([*lines, *(f"{name:<{width}}{cells}" for name, cells in rows.items())])


def tested_images(trainer: L.Trainer, datamodule: L.LightningDataModule) -> int:
    """How many test images the last `trainer.test` used: all of the split, or as many as
    `trainer.limit_test_batches` let through (per process: each tests its own shard)."""
    n_test = int(datamodule.hparams.get("n_test") or 0)
    batches = trainer.num_test_batches[0] if trainer.num_test_batches else 0
    if math.isinf(batches):
        return n_test
    return min(n_test, int(batches) * datamodule.hparams.eval_batch_size * trainer.world_size)


def _checkpoint_info(trainer: L.Trainer, path: str | None, run: Run) -> dict[str, object]:
    """Which weights the final metrics come from: the best checkpoint, else the last weights."""
    if not path:
        return {"path": None, "epoch": trainer.current_epoch, "step": trainer.global_step}
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    relative = Path(path).resolve().relative_to(run.path.resolve()).as_posix()
    return {"path": relative, "epoch": checkpoint["epoch"], "step": checkpoint["global_step"]}


def monitored(cfg: DictConfig) -> str:
    """The metric a run watches (`monitor`): val/elbo for a run made before the knob."""
    return cfg.get("monitor") or MONITORS[0]


def _fit_and_test(
    monitor: str,
    trainer: L.Trainer,
    model: LitVAE,
    datamodule: L.LightningDataModule,
    ckpt_path: str | None,
    run: Run,
) -> dict[str, object]:
    """Fit, then validate and test the best checkpoint (the last weights without one)."""
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    bound = trainer.callback_metrics.get(monitor)
    if bound is not None and not math.isfinite(float(bound)):
        raise TrainingError(
            f"{monitor} is {float(bound)} after epoch {trainer.current_epoch}: training "
            "diverged; lower lr or set trainer.gradient_clip_val"
        )
    best = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
    eval_ckpt = "best" if best else None
    if best:
        log.info("Validating and testing the best checkpoint, %s", best)
    elif bound is None:  # no best, as no validation ran (not a resume of a finished fit)
        log.info(
            "No validation ran during fit (it stopped at step %d, inside an epoch): validating "
            "and testing the last weights",
            trainer.global_step,
        )
    metrics: dict[str, object] = {}
    for results in (
        trainer.validate(model, datamodule=datamodule, ckpt_path=eval_ckpt, verbose=False),
        trainer.test(model, datamodule=datamodule, ckpt_path=eval_ckpt, verbose=False),
    ):
        metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
    if trainer.is_global_zero:
        log.info("%s", headline_table(metrics))
    metrics["checkpoint"] = _checkpoint_info(trainer, best or None, run)
    metrics["test_images"] = tested_images(trainer, datamodule)
    metrics["data_source"] = datamodule.hparams.get("source")
    metrics["kl_kind"] = model.kl_kind
    return metrics


# What a resumed run may change: where the data is, how long to train, the hardware.
RESUME_CHANGES = ("max_epochs", "trainer", "paths", "data.data_dir", "data.download")


def _lookup(tree: dict, key: str) -> object:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def resumed_config(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The config a resumed run continues with: its own config.yaml, changed only where allowed.

    Args:
        cfg: the config composed from the command line, with `resume` set to the run.
        overrides: the command line's overrides; each must leave the run's config as it
            is, or change only what `RESUME_CHANGES` names (e.g. `max_epochs=40`).

    Raises:
        VaelabError: not a run to resume, or an override that would change the run.
    """
    run = Run(cfg.resume)
    run.resume_checkpoint()  # fails early, with what to do, when there is nothing to resume
    old = run.config()  # today's form (an old run's model.arch as its class: current_form)
    saved = OmegaConf.create(old)
    with open_dict(cfg):  # the run keeps its name and group, and so its loggers' settings
        cfg.run_name, cfg.group = old.get("run_name"), old.get("group")
    new = OmegaConf.to_container(cfg, resolve=True)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "resume" or _lookup(new, key) == _lookup(old, key):
            continue
        if not (key + ".").startswith(tuple(k + "." for k in RESUME_CHANGES)):
            raise ConfigError(
                f"resume continues {run.path} with its own config.yaml, so {key} cannot change; "
                f"what can: {', '.join(RESUME_CHANGES)}"
            )
        OmegaConf.update(saved, key, _lookup(new, key), force_add=True)
        if key == "max_epochs":
            saved.trainer.max_epochs = new["max_epochs"]
        if key == "paths.data_dir":
            saved.data.data_dir = new["data"]["data_dir"]
    saved.paths.output_dir = str(run.path)
    saved.resume = str(run.path)
    return saved


def _interrupted(preemption: Preemption, trainer: L.Trainer, run: Run) -> Interrupted:
    name = preemption.signal_name or "SIGTERM"
    then = (
        "requeued by submitit, it resumes by itself"
        if preemption.requeue
        else f"continue with `vaelab train resume={run.path}`"
    )
    return Interrupted(
        f"stopped by {name} at epoch {trainer.current_epoch}, step {trainer.global_step}; "
        f"checkpoint saved; {then}",
        exit_code=128 + getattr(signal, name),
        requeue=preemption.requeue,
    )


def _record_precision(cfg: DictConfig, ran: str, run: Run) -> None:
    """config.yaml and the loggers record the precision that runs, where Lightning runs another
    than `trainer.precision` (16-mixed on a CPU runs bf16-mixed); status.json keeps the one
    asked for. Before fit: DDP processes read config.yaml when they start."""
    asked = cfg.trainer.precision
    if str(asked) == ran:
        return
    if asked is not None:  # null: Lightning's default, nothing to say
        log.warning(
            "trainer.precision=%s runs as %s here (Lightning's choice): config.yaml records %s",
            asked,
            ran,
            ran,
        )
    cfg.trainer.precision = ran
    run.record_config(OmegaConf.to_container(cfg, resolve=True), {"trainer.precision": asked})


def build_trainer(
    cfg: DictConfig, model: LitVAE, loggers: list, extra_callbacks: Sequence[L.Callback] = ()
) -> L.Trainer:
    """The Trainer of `cfg.trainer` with the run's callbacks (those of `cfg.callbacks`, the
    history, the random generators' state, `extra_callbacks`) and atomic checkpoints;
    compiles `model`'s networks first if `trainer.compile` asks, and gives it
    `trainer.steps_per_call`. benchmarks/run.py times this same Trainer."""
    trainer_cfg, own = trainer_args(cfg.trainer)
    if own["compile"]:
        model.compile_networks()
    model.steps_per_call = own["steps_per_call"]
    callbacks = [
        instantiate(c, L.Callback, f"callbacks.{name}")
        for name, c in (cfg.get("callbacks") or {}).items()
    ]
    if trainer_cfg.get("enable_progress_bar") is False:  # Lightning refuses a bar then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return instantiate(
        trainer_cfg,
        L.Trainer,
        "trainer",
        logger=loggers or False,
        callbacks=[*callbacks, RunHistory(), RngState(), *extra_callbacks],
        plugins=[AtomicCheckpointIO()],
    )


def _part(node: object) -> str:
    """A model part's class name, from its config node's `_target_`."""
    if not isinstance(node, DictConfig):
        return "default"
    return str(node.get("_target_") or node.get("kind") or "default").rsplit(".", 1)[-1]


def _start_lines(cfg: DictConfig, run: Run) -> list[str]:
    """What runs, in a few lines at the start: the model, the training, the loggers and the
    run directory (the data's line comes once it is loaded, from `LitVAE.on_fit_start`)."""
    model = (
        f"Model: {named('model', OmegaConf.to_container(cfg.model))}, latent_dim={cfg.latent_dim}, "
        + ", ".join(f"{key}={_part(cfg.get(key))}" for key in PARTS if key in cfg)
        + f", beta={cfg.beta}"
    )
    trainer = cfg.trainer
    training = (
        f"Training: up to {cfg.max_epochs} epochs, batch {cfg.batch_size}, {cfg.optimizer} at "
        f"lr {cfg.lr:g}, {trainer.accelerator} x {trainer.devices}, precision {trainer.precision}"
    )
    names = list(cfg.get("logger") or {})  # as the loggers are chosen: logger=[wandb,csv]
    return [model, training, f"Loggers: {', '.join(names) or 'none'}; run directory: {run.path}"]


def same_data(run: Run, datamodule: L.LightningDataModule) -> None:
    """Refuse to resume `run` on other data than it trained on (its data.json), in one line
    that names the splits that changed. A run of an earlier version recorded none: it
    resumes, and records the data then.

    Raises:
        DataError: a split's images or labels differ from those the run recorded.
    """
    recorded = run.data()
    if not recorded:
        log.warning(
            "%s recorded no %s (made by an earlier version): it resumes on the data as it is "
            "now, which it records (data=folder and data=celeba split files by another rule "
            "since then)",
            run.path,
            DATA,
        )
        return
    now = datamodule.fingerprint()
    changed = [split for split, was in recorded.items() if now.get(split) != was]
    if changed:
        splits = " and ".join(
            f"{split} split ({now[split]['images']} images, was {recorded[split]['images']})"
            for split in changed
        )
        raise DataError(
            f"resume of {run.path} refused: its data changed since it trained (the {splits} "
            f"differ from those in its {DATA}): restore the data it trained on, or start a new "
            "run without resume="
        )


def _train(
    cfg: DictConfig, run: Run, ckpt_path: str | None, datamodule: L.LightningDataModule | None
) -> dict[str, object]:
    L.seed_everything(cfg.seed, workers=True)
    if datamodule is None:  # not loaded yet to check a resume's data
        datamodule = instantiate(cfg.data, L.LightningDataModule, "data")
    node = OmegaConf.to_container(cfg.condition, resolve=True) if "condition" in cfg else None
    condition = resolve_condition(node, datamodule)
    model = build_module(cfg, datamodule.image_shape, condition)
    check_likelihood(cfg.likelihood, datamodule.hparams.binarize)
    loggers = dashboards.build(cfg)
    preemption = Preemption()
    try:
        trainer = build_trainer(cfg, model, loggers, [preemption])
        if trainer.is_global_zero:
            dashboards.record(run, loggers)
            run.record_data(datamodule.fingerprint())
            devices.warn_about_cpu_processes(trainer, cfg.trainer)
            _record_precision(cfg, trainer.precision, run)
        if trainer.is_global_zero:
            log.info("\n".join(_start_lines(cfg, run)))
        dashboards.log_config(loggers, cfg, resumed=bool(cfg.get("resume")))
        metrics = _fit_and_test(monitored(cfg), trainer, model, datamodule, ckpt_path, run)
        dashboards.log_final(loggers, cfg, metrics)
        return metrics
    except SIGTERMException:
        raise _interrupted(preemption, trainer, run) from None
    except MisconfigurationException as e:  # Lightning's word for a user error
        raise ConfigError(one_line(e).removeprefix("MisconfigurationException: ")) from e
    finally:
        dashboards.finish(loggers)


def run(cfg: DictConfig) -> dict[str, object]:
    """Train, validate and test one configuration; returns the final val and test metrics,
    with which checkpoint they come from ("checkpoint") and the data source.

    The run directory (`cfg.paths.output_dir`) records the status: running, then
    finished with metrics.json, or failed with the error.

    Raises:
        VaelabError: a bad configuration or input, or training diverged.
    """
    run_dir = Run(cfg.paths.output_dir)
    writes = rank_zero_only.rank == 0  # DDP: only the first process writes the run directory
    resume = bool(cfg.get("resume"))
    ckpt_path = str(run_dir.resume_checkpoint()) if resume else cfg.get("ckpt_path")
    if ckpt_path:
        verify(ckpt_path)
    datamodule = None
    if writes and resume:  # before the run is touched: a refused resume leaves it as it was
        datamodule = instantiate(cfg.data, L.LightningDataModule, "data")
        same_data(run_dir, datamodule)
    if writes:
        config = OmegaConf.to_container(cfg, resolve=True)
        run_dir.restart(config) if resume else run_dir.start(config)
    try:
        metrics = _train(cfg, run_dir, ckpt_path, datamodule)
    except BaseException as e:
        if writes:
            run_dir.fail(one_line(e), "interrupted" if isinstance(e, Interrupted) else "failed")
        if isinstance(e, Interrupted) and e.requeue:
            log.warning("%s", e)
            e.requeue()  # submitit requeues the job and exits
        raise
    if writes:
        run_dir.finish(metrics)
        log.info("Run directory: %s", run_dir.path)
    return metrics
