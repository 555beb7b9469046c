"""A Trainer for tests: on the CPU, nothing written or drawn unless a test asks for it."""

import lightning as L

QUIET = {
    "accelerator": "cpu",
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "use_distributed_sampler": False,  # VAEDataModule shards its batches itself
}


def tiny_trainer(root, **kwargs) -> L.Trainer:
    """`L.Trainer` writing under `root`, with QUIET's settings unless `kwargs` replace them."""
    return L.Trainer(**{**QUIET, "default_root_dir": root, **kwargs})
