"""Test harness, not vaelab: a `python train.py` started with this folder on PYTHONPATH and
PAUSE_AT set stops at one moment of its run, writes the file PAUSE_MARKER and sleeps, so
that the test kills it (SIGKILL) exactly there.

PAUSE_AT is `<hook>@<n>`: before the n-th call of Lightning's callback hook <hook> (e.g.
on_validation_batch_start@8), `write:<name>@<n>`: half-way through the n-th checkpoint
write to a file whose name holds <name> (its temporary file cut short, e.g. write:last@11),
or `step@<n>`: before the n-th optimizer step of Adam (of a step's own call of Lightning's
loop or of a group of steps in one call, `trainer.steps_per_call`).
"""

import os

if os.environ.get("PAUSE_AT"):
    import io
    import time

    import torch
    from lightning.pytorch.trainer import call

    MOMENT, NTH = os.environ["PAUSE_AT"].rsplit("@", 1)
    seen = []

    def _reached() -> bool:
        seen.append(None)
        return len(seen) == int(NTH)

    def _stop() -> None:
        open(os.environ["PAUSE_MARKER"], "w").close()
        time.sleep(600)

    if MOMENT.startswith("write:"):
        _save = torch.save

        def save(obj, f, *args, **kwargs):
            name = os.path.basename(getattr(f, "name", str(f)))
            if MOMENT.removeprefix("write:") in name and _reached():
                whole = io.BytesIO()
                _save(obj, whole, *args, **kwargs)
                f.write(whole.getvalue()[: len(whole.getvalue()) // 2])
                f.flush()
                _stop()
            return _save(obj, f, *args, **kwargs)

        torch.save = save
    elif MOMENT == "step":
        _step = torch.optim.Adam.step

        def step(self, *args, **kwargs):
            if _reached():
                _stop()
            return _step(self, *args, **kwargs)

        torch.optim.Adam.step = step
    else:
        _hooks = call._call_callback_hooks

        def hooks(trainer, hook_name, *args, **kwargs):
            if hook_name == MOMENT and _reached():
                _stop()
            return _hooks(trainer, hook_name, *args, **kwargs)

        call._call_callback_hooks = hooks
