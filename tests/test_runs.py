"""runs.Run reads and writes a run directory; find_runs finds runs under any path."""

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from vaelab.errors import VaelabError
from vaelab.runs import Run, find_runs


def test_a_run_goes_from_running_to_finished_with_its_metrics(tmp_path):
    run = Run(tmp_path / "run")
    mlp = {"_target_": "vaelab.models.architectures.MLPVAE"}
    run.start({"latent_dim": 2, "model": mlp})
    assert run.state == "running" and run.config()["model"] == mlp
    run.append_history({"epoch": 0, "val/elbo": -200.0})
    run.append_history({"epoch": 1, "val/elbo": math.nan})  # JSON has no NaN: written as null
    run.finish({"val/elbo": -190.5, "test/elbo": math.inf})
    assert run.state == "finished" and run.error is None
    assert [row["epoch"] for row in run.history()] == [0, 1]
    assert math.isnan(run.history()[1]["val/elbo"])
    assert run.metrics()["val/elbo"] == -190.5 and math.isnan(run.metrics()["test/elbo"])
    json.loads((run.path / "metrics.json").read_text())  # strict JSON, no NaN or Infinity


def test_a_failed_run_keeps_its_error_and_a_cut_history_line_is_skipped(tmp_path):
    run = Run(tmp_path / "run")
    run.start({})
    run.append_history({"epoch": 0, "val/elbo": -1.0})
    with (run.path / "history.jsonl").open("a") as f:
        f.write('{"epoch": 1, "val/el')  # the process died mid-line
    run.fail("latent_dim must be a positive integer, got 0")
    assert run.state == "failed" and "latent_dim" in run.error
    assert run.history() == [{"epoch": 0, "val/elbo": -1.0}]


def test_a_run_whose_process_died_is_shown_as_killed(tmp_path):
    run = Run(tmp_path / "run")
    code = f"from vaelab.runs import Run; Run({str(run.path)!r}).start({{}})"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert run.status()["status"] == "running" and run.state == "killed"


def evaluation(ckpt: str, k: int, nll: float, at: str = "2026-01-01T00:00:00+00:00") -> dict:
    return {"test/nll_iwae": nll, "n_importance": k, "ckpt_path": ckpt, "evaluated_at": at}


BEST, LAST = "checkpoints/best-epoch003.ckpt", "checkpoints/last.ckpt"


def test_eval_metrics_update_the_final_metrics_by_the_largest_k_of_the_best_checkpoint(tmp_path):
    run = Run(tmp_path / "run")
    run.start({})
    run.finish({"test/nll_iwae": 100.0, "val/elbo": -110.0, "checkpoint": {"path": BEST}})
    assert run.evaluation() is None and run.metrics()["test/nll_iwae"] == 100.0
    run.add_evaluation(evaluation(LAST, 5000, 90.0))
    assert run.metrics() == {"test/nll_iwae": 90.0, "val/elbo": -110.0}  # the only one
    run.add_evaluation(evaluation(BEST, 5000, 95.0))
    run.add_evaluation(evaluation(BEST, 100, 97.0))
    assert run.metrics() == {"test/nll_iwae": 95.0, "val/elbo": -110.0}
    later = evaluation(LAST, 20, 93.0, at="2026-01-02T00:00:00+00:00")
    run.add_evaluation(later)
    assert run.evaluation()["test/nll_iwae"] == 95.0  # not the newest: the best's largest K
    assert [(e["ckpt_path"], e["n_importance"]) for e in run.evaluations()] == [
        (LAST, 5000),
        (BEST, 5000),
        (BEST, 100),
        (LAST, 20),
    ]


def test_a_smaller_check_is_kept_beside_the_test_and_does_not_replace_its_figure(tmp_path):
    # Training tested 2,048 images with K = 5,000; two K = 100 checks, of all 10,000 test
    # images and of the same 2,048, are both kept, and neither is the figure shown.
    run = Run(tmp_path / "run")
    run.start({"n_importance": 5000})
    run.finish({"test/nll_iwae": 231.26, "checkpoint": {"path": BEST}, "test_images": 2048})
    full, subset = evaluation(BEST, 100, 231.95), evaluation(BEST, 100, 231.55)
    run.add_evaluation({**full, "test_images": 10000})
    run.add_evaluation({**subset, "test_images": 2048})
    assert [e["test/nll_iwae"] for e in run.evaluations()] == [231.95, 231.55]
    assert run.evaluation()["test_images"] == 10000  # the most images, of the evaluations
    assert run.shown_evaluation() is None and run.metrics()["test/nll_iwae"] == 231.26
    run.add_evaluation({**evaluation(BEST, 5000, 231.67), "test_images": 10000})
    assert run.metrics()["test/nll_iwae"] == 231.67  # as thorough in both: it replaces


def test_a_one_record_eval_metrics_file_of_earlier_versions_still_reads(tmp_path):
    run = Run(tmp_path / "run")
    run.start({})
    run.finish({"test/nll_iwae": 100.0, "checkpoint": {"path": BEST}})
    legacy = {**evaluation(BEST, 5000, 95.0), "seed": 0}
    (run.path / "eval_metrics.json").write_text(json.dumps(legacy))
    assert run.evaluations() == [legacy] and run.metrics()["test/nll_iwae"] == 95.0
    run.add_evaluation(evaluation(BEST, 10, 99.0))
    assert run.evaluations() == [legacy, evaluation(BEST, 10, 99.0)]
    assert run.metrics()["test/nll_iwae"] == 95.0


def make_multirun(root: Path, n: int) -> Path:
    sweep = root / "multiruns" / "2026-01-01_00-00-00"
    for i in range(n):
        Run(sweep / str(i)).start({"seed": i})
        (sweep / str(i) / ".hydra").mkdir()
        (sweep / str(i) / ".hydra" / "config.yaml").write_text("seed: 0\n")
    return sweep


def test_find_runs_in_a_multirun_a_parent_or_run_directories(tmp_path):
    sweep = make_multirun(tmp_path, 12)
    runs = find_runs([sweep])
    assert [r.name for r in runs] == [str(i) for i in range(12)]  # 2 before 10; no .hydra
    assert [r.name for r in find_runs([tmp_path])] == [r.name for r in runs]
    assert [r.name for r in find_runs([sweep / "3", sweep / "1", sweep / "3"])] == ["1", "3"]


def test_find_runs_says_what_to_give(tmp_path):
    with pytest.raises(VaelabError, match="does not exist"):
        find_runs([tmp_path / "missing"])
    with pytest.raises(VaelabError, match="no runs under"):
        find_runs([tmp_path])


def _add_evaluations(run_dir: str, ks: range) -> None:
    for k in ks:
        Run(run_dir).add_evaluation({"ckpt_path": "checkpoints/last.ckpt", "n_importance": k})


def test_two_commands_adding_evaluations_at_once_lose_none(tmp_path):
    """Two `eval.py` on one run, as two processes: each read-modify-write holds the lock."""
    import multiprocessing

    Run(tmp_path).start({"latent_dim": 2})
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_add_evaluations, args=(str(tmp_path), range(i, 200, 2)))
        for i in (0, 1)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    ks = sorted(e["n_importance"] for e in Run(tmp_path).evaluations())
    assert ks == list(range(200))
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_the_run_and_sweep_file_names_are_written_only_in_runs_py():
    """One home for the layout: no module but vaelab.runs has a string that is a file name
    of a run or sweep directory (code builds their paths with runs' constants and methods;
    messages and docstrings, which say more than a name, may mention them)."""
    import vaelab
    from vaelab import runs

    names = {
        value
        for key, value in vars(runs).items()
        if key.isupper() and isinstance(value, str) and "." in value and "{" not in value
    }
    assert {"mlflow_parent.json", "multirun.yaml", "compare.csv", "config.yaml"} <= names
    found = [
        f"{path.relative_to(path.parents[1])}: {node.value}"
        for path in Path(vaelab.__file__).parent.rglob("*.py")
        if path.name != "runs.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in names
    ]
    assert found == []
