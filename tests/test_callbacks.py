"""VAEPictures: which pictures are drawn when, their geometry, and their logging to W&B;
early stopping after the KL warm-up, through the real command and resume."""

import json
from pathlib import Path

import pytest
import torch
import wandb
import wandb_files
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from tiny import tiny_trainer
from torch import Tensor, nn

from vaelab.callbacks import VAEPictures
from vaelab.data.datamodule import VAEDataModule
from vaelab.lit_module import LitVAE
from vaelab.models import VAE
from vaelab.plots import PADDING
from vaelab.runs import Run

SMALL = dict(
    n_images=12, nrow=4, n_interpolations=2, interpolation_steps=3, n_traversal_dims=2,
    traversal_values=5, manifold_size=4, n_scatter=50, png_scale=2,
)  # fmt: skip


class RecordingPictures(VAEPictures):
    """Records (stage, epoch, global step) of every drawing."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    def draw(self, trainer, pl_module, stage):
        self.calls.append((stage, trainer.current_epoch, trainer.global_step))
        return super().draw(trainer, pl_module, stage)


def fit_and_test(tmp_path, data_dir, callback, latent_dim=2, max_epochs=2, logger=False):
    trainer = tiny_trainer(
        tmp_path,
        max_epochs=max_epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[callback],
    )
    datamodule = VAEDataModule(
        data_dir=str(data_dir),
        download=False,
        allow_fallback=False,
        batch_size=32,
        eval_batch_size=64,
    )
    model = LitVAE(arch="mlp", latent_dim=latent_dim, hidden_dim=32)
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule)
    return trainer


def grid_size(rows: int, cols: int, scale: int = 2, tile: int = 28) -> tuple[int, int]:
    """PIL (width, height) of a make_grid grid of 28-px tiles, upscaled by `scale`."""
    return tuple(scale * (n * (tile + PADDING) + PADDING) for n in (cols, rows))


@pytest.mark.parametrize("latent_dim", [2, 4])
def test_fit_and_test_write_every_picture_with_its_grid_geometry(
    tmp_path, mnist_idx_root, latent_dim
):
    callback = RecordingPictures(every_n_epochs=1, **SMALL)
    fit_and_test(tmp_path / "run", mnist_idx_root, callback, latent_dim)

    # Not during the sanity check (epoch 0, step 0); after each epoch's validation; once in test.
    assert callback.calls == [("val", 0, 2), ("val", 1, 4), ("test", 2, 4)]
    expected = {
        # 12 inputs in rows of 4, each row followed by its reconstructions.
        "reconstructions": grid_size(rows=2 * 3, cols=4),
        "samples": grid_size(rows=3, cols=4),
        "interpolations": grid_size(rows=2, cols=3),
        "traversals": grid_size(rows=2, cols=5),
        "latent_scatter": (660, 540),  # 5.5 x 4.5 inches at 120 dpi
    }
    if latent_dim == 2:
        expected["manifold"] = grid_size(rows=4, cols=4)
    pictures = tmp_path / "run" / "pictures"
    assert sorted(p.name for p in pictures.iterdir()) == ["epoch_000", "epoch_001", "test"]
    for folder in ("epoch_000", "epoch_001", "test"):
        files = {p.stem: p for p in (pictures / folder).glob("*.png")}
        assert files.keys() == expected.keys(), folder
        for name, path in files.items():
            with Image.open(path) as image:
                image.load()
                assert image.size == expected[name], (folder, name)


def test_schedule_draws_every_n_epochs_and_the_last(tmp_path, mnist_idx_root):
    callback = RecordingPictures(every_n_epochs=2, **SMALL)
    fit_and_test(tmp_path / "run", mnist_idx_root, callback, max_epochs=3)
    assert [(stage, epoch) for stage, epoch, _ in callback.calls] == [
        ("val", 1),
        ("val", 2),
        ("test", 3),
    ]
    assert sorted(p.name for p in (tmp_path / "run" / "pictures").iterdir()) == [
        "epoch_001",
        "epoch_002",
        "test",
    ]


def test_samples_are_the_same_at_every_call_and_leave_the_global_rng_alone():
    torch.manual_seed(0)
    vae = LitVAE(arch="mlp", latent_dim=4, hidden_dim=32).vae.eval()
    x, y = torch.rand(20, 1, 28, 28), torch.randint(0, 10, (20,))
    pictures = VAEPictures(seed=3, **SMALL)
    rng_state = torch.get_rng_state()
    first = pictures.make_pictures(vae, x, y)["samples"]
    second = pictures.make_pictures(vae, x, y)["samples"]
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.equal(first, second)
    other_seed = VAEPictures(seed=4, **SMALL).make_pictures(vae, x, y)["samples"]
    assert not torch.equal(first, other_seed)


class FixedEncoder(nn.Module):
    """q(z|x) = N(LOC, diag SCALE^2) for every x; KL per dim = [0, 0.125, 0.75, 2] nats."""

    LOC = torch.tensor([0.0, 0.5, 0.0, 2.0])
    SCALE = torch.tensor([1.0, 1.0, 0.3, 1.0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.LOC.expand(x.shape[0], -1), self.SCALE.expand(x.shape[0], -1)


class DimPerColumnDecoder(nn.Module):
    """4x4 images whose top row shows sigmoid(z_d) in column d; the rest is black."""

    def forward(self, z: Tensor) -> Tensor:
        image = torch.zeros(z.shape[0], 1, 4, 4)
        image[:, 0, 0, :] = torch.sigmoid(z)
        return image


def offset(index: int, tile: int = 4) -> int:
    """Pixel offset of the index-th tile of a make_grid grid, along either axis."""
    return PADDING + index * (tile + PADDING)


def test_traversals_vary_the_dims_with_the_largest_kl_around_the_posterior_mean():
    vae = VAE(FixedEncoder(), DimPerColumnDecoder(), latent_dim=4, likelihood="gaussian")
    callback = VAEPictures(**{**SMALL, "n_traversal_dims": 3, "traversal_values": 5})
    grid = callback.make_pictures(vae, torch.rand(6, 1, 4, 4), torch.arange(6))["traversals"]

    # The top pixel row of each of the 3 x 5 tiles: (3 rows, 5 values, 4 latent dims).
    tops = torch.stack(
        [
            torch.stack([grid[0, offset(r), offset(c) : offset(c) + 4] for c in range(5)])
            for r in range(3)
        ]
    )
    varied = [int(row.std(0).argmax()) for row in tops]
    assert varied == [3, 2, 1]  # by KL: 2, 0.75, 0.125 nats; dim 0 (0 nats) is left out
    values = torch.sigmoid(torch.linspace(-3, 3, 5))
    for row, dim in zip(tops, varied, strict=True):
        expected = torch.sigmoid(FixedEncoder.LOC).expand(5, -1).clone()
        expected[:, dim] = values
        torch.testing.assert_close(row, expected)


def test_images_are_logged_to_wandb_as_media_files(tmp_path, mnist_idx_root, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path), project="vaelab-test")
    try:
        fit_and_test(
            tmp_path / "run",
            mnist_idx_root,
            VAEPictures(every_n_epochs=1, **SMALL),
            max_epochs=1,
            logger=logger,
        )
    finally:
        wandb.finish()
        # wandb's service writes the run file behind `finish` (seen: a file with no history
        # yet under load); its teardown waits for the service to exit, the file closed.
        wandb.teardown()

    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    history = wandb_files.history(wandb_files.read_records(next(run_dir.glob("run-*.wandb"))))
    pictures = tmp_path / "run" / "pictures"
    # A list of images is stored as {key}/_type = "images/separated", {key}/filenames, ...
    for key, png in (
        ("val/pictures/samples", pictures / "epoch_000" / "samples.png"),
        ("val/pictures/latent_scatter", pictures / "epoch_000" / "latent_scatter.png"),
        ("test/pictures/manifold", pictures / "test" / "manifold.png"),
    ):
        assert png.is_file(), f"the callback did not draw {png}"
        steps = [step for step in history if f"{key}/_type" in step]
        logged = sorted({k.split("/_type")[0] for step in history for k in step if "/_type" in k})
        assert len(steps) == 1, f"{key} in {len(steps)} of {len(history)} steps; media: {logged}"
        (step,) = steps
        assert json.loads(step[f"{key}/_type"]) == "images/separated"
        assert json.loads(step["trainer/global_step"]) == 2
        (filename,) = json.loads(step[f"{key}/filenames"])
        media = run_dir / "files" / filename
        assert media.parent == run_dir / "files" / "media" / "images" / Path(key).parent
        assert media.read_bytes() == png.read_bytes()  # the very PNG written to the run dir


# --- early stopping ---------------------------------------------------------------------

# A few batches an epoch; an improvement must exceed 1e9 nats, so after the first checked
# epoch (which beats the start, -inf) none does: the run stops `patience` epochs later.
NEVER_BETTER = (
    "model=mlp", "latent_dim=2", "trainer=debug", "logger=none", "n_importance=0",
    "callbacks.pictures.every_n_epochs=100", "callbacks.early_stopping.min_delta=1e9",
)  # fmt: skip


def epochs_run(run_dir: Path) -> list[int]:
    return [row["epoch"] for row in Run(run_dir).history()]


@pytest.mark.slow
@pytest.mark.parametrize(("warmup", "patience"), [(0, 1), (2, 1), (0, None)])
def test_early_stopping_waits_out_the_kl_warmup_then_its_patience(train_cli, warmup, patience):
    result = train_cli(
        *NEVER_BETTER,
        f"kl_warmup_epochs={warmup}",
        f"callbacks.early_stopping.patience={'null' if patience is None else patience}",
        "trainer.max_epochs=6",
    )
    (run_dir,) = result.run_dirs
    run = Run(run_dir)
    if patience is None:  # off, the default: every epoch runs
        assert epochs_run(run_dir) == list(range(6))
        assert "Early stopping" not in result.output
        return
    # The warm-up's epochs, the first checked one (the best), then `patience` without better.
    last = warmup + patience
    assert epochs_run(run_dir) == list(range(last + 1))
    assert f"Early stopping after epoch {last}: Monitored metric val/elbo did not" in result.output
    assert run.state == "finished" and "test/elbo" in run.metrics()


@pytest.mark.slow
def test_a_resumed_run_counts_on_from_the_early_stopping_state_of_its_checkpoint(train_cli):
    stopping = (*NEVER_BETTER, "kl_warmup_epochs=1", "callbacks.early_stopping.patience=3")
    # Epoch 0 warms up, epoch 1 is the best, epochs 2 and 3 count 2 of 3: max_epochs ends it.
    (run_dir,) = train_cli(*stopping, "trainer.max_epochs=4").run_dirs
    assert epochs_run(run_dir) == [0, 1, 2, 3]
    (state,) = [
        value
        for key, value in torch.load(run_dir / "checkpoints" / "last.ckpt")["callbacks"].items()
        if key.startswith("WarmupEarlyStopping")
    ]
    assert state["wait_count"] == 2

    # Counting on, epoch 4 is the third without better; from scratch it would be the best.
    result = train_cli(*stopping, "trainer.max_epochs=10", f"resume={run_dir}")
    assert epochs_run(run_dir)[-1] == 4
    assert "Early stopping after epoch 4" in result.output
    assert Run(run_dir).state == "finished"
