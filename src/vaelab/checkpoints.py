"""Checkpoints that survive interruptions: atomic files, every N steps, on SIGTERM/SIGINT.

A checkpoint holds everything a resumed run needs to continue exactly: weights,
optimizer, loop progress (epoch, step, KL warm-up), the data loader's position in its
epoch (`ResumableLoader`) and the random number generators (`RngState`).
"""

import copy
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

from vaelab.config.schemas import checked
from vaelab.errors import VaelabError, one_line
from vaelab.runs import BEST_CHECKPOINT, LAST_CHECKPOINT, Run, pid_alive


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

    @staticmethod
    def leftovers(folder: Path) -> list[Path]:
        """The temporary files in `folder` of writers that were killed mid-write."""
        found = []
        for tmp in folder.glob(".*.tmp"):
            pid = tmp.suffixes[-2].lstrip(".") if len(tmp.suffixes) > 1 else ""
            if pid.isdigit() and not pid_alive(int(pid)):
                found.append(tmp)
        return found


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
    epoch, and when training ends mid-epoch (e.g. `max_steps`).

    last.ckpt is written after Lightning records the epoch's best (at the epoch's end, or
    after a validation inside it), so that its state names the best as it is then. The
    state names the files relative to the run directory (`checkpoints/best-epoch002.ckpt`),
    so that a moved or copied run resumes from its own files; the absolute paths of earlier
    versions are read by their names. A resumed run first puts checkpoints/ back as it was
    at its checkpoint's step (`_match_files`).
    """

    def __init__(self, **kwargs: Any):
        # No version counter: a best checkpoint written again after a resume replaces the
        # file of the same epoch instead of adding best-epochNNN-v1.ckpt beside it.
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(filename=BEST_CHECKPOINT, auto_insert_metric_name=False, **kwargs)
        self._last_saved_step = -1
        self._resumed_step: int | None = None
        self._is_global_zero = True
        self._fresh = {key: getattr(self, key) for key in _STATE}  # before any best

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.dirpath = str(Run(trainer.default_root_dir).checkpoint_dir)
        super().setup(trainer, pl_module, stage)

    def _save_last(self, trainer: L.Trainer) -> None:
        save_last(trainer)
        self._last_saved_step = trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        # Lightning records the best here only for validations it does not leave to the
        # epoch's end (several per epoch, or not every epoch).
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if fitting and not self._should_save_on_train_epoch_end(trainer):
            self._save_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # An epoch cut short by max_steps has no validation: no best to choose (Lightning
        # would warn that the monitored metric is missing).
        if self.monitor is None or self.monitor in trainer.callback_metrics:
            super().on_train_epoch_end(trainer, pl_module)  # the epoch's best, first
        if self._last_saved_step != trainer.global_step:
            self._save_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self._last_saved_step != trainer.global_step:  # stopped inside an epoch
            self._save_last(trainer)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        run_dir = Path(state["dirpath"]).parent
        relative = {path: _relative(path, run_dir) for path in self._paths(state)}
        return {**self._renamed(state, relative), "dirpath": _relative(state["dirpath"], run_dir)}

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Fitting only: validate and test load the best checkpoint, and its state, too.
        if trainer.state.fn == TrainerFn.FITTING:
            self._resumed_step = checkpoint.get("global_step")
        self._is_global_zero = trainer.is_global_zero

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(self._here(state_dict))
        if self._resumed_step is not None:
            self._match_files(self._resumed_step)
            self._resumed_step = None

    def _here(self, state: dict[str, Any]) -> dict[str, Any]:
        """`state` with its files in this run's checkpoints/: they all live there, so a
        file's name finds it, whether recorded relative or (earlier versions) absolute."""
        here = Path(self.dirpath)
        names = {path: str(here / Path(path).name) for path in self._paths(state)}
        return {**self._renamed(state, names), "dirpath": self.dirpath}

    @staticmethod
    def _paths(state: dict[str, Any]) -> set[str]:
        named = [*map(state.get, _PATH_KEYS), *(state.get("best_k_models") or {})]
        return {p for p in named if p}

    @staticmethod
    def _renamed(state: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
        state = {
            **state,
            "best_k_models": {names[p]: v for p, v in (state.get("best_k_models") or {}).items()},
        }
        for key in _PATH_KEYS:
            if state.get(key):
                state[key] = names[state[key]]
        return state

    def _match_files(self, step: int) -> None:
        """checkpoints/ as it was at `step`, the step the run resumes from.

        A kill between two writes leaves files of later steps (a best checkpoint written
        before last.ckpt caught up, a temporary file cut short): they are removed, and the
        resumed run writes them again. A best checkpoint at or before `step` that the state
        does not name (last.ckpt of earlier versions was written before the epoch's best)
        is the best: the state becomes the one it holds, written when it became the best.
        Without a best checkpoint on disk (started from another run's `ckpt_path`), the run
        has no best yet.
        """
        folder = Path(self.dirpath)
        best_files = folder.glob(BEST_CHECKPOINT.split("{")[0] + "*.ckpt")
        steps = {path: _step_of(path) for path in best_files}
        later = [path for path, saved in steps.items() if saved is None or saved > step]
        if self._is_global_zero:
            for path in [*later, *AtomicCheckpointIO.leftovers(folder)]:
                path.unlink(missing_ok=True)
        kept = {path: saved for path, saved in steps.items() if path not in later}
        newest = max(kept, key=kept.__getitem__, default=None)
        if newest is None:
            for key, value in self._fresh.items():
                setattr(self, key, copy.copy(value))
            return
        if str(newest) == self.best_model_path:
            return
        states = torch.load(newest, map_location="cpu", weights_only=True).get("callbacks", {})
        if self.state_key in states:
            super().load_state_dict(self._here(states[self.state_key]))


# The keys of ModelCheckpoint's state that name one checkpoint file each.
_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")
# ModelCheckpoint's record of the best checkpoints (the rest of its state is settings).
_STATE = (
    "best_model_score", "best_model_path", "current_score", "best_k_models",
    "kth_best_model_path", "kth_value", "last_model_path",
)  # fmt: skip


def _relative(path: str, run_dir: Path) -> str:
    return Path(os.path.relpath(path, run_dir)).as_posix()


def _step_of(path: Path) -> int | None:
    """The global step a checkpoint was written at; None if it is gone or unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    except Exception:
        return None


class StepCheckpoint(L.Callback):
    """last.ckpt every `every_n_train_steps` training steps, so a kill loses at most that many.
    A group of steps in one call of Lightning's loop ends at those steps (`steps_per_call`)."""

    steps_per_call_safe = True

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
