"""The GPU check: each row a real `python train.py ...` with a clock, one table at the end.

    python benchmarks/device_check.py [--dry-run] [--data-dir DIR] [--budget-s 420]

On a machine with GPUs (`benchmarks/device_check.sh` sets it up offline, in 8 minutes):
  step     seconds per training step of the tiny network of `run.py --sections step` (mlp,
           hidden 16, z 2, batch 32): where the framework's cost shows, in fp32 and
           bf16-mixed, eager and with `trainer.compile=true`, and eager with one step
           per call of Lightning's loop (`trainer.steps_per_call=1`, against the default 16);
  train    training images/s of model=conv, batch 128, the same four;
  eval     the test stage's images/s with K = 1,000 importance samples (the estimators);
  data     `data.placement=device` against `data.placement=host` (pinned batches);
  ddp      model=conv over all the GPUs present, `trainer=ddp`;
  exemplar as many epochs of `experiment=exemplar/vae_gaussian` as `--exemplar-s` allows,
           with the seconds per epoch (validation included) and the epochs the 2,000-epoch
           protocol would then take.
All on Fashion-MNIST. `--dry-run`: the same rows on the CPU with 40 batches, bf16-mixed
as it runs there and the compiled rows left out (they take minutes to compile on a CPU), so
that a test can check the script end to end.
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
MARK = "VAELAB_BENCH"
LEAN = (
    "logger=none",
    "callbacks=none",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0",
    "n_importance=0",
    "trainer.limit_test_batches=0",
    "max_epochs=1",
)
TINY = ("model=mlp", "model.hidden_dim=16", "latent_dim=2", "batch_size=32")
PRECISIONS = ("32-true", "bf16-mixed")


@dataclass
class Row:
    section: str
    what: str
    overrides: tuple[str, ...]
    figure: str = ""  # filled once run
    extra: dict = field(default_factory=dict)


def rows(dry_run: bool, gpus: int, exemplar_s: int) -> list[Row]:
    """The rows of the check; on the CPU (`dry_run`) with a few batches, no compiled ones."""
    # The dry run's: more than one call of Lightning's loop of trainer.steps_per_call=auto's
    # 16 steps, so that the steps after the first call are timed.
    steps = 40 if dry_run else 400
    device = ("trainer.accelerator=cpu",) if dry_run else ("trainer.accelerator=gpu",)
    conv = ("model=conv", "batch_size=16") if dry_run else ("model=conv",)  # a few test images
    compiles = (False,) if dry_run else (False, True)
    found = []
    for section, overrides in (
        ("step", (*TINY, f"trainer.limit_train_batches={steps}")),
        ("train", (*conv, f"trainer.limit_train_batches={steps // 2}")),
    ):
        for precision in PRECISIONS:
            # The step rows also with one step per call of Lightning's loop (the path
            # before grouped steps), eager.
            grouping = ("auto", 1) if section == "step" else ("auto",)
            for compiled, steps_per_call in itertools.product(compiles, grouping):
                if compiled and steps_per_call == 1:
                    continue
                name = f"{precision}, {'compiled' if compiled else 'eager'}"
                name += ", steps_per_call=1" if steps_per_call == 1 else ""
                knobs = (
                    f"trainer.precision={precision}",
                    f"trainer.compile={compiled}",
                    f"trainer.steps_per_call={steps_per_call}",
                )
                what = "µs per step, tiny mlp" if section == "step" else "images/s, conv, batch 128"
                found.append(Row(section, f"{what}, {name}", (*LEAN, *device, *knobs, *overrides)))
    k = 10 if dry_run else 1000
    found.append(
        Row(
            "eval",
            f"test images/s, conv, K = {k:,}",
            (
                *LEAN,
                *conv,
                *device,
                "trainer.limit_train_batches=2",
                f"n_importance={k}",
                f"trainer.limit_test_batches={1 if dry_run else 4}",
            ),
        )
    )
    for placement in ("device", "host"):
        found.append(
            Row(
                "data",
                f"images/s, conv, data.placement={placement}",
                (
                    *LEAN,
                    *conv,
                    *device,
                    f"data.placement={placement}",
                    f"trainer.limit_train_batches={steps // 2}",
                ),
            )
        )
    processes = 2 if dry_run else gpus
    found.append(
        Row(
            "ddp",
            f"images/s, conv, trainer=ddp, {processes} {'CPU processes' if dry_run else 'GPUs'}",
            (
                *LEAN,
                *conv,
                "trainer=ddp",
                *device,
                f"trainer.devices={processes}",
                f"trainer.limit_train_batches={steps // 2}",
            ),
        )
    )
    seconds = exemplar_s
    found.append(
        Row(
            "exemplar",
            f"experiment=exemplar/vae_gaussian, {seconds} s",
            (
                "experiment=exemplar/vae_gaussian",
                *device,
                "logger=none",
                "n_importance=0",
                "trainer.limit_test_batches=1",
                "callbacks.pictures.every_n_epochs=100000",
                f"trainer.max_time={{seconds: {seconds}}}",
                *(
                    (
                        "trainer.limit_train_batches=4",
                        "data.val_size=50",
                        "trainer.limit_val_batches=2",
                        "max_epochs=2",
                    )
                    if dry_run
                    else ()
                ),
            ),
        )
    )
    return found


def run_row(row: Row, data_dir: str, work: Path, timeout: float) -> None:
    """`python train.py` with the row's overrides and the `probes.Timings` clock; fills
    `row.figure` from the timings it prints (or says why there are none)."""
    out = work / f"{len(list(work.iterdir()))}"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *row.overrides,
        "+callbacks.bench_timings._target_=probes.Timings",
        "data=fashion_mnist",
        f"paths.data_dir={data_dir}",
        "data.download=false",
        f"hydra.run.dir={out}",
    ]
    env = dict(os.environ, WANDB_MODE="offline")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BENCHMARKS), str(ROOT / "src"), env.get("PYTHONPATH")) if p
    )
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=work, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        row.figure = f"not finished in {timeout:.0f} s"
        return
    wall = time.perf_counter() - start
    timings = {}
    for line in done.stderr.splitlines():
        if line.startswith(f"{MARK} timings "):
            timings.update(json.loads(line.split(" ", 2)[2]))
    if done.returncode != 0 or not timings:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        row.figure = f"failed (exit {done.returncode}): {last[:160]}"
        return
    row.extra = {**timings, "wall_s": wall}
    if row.section not in ("eval", "exemplar") and timings.get("step_s") is None:
        row.figure = "too few batches to time"
        return
    if row.section == "step":
        row.figure = f"{1e6 * timings['step_s']:,.0f}"
    elif row.section == "eval":
        row.figure = f"{timings['test_images'] / timings['test_s']:,.0f}"
    elif row.section == "exemplar":
        per_epoch = timings["epoch_s"]
        protocol_h = 2000 * per_epoch / 3600
        row.figure = (
            f"{timings['epochs']} epochs, {per_epoch:,.2f} s per epoch (2,000 epochs: "
            f"{protocol_h:,.1f} h)"
        )
    else:
        row.figure = f"{timings['images_per_s']:,.0f}"
    if row.section == "ddp":  # each process timed its own shard
        row.figure += " per process"


def table(found: list[Row], device: str) -> str:
    lines = [f"Device: {device}", "", "| section | measure | figure |", "|---|---|---|"]
    lines += [f"| {r.section} | {r.what} | {r.figure} |" for r in found]
    return "\n".join(lines)


def device_name(dry_run: bool) -> tuple[str, int]:
    import torch

    if dry_run or not torch.cuda.is_available():
        return f"CPU (dry run), torch {torch.__version__}", 0
    gpus = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    return f"{gpus} x {name}, torch {torch.__version__}, CUDA {torch.version.cuda}", gpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, a few batches")
    parser.add_argument("--data-dir", default=str(ROOT / "data"), help="as paths.data_dir")
    parser.add_argument(
        "--exemplar-s", type=int, default=60, help="seconds of the Exemplar VAE row's training"
    )
    parser.add_argument("--timeout-s", type=float, default=240, help="the most one row may take")
    args = parser.parse_args()
    device, gpus = device_name(args.dry_run)
    if not args.dry_run and gpus == 0:
        sys.exit("device_check: no GPU here; use --dry-run to check the script on a CPU")
    found = rows(args.dry_run, gpus, args.exemplar_s)
    data_dir = str(Path(args.data_dir).resolve())
    with tempfile.TemporaryDirectory(prefix="vaelab-device-check-") as tmp:
        for row in found:
            run_row(row, data_dir, Path(tmp), args.timeout_s)
            print(f"  {row.section:<9} {row.what:<56} {row.figure}", flush=True)
    print("\n" + table(found, device))


if __name__ == "__main__":
    main()
