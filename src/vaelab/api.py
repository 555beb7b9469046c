"""The public Python API: a trained run's model and data, without Hydra.

    vae = vaelab.load_run(run_dir)
    for x, y in vaelab.model_batches(run_dir, "test"):  # float32, binarized as in training
        log_px, ess = vaelab.estimators.iw_log_likelihood(vae, x, 5000)

The VAE's methods and the estimators check that x is such a batch (`VAE.check_data`):
the raw uint8 images of the datamodule's dataloaders are refused with a clear error.
The functions live in `vaelab.loading`, which vaelab's own tasks import; `load_runs` (runs
as pandas DataFrames) in `vaelab.frames`.
"""

from vaelab.frames import load_runs
from vaelab.loading import load_run, model_batches, run_datamodule

__all__ = ["load_run", "load_runs", "model_batches", "run_datamodule"]
