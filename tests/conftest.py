import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose as compose_config
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from vaelab.config import config_dir


def pytest_configure(config: pytest.Config) -> None:
    """`pytest -n N` (README's `-n auto`): the N workers share the cores, and so do the
    processes their tests start, which inherit OMP_NUM_THREADS. Torch processes that each
    take every core slow each other down many times over."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def write_random_idx(raw: Path, n_train: int = 300, n_test: int = 100) -> None:
    """Random 28x28 IDX files (images and labels of a train and a test split) in `raw`, as
    torchvision lays out MNIST and Fashion-MNIST."""
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        # IDX: big-endian magic (0x08 = uint8, then the number of dims), dims, raw bytes.
        header = struct.pack(">IIII", 2051, n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.tobytes()
        )


@pytest.fixture
def mnist_idx_root(tmp_path: Path) -> Path:
    """A data_dir holding small random MNIST IDX files (300 train, 100 test) in torchvision's
    layout, so the real loading code runs without the real dataset."""
    write_random_idx(tmp_path / "MNIST" / "raw")
    return tmp_path


ROOT = Path(__file__).resolve().parents[1]

# The tiny run of the CLI tests: a small MLP, Lightning's few debug batches, no dashboard,
# no test log-likelihood; `tiny(...)` changes some of it.
TINY = ("model=mlp", "trainer=debug", "logger=none", "batch_size=32", "n_importance=0")


def tiny(*overrides: str) -> tuple[str, ...]:
    """TINY with `overrides`, each replacing TINY's value of its key or group: no key is
    given twice, so that run names (the overrides) say each value once."""
    given = {o.split("=", 1)[0] for o in overrides}
    return (*(o for o in TINY if o.split("=", 1)[0] not in given), *overrides)


def options(group: str) -> list[str]:
    """A config group's options: its files (and those in its subfolders: experiment=models/vamp)."""
    folder = config_dir() / group
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))


def option_node(group: str, name: str) -> dict:
    """An option file's node as it is (conf/<group>/<name>.yaml), e.g. a likelihood's."""
    return OmegaConf.to_container(OmegaConf.load(config_dir() / group / f"{name}.yaml"))


def compose_command(command: str, *overrides: str, hydra: bool = False) -> DictConfig:
    """conf/<command>.yaml (train, eval, sample) with overrides, as `python <command>.py
    ...` composes it; with its `hydra` node if `hydra`."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose_config(command, overrides=list(overrides), return_hydra_config=hydra)


@pytest.fixture
def compose(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml with overrides, as `python train.py ...` would, offline."""

    def _compose(*overrides: str) -> DictConfig:
        base = [
            f"paths.output_dir={tmp_path / 'run'}",
            f"paths.data_dir={tmp_path / 'data'}",
            "data.download=false",
        ]
        return compose_command("train", *base, *overrides)

    return _compose


def cli(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `python <script> ...` (eval.py, sample.py) in an empty working directory, W&B
    offline."""
    cwd.mkdir(exist_ok=True)
    command = [sys.executable, str(ROOT / script), *args]
    return subprocess.run(
        command, cwd=cwd, env=_offline_env(), capture_output=True, text=True, timeout=600
    )


def _run_dirs(outputs: Path) -> set[Path]:
    return {p.parent for p in outputs.rglob("config.yaml") if p.parent.name != ".hydra"}


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    tmp_path: Path
    run_dirs: list[Path]  # the run directories this call wrote, one per job

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _train_command(tmp_path: Path, overrides: tuple[str, ...]) -> list[str]:
    """`python train.py ...` with data and outputs in tmp_path."""
    flags = [o for o in overrides if o.startswith("-")]  # e.g. -m goes before overrides
    return [
        sys.executable,
        str(ROOT / "train.py"),
        *flags,
        f"paths.log_dir={tmp_path / 'outputs'}",
        f"paths.data_dir={tmp_path / 'data'}",
        "data.download=false",
        *(o for o in overrides if not o.startswith("-")),
    ]


def _offline_env(env: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment with W&B offline; `env` entries set to None are removed."""
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    return {k: v for k, v in full_env.items() if v is not None}


def start_train(
    tmp_path: Path, overrides: tuple[str, ...], name: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`python train.py ...` in the background, offline (with `env` added to the
    environment); its output in <name>.out and .err."""
    command = _train_command(tmp_path, overrides)
    with (tmp_path / f"{name}.out").open("w") as out, (tmp_path / f"{name}.err").open("w") as err:
        return subprocess.Popen(
            command, cwd=tmp_path, env=_offline_env(env), stdout=out, stderr=err
        )


def wait_for(proc: subprocess.Popen, root: Path, pattern: str, timeout: float = 300) -> list[Path]:
    """The files under `root` matching `pattern`, once the running `proc` writes one."""
    deadline = time.monotonic() + timeout
    while not (found := sorted(root.glob(pattern))):
        assert proc.poll() is None, f"the process ended before it wrote {pattern}"
        assert time.monotonic() < deadline, f"no {pattern} after {timeout} s"
        time.sleep(0.02)
    return found


def job_pid(run_dir: Path) -> int:
    """The pid of the process training `run_dir`, as its status.json records it."""
    return json.loads((run_dir / "status.json").read_text())["pid"]


@pytest.fixture
def train_cli(tmp_path: Path) -> Callable[..., CliResult]:
    """Run `python train.py ...` in a subprocess, offline, with data and outputs in tmp_path.

    `env` entries set to None are removed from the environment.
    """

    def _run(*overrides: str, env: dict[str, str | None] | None = None, check: bool = True):
        before = _run_dirs(tmp_path / "outputs")
        proc = run_train(tmp_path, *overrides, env=env)
        new_dirs = sorted(_run_dirs(tmp_path / "outputs") - before)
        result = CliResult(proc.returncode, proc.stdout, proc.stderr, tmp_path, new_dirs)
        if check:
            assert proc.returncode == 0, result.output[-5000:]
        return result

    return _run


def run_train(
    tmp_path: Path, *overrides: str, env: dict[str, str | None] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """`python train.py ...` in tmp_path, offline, to its end: the finished process, its
    output captured (`env` entries set to None are removed from the environment)."""
    return subprocess.run(
        _train_command(tmp_path, overrides),
        cwd=tmp_path,
        env=_offline_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_in(tmp_path: Path, *overrides: str) -> Path:
    """Run `python train.py ...` in tmp_path, offline, for a fixture; asserts it succeeded
    and returns its outputs folder (tmp_path/outputs)."""
    proc = run_train(tmp_path, *overrides)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return tmp_path / "outputs"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a server a test starts."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def old_form(config_file: Path) -> None:
    """Rewrite a run's config.yaml as a vaelab before issue 22 wrote it: `beta_schedule:
    {kind: ...}` for its `_target_`, `model.arch` (and `top_dim`) for the model's
    `_target_`, the datamodule at `vaelab.datamodule`, neither `data.source_class` nor
    `data.source_args`, and (before issue 23) no `trainer.steps_per_call`."""
    config = yaml.safe_load(config_file.read_text())
    arch = config["model"].pop("_target_").rsplit(".", 1)[-1]
    archs = {"MLPVAE": "mlp", "ConvVAE": "conv", "HierarchicalVAE": "hvae"}
    config["model"] = {"arch": archs[arch], "top_dim": None, **config["model"]}
    kind = config["beta_schedule"].pop("_target_").rsplit(".", 1)[-1]
    kinds = {"LinearWarmup": "linear", "Constant": "constant", "Cyclical": "cyclical"}
    config["beta_schedule"] = {"kind": kinds[kind], **config["beta_schedule"]}
    config["data"]["_target_"] = "vaelab.datamodule.VAEDataModule"
    for key in ("source_class", "source_args"):
        config["data"].pop(key, None)
    config["trainer"].pop("steps_per_call")
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of one tiny `python train.py` run (MLP, 2-D latent, W&B offline, no
    test log-likelihood), shared by the tests that read runs. Copy it before writing into it."""
    tmp_path = tmp_path_factory.mktemp("trained")
    overrides = ("model=mlp", "latent_dim=2", "trainer=debug", "batch_size=32", "n_importance=0")
    (run_dir,) = _run_dirs(train_in(tmp_path, *overrides))
    return run_dir
