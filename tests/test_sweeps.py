"""Hyperparameter search (Optuna sweeper) and the joblib and SLURM launchers.

The end-to-end tests run real multiruns of tiny runs through `python train.py -m ...`.
"""

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import compose_command, tiny
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vaelab.config import config_dir

with warnings.catch_warnings():
    # optuna 2.x's storage models use SQLAlchemy 1.4 APIs that 2.0 removed (so sqlalchemy<2).
    warnings.simplefilter("ignore", DeprecationWarning)
    import optuna
    from optuna.trial import TrialState

# `~local`: a developer's conf/local/default.yaml (say, one choosing SLURM) stays out.
RUN = tiny("~local")
SEARCH = "hparams_search=elbo_optuna"


def compose_with_hydra(*overrides: str) -> DictConfig:
    """conf/train.yaml with its `hydra` node, as `python train.py -m ...` composes it."""
    return compose_command("train", *overrides, hydra=True)


def resolved(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True)


def val_elbo(run_dir: Path) -> float:
    value = json.loads((run_dir / "metrics.json").read_text())["val/elbo"]
    assert math.isfinite(value), run_dir
    return value


def config_of(run_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def load_trials(storage: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study_name, storage=storage).trials


# --- configs ---------------------------------------------------------------------------


def test_the_search_space_holds_only_top_level_knobs_and_groups():
    cfg = compose_with_hydra(SEARCH)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
    # The sweeper checks max_failure_rate per batch of n_jobs trials: below 1.0, one failed
    # trial would end a search with n_jobs=1.
    assert sweeper.n_jobs == 1 and sweeper.max_failure_rate == 1.0
    # The study in the sweep directory, under a name a continuation can give again.
    assert sweeper._target_ == "hydra_plugins.vaelab_sweepers.optuna_sweeper.OptunaSweeper"
    assert sweeper.storage == f"sqlite:///{cfg.hydra.sweep.dir}/optuna.db"
    assert sweeper.study_name == "elbo_optuna"
    assert set(sweeper.params) == {"model", "lr", "beta", "latent_dim", "num_samples"}
    for knob in sweeper.params:
        assert knob in cfg and knob != "hydra", knob
    assert sweeper.params.lr == "tag(log, interval(1e-4, 1e-2))"
    assert isinstance(instantiate(sweeper).sweeper.sampler, optuna.samplers.TPESampler)


def test_slurm_launcher_takes_the_clusters_names_from_conf_local():
    launcher = resolved(
        compose_with_hydra(
            "hydra/launcher=slurm", "local=example", "trainer=ddp", "trainer.devices=4"
        ).hydra.launcher
    )
    assert launcher["_target_"].endswith("SlurmLauncher")
    expected = {"partition": "gpu", "account": "my_project", "timeout_min": 720}
    expected |= {"cpus_per_task": 8, "mem_gb": 64, "setup": ["module load cuda/12.1"]}
    assert launcher.items() >= expected.items()
    # One SLURM task per device, which is what Lightning's DDP checks on SLURM.
    assert launcher["tasks_per_node"] == 4 and launcher["gpus_per_node"] == 4
    assert launcher["nodes"] == 1
    assert instantiate(launcher).params["partition"] == "gpu"


def test_slurm_launcher_defaults_without_a_local_file():
    cfg = compose_with_hydra("hydra/launcher=slurm", "~local", "trainer=gpu")
    launcher = resolved(cfg.hydra.launcher)
    assert launcher["partition"] is None and launcher["account"] is None
    assert launcher["timeout_min"] == 240 and launcher["setup"] is None
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == cfg.trainer.devices == 1


def test_local_example_chooses_slurm_and_local_files_stay_out_of_git():
    cfg = compose_with_hydra("local=example")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    ignored = (config_dir().parent / ".gitignore").read_text().splitlines()
    assert "/conf/local/*" in ignored and "!/conf/local/example.yaml" in ignored


# --- Optuna ----------------------------------------------------------------------------


@pytest.mark.slow
def test_optuna_search_writes_the_best_trial(train_cli, tmp_path: Path):
    sweep_dir = tmp_path / "outputs" / "search"
    trials = ("hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep_dir}")
    result = train_cli("-m", SEARCH, *trials, *RUN)

    assert len(result.run_dirs) == 3
    elbos = {run_dir: val_elbo(run_dir) for run_dir in result.run_dirs}
    configs = [config_of(run_dir) for run_dir in result.run_dirs]
    assert len({c["lr"] for c in configs}) == 3  # the trials searched

    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna"
    assert set(best["best_params"]) == {"lr", "beta", "latent_dim", "num_samples"}
    assert best["best_value"] == pytest.approx(max(elbos.values()))
    best_config = config_of(max(elbos, key=elbos.get))
    for knob, value in best["best_params"].items():
        assert best_config[knob] == pytest.approx(value), knob
    # The study itself is kept in the sweep directory, where optuna-dashboard opens it.
    trials = load_trials(f"sqlite:///{sweep_dir / 'optuna.db'}", "elbo_optuna")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert max(t.value for t in trials) == pytest.approx(best["best_value"])


@pytest.mark.slow
def test_a_persistent_study_continues_without_repeating_trials(train_cli, tmp_path: Path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = (f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=tiny")
    sweep_dir = tmp_path / "outputs" / "search"
    first_sweep = ("hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep_dir / 'first'}")
    train_cli("-m", SEARCH, *study, *first_sweep, *RUN)
    first = load_trials(storage, "tiny")
    assert [t.state for t in first] == [TrialState.COMPLETE] * 2

    # n_trials counts this invocation's trials. Another sampler seed, or TPE's random
    # start-up trials would propose the first two trials' values again.
    continued = ("hydra.sweeper.n_trials=1", "hydra.sweeper.sampler.seed=1")
    continued += (f"hydra.sweep.dir={sweep_dir / 'continued'}",)
    result = train_cli("-m", SEARCH, *study, *continued, *RUN)

    assert len(result.run_dirs) == 1
    trials = load_trials(storage, "tiny")
    assert [t.number for t in trials] == [0, 1, 2]
    assert [(t.params, t.value) for t in trials[:2]] == [(t.params, t.value) for t in first]
    assert trials[2].state == TrialState.COMPLETE
    assert trials[2].params not in [t.params for t in first]
    assert trials[2].value == pytest.approx(val_elbo(result.run_dirs[0]))


@pytest.mark.slow
def test_a_failed_trial_is_marked_failed_and_the_search_goes_on(train_cli, tmp_path: Path):
    """Awaits the task function raising (not exiting) when a job of a multirun fails."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep_dir = tmp_path / "outputs" / "search"
    train_cli(
        "-m",
        SEARCH,
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=failing",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.params=null",  # num_samples alone
        "num_samples=choice(0,1)",  # 0 is refused before training
        *RUN,
        check=False,  # exit code: not part of this test
    )

    trials = load_trials(storage, "failing")
    # TPE's start-up trials are random with seed 0: num_samples 1, 0, 1.
    assert [t.params["num_samples"] for t in trials] == [1, 0, 1]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    failed = json.loads((sweep_dir / "1" / "status.json").read_text())
    assert failed["status"] == "failed" and "num_samples" in failed["error"]
    for trial in (trials[0], trials[2]):
        run_dir = sweep_dir / str(trial.number)
        assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
        assert trial.value == pytest.approx(val_elbo(run_dir))


# --- launchers -------------------------------------------------------------------------


@pytest.mark.slow
def test_joblib_launcher_runs_the_jobs_in_worker_processes(train_cli):
    result = train_cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "latent_dim=2,3", *RUN
    )

    assert "Joblib.Parallel(n_jobs=2,backend=loky" in result.output
    assert sorted(config_of(d)["latent_dim"] for d in result.run_dirs) == [2, 3]
    for run_dir in result.run_dirs:
        val_elbo(run_dir)


@pytest.mark.slow
def test_submitit_local_launcher_runs_pickled_jobs_and_keeps_their_logs(train_cli, tmp_path: Path):
    sweep_dir = tmp_path / "outputs" / "submitit"
    launcher = ("hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep_dir}")
    result = train_cli("-m", *launcher, "latent_dim=2,3", *RUN)

    assert sorted(config_of(d)["latent_dim"] for d in result.run_dirs) == [2, 3]
    for run_dir in result.run_dirs:
        val_elbo(run_dir)
    logs = sorted((sweep_dir / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2
    assert all("Run directory" in log.read_text() for log in logs)
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2


FAKE_SBATCH = """#!/bin/sh
cp "$1" "{copy}"
echo "sbatch: error: this is not a cluster" >&2
exit 1
"""


@pytest.mark.slow
def test_slurm_launcher_submits_a_job_array_with_the_local_settings(train_cli, tmp_path: Path):
    """The launcher's real path up to `sbatch`, which a stand-in records and refuses."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = tmp_path / "submitted.sh"
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(copy=script))
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)

    result = train_cli(
        "-m",
        "local=example",
        "model=mlp",
        "trainer=ddp",
        "trainer.devices=3",
        "latent_dim=2,3",
        env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        check=False,
    )

    assert result.returncode != 0 and "this is not a cluster" in result.output
    sbatch = set(script.read_text().splitlines())
    for line in (
        "#SBATCH --array=0-1%2",  # both jobs at once
        "#SBATCH --partition=gpu",
        "#SBATCH --account=my_project",
        "#SBATCH --ntasks-per-node=3",  # one per device
        "#SBATCH --gpus-per-node=3",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",
        "#SBATCH --time=720",
        "module load cuda/12.1",
    ):
        assert line in sbatch, line


@pytest.mark.slow
def test_a_bad_a_diverging_and_a_killed_trial_cost_no_other_result(train_cli, tmp_path: Path):
    """Separate processes per job (submitit): one killed job does not take the others."""
    import os
    import signal

    from conftest import job_pid, start_train, wait_for

    from vaelab.runs import find_runs

    overrides = (
        "-m", "hydra/launcher=submitit_local", *RUN, "trainer.max_epochs=4",
        "trainer.limit_train_batches=20", "trainer.detect_anomaly=false",
        "callbacks.step_checkpoint.every_n_train_steps=5", "lr=1e4,1e-3", "latent_dim=0,3,2",
    )  # fmt: skip
    proc = start_train(tmp_path, overrides, "sweep")
    # The last job: the launcher collects results in order, and stops at a killed job;
    # on SLURM the jobs are independent, here they are the children of this process.
    wait_for(proc, tmp_path, "outputs/multiruns/*/5/checkpoints/last.ckpt")
    (sweep,) = (tmp_path / "outputs" / "multiruns").iterdir()
    os.kill(job_pid(sweep / "5"), signal.SIGKILL)
    assert proc.wait(timeout=600) == 2
    errors = [line for line in (tmp_path / "sweep.err").read_text().splitlines()]
    assert any(line.startswith("vaelab: error: a job of the sweep was killed") for line in errors)

    runs = find_runs([sweep])  # lr=1e4,1e-3 x latent_dim=0,3,2
    states = ["failed", "failed", "failed", "failed", "finished", "killed"]
    assert [run.state for run in runs] == states
    assert "latent_dim must be" in runs[0].error and "not finite" in runs[1].error
    assert runs[4].metrics()["val/elbo"] < 0  # the good trial kept its result
    assert (runs[5].checkpoint_dir / "last.ckpt").is_file()  # the killed run can resume


# --- a sweep started again in its sweep directory -----------------------------------------


def kept_files(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    """A run's own files (not Hydra's .hydra/ nor train.log, which a job appends to), with
    their bytes and modification times."""
    return {
        p.relative_to(run_dir).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and ".hydra" not in p.parts
        and p.name != "train.log"
    }  # fmt: skip


@pytest.mark.slow
def test_a_grid_stopped_and_started_again_keeps_resumes_and_adds_its_jobs(train_cli, tmp_path):
    import signal

    from conftest import start_train, wait_for

    from vaelab.runs import Run

    sweep_dir = tmp_path / "outputs" / "grid"
    steps = ("trainer.max_epochs=2", "trainer.limit_train_batches=40")
    grid = (*RUN, *steps, "callbacks.step_checkpoint.every_n_train_steps=5")
    grid += (f"hydra.sweep.dir={sweep_dir}",)
    proc = start_train(tmp_path, ("-m", *grid, "latent_dim=2,3"), "stopped")
    wait_for(proc, sweep_dir, "1/checkpoints/last.ckpt")  # job 0 finished, job 1 runs
    proc.send_signal(signal.SIGTERM)  # the basic launcher runs the jobs in its process
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    assert [Run(sweep_dir / n).state for n in "01"] == ["finished", "interrupted"]
    finished = kept_files(sweep_dir / "0")

    result = train_cli("-m", *grid, "latent_dim=2,3,4")

    assert kept_files(sweep_dir / "0") == finished  # not trained again, not overwritten
    assert [row["epoch"] for row in Run(sweep_dir / "0").history()] == [0, 1]
    value = Run(sweep_dir / "0").metrics()["val/elbo"]
    lines = [line.split(" - ", 1)[1] for line in result.output.splitlines() if " - job " in line]
    assert lines == [
        f"job 0: finished run kept, not trained again (val/elbo={value})",
        f"job 1: resuming the interrupted run in {sweep_dir / '1'}",
        f"job 2: new run in {sweep_dir / '2'}",
    ]
    resumed = Run(sweep_dir / "1")
    assert resumed.state == "finished" and len(resumed.status()["resumed_at"]) == 1
    assert [row["epoch"] for row in resumed.history()] == [0, 1]
    assert config_of(sweep_dir / "2")["latent_dim"] == 4
    assert Run(sweep_dir / "2").state == "finished"

    # Another order of the values: each job's folder holds a run of another config.
    result = train_cli("-m", *grid, "latent_dim=3,2", check=False)
    assert result.returncode == 2 and "holds a run of another config (latent_dim" in result.output
    assert kept_files(sweep_dir / "0") == finished


@pytest.mark.slow
def test_runs_of_an_earlier_vaelab_in_a_sweep_started_again_are_kept_and_resumed(
    train_cli, tmp_path
):
    """Their config.yaml in the old form (`beta_schedule: {kind: linear}`, `model.arch`, the
    datamodule's old path, no data.source_class or source_args) is the job's own config,
    not another."""
    import signal

    from conftest import old_form, start_train, wait_for

    from vaelab.runs import Run

    sweep_dir = tmp_path / "outputs" / "old"
    steps = ("trainer.max_epochs=2", "trainer.limit_train_batches=40")
    grid = (*RUN, *steps, "callbacks.step_checkpoint.every_n_train_steps=5")
    grid += (f"hydra.sweep.dir={sweep_dir}", "latent_dim=2,3")
    proc = start_train(tmp_path, ("-m", *grid), "stopped")
    wait_for(proc, sweep_dir, "1/checkpoints/last.ckpt")  # job 0 finished, job 1 runs
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    for n in "01":
        old_form(sweep_dir / n / "config.yaml")
    finished = kept_files(sweep_dir / "0")

    result = train_cli("-m", *grid)

    lines = [line.split(" - ", 1)[1] for line in result.output.splitlines() if " - job " in line]
    assert lines[0].startswith("job 0: finished run kept, not trained again")
    assert lines[1] == f"job 1: resuming the interrupted run in {sweep_dir / '1'}"
    assert kept_files(sweep_dir / "0") == finished
    resumed = Run(sweep_dir / "1")
    assert resumed.state == "finished" and len(resumed.status()["resumed_at"]) == 1


@pytest.mark.slow
def test_an_optuna_search_run_twice_in_one_sweep_dir_gives_new_trials_new_folders(
    train_cli, tmp_path: Path
):
    sweep_dir = tmp_path / "outputs" / "search"
    search = ("-m", SEARCH, f"hydra.sweep.dir={sweep_dir}", *RUN)
    train_cli(*search, "hydra.sweeper.n_trials=2")
    first = {n: kept_files(sweep_dir / n) for n in "01"}
    hydra_records = {n: (sweep_dir / n / ".hydra" / "overrides.yaml").read_text() for n in "01"}

    result = train_cli(*search, "hydra.sweeper.n_trials=1", "hydra.sweeper.sampler.seed=1")

    assert result.run_dirs == [sweep_dir / "2"]
    assert {n: kept_files(sweep_dir / n) for n in "01"} == first  # the old trials untouched
    assert {n: (sweep_dir / n / ".hydra" / "overrides.yaml").read_text() for n in "01"} == (
        hydra_records
    )
    trials = load_trials(f"sqlite:///{sweep_dir / 'optuna.db'}", "elbo_optuna")
    assert [t.number for t in trials] == [0, 1, 2]
    assert trials[2].value == pytest.approx(val_elbo(sweep_dir / "2"))
    assert config_of(sweep_dir / "2")["lr"] == pytest.approx(trials[2].params["lr"])
