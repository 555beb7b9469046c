"""A user's own model, prior, data source and logger, from a package of the user's (examples/mylab,
installed) found through VAELAB_CONFIG_PATH, through every tool, with no file of vaelab changed."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, _offline_env, start_train, wait_for

import vaelab
from hydra_plugins.vaelab_config_path import entries
from vaelab.runs import Run

EXAMPLE = ROOT / "examples" / "mylab"
# 640 training images of 16 a batch: 36 steps an epoch, a checkpoint every 4 steps.
RUN = (
    "prior=laplace",
    "prior.scale=0.5",
    "data=arrays",
    "logger=jsonl",
    "model=deep",  # mylab.models.DeepMLPVAE, with its own argument
    "model.hidden_dim=16",
    "model.depth=2",
    "latent_dim=2",
    "batch_size=16",
    "max_epochs=2",
    "n_importance=4",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "callbacks.step_checkpoint.every_n_train_steps=4",
    "callbacks.pictures.every_n_epochs=100",
)


def vaelab_files() -> dict[Path, int]:
    """The files of vaelab's own code and configs, with their modification times."""
    files = [*(ROOT / "src").rglob("*"), *(ROOT / "conf").rglob("*")]
    return {p: p.stat().st_mtime_ns for p in files if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture
def user_package(tmp_path, monkeypatch) -> Path:
    """examples/mylab installed (pip, from a copy: a build writes beside its sources) into a
    folder on PYTHONPATH, its options on VAELAB_CONFIG_PATH (for this process and the
    commands it starts), and the user's array file."""
    source, packages = tmp_path / "mylab-src", tmp_path / "site"
    shutil.copytree(EXAMPLE, source)
    pip = ("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q")
    installed = subprocess.run(
        [sys.executable, *pip, "--target", str(packages), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert (packages / "mylab" / "conf" / "prior" / "laplace.yaml").is_file()  # package data
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(packages)) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("VAELAB_CONFIG_PATH", "pkg://mylab.conf")
    monkeypatch.syspath_prepend(str(packages))
    rng = np.random.default_rng(0)
    strokes = rng.random((800, 28, 28)) < np.linspace(0.05, 0.6, 28)[:, None]
    images = (strokes * 255).astype(np.uint8)
    np.savez(tmp_path / "mine.npz", train=images[:710], test=images[710:])
    return packages


def cli(tmp_path: Path, *command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *command], cwd=tmp_path, env=_offline_env(env),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_the_config_path_takes_packages_and_folders_separated_by_pathsep(tmp_path):
    value = os.pathsep.join(["pkg://mylab.conf", f"file://{tmp_path}", str(tmp_path / "conf")])
    assert entries(value) == ["pkg://mylab.conf", f"file://{tmp_path}", f"file://{tmp_path}/conf"]
    assert entries("") == []


@pytest.mark.slow
def test_a_users_model_prior_data_and_logger_train_resume_evaluate_sample_and_compare(
    user_package, tmp_path
):
    before = vaelab_files()
    run = (*RUN, f"data.path={tmp_path / 'mine.npz'}")
    run_dir = tmp_path / "outputs" / "mine"
    proc = start_train(tmp_path, (*run, f"hydra.run.dir={run_dir}"), "mine")
    wait_for(proc, run_dir, "checkpoints/last.ckpt")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert Run(run_dir).state == "killed"

    train = str(ROOT / "train.py")
    common = (f"paths.log_dir={tmp_path / 'outputs'}", "data.download=false")
    resumed = cli(tmp_path, train, *common, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert Run(run_dir).state == "finished" and len(Run(run_dir).status()["resumed_at"]) == 1
    config = Run(run_dir).config()
    assert config["prior"]["_target_"] == "mylab.priors.LaplacePrior"
    assert config["model"] == {"_target_": "mylab.models.DeepMLPVAE", "hidden_dim": 16, "depth": 2}
    assert config["data"]["source_class"] == "mylab.data.ArrayFile"
    assert Run(run_dir).data_source() == f"npz:{tmp_path / 'mine.npz'}"
    # the user's logger wrote both attempts' metrics, hyperparameters first
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "hparams" in rows[0] and any("val/elbo" in row for row in rows)
    assert {0, 1} <= {row.get("epoch") for row in rows if "val/elbo" in row}

    vae = vaelab.load_run(run_dir)
    assert type(vae.prior_model).__module__ == "mylab.priors"
    assert type(vae).__name__ == "DeepMLPVAE" and len(vae.encoder.body) == 1 + 2 * 2
    assert float(vae.prior_model.scale[0]) == 0.5  # its own argument, from the run
    x, _ = next(iter(vaelab.model_batches(run_dir, "test")))
    assert x.shape[1:] == (1, 28, 28)

    evaluated = cli(tmp_path, str(ROOT / "eval.py"), f"run_dir={run_dir}", "n_importance=8")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (evaluation,) = json.loads((run_dir / "eval_metrics.json").read_text())["evaluations"]
    assert np.isfinite(evaluation["test/nll_iwae"])
    sampled = cli(tmp_path, str(ROOT / "sample.py"), f"run_dir={run_dir}", "n=16")
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert (run_dir / "samples.png").is_file()

    sweep_dir = tmp_path / "outputs" / "sweep"
    swept = cli(
        tmp_path, train, "-m", *common, *run, "max_epochs=1", "prior.scale=0.5,2",
        f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert swept.returncode == 0, swept.stderr[-3000:]
    compared = cli(tmp_path, "-c", "from vaelab.cli import main; main()", "compare", str(sweep_dir))
    assert compared.returncode == 0, compared.stderr[-3000:]
    with (sweep_dir / "compare" / "compare.csv").open() as f:
        assert sorted(float(row["prior.scale"]) for row in csv.DictReader(f)) == [0.5, 2.0]
    assert vaelab_files() == before  # nothing of vaelab was written

    # Without the user's package installed: one line that names it.
    bare = {"PYTHONPATH": str(ROOT / "src")}
    missing = cli(tmp_path, str(ROOT / "eval.py"), f"run_dir={run_dir}", env=bare)
    assert missing.returncode == 2
    (line,) = missing.stderr.strip().splitlines()
    assert "install the package that provides the module mylab" in line
    loaded = cli(tmp_path, "-c", f"import vaelab; vaelab.load_run({str(run_dir)!r})", env=bare)
    assert "ConfigError: model._target_ names mylab.models.DeepMLPVAE" in loaded.stderr
    assert "install the package that provides the module mylab" in loaded.stderr
    more = (*common, "max_epochs=3", f"resume={run_dir}")
    missing = cli(tmp_path, train, *more, env={**bare, "VAELAB_CONFIG_PATH": None})
    assert missing.returncode == 2
    (line,) = missing.stderr.strip().splitlines()
    assert "install the package that provides the module mylab" in line


def test_an_unknown_option_lists_the_users_options_with_vaelabs(user_package, train_cli):
    result = train_cli("data=svhn", "prior=laplace", check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "Could not find 'data/svhn'" in line and "arrays" in line and "mnist" in line
