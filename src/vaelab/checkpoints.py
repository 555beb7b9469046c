"""Checkpoints that survive interruptions: atomic files, every N steps, on SIGTERM/SIGINT.

A checkpoint holds everything a resumed run needs to continue exactly: weights,
optimizer, loop progress (epoch, step, KL warm-up), the data loader's position in its
epoch (`ResumableLoader`) and the random number generators (`RngState`).
"""

import os
import pickle
import random
import re
import signal
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vaelab.errors import VaelabError, one_line
from vaelab.runs import BEST_CHECKPOINT, LAST_CHECKPOINT, Run
from vaelab.schema import checked


def verify(path: str | Path) -> Path:
    """`path`, if it is a whole checkpoint that torch can read; else one clear error.

    Memory-mapped, so even a large checkpoint is checked without reading it all.

    Raises:
        VaelabError: the file is missing, truncated, or not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise VaelabError(f"{path} does not exist: give a .ckpt file or a run directory")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):  # not whole: garbage, or cut short
            raise VaelabError(_unreadable(path, e)) from e
        # Whole, but holding objects that are not plain data.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" (e.g. {found.group(1)})" if found else ""
        raise VaelabError(
            f"{path} was refused: it holds objects other than tensors and plain values{what}, "
            "and loading them could run code; use a checkpoint that `vaelab train` wrote, or "
            "re-save this one with plain values only"
        ) from e
    except Exception as e:
        raise VaelabError(_unreadable(path, e)) from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise VaelabError(f"{path} is not a Lightning checkpoint of `vaelab train`")
    return path


def _unreadable(path: Path, error: Exception) -> str:
    return (
        f"{path} is not a readable checkpoint (truncated or corrupt: {one_line(error)[:120]}); "
        "use another one, e.g. the run's checkpoints/last.ckpt or best-*.ckpt"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file in the same folder, then renames it.

    A kill during the write leaves the previous checkpoint whole (a rename within one
    folder is atomic; Lightning's own writer goes through a temporary file in /tmp, whose
    move onto another file system is a copy).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def save_last(trainer: L.Trainer) -> None:
    """Write the run's newest state to checkpoints/last.ckpt, replacing the file whole.

    The one writer of last.ckpt (end of epoch, every N steps, end of training, SIGTERM):
    Lightning's own `save_last` of two ModelCheckpoints would write last.ckpt and
    last-v1.ckpt, each callback its own, and leave resume to read the older one. Every
    process calls it (Lightning writes from global rank 0 only).
    """
    trainer.save_checkpoint(Run(trainer.default_root_dir).checkpoint_dir / LAST_CHECKPOINT)


class RunCheckpoint(ModelCheckpoint):
    """The run directory's checkpoints/: the best (by `monitor`), and last.ckpt after every
    epoch (after its validation), and when training ends mid-epoch (e.g. `max_steps`)."""

    def __init__(self, **kwargs: Any):
        super().__init__(filename=BEST_CHECKPOINT, auto_insert_metric_name=False, **kwargs)
        self._last_saved_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.dirpath = str(Run(trainer.default_root_dir).checkpoint_dir)
        super().setup(trainer, pl_module, stage)

    def _save_last(self, trainer: L.Trainer) -> None:
        save_last(trainer)
        self._last_saved_step = trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)  # the best, first: last.ckpt records it
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._save_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # An epoch cut short by max_steps has no validation: no best to choose (Lightning
        # would warn that the monitored metric is missing).
        if self.monitor is None or self.monitor in trainer.callback_metrics:
            super().on_train_epoch_end(trainer, pl_module)
        if self._last_saved_step != trainer.global_step:  # an epoch without validation
            self._save_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self._last_saved_step != trainer.global_step:  # stopped inside an epoch
            self._save_last(trainer)


class StepCheckpoint(L.Callback):
    """last.ckpt every `every_n_train_steps` training steps, so a kill loses at most that many."""

    @checked("callbacks.step_checkpoint.")
    def __init__(self, every_n_train_steps: int = 500):
        self.every_n_train_steps = every_n_train_steps
        self._last_saved_step = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step  # unchanged over the batches of an accumulated step
        if step % self.every_n_train_steps == 0 and step != self._last_saved_step:
            save_last(trainer)
            self._last_saved_step = step


class RngState(L.Callback):
    """Saves the random generators with each checkpoint and restores them on resume.

    Restored when training starts, after the sanity check, so that a resumed run draws
    the same binarizations and z samples as an uninterrupted one.
    """

    def __init__(self) -> None:
        self._loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        # Plain types only: checkpoints load with torch.load(weights_only=True).
        state = {
            "torch": torch.get_rng_state(),
            "numpy": (name, keys.tolist(), pos, has_gauss, cached),
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._loaded is None:
            return
        torch.set_rng_state(self._loaded["torch"])
        name, keys, pos, has_gauss, cached = self._loaded["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        random.setstate(self._loaded["python"])
        if "cuda" in self._loaded and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._loaded["cuda"])
        self._loaded = None


def _submitit_signal() -> int | None:
    """The signal submitit sends a job before its time limit, when running under submitit."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


class Preemption(L.Callback):
    """SIGTERM (a scheduler's preemption) or Ctrl+C: save last.ckpt and stop the run.

    Lightning stops at the next batch boundary after SIGTERM; Ctrl+C is turned into the
    same graceful stop (a second Ctrl+C interrupts at once). Under submitit (SLURM), the
    signal it sends before the time limit (USR2) stops the run the same way, and
    `requeue` then hands over to submitit, which requeues the job. `signal_name` tells the
    task which signal stopped the run.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.requeue: Any = None  # submitit's handler, to call once the checkpoint is saved
        self._previous: dict[int, Any] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._stop("SIGINT"))
        usr = _submitit_signal()
        if usr is not None:
            self._previous[usr] = signal.signal(usr, self._stop(signal.Signals(usr).name))

    def _stop(self, name: str) -> Any:
        def handler(signum: int, frame: Any) -> None:
            self.signal_name = name
            if signum == signal.SIGINT:
                signal.signal(signal.SIGINT, signal.default_int_handler)
            elif callable(previous := self._previous.get(signum)):
                self.requeue = lambda: previous(signum, None)
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's graceful stop

        return handler

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
        if isinstance(exception, SIGTERMException):
            self.signal_name = self.signal_name or "SIGTERM"
            save_last(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
