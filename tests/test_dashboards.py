"""vaelab.dashboards: a logger's node names its adapter, or a Lightning Logger whose adapter is
looked up (a run made before the adapters, a user's plain logger); a user's own adapter through
the real CLI; a run whose config.yaml names the loggers as before resumes, evaluates and
compares; and no module but dashboards/ tells one logger from another."""

import csv
import os
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, cli, start_train, tiny, train_in
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from vaelab.dashboards import Dashboard, RunCSVLogger
from vaelab.dashboards.base import adapter
from vaelab.dashboards.csv import CSVDashboard
from vaelab.dashboards.tensorboard import TensorBoardDashboard
from vaelab.dashboards.wandb import WandbDashboard
from vaelab.errors import ConfigError
from vaelab.runs import Run
from vaelab.tasks import compare


class _OwnWandbLogger(WandbLogger):
    pass


@pytest.mark.parametrize(
    ("target", "adapter_class", "built"),
    [
        ("vaelab.dashboards.wandb.WandbDashboard", WandbDashboard, WandbLogger),
        # as the config.yaml of a run made before the adapters names its loggers
        ("lightning.pytorch.loggers.WandbLogger", WandbDashboard, WandbLogger),
        ("lightning.pytorch.loggers.TensorBoardLogger", TensorBoardDashboard, TensorBoardLogger),
        ("vaelab.tracking.RunCSVLogger", CSVDashboard, RunCSVLogger),
        # a subclass of a logger with an adapter has that adapter
        (f"{__name__}._OwnWandbLogger", WandbDashboard, _OwnWandbLogger),
        # a plain Lightning logger (a user's): the default adapter, which only builds it
        ("lightning.pytorch.loggers.CSVLogger", Dashboard, CSVLogger),
    ],
)
def test_a_logger_node_gets_the_adapter_it_names_or_that_of_the_logger_it_names(
    target, adapter_class, built
):
    board = adapter("x", {"_target_": target, "save_dir": "somewhere"})
    assert type(board) is adapter_class
    assert board.built_class is built
    assert board.arguments == {"save_dir": "somewhere"}


@pytest.mark.parametrize("target", ["pathlib.Path.touch", "vaelab.runs.Run", "nowhere.Logger"])
def test_a_logger_node_naming_neither_an_adapter_nor_a_logger_is_one_line(target):
    with pytest.raises(ConfigError) as refused:
        adapter("x", {"_target_": target})
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"logger.x._target_ names {target}")
    assert "lightning.pytorch.loggers.logger.Logger" in message


def test_only_the_dashboards_package_tells_one_logger_from_another():
    """No module outside vaelab/dashboards/ names a logger class of Lightning's or vaelab's
    (isinstance, a class-name string, a `_target_` compared) to decide what to do."""
    src = ROOT / "src" / "vaelab"
    names = re.compile(
        r"import .*\b(Wandb|TensorBoard|MLFlow|CSV)Logger\b|isinstance\(.*Logger|Logger[\"']"
        r"|\b(is|_is)_(wandb|mlflow|tensorboard)\b"
    )
    found = [
        f"{path.relative_to(src)}:{n}: {line.strip()}"
        for path in src.rglob("*.py")
        if "dashboards" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if names.search(line)
    ]
    assert found == []


# A user's adapter, from a package of theirs: its logger writes metrics.jsonl; the adapter
# records the file in the run, copies each picture beside it, and gives compare a column.
USER_ADAPTER = """
import json
import shutil
from pathlib import Path

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from vaelab.dashboards import Dashboard


class LinesLogger(Logger):
    def __init__(self, save_dir: str):
        super().__init__()
        self.folder = Path(save_dir)

    @property
    def name(self):
        return "lines"

    @property
    def version(self):
        return ""

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs):
        pass

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\\n")


class LinesDashboard(Dashboard):
    logger_class = LinesLogger
    column = "lines"

    def record(self, run, logger):
        (run.path / "lines.json").write_text(json.dumps({"folder": str(logger.folder)}))

    def log_picture(self, logger, key, picture, path, step):
        logger.folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, logger.folder / f"{key.replace('/', '_')}.png")

    @classmethod
    def locate(cls, runs):
        found = [json.loads((r.path / "lines.json").read_text())["folder"]
                 for r in runs if (r.path / "lines.json").is_file()]
        return " ".join(found) or None
"""


@pytest.mark.slow
def test_a_users_own_adapter_builds_records_takes_pictures_and_has_a_compare_column(
    tmp_path, monkeypatch
):
    package = tmp_path / "userpkg" / "linelab"
    (package / "conf" / "logger").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "conf" / "__init__.py").write_text("")
    (package / "dashboards.py").write_text(textwrap.dedent(USER_ADAPTER))
    (package / "conf" / "logger" / "lines.yaml").write_text(
        "lines:\n  _target_: linelab.dashboards.LinesDashboard\n"
        "  save_dir: ${paths.output_dir}/lines\n"
    )
    paths = [str(tmp_path / "userpkg"), os.environ.get("PYTHONPATH", "")]
    env = {"VAELAB_CONFIG_PATH": "pkg://linelab.conf", "PYTHONPATH": os.pathsep.join(paths)}
    proc = start_train(tmp_path, tiny("logger=lines"), "lines", env)
    assert proc.wait(timeout=600) == 0, (tmp_path / "lines.err").read_text()[-3000:]
    (run_dir,) = run_dirs(tmp_path / "outputs")
    lines = run_dir / "lines"
    assert (lines / "metrics.jsonl").read_text().count("\n") > 0  # built, and given metrics
    assert (run_dir / "lines.json").is_file()  # recorded in the run
    assert (lines / "test_pictures_samples.png").read_bytes() == (
        run_dir / "pictures" / "test" / "samples.png"
    ).read_bytes()
    monkeypatch.syspath_prepend(tmp_path / "userpkg")  # compare, here, imports the adapter
    result = compare.run([run_dir], out_dir=tmp_path / "out")
    header = [cell.strip() for cell in result.markdown.splitlines()[0].split("|")]
    assert header[-3:-1] == ["wandb", "lines"]  # its column after vaelab's own
    with (tmp_path / "out" / "compare.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert row["lines"] == str(lines)


def run_dirs(outputs: Path) -> list[Path]:
    return [p.parent for p in outputs.rglob("config.yaml") if p.parent.name != ".hydra"]


OLD_NAMES = {
    "wandb": "lightning.pytorch.loggers.WandbLogger",
    "tensorboard": "lightning.pytorch.loggers.TensorBoardLogger",
    "csv": "vaelab.tracking.RunCSVLogger",
}


@pytest.mark.slow
def test_a_run_whose_config_names_the_loggers_as_before_resumes_evaluates_and_compares(tmp_path):
    (run_dir,) = run_dirs(train_in(tmp_path, *tiny("logger=[wandb,tensorboard,csv]")))
    config_file = run_dir / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    for key, old in OLD_NAMES.items():  # config.yaml as a run made before the adapters
        config["logger"][key]["_target_"] = old
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    proc = start_train(tmp_path, (f"resume={run_dir}", "trainer.max_epochs=2"), "resumed")
    assert proc.wait(timeout=600) == 0, (tmp_path / "resumed.err").read_text()[-3000:]
    assert Run(run_dir).status()["status"] == "finished"
    assert [row["epoch"] for row in Run(run_dir).history()] == [0, 1]
    with (run_dir / "csv" / "metrics.csv").open() as f:
        epochs = {row["epoch"] for row in csv.DictReader(f)}
    assert {"0", "1"} <= epochs  # RunCSVLogger: epoch 0's rows kept, where Lightning's drops them
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 2  # offline: a new W&B run

    result = cli("eval.py", f"run_dir={run_dir}", "n_importance=2", cwd=tmp_path / "cwd")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (evaluation,) = Run(run_dir).evaluations()
    assert evaluation["dashboards"] == ["tensorboard"]  # into training's TensorBoard run
    assert evaluation["wandb"]["mode"] == "offline"  # and a W&B run of its own
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 3

    out = tmp_path / "out"
    compare.run([run_dir], out_dir=out)
    with (out / "compare.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert row["tensorboard"] == str((run_dir / "tensorboard").resolve())
    assert row["wandb"].startswith("offline: ")
