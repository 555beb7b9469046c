"""The Hydra and DDP job runtime of `vaelab train|eval|sample`: one Hydra job per run.

Each job is validated (vaelab.config) before torch is imported; a training job is named
and grouped, shares the cores with the jobs beside it (joblib), resumes an interrupted
run it finds (a SLURM requeue) and tells the DDP processes Lightning starts which
resolved config to train. Inside a multirun a failed job is recorded as failed in its
run directory and raised to Hydra's sweeper, which goes on with the other jobs; a
preemption stops the sweep with its signal's exit code. `vaelab.cli` turns what comes out
into one line.
"""

import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from vaelab.config import config_dir
from vaelab.config.checks import ConfigRejected, validate
from vaelab.devices import check_available
from vaelab.errors import ConfigError, Interrupted, JobFailed, VaelabError, exit_with, one_line
from vaelab.runs import Run

log = logging.getLogger(__name__)

# Set by a training job for the DDP processes Lightning starts: the job's resolved config.
DDP_CONFIG_ENV = "VAELAB_DDP_CONFIG"


def _share_cores(launcher: DictConfig) -> None:
    """With jobs in parallel on one machine, divide the cores among them (no oversubscription)."""
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return
    import torch

    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs") or cores
    n_jobs = cores if n_jobs < 1 else min(n_jobs, cores)
    threads = max(1, cores // n_jobs)
    torch.set_num_threads(threads)
    log.info("%d parallel jobs on %d cores: %d torch threads per job", n_jobs, cores, threads)


# Lightning's lines that a user cannot act on: its tips advertising its cloud products, the
# model summary callback it need not add (vaelab's config has one), the devices it does not
# use, torch.load's default it takes, the checkpoint it restores for validate and test (vaelab
# says once which one it tests), and a deprecation inside Lightning itself.
_UNACTIONABLE = (
    "💡 Tip",
    "Trainer already configured with model summary callbacks",
    "TPU available:",
    "HPU available:",
    "`weights_only` was not set",
    "Restoring states from the checkpoint path",
    "Loaded model weights from the checkpoint",
    "isinstance(treespec, LeafSpec)",
)


class _Unactionable(logging.Filter):
    """Drops the third-party lines of `_UNACTIONABLE`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _UNACTIONABLE)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning on one line, where it comes from last (not the source line it was raised in)."""
    return f"{category.__name__}: {message} ({filename}:{lineno})"


def _quiet_third_parties() -> None:
    """Each line of the console once, and none the user cannot act on."""
    for handler in logging.getLogger().handlers:  # Hydra's: the console and train.log
        if not any(isinstance(f, _Unactionable) for f in handler.filters):
            handler.addFilter(_Unactionable())  # on the handlers: loggers' own filters miss
            # the records of their children (lightning.pytorch.trainer.connectors...)
    logging.captureWarnings(True)  # warnings reach the console and the run's train.log
    warnings.formatwarning = _one_line_warning


def _quiet_lightning() -> None:
    """Lightning imported (here, once the job's config has passed its checks, so that a
    refused config stops without the seconds of its import), without its own console
    handlers, which would print each line a second time in their format: Hydra's print
    them once, to the console and to the run's train.log."""
    import lightning  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


def _log_to_files(message: str) -> None:
    """Write an error into the run's train.log only (the console gets it once, from `_fail`)."""
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _destroy_process_group() -> None:
    """End a DDP job's process group, so that the next job of a multirun starts its own."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _validate_job(cfg: DictConfig, command: str, multirun: bool) -> None:
    """Check the job's own config: in a multirun a swept value (latent_dim=2,0) is only there,
    and only the job's machine tells whether it has the devices `trainer` asks for.

    A training job of a multirun records the failure in its run directory, as a failed run,
    unless the directory holds a run already (of a sweep started again).
    """
    try:
        validate(cfg, command)
        if "trainer" in cfg:
            check_available(cfg.trainer)
    except ConfigError as e:
        run = Run(cfg.paths.output_dir) if multirun and command == "train" else None
        if run is not None and not run.exists():
            run.start(OmegaConf.to_container(cfg, resolve=True))
            run.fail(str(e))
        raise


def _job(task: Callable[[DictConfig], Any], cfg: DictConfig, command: str) -> Any:
    """Run one Hydra job; in a multirun a failure is raised as `JobFailed` for the sweeper."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    train = command == "train"
    environ = dict(os.environ)
    _quiet_third_parties()
    try:
        with ExitStack() as owned:  # a training job owns its run directory until it ends
            _validate_job(cfg, command, multirun)
            _quiet_lightning()
            if train:
                kept = _prepare_training(cfg, hydra_cfg, multirun, owned)
                if kept is not None:
                    return kept.value
            return task(cfg)
    except Exception as e:
        _log_to_files(f"vaelab: error: {one_line(e)}")
        if isinstance(e, Interrupted):
            exit_with(str(e), e.exit_code)  # a preempted sweep stops too
        if multirun:
            _raise_job_failed(hydra_cfg, e)
        if isinstance(e, VaelabError):
            exit_with(str(e))  # a single job: exiting here ends nothing else
        raise
    finally:
        # Lightning leaves the DDP environment (LOCAL_RANK, MASTER_PORT, ...) in os.environ.
        os.environ.clear()
        os.environ.update(environ)
        if train:
            _destroy_process_group()


@dataclass(frozen=True)
class _Kept:
    """A job of a sweep started again whose run had finished: its result, not retrained."""

    value: float | None


def _prepare_training(
    cfg: DictConfig, hydra_cfg: DictConfig, multirun: bool, owned: ExitStack
) -> _Kept | None:
    """Own the run directory, decide what the job does with a run already in it, name and
    group a new run, share the cores, and tell DDP processes the job's config.

    Returns the kept result of a finished run, None when the job trains.
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from vaelab import dashboards

    run = Run(cfg.paths.output_dir)
    first = rank_zero_only.rank == 0  # DDP under SLURM: every process runs the job
    if first:
        run.refuse_if_owned()  # before anything is written, as a new run's refusal is
        if not multirun and not cfg.get("resume") and run.exists():
            raise ConfigError(new_run_refusal(run))
        owned.enter_context(run.own())
    if multirun and not cfg.get("resume"):
        if run.exists():  # a sweep started again in its sweep directory
            kept = _continue_job(cfg, run, hydra_cfg, first)
            if kept is not None:
                return kept
        elif first:
            log.info("job %d: new run in %s", hydra_cfg.job.num, run.path)
    if not cfg.get("resume"):  # a resumed run keeps its name and group
        sweep_dir = hydra_cfg.sweep.dir if multirun else None
        dashboards.name_and_group(cfg, hydra_cfg.job.override_dirname, sweep_dir)
    _share_cores(hydra_cfg.launcher)
    # Lightning's DDP processes re-run this command: they train this job's config rather
    # than compose the command line again (which would re-run the sweep).
    os.environ[DDP_CONFIG_ENV] = str(run.config_file)
    return None


# What a run directory's config.yaml may differ in from a job's own config and still be
# the job's run: where it is, and the name, group and resume that a job fills in.
_NOT_IDENTITY = ("paths", "resume", "run_name", "group", "data.data_dir", "data.download")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix.removesuffix("."): tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


def config_difference(run: Run, cfg: DictConfig) -> list[str]:
    """The keys whose values differ between `cfg` and the config `run` was trained with
    (as asked for: status.json's `requested` values stand where Lightning ran others),
    each as `key (here: a, there: b)`; [] for the same run."""
    old = run.config()
    cfg = cfg.copy()
    with open_dict(cfg):  # names and places that other values interpolate: the run's own
        cfg.run_name, cfg.group = old.get("run_name"), old.get("group")
        for key, value in (old.get("paths") or {}).items():  # a sweep moved is the same
            OmegaConf.update(cfg, f"paths.{key}", value, force_add=True)
    mine = _flat(OmegaConf.to_container(cfg, resolve=True))
    theirs = {**_flat(old), **run.status().get("requested", {})}
    ignored = tuple(k + "." for k in _NOT_IDENTITY)
    return [
        f"{key} (here: {mine.get(key)}, there: {theirs.get(key)})"
        for key in sorted(mine.keys() | theirs.keys())
        if not (key + ".").startswith(ignored) and mine.get(key) != theirs.get(key)
    ]


def _continue_job(cfg: DictConfig, run: Run, hydra_cfg: DictConfig, first: bool) -> _Kept | None:
    """A job of a sweep started again whose run directory holds a run: a finished run of
    the job's own config is kept, an unfinished one resumed, a run of another config
    refused (a new run never writes into another run)."""
    state = run.state
    job = f"job {hydra_cfg.job.num}"
    differing = config_difference(run, cfg)
    if differing:
        raise ConfigError(
            f"{run.path} holds a run of another config ({'; '.join(differing[:3])}): give the "
            "sweep a new hydra.sweep.dir, or keep its values in their order"
        )
    if state == "finished":
        from vaelab.tasks.train import monitored

        monitor = monitored(cfg)
        value = run.metrics().get(monitor)
        if first:
            log.info("%s: finished run kept, not trained again (%s=%s)", job, monitor, value)
        return _Kept(value)
    if state == "running":  # this job owns it: its process is gone (on another host)
        state = "killed"
    if run.has_last_checkpoint():
        if first:
            log.info("%s: resuming the %s run in %s", job, state, run.path)
        with open_dict(cfg):
            cfg.resume = str(run.path)
    elif first:
        log.info("%s: starting the %s run in %s again (it has no checkpoint)", job, state, run.path)
    return None


def new_run_refusal(run: Run) -> str:
    """Why a new run may not start in `run`'s directory, and what to do instead."""
    return (
        f"{run.path} holds a run already ({run.state}): a new run needs a directory of its "
        f"own (leave hydra.run.dir out); to continue that one: `vaelab train resume={run.path}`"
    )


class CheckRunDirBeforeRun(Callback):
    """Refuses a single run before Hydra writes into its directory (.hydra/, train.log):
    a `resume=` of a run that another process trains, and a new run in a directory that
    holds a run. Each job checks again, owning the directory. Registered in `hydra.callbacks`."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra does next: ${hydra:job.name}
        try:
            run = Run(config.hydra.run.dir)
        except OmegaConfBaseException:  # a ${hydra:runtime...} of a job: the job checks
            return
        try:
            run.refuse_if_owned()
            if not config.get("resume") and run.exists():
                raise ConfigError(new_run_refusal(run))
        except VaelabError as e:
            raise ConfigRejected(ConfigError(str(e))) from e


def _raise_job_failed(hydra_cfg: DictConfig, e: Exception) -> None:
    """Raise a job's failure to the sweeper, which records it and goes on with the others."""
    message = f"job {hydra_cfg.job.num} ({hydra_cfg.runtime.output_dir}) failed: {one_line(e)}"
    log.error("vaelab: %s", message)
    raise JobFailed(
        f"{message}; the other jobs ran: `vaelab compare {hydra_cfg.sweep.dir}` shows them"
    ) from e


def _train_job(cfg: DictConfig) -> float | None:
    def task(cfg: DictConfig) -> float | None:
        from vaelab.tasks import train  # after `_job` has validated the config

        if cfg.get("resume"):
            cfg = train.resumed_config(cfg, HydraConfig.get().overrides.task)
            check_available(cfg.trainer)  # the run's own trainer node, not the command line's
        return train.run(cfg).get(train.monitored(cfg))

    return _job(task, cfg, "train")


def _eval_job(cfg: DictConfig) -> None:
    def task(cfg: DictConfig) -> None:
        from vaelab.tasks import evaluate

        evaluate.run(cfg)

    _job(task, cfg, "eval")


def _sample_job(cfg: DictConfig) -> None:
    def task(cfg: DictConfig) -> None:
        from vaelab.tasks import sample

        sample.run(cfg)

    _job(task, cfg, "sample")


HYDRA_JOBS = {"train": _train_job, "eval": _eval_job, "sample": _sample_job}


def _resume_args(args: Sequence[str]) -> list[str]:
    """`resume=<run dir>|last`: run in that run's directory, keeping its Hydra record."""
    value = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if value in (None, "null"):
        return list(args)
    if {"-m", "--multirun"} & set(args):
        raise VaelabError("resume= continues one run: give it without -m")
    from vaelab.runs import newest_run

    if value == "last":
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose("train", [a for a in args if not a.startswith("resume=")])
        run = newest_run(cfg.paths.log_dir)
    else:
        run = Run(value)
    run.resume_checkpoint()
    others = [a for a in args if not a.startswith("resume=")]
    return [
        *others,
        f"resume={run.path.resolve()}",
        f"hydra.run.dir={run.path.resolve()}",
        "hydra.output_subdir=null",
    ]


def run_hydra(command: str, args: Sequence[str]) -> None:
    """Run a Hydra application with `args` as its command line."""
    if command == "train":
        args = _resume_args(args)
    sys.argv = [sys.argv[0], *args]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # errors reach `main` instead of being printed
    entry = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=command)
    entry(HYDRA_JOBS[command])()


def ddp_child(config_file: str) -> None:
    """A DDP process started by Lightning: train the job's resolved config, no Hydra."""
    from vaelab.tasks import train

    train.run(OmegaConf.load(config_file))
