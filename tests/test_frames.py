"""vaelab.load_runs: runs as DataFrames, a row per run and a summary over seeds."""

import json
import math
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import vaelab
from vaelab.errors import VaelabError
from vaelab.runs import Run

ROOT = Path(__file__).resolve().parents[1]
LATENT_DIMS = (2, 8)
SEEDS = (0, 1)


def fake_metrics(real: dict, latent_dim: int, seed: int) -> dict:
    """The real run's metrics.json, its numbers moved by the latent size and the seed so that
    every run differs, and a test/nll_iwae (the real run was trained without one)."""
    shift = 10.0 / latent_dim + 0.7 * seed
    moved = {k: v + shift if isinstance(v, float) else v for k, v in real.items()}
    return moved | {"test/nll_iwae": -moved["test/elbo"] - 3.0 - 0.25 * seed}


def copy_run(trained_run: Path, run_dir: Path, latent_dim: int, seed: int) -> Run:
    """A copy of the real run as if it had been trained with this latent_dim and seed."""
    shutil.copytree(trained_run, run_dir, symlinks=True)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["seed"] = config["data"]["seed"] = seed  # data.seed is ${seed}
    config["latent_dim"] = latent_dim
    config["run_name"] = f"latent_dim={latent_dim},seed={seed}"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return Run(run_dir)


@pytest.fixture
def sweep(trained_run, tmp_path) -> Path:
    """A multirun from copies of the real run: jobs 0-3 finished (latent_dim 2 and 8, seeds
    0 and 1), job 4 failed and job 5 still running (this process), neither with metrics."""
    root = tmp_path / "multiruns" / "2026-01-01_00-00-00"
    real = json.loads((trained_run / "metrics.json").read_text())
    grid = [(d, s) for d in LATENT_DIMS for s in SEEDS]
    for job, (latent_dim, seed) in enumerate(grid):
        run = copy_run(trained_run, root / str(job), latent_dim, seed)
        run.finish(fake_metrics(real, latent_dim, seed))
    for job in (4, 5):
        run = copy_run(trained_run, root / str(job), 2, job)
        (run.path / "metrics.json").unlink()
    Run(root / "4").fail("TrainingError: the loss is not finite at epoch 0, step 3")
    Run(root / "5").restart(Run(root / "5").config())  # its pid is this live process
    return root


def test_the_runs_module_every_command_reads_loads_neither_pandas_nor_torch():
    # vaelab.runs is read by every command: DataFrames cost only those who ask for them.
    code = "import sys, vaelab.runs; print({'pandas', 'torch'} & set(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "set()"


def test_a_row_per_run_with_its_status_config_and_metrics(sweep):
    frame = vaelab.load_runs(sweep).to_dataframe()

    assert list(frame["run_dir"]) == [str(sweep / str(job)) for job in range(6)]
    assert list(frame["status"]) == ["finished"] * 4 + ["failed", "running"]
    assert frame["error"][4].startswith("TrainingError: the loss is not finite")
    assert list(frame.columns[:3]) == ["run_dir", "status", "error"]
    assert {"config.model._target_", "config.prior._target_", "config.latent_dim"} <= set(frame)
    assert not any(c.startswith(("config.paths.", "config.run_name")) for c in frame)
    assert list(frame["config.seed"]) == [0, 1, 0, 1, 4, 5]
    assert frame["config.model._target_"].str.endswith(".MLPVAE").all()
    for job in range(4):
        written = json.loads((sweep / str(job) / "metrics.json").read_text())
        numbers = {f"metrics.{k}": v for k, v in written.items() if isinstance(v, float)}
        assert numbers and frame.loc[job, list(numbers)].to_dict() == numbers
    metrics = [c for c in frame if c.startswith("metrics.")]
    assert "metrics.test/nll_iwae" in metrics and "metrics.checkpoint" not in metrics
    assert frame.loc[4:, metrics].isna().all().all()  # failed and running: NaN, not dropped


def test_the_summary_gives_mean_std_and_n_over_seeds_per_configuration(sweep):
    runs = vaelab.load_runs([sweep])
    summary = runs.summary()

    assert runs.config_keys() == ["config.latent_dim"]  # seed, and data.seed echoing it, out
    assert list(summary.index) == list(LATENT_DIMS)  # finished runs only
    metrics = [json.loads((sweep / str(job) / "metrics.json").read_text()) for job in range(4)]
    for latent_dim, jobs in ((2, metrics[:2]), (8, metrics[2:])):
        for name in ("test/nll_iwae", "val/elbo", "test/kl"):
            values = [m[name] for m in jobs]
            cell = summary.loc[latent_dim, f"metrics.{name}"]
            assert cell["mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
            assert cell["std"] == pytest.approx(statistics.stdev(values), rel=1e-12)
            assert cell["n"] == 2
    assert summary.equals(runs.summary(by=["latent_dim"]))


def test_a_summary_of_one_configuration_is_one_row_and_a_single_run_has_no_std(sweep):
    runs = vaelab.load_runs([sweep / "0", sweep / "1"])
    assert runs.config_keys() == []
    (row,) = runs.summary().to_dict("records")
    assert row[("metrics.val/elbo", "n")] == 2
    (single,) = vaelab.load_runs(sweep / "2").summary().to_dict("records")
    assert single[("metrics.val/elbo", "n")] == 1
    assert math.isnan(single[("metrics.val/elbo", "std")])


def test_bad_paths_get_one_line_saying_what_to_give(tmp_path, sweep):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VaelabError, match=r"^no runs under .*empty: give run dir.*multirun dir"):
        vaelab.load_runs(tmp_path / "empty")
    with pytest.raises(VaelabError, match="does not exist"):
        vaelab.load_runs(tmp_path / "missing")
    with pytest.raises(VaelabError, match="give the runs to load"):
        vaelab.load_runs([])
    with pytest.raises(VaelabError, match=r"by='betta' is not a column .*: config.latent_dim$"):
        vaelab.load_runs(sweep).summary(by=["betta"])


def test_the_readme_notebook_lines_run(sweep):
    readme = (ROOT / "README.md").read_text().split("## Sweeps and comparison")[1]
    (code,) = re.findall(r"<!-- notebook -->\n```python\n(.*?)```", readme, re.DOTALL)
    names: dict = {}
    exec(code.replace('"outputs/multiruns/<time>"', repr(str(sweep))), names)

    assert isinstance(names["frame"], pd.DataFrame) and len(names["frame"]) == 6
    assert list(names["summary"].index) == list(LATENT_DIMS)


def test_compare_shows_the_summarys_mean_and_std(sweep):
    """`vaelab compare`'s rows and `Runs.summary` are one statistic over seeds."""
    from vaelab.frames import settings
    from vaelab.tasks.compare import group_rows

    runs = vaelab.load_runs(sweep)
    summary = runs.summary()
    rows = group_rows(runs.runs, [settings(r) for r in runs], ["latent_dim"], ["seed"])
    finished = [row for row in rows if row.status == "finished"]
    assert [row.config["latent_dim"] for row in finished] == list(LATENT_DIMS)
    for row in finished:
        for name, mean in row.mean.items():
            assert mean == summary.loc[row.config["latent_dim"], (f"metrics.{name}", "mean")]
            assert (
                row.std[name] == summary.loc[row.config["latent_dim"], (f"metrics.{name}", "std")]
            )
        assert {"test/nll_iwae", "val/elbo"} <= row.mean.keys()
