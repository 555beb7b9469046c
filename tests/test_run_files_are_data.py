"""A run's files are data: a checkpoint or a config.yaml that names anything but the class
its node builds (a model part, the data module, a callback, a logger) is refused in one
line, without calling what it names, by LitVAE.load_from_checkpoint, vaelab.load_run,
eval.py, sample.py and resume. Each foreign name here would create a marker file if called."""

import shutil
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import cli, run_train
from omegaconf import OmegaConf

import vaelab
from vaelab.config import instantiate
from vaelab.errors import ConfigError
from vaelab.lit_module import LitVAE

PRIOR = "vaelab.models.priors.Prior"
DATAMODULE = "lightning.pytorch.core.datamodule.LightningDataModule"


def foreign(marker: Path, config_file: Path) -> dict[str, dict]:
    """Names a checkpoint could hold, with the arguments that make each touch `marker`."""
    return {
        "os.system": {"command": f"touch {marker}"},
        "builtins.eval": {"source": f"open({str(marker)!r}, 'w')"},
        "subprocess.Popen": {"args": ["touch", str(marker)]},
        "pathlib.Path.touch": {"self": str(marker)},
        "shutil.copyfile": {"src": str(config_file), "dst": str(marker)},  # a plain function
        "vaelab.models.posteriors.GaussianPosterior": {},  # a part, but not a prior
    }


@pytest.fixture
def run_dir(trained_run, tmp_path) -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def best(run_dir: Path) -> Path:
    (path,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    return path


def name_in_checkpoint(path: Path, part: str, node: dict) -> None:
    """Rewrite the checkpoint with `node` as its hyperparameters' `part` (plain values)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"][part] = node
    torch.save(checkpoint, path)


def name_in_config(run_dir: Path, key: str, node: dict) -> None:
    """Rewrite the run's config.yaml with `node` at `key` (dotted)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    *parents, last = key.split(".")
    tree = config
    for parent in parents:
        tree = tree[parent]
    tree[last] = node
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def assert_refused(error: str, target: str, base: str) -> None:
    assert "\n" not in error.strip(), error
    assert f"names {target}, which is not a subclass of {base}" in error, error
    assert "refused without being called" in error, error


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "builtins.eval",
        "subprocess.Popen",
        "pathlib.Path.touch",
        "shutil.copyfile",
        "vaelab.models.posteriors.GaussianPosterior",
    ],
)
def test_a_checkpoint_naming_a_foreign_callable_is_refused_without_calling_it(
    run_dir, tmp_path, target
):
    marker = tmp_path / "marker"
    args = foreign(marker, run_dir / "config.yaml")[target]
    name_in_checkpoint(best(run_dir), "prior", {"_target_": target, **args})
    with pytest.raises(ConfigError) as from_checkpoint:
        LitVAE.load_from_checkpoint(best(run_dir), map_location="cpu")
    assert_refused(str(from_checkpoint.value), target, PRIOR)
    with pytest.raises(ConfigError) as from_run:
        vaelab.load_run(run_dir)
    assert_refused(str(from_run.value), target, PRIOR)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("part", "base"),
    [
        ("posterior", "vaelab.models.posteriors.Posterior"),
        ("objective", "vaelab.models.objectives.Objective"),
    ],
)
def test_every_model_part_of_a_checkpoint_must_subclass_its_base(run_dir, tmp_path, part, base):
    marker = tmp_path / "marker"
    name_in_checkpoint(
        best(run_dir), part, {"_target_": "subprocess.Popen", "args": ["touch", str(marker)]}
    )
    with pytest.raises(ConfigError) as refused:
        vaelab.load_run(run_dir)
    assert_refused(str(refused.value), "subprocess.Popen", base)
    assert not marker.exists()


def test_a_part_from_a_package_that_is_not_installed_is_one_line_naming_it(run_dir):
    name_in_checkpoint(best(run_dir), "prior", {"_target_": "vaelab_contrib.priors.FlowPrior"})
    with pytest.raises(ConfigError) as refused:
        vaelab.load_run(run_dir)
    message = str(refused.value)
    assert "\n" not in message
    assert "vaelab_contrib.priors.FlowPrior, which cannot be imported" in message
    assert "install the package that provides the module vaelab_contrib" in message


def test_the_parts_of_vaelab_and_of_a_users_package_still_load(run_dir, tmp_path, monkeypatch):
    # A user's own prior: a subclass of Prior in a package on the path (issue 22's parts).
    package = tmp_path / "my_parts"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from vaelab.models.priors import StandardPrior\n\n"
        "class MyPrior(StandardPrior):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    name_in_checkpoint(best(run_dir), "prior", {"_target_": "my_parts.MyPrior"})
    vae = vaelab.load_run(run_dir)
    assert type(vae.prior_model).__name__ == "MyPrior"


def test_a_class_named_inside_a_node_is_refused_without_calling_it(run_dir, tmp_path):
    """Hydra would build a `_target_` below the node (a Trainer's strategy, say) first."""
    marker = tmp_path / "marker"
    trainer = yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]
    trainer.pop("compile")
    trainer["strategy"] = {"_target_": "pathlib.Path.touch", "self": str(marker)}
    with pytest.raises(ConfigError) as refused:
        instantiate(OmegaConf.create(trainer), L.Trainer, "trainer")
    message = str(refused.value)
    assert "\n" not in message
    assert "trainer.strategy._target_ names a class inside trainer" in message
    assert not marker.exists()


def cli_error(proc: subprocess.CompletedProcess) -> str:
    """The one error line of a refused command."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("vaelab: error: "), proc.stderr[-3000:]
    return line


@pytest.mark.slow
def test_sample_and_eval_refuse_a_checkpoint_naming_a_foreign_class(run_dir, tmp_path):
    marker = tmp_path / "marker"
    name_in_checkpoint(
        best(run_dir), "prior", {"_target_": "subprocess.Popen", "args": ["touch", str(marker)]}
    )
    for script, args in (
        ("sample.py", [f"run_dir={run_dir}", "n=4"]),
        ("eval.py", [f"run_dir={run_dir}", "n_importance=2", "trainer.limit_test_batches=1"]),
    ):
        line = cli_error(cli(script, *args, cwd=tmp_path / "cwd"))
        assert_refused(line, "subprocess.Popen", PRIOR)
    assert not marker.exists()
    assert not (run_dir / "samples.png").exists()


@pytest.mark.slow
def test_eval_refuses_a_config_whose_data_names_a_foreign_callable(run_dir, tmp_path):
    marker = tmp_path / "marker"
    name_in_config(run_dir, "data", {"_target_": "pathlib.Path.touch", "self": str(marker)})
    line = cli_error(cli("eval.py", f"run_dir={run_dir}", cwd=tmp_path / "cwd"))
    assert_refused(line, "pathlib.Path.touch", DATAMODULE)
    assert not marker.exists()
    with pytest.raises(ConfigError):  # and the API's reader of a run's data
        vaelab.model_batches(run_dir)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("key", "target", "base"),
    [
        ("data", "pathlib.Path.touch", DATAMODULE),
        ("prior", "subprocess.Popen", PRIOR),
        # Hydra's instantiate blocks subprocess.Popen itself, but not every callable.
        ("logger.wandb", "pathlib.Path.touch", "lightning.pytorch.loggers.logger.Logger"),
        (
            "callbacks.pictures",
            "pathlib.Path.touch",
            "lightning.pytorch.callbacks.callback.Callback",
        ),
    ],
)
def test_resume_refuses_a_config_naming_a_foreign_callable(run_dir, tmp_path, key, target, base):
    marker = tmp_path / "marker"
    touch = ["touch", str(marker)]
    args = {"self": str(marker)} if target.startswith("pathlib") else {"args": touch}
    name_in_config(run_dir, key, {"_target_": target, **args})
    proc = run_train(tmp_path, f"resume={run_dir}", timeout=600)
    assert_refused(cli_error(proc), target, base)
    assert not marker.exists()
