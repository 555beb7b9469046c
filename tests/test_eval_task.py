"""eval.py (vaelab.evaluate) and sample.py (vaelab.sample) on a real trained run."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import wandb_files
import yaml
from conftest import cli, compose_command
from PIL import Image

from vaelab.errors import VaelabError
from vaelab.runs import Run
from vaelab.tasks import compare, evaluate, sample

ROOT = Path(__file__).resolve().parents[1]
# One test batch of 100 images keeps K = 200 importance samples fast on a CPU.
FAST = ("n_importance=200", "data.eval_batch_size=100", "trainer.limit_test_batches=1")


@pytest.fixture
def run_dir(trained_run, tmp_path) -> Path:
    """A copy of the trained run (moved, as runs are), for tests that write into it."""
    return Path(shutil.copytree(trained_run, tmp_path / "run", symlinks=True))


def wandb_files_by_folder(run_dir: Path) -> dict[str, list]:
    return {
        path.parent.name: wandb_files.read_records(path)
        for path in sorted(run_dir.glob("wandb/*run-*/run-*.wandb"))
    }


def wandb_run_record(records: list):
    return next(r.run for r in records if r.HasField("run"))


@pytest.mark.slow
def test_each_offline_eval_is_a_wandb_run_of_its_own_beside_the_training_run(run_dir, tmp_path):
    (training_folder,) = wandb_files_by_folder(run_dir)
    run_id = training_folder.rsplit("-", 1)[1]
    name = yaml.safe_load((run_dir / "config.yaml").read_text())["run_name"]

    for k in (200, 20):  # (a later override of a key wins)
        args = (f"run_dir={run_dir}", *FAST, f"n_importance={k}")
        result = cli("eval.py", *args, cwd=tmp_path / "cwd")
        assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert not list((tmp_path / "cwd").iterdir()), "Hydra must not write into the cwd"

    evaluations = json.loads((run_dir / "eval_metrics.json").read_text())["evaluations"]
    assert [e["n_importance"] for e in evaluations] == [200, 20]
    metrics = evaluations[0]
    assert metrics["seed"] == 0 and metrics["ckpt_path"].startswith("checkpoints/best-epoch")
    nll, elbo = metrics["test/nll_iwae"], metrics["test/elbo"]
    assert math.isfinite(nll) and math.isfinite(elbo)
    assert nll <= -elbo + 1.0  # the importance-weighted bound is the tighter one
    assert metrics["test/bpd_iwae"] == pytest.approx(nll / (784 * math.log(2)))
    assert 1 <= metrics["test/ess_iwae"] <= 200
    assert "test/nll_naive" in metrics

    # W&B cannot resume an offline run, and a sync of offline folders of one id keeps only
    # one: `wandb sync` must find three runs of three ids, all of them kept.
    folders = sorted(run_dir.glob("wandb/offline-run-*"))
    synced = subprocess.run(
        [sys.executable, "-m", "wandb", "sync", "--dry-run", *map(str, folders)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert synced.returncode == 0, synced.stderr
    ids = re.findall(r"/run-(\w+)\.wandb$", synced.stdout + synced.stderr, re.MULTILINE)
    eval_ids = [e["wandb"]["id"] for e in evaluations]
    assert sorted(ids) == sorted([run_id, *eval_ids]) and len(set(ids)) == 3
    assert all(e["wandb"]["mode"] == "offline" for e in evaluations)

    records = wandb_files_by_folder(run_dir)
    for evaluation in evaluations:
        (folder,) = [f for f in records if f.endswith(f"-{evaluation['wandb']['id']}")]
        run = wandb_run_record(records[folder])
        assert run.job_type == "eval" and run.display_name == f"eval of {name}"
        assert run.run_group == run_id  # the training run has no group: one named by its id
        evaluated = json.loads(wandb_files.config(records[folder])["evaluated"])
        assert evaluated["wandb_id"] == run_id
        assert evaluated["n_importance"] == evaluation["n_importance"]
        assert evaluated["ckpt_path"] == evaluation["ckpt_path"]
        logged = [step for step in wandb_files.history(records[folder]) if "test/nll_iwae" in step]
        assert len(logged) == 1
        assert json.loads(logged[0]["test/nll_iwae"]) == pytest.approx(evaluation["test/nll_iwae"])
    # Training ran with n_importance=0, and its run is left as it was.
    assert wandb_run_record(records[training_folder]).job_type == ""
    training_history = wandb_files.history(records[training_folder])
    assert not any("test/nll_iwae" in step for step in training_history)


@pytest.mark.slow
def test_every_evaluation_is_kept_and_compare_shows_the_largest_k_of_the_best(run_dir, tmp_path):
    def evaluate_run(*overrides: str) -> dict[str, float]:
        cfg = compose_command(
            "eval", f"run_dir={run_dir}", "wandb_mode=disabled", *FAST, *overrides
        )
        return evaluate.run(cfg)

    def kept() -> list[tuple[str, int, int]]:
        return [(e["ckpt_path"], e["n_importance"], e["seed"]) for e in Run(run_dir).evaluations()]

    best = json.loads((run_dir / "metrics.json").read_text())["checkpoint"]["path"]
    k50 = evaluate_run("n_importance=50")
    evaluate_run("n_importance=10")
    evaluate_run("n_importance=100", "checkpoint=last")  # a larger K, of another checkpoint
    assert kept() == [(best, 50, 0), (best, 10, 0), ("checkpoints/last.ckpt", 100, 0)]
    assert Run(run_dir).metrics()["test/nll_iwae"] == k50["test/nll_iwae"]

    again = evaluate_run("n_importance=10", "seed=1")  # replaces the K = 10 record alone
    assert kept() == [(best, 50, 0), ("checkpoints/last.ckpt", 100, 0), (best, 10, 1)]
    (record,) = [e for e in Run(run_dir).evaluations() if e["n_importance"] == 10]
    assert record["test/nll_iwae"] == again["test/nll_iwae"]

    shown = compare.run([run_dir], out_dir=tmp_path / "compare")
    (row,) = shown.rows
    assert row.mean["test/nll_iwae"] == k50["test/nll_iwae"] and row.n_importance == [50]
    header, _, line = shown.markdown.splitlines()
    cells = dict(zip(header.split("|"), line.split("|"), strict=True))
    assert [v.strip() for k, v in cells.items() if k.strip() == "K"] == ["50"]


@pytest.mark.slow
def test_eval_bad_input_stops_with_one_clear_line(tmp_path):
    cases = [
        ((), "give the run to evaluate as run_dir=outputs/runs/<run> or ckpt_path="),
        (("ckpt_path=outputs/runs/x/checkpoints/best.ckpt",), "does not exist"),
    ]
    # Side by side: each run spends most of its time importing Lightning.
    with ThreadPoolExecutor() as pool:
        results = list(
            pool.map(lambda i: cli("eval.py", *cases[i][0], cwd=tmp_path / str(i)), range(2))
        )
    for i, ((_, message), result) in enumerate(zip(cases, results, strict=True)):
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("vaelab: error: ") and message in line
        assert "Traceback" not in result.stdout
        assert not list((tmp_path / str(i)).iterdir())


@pytest.mark.slow
def test_eval_compiled_and_in_bf16_keeps_the_float32_estimates(run_dir):
    def nll(*overrides: str) -> float:
        cfg = compose_command(
            "eval", f"run_dir={run_dir}", "wandb_mode=disabled", *FAST, *overrides
        )
        return evaluate.run(cfg)["test/nll_iwae"]

    eager = nll()
    # Only the networks are compiled: the same seed draws the same samples.
    assert nll("trainer.compile=true") == pytest.approx(eager, rel=1e-4)
    # bf16 networks, float32 densities: a sum of 784 bf16 log-probs would be nats off.
    assert nll("trainer.precision=bf16-mixed") == pytest.approx(eager, abs=1.0)


@pytest.mark.slow
def test_eval_of_a_checkpoint_path_without_wandb(run_dir):
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cfg = compose_command("eval", f"ckpt_path={ckpt}", "wandb_mode=disabled", *FAST)
    metrics = evaluate.run(cfg)
    assert math.isfinite(metrics["test/nll_iwae"])
    (written,) = Run(run_dir).evaluations()
    assert written["ckpt_path"] == "checkpoints/last.ckpt" and written["n_importance"] == 200
    assert written["wandb"] is None
    assert len(list(run_dir.glob("wandb/*run-*"))) == 1, "wandb_mode=disabled logs nothing"


def test_eval_errors(tmp_path):
    (tmp_path / "model.ckpt").touch()  # a checkpoint outside any run directory
    cases = {
        (): "run_dir=outputs/runs/<run> or ckpt_path=",
        (f"run_dir={tmp_path}", f"ckpt_path={tmp_path}/x.ckpt"): "one of the two",
        (f"run_dir={tmp_path}/missing",): "does not exist",
        (f"ckpt_path={tmp_path}/model.ckpt",): "no config.yaml in",
    }
    for overrides, message in cases.items():
        with pytest.raises(VaelabError, match=re.escape(message)):
            evaluate.run(compose_command("eval", *overrides))


# sample.py


def png(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


@pytest.mark.slow
def test_sample_cli_writes_a_grid_into_the_run_directory(run_dir, tmp_path):
    result = cli("sample.py", f"run_dir={run_dir}", "n=64", cwd=tmp_path / "cwd")
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert png(run_dir / "samples.png").size == (8 * 30 + 2, 8 * 30 + 2)  # 28 px + 2 px borders
    assert not list((tmp_path / "cwd").iterdir())


@pytest.mark.slow
def test_samples_are_reproducible_by_seed(trained_run, tmp_path):
    def draw(seed: int, name: str) -> Path:
        overrides = (f"run_dir={trained_run}", "n=10", "nrow=4", f"seed={seed}")
        return sample.run(compose_command("sample", *overrides, f"out={tmp_path / name}"))

    first, again, other = draw(0, "a.png"), draw(0, "b.png"), draw(1, "c.png")
    assert png(first).size == (4 * 30 + 2, 3 * 30 + 2)  # 3 rows of 4, the last one partial
    assert first.read_bytes() == again.read_bytes()
    assert png(first).tobytes() != png(other).tobytes()


def test_sample_needs_a_run(tmp_path):
    with pytest.raises(VaelabError, match="run_dir="):
        sample.run(compose_command("sample"))
    with pytest.raises(VaelabError, match="positive integer"):
        sample.run(compose_command("sample", f"run_dir={tmp_path}", "n=0"))
