"""logger=tensorboard for real: a 2-job sweep's event files read back with TensorBoard's own
reader, and a TensorBoard server on 127.0.0.1 asked over HTTP for the runs."""

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import compose_command, free_port, tiny, train_in

RUN = tiny("logger=tensorboard", "n_importance=4", "~local")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """One multirun of two jobs (latent_dim=2,3) logged to TensorBoard: the sweep folder."""
    outputs = train_in(tmp_path_factory.mktemp("tensorboard"), "-m", *RUN, "latent_dim=2,3")
    (sweep,) = (outputs / "multiruns").iterdir()
    return sweep


def _events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    return events


@pytest.mark.slow
def test_each_job_logs_scalars_pictures_and_its_hyperparameters_with_its_final_metrics(sweep):
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dirs = sorted(p.parent for p in sweep.glob("*/config.yaml"))
    assert len(run_dirs) == 2
    for run_dir, latent_dim in zip(run_dirs, (2, 3), strict=True):
        events = _events(run_dir)
        tags = events.Tags()
        assert {"val/elbo", "train/loss_epoch", "test/nll_iwae"} <= set(tags["scalars"])
        assert {"test/pictures/samples", "test/pictures/reconstructions"} <= set(tags["images"])
        assert "test/pictures/latent_scatter" in tags["images"]  # a Figure, rendered
        # The HParams tab: this job's hyperparameters, and the final metrics it shows.
        content = events.PluginTagToContent("hparams")
        parse = plugin_data_pb2.HParamsPluginData.FromString
        hparams = parse(content["_hparams_/session_start_info"]).session_start_info.hparams
        assert hparams["latent_dim"].number_value == latent_dim
        assert hparams["model/_target_"].string_value == "vaelab.models.architectures.MLPVAE"
        experiment = parse(content["_hparams_/experiment"])
        shown = {info.name.tag for info in experiment.experiment.metric_infos}
        assert {"val/elbo", "test/elbo", "test/nll_iwae", "test/active_units"} <= shown
        metrics = json.loads((run_dir / "metrics.json").read_text())
        (final,) = [e.value for e in events.Scalars("test/nll_iwae") if e.step == 0]
        assert final == pytest.approx(metrics["test/nll_iwae"], rel=1e-6)


@pytest.mark.slow
def test_a_tensorboard_server_on_the_sweep_lists_both_jobs(sweep):
    port = free_port()
    tensorboard = Path(sys.executable).parent / "tensorboard"
    server = subprocess.Popen(
        [str(tensorboard), "--logdir", str(sweep), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline, runs = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as r:
                    runs = json.loads(r.read())
                if len(runs) == 2:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert sorted(runs) == ["0/tensorboard", "1/tensorboard"], runs
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_an_evaluation_is_logged_into_the_training_runs_tensorboard_beside_its_test(sweep):
    from vaelab.runs import Run
    from vaelab.tasks import evaluate

    run_dir = sorted(p.parent for p in sweep.glob("*/config.yaml"))[1]
    metrics = evaluate.run(compose_command("eval", f"run_dir={run_dir}", "n_importance=3"))
    (record,) = Run(run_dir).evaluations()
    assert record["dashboards"] == ["tensorboard"]
    events = _events(run_dir)
    (logged,) = events.Scalars("eval_k3/test/nll_iwae")
    assert logged.value == pytest.approx(metrics["test/nll_iwae"], rel=1e-6)
    assert logged.step == max(row["step"] for row in Run(run_dir).history())
    # training's own test figure (K = 4) is still there, under its own name
    assert "test/nll_iwae" in events.Tags()["scalars"]


@pytest.mark.slow
def test_compare_gives_each_rows_tensorboard_folder(sweep, tmp_path):
    import csv

    from vaelab.tasks import compare

    result = compare.run([sweep], out_dir=tmp_path / "out")
    with (tmp_path / "out" / "compare.csv").open() as f:
        rows = {row["latent_dim"]: row for row in csv.DictReader(f)}
    for job, latent_dim in (("0", "2"), ("1", "3")):
        assert rows[latent_dim]["tensorboard"] == str((sweep / job / "tensorboard").resolve())
        assert "mlflow" not in rows[latent_dim]  # a column only for a dashboard the runs used
    assert result.markdown.splitlines()[0].rstrip(" |").endswith("| tensorboard")
