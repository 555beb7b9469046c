"""LitVAE: hyperparameter checks and the KL warm-up schedule in a real training loop."""

import lightning as L
import pytest

from vaelab.datamodule import VAEDataModule
from vaelab.errors import ConfigError
from vaelab.lit_module import LitVAE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "resnet"}, "model.arch"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": 2.5}, "latent_dim"),
        ({"beta": -0.1}, "beta"),
        ({"beta": "4"}, "beta"),
        ({"num_samples": 0}, "num_samples"),
        ({"kl_warmup_epochs": -1}, "kl_warmup_epochs"),
        ({"lr": 0}, "lr"),
        ({"obs_scale": 0}, "obs_scale"),
        ({"n_importance": -1}, "n_importance"),
    ],
)
def test_bad_hyperparameters_are_refused_with_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        LitVAE(**kwargs)
    assert "\n" not in str(info.value)


class RecordBeta(L.Callback):
    def __init__(self):
        self.betas = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.betas.append(pl_module.kl_weight())


def test_kl_warmup_ramps_beta_linearly_then_holds(mnist_idx_root, tmp_path):
    datamodule = VAEDataModule(
        data_dir=str(mnist_idx_root), download=False, allow_fallback=False, batch_size=64
    )
    model = LitVAE(arch="mlp", latent_dim=2, beta=2.0, kl_warmup_epochs=1, n_importance=0)
    record = RecordBeta()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
        callbacks=[record],
    )
    trainer.fit(model, datamodule=datamodule)
    # One epoch of 4 steps: beta * (1/4, 2/4, 3/4, 1), then beta.
    assert record.betas == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0])
    model.eval()
    assert model.kl_weight() == 2.0  # validation and test use the target beta
