"""Clocks and memory readings that benchmarks/run.py puts into vaelab's own runs.

The callbacks go into a real `python train.py ...` as `+callbacks.<name>._target_=probes.<Class>`
(with benchmarks/ on PYTHONPATH), so the command measured is the user's command plus one
callback that only reads a clock or /proc. They print one line each, `VAELAB_BENCH ...`,
which run.py parses.
"""

import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import lightning as L

MARK = "VAELAB_BENCH"


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB, e.g. VmRSS (now) or VmHWM (peak RSS)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))


def reset_peak_rss() -> bool:
    """Set the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_kib() -> int:
    return _status_kib("VmRSS")


def peak_rss_kib() -> int:
    """The process's peak RSS since it started or since the last `reset_peak_rss`."""
    return _status_kib("VmHWM")


def report(*fields: object) -> None:
    print(MARK, *fields, file=sys.stderr, flush=True)


# Training steps left out of every timing (first-call allocations, caches, compilation):
# timing starts at the end of the step, or call of Lightning's loop, that takes the last.
WARMUP = 2


def images_of_call(trainer, batch, steps_before: int) -> int:
    """The images a call of Lightning's training loop trained on: its steps since
    `steps_before` (several with `trainer.steps_per_call`), the last of them on `batch`."""
    steps = trainer.global_step - steps_before
    return (steps - 1) * trainer.datamodule.hparams.batch_size + len(batch[0])


class FirstStepClock(L.Callback):
    """Prints the system-wide monotonic clock when the first training batch starts."""

    steps_per_call_safe = True  # the first call's start is the first step's

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == 0 and batch_idx == 0:
            report("first_step", time.clock_gettime(time.CLOCK_MONOTONIC))


class PhasePeakRSS(L.Callback):
    """Peak RSS of each phase of a run: set-up, fit, the validate stage, the test stage.

    At each boundary the peak since the previous boundary is printed and the kernel's
    mark reset, so each figure is the largest RSS the process reached in that phase.
    The set-up phase runs from the start of the process (imports, data, model, the
    sanity check) to the first training batch; what follows the test stage is not measured.
    """

    def __init__(self) -> None:
        self.can_reset = os.access("/proc/self/clear_refs", os.W_OK)

    def _boundary(self, phase: str) -> None:
        # Without the reset (an old kernel), each figure is the peak so far.
        report("rss", phase, peak_rss_kib(), int(self.can_reset))
        reset_peak_rss()

    def on_train_start(self, trainer, pl_module) -> None:
        self._boundary("setup")

    def on_train_end(self, trainer, pl_module) -> None:
        self._boundary("fit")

    def on_test_start(self, trainer, pl_module) -> None:
        self._boundary("validate")

    def on_test_end(self, trainer, pl_module) -> None:
        self._boundary("test")


class Timings(L.Callback):
    """Prints, at the end of fit and of testing, the run's timings as one JSON line
    (`VAELAB_BENCH timings {...}`): seconds per training step from the end of the call of
    Lightning's loop that took the second step (the first ones compile and allocate; a
    call takes several with `trainer.steps_per_call`) to the end of the last, images per
    second over them, seconds per epoch (validation included), the epochs run, and the
    test stage's seconds and images. On a GPU the clock is read after a synchronisation,
    at those boundaries only."""

    steps_per_call_safe = True

    def __init__(self) -> None:
        self.start: tuple[float, int] | None = None  # (time, steps) where timing starts
        self.end: tuple[float, int] | None = None
        self.steps = 0  # by the end of the last call
        self.images = 0
        self.epoch_ends: list[float] = []
        self.test: list[float] = []
        self.test_images = 0

    @staticmethod
    def _now(pl_module) -> float:
        if pl_module.device.type == "cuda":
            import torch

            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self.epoch_ends.append(self._now(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.start is None:
            if step >= WARMUP:
                self.start = (self._now(pl_module), step)
        else:
            self.images += images_of_call(trainer, batch, self.steps)
            if trainer.is_last_batch or 0 < trainer.max_steps <= step:
                self.end = (self._now(pl_module), step)
        self.steps = step

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_ends.append(self._now(pl_module))

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # one line: the processes share stderr
            return
        timed = self.end[1] - self.start[1] if self.start and self.end else 0
        seconds = self.end[0] - self.start[0] if timed > 0 else float("nan")
        epochs = [b - a for a, b in zip(self.epoch_ends, self.epoch_ends[1:], strict=False)]
        report("timings", json.dumps({
            "step_s": seconds / timed if timed > 0 else None,
            "images_per_s": self.images / seconds if timed > 0 else None,
            "epoch_s": statistics.median(epochs) if epochs else None,
            "epochs": len(epochs),
        }))  # fmt: skip

    def on_test_start(self, trainer, pl_module) -> None:
        self.test = [self._now(pl_module)]

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        self.test_images += len(batch[0])

    def on_test_end(self, trainer, pl_module) -> None:
        seconds = self._now(pl_module) - self.test[0]
        if trainer.is_global_zero:
            report("timings", json.dumps({"test_s": seconds, "test_images": self.test_images}))
