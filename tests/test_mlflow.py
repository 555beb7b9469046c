"""logger=mlflow for real: a 2-job sweep in a local SQLite store, read back with MLflow's
own client, resumed into the same run, and an `mlflow server` on 127.0.0.1 asked over HTTP."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import compose_command, free_port, tiny, train_in

RUN = tiny("logger=mlflow", "n_importance=4", "~local")
MLP = "vaelab.models.architectures.MLPVAE"  # model=mlp


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """One multirun of two jobs (latent_dim=2,3) logged to MLflow: the outputs folder."""
    return train_in(tmp_path_factory.mktemp("mlflow"), "-m", *RUN,
                    "latent_dim=2,3")  # fmt: skip


def _runs(outputs: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{outputs / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["vaelab"], order_by=["params.latent_dim"])


@pytest.mark.slow
def test_a_sweep_is_a_parent_run_with_a_child_per_job_holding_params_metrics_pictures(sweep):
    from mlflow.tracking import MlflowClient

    runs = _runs(sweep)
    (sweep_dir,) = (sweep / "multiruns").iterdir()
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and len(children) == 2
    assert parents["tags.mlflow.runName"].item() == sweep_dir.name
    assert set(children["tags.mlflow.parentRunId"]) == {parents["run_id"].item()}
    assert children["params.latent_dim"].tolist() == ["2", "3"]
    assert set(children["params.model/_target_"]) == {MLP}
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")
    for job, run_id in zip(("0", "1"), children["run_id"], strict=True):
        run_dir = sweep_dir / job
        metrics = json.loads((run_dir / "metrics.json").read_text())
        logged = client.get_run(run_id).data.metrics
        assert logged["test/nll_iwae"] == pytest.approx(metrics["test/nll_iwae"], rel=1e-6)
        assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run_id
        # The epoch's validation, then the best checkpoint's after fit.
        assert len(client.get_metric_history(run_id, "val/elbo")) == 2
        pictures = {a.path for a in client.list_artifacts(run_id, "pictures/test")}
        assert {"pictures/test/samples.png", "pictures/test/latent_scatter.png"} <= pictures


@pytest.mark.slow
def test_a_resumed_run_logs_on_into_its_mlflow_run(sweep):
    (sweep_dir,) = (sweep / "multiruns").iterdir()
    run_dir = sweep_dir / "0"
    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")
    before = client.get_metric_history(run_id, "val/elbo")
    train_in(sweep.parent, f"resume={run_dir}", "max_epochs=2")
    assert len(_runs(sweep)) == 3  # no new run
    after = client.get_metric_history(run_id, "val/elbo")
    # The second epoch's validation and the final one, logged on into the same run.
    assert len(after) == len(before) + 2
    assert max(m.step for m in after) > max(m.step for m in before)


@pytest.mark.slow
def test_an_mlflow_server_on_the_store_returns_the_sweeps_runs(sweep):
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    store = f"sqlite:///{sweep / 'mlflow.db'}"
    server = subprocess.Popen(
        [
            *(str(mlflow), "server", "--backend-store-uri", store, "--host", "127.0.0.1"),
            *("--port", str(port), "--workers", "1"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline, found = time.monotonic() + 180, None
        while time.monotonic() < deadline and found is None:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(
                    f"{url}/experiments/get-by-name?experiment_name=vaelab", timeout=5
                ) as r:
                    experiment = json.loads(r.read())["experiment"]["experiment_id"]
                request = urllib.request.Request(
                    f"{url}/runs/search",
                    data=json.dumps({"experiment_ids": [experiment]}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=5) as r:
                    found = json.loads(r.read())["runs"]
            except OSError:
                time.sleep(0.5)
        assert found is not None and len(found) == 3
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its workers too
        server.wait(timeout=30)


@pytest.mark.slow
def test_an_evaluation_is_logged_into_the_training_runs_mlflow_run(sweep):
    from mlflow.tracking import MlflowClient

    from vaelab.runs import Run
    from vaelab.tasks import evaluate

    (sweep_dir,) = (sweep / "multiruns").iterdir()
    run_dir = sweep_dir / "1"  # job 0 is resumed by another test
    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    metrics = evaluate.run(compose_command("eval", f"run_dir={run_dir}", "n_importance=3"))
    (record,) = Run(run_dir).evaluations()
    assert record["dashboards"] == ["mlflow"]
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")
    logged = client.get_run(run_id).data.metrics
    assert logged["eval_k3/test/nll_iwae"] == pytest.approx(metrics["test/nll_iwae"], rel=1e-6)
    assert logged["test/nll_iwae"] != logged["eval_k3/test/nll_iwae"]  # training's K = 4 kept
    assert len(_runs(sweep)) == 3  # no run of its own: the parent and the two jobs
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_compare_gives_each_rows_mlflow_run_and_store(sweep, tmp_path):
    import csv

    from vaelab.tasks import compare

    (sweep_dir,) = (sweep / "multiruns").iterdir()
    compare.run([sweep_dir], out_dir=tmp_path / "out")
    with (tmp_path / "out" / "compare.csv").open() as f:
        rows = {row["latent_dim"]: row for row in csv.DictReader(f)}
    store = f"sqlite:///{sweep / 'mlflow.db'}"
    for job, latent_dim in (("0", "2"), ("1", "3")):
        run_id = json.loads((sweep_dir / job / "mlflow.json").read_text())["run_id"]
        assert rows[latent_dim]["mlflow"] == f"{run_id} in {store}"


@pytest.mark.slow
def test_a_first_run_on_a_new_store_in_a_new_folder_keeps_vaelabs_log_lines(train_cli, tmp_path):
    """The store's folder is made (SQLite cannot open a file in a missing folder), and its
    first migration, which reconfigures Python's logging, leaves vaelab's lines in place."""
    logs = tmp_path / "fresh" / "nested" / "logs"
    run_dir = tmp_path / "run"  # outside paths.log_dir, which nothing else makes
    result = train_cli(*RUN, f"paths.log_dir={logs}", f"hydra.run.dir={run_dir}")
    assert len(_runs(logs)) == 1
    train_log = (run_dir / "train.log").read_text()
    for line in ("Model: MLPVAE", "Data: mnist", "Final metrics (nats per image"):
        assert line in result.stdout, result.output[-3000:]
        assert line in train_log, train_log[-3000:]
    assert "alembic" not in result.output + train_log  # nor the migration's own lines
