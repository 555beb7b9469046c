"""sweeps/elbo.yaml: a valid W&B sweep whose agent command composes the intended config.

The command is built by wandb's own agent code (`Agent._command_run`, which expands
`${env}`, `${program}` and `${args_no_hyphens}`), with the process start replaced by a
recorder, so nothing runs and nothing touches the network.
"""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import compose_command, option_node
from omegaconf import DictConfig, OmegaConf
from wandb import wandb_agent

from vaelab.config import config_dir

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILE = ROOT / "sweeps" / "elbo.yaml"
SWEEP = yaml.safe_load(SWEEP_FILE.read_text())
GROUPS = ("model",)  # parameters that choose a config group's option, not a value
SWEEP_ID, RUN_ID = "sweep0", "run0"


def _choices(parameter: dict[str, Any]) -> list[Any]:
    """A parameter's listed values, its fixed value, or both ends of its range."""
    if "values" in parameter:
        return parameter["values"]
    if "value" in parameter:
        return [parameter["value"]]
    return [parameter["min"], parameter["max"]]


def _samples(parameters: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Parameter sets that together take every choice of every parameter."""
    choices = {name: _choices(p) for name, p in parameters.items()}
    n = max(map(len, choices.values()))
    return [{name: c[i % len(c)] for name, c in choices.items()} for i in range(n)]


def _expected(value: Any) -> Any:
    """What Hydra should hold for a value the agent sends: "null" is how a null is sent."""
    return None if value == "null" else value


def agent_command(
    args: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> list[str]:
    """The command line `wandb agent` starts for a run of this sweep with parameters `args`."""
    started = []

    class StartedProcess:
        def __init__(self, command: list[str], **kwargs: Any):
            started.append(command)

    monkeypatch.setattr(wandb_agent, "AgentProcess", StartedProcess)
    # The agent writes WANDB_RUN_ID and a parameter file; set them here so they are undone.
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SWEEP_ID", SWEEP_ID)
    monkeypatch.setenv("WANDB_RUN_ID", "")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", "")
    agent = wandb_agent.Agent(api=None, queue=None, sweep_id=SWEEP_ID)
    agent._sweep_command = list(SWEEP["command"])  # as the agent reads it from the sweep
    agent._command_run(
        {
            "type": "run",
            "run_id": RUN_ID,
            "program": SWEEP["program"],
            "args": {name: {"value": value} for name, value in args.items()},
        }
    )
    (command,) = started
    return command


def _overrides(command: list[str]) -> list[str]:
    """The Hydra overrides of `/usr/bin/env python train.py key=value ...`."""
    assert command[:3] == ["/usr/bin/env", "python", "train.py"]
    return command[3:]


def test_sweep_file_has_the_structure_the_agent_needs():
    assert SWEEP["method"] in ("bayes", "random")
    assert SWEEP["metric"] == {"name": "val/elbo", "goal": "maximize"}
    assert (ROOT / SWEEP["program"]).is_file()
    assert SWEEP["command"][:4] == ["${env}", "python", "${program}", "${args_no_hyphens}"]
    for name, p in SWEEP["parameters"].items():
        assert len({"value", "values", "distribution"} & p.keys()) == 1, name
        if "distribution" in p:
            # YAML 1.1 reads 1e-4 (no dot) as a string: write 1.0e-4.
            assert all(isinstance(p[k], int | float) for k in ("min", "max")), name
        # A YAML null would be formatted `key=None`, the string "None" for Hydra.
        assert None not in p.get("values", [p.get("value", "")]), name


def test_sweep_file_passes_wandbs_own_validation():
    # sweeps.config: our sweeps/ folder is a namespace package of the same top-level name.
    config = pytest.importorskip("sweeps.config", reason="wandb's validator: wandb[sweeps]")
    assert config.schema_violations_from_proposed_config(SWEEP) == []


def test_every_parameter_is_a_top_level_knob_or_the_model_choice(compose):
    cfg = compose()
    for name, p in SWEEP["parameters"].items():
        if name in GROUPS:
            for choice in p["values"]:
                assert (config_dir() / name / f"{choice}.yaml").is_file(), (name, choice)
        else:
            assert "." not in name and name in cfg, name


@pytest.mark.parametrize("args", _samples(SWEEP["parameters"]))
def test_agent_command_composes_the_sampled_config(
    args: dict[str, Any],
    compose: Callable[..., DictConfig],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
):
    cfg = compose(*_overrides(agent_command(args, monkeypatch, tmp_path)))
    for name, value in args.items():
        if name == "model":
            assert cfg.model._target_ == option_node("model", value)["_target_"]
        else:
            got, want = cfg[name], _expected(value)
            assert (got, type(got)) == (want, type(want)), name


def test_a_log_uniform_draw_stays_a_float(compose, monkeypatch, tmp_path):
    args = {**_samples(SWEEP["parameters"])[0], "lr": 0.00031622776601683794}
    cfg = compose(*_overrides(agent_command(args, monkeypatch, tmp_path)))
    assert cfg.lr == 0.00031622776601683794


def test_a_python_none_would_reach_hydra_as_the_string_None(compose, monkeypatch, tmp_path):
    """Why the sweep file writes "null": the agent formats None as `group=None`."""
    command = agent_command({"group": None}, monkeypatch, tmp_path)
    assert "group=None" in command
    assert compose(*_overrides(command)).group == "None"


def test_each_wandb_run_gets_its_own_run_directory(monkeypatch, tmp_path):
    overrides = _overrides(agent_command({"model": "mlp"}, monkeypatch, tmp_path))
    cfg = compose_command("train", f"paths.log_dir={tmp_path}", *overrides, hydra=True)
    assert cfg.hydra.run.dir == f"{tmp_path}/sweeps/{SWEEP_ID}/{RUN_ID}"


@pytest.mark.slow
def test_agent_command_trains(mnist_idx_root: Path, monkeypatch, tmp_path):
    tiny = {"lr": 1e-3, "latent_dim": 2, "beta": 1.0, "num_samples": 1, "kl_warmup_epochs": 0}
    args = {**tiny, "model": "mlp", "group": "null"}
    assert args.keys() == SWEEP["parameters"].keys()
    command = agent_command(args, monkeypatch, tmp_path)
    log_dir = tmp_path / "outputs"
    command += [
        "trainer=debug",
        "logger=none",
        "batch_size=32",
        "data.download=false",
        f"paths.log_dir={log_dir}",
        f"paths.data_dir={mnist_idx_root}",
    ]
    # `python` in the command is this interpreter, as in an activated environment.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": path, "WANDB_MODE": "offline"}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    run_dir = log_dir / "sweeps" / SWEEP_ID / RUN_ID
    assert (run_dir / "metrics.json").is_file()
    saved = OmegaConf.load(run_dir / "config.yaml")
    mlp = "vaelab.models.architectures.MLPVAE"
    assert (saved.model._target_, saved.latent_dim, saved.lr) == (mlp, 2, 1e-3)
    assert saved.group in (None, f"sweep-{SWEEP_ID}")  # null, or filled in with the sweep's id
