"""The `trainer` node's schema: a copy of Lightning's Trainer arguments (with Lightning's
defaults; tests/test_schema.py compares them with the Trainer's signature), and the part of
it that `vaelab eval` takes. Imports no Lightning."""

import dataclasses
from dataclasses import dataclass
from typing import Any

from vaelab.config.rules import BOOLEAN, Rule, is_int, knob

STEPS_PER_CALL = Rule("a positive integer or auto", lambda v: v == "auto" or (is_int(v) and v > 0))


@dataclass
class TrainerConfig:
    """The `trainer` node: every argument of Lightning's `Trainer` that a YAML file can give,
    with Lightning's own default (tests/test_schema.py compares both with the Trainer's
    signature), and vaelab's `compile` and `steps_per_call`. conf/trainer/default.yaml sets
    vaelab's choices.

    Left out: logger, callbacks and plugins, which vaelab builds itself (conf/logger/,
    conf/callbacks/). Types are what OmegaConf can check; `Any` where Lightning also takes
    a list or a dict. Lightning checks the values.
    """

    _target_: str = "lightning.pytorch.Trainer"
    # torch.compile the encoder and decoder: vaelab's, not Lightning's
    compile: bool = knob(BOOLEAN, False)
    # training steps run by one call of Lightning's loop (`LitVAE.steps_per_call`): vaelab's
    steps_per_call: Any = knob(STEPS_PER_CALL, "auto")
    accelerator: str = "auto"
    strategy: str = "auto"
    devices: Any = "auto"  # int, list of ints, or str
    num_nodes: int = 1
    precision: int | str | None = None
    fast_dev_run: bool | int = False
    max_epochs: int | None = None
    min_epochs: int | None = None
    max_steps: int = -1
    min_steps: int | None = None
    max_time: Any = None  # "DD:HH:MM:SS", or a dict of timedelta's arguments
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None
    limit_predict_batches: int | float | None = None
    overfit_batches: int | float = 0.0
    val_check_interval: Any = None  # int, float, or a time as max_time
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int | None = None
    log_every_n_steps: int | None = None
    enable_checkpointing: bool | None = None
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: int | float | None = None
    gradient_clip_algorithm: str | None = None
    deterministic: bool | str | None = None  # true, false, or "warn"
    benchmark: bool | None = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: str | None = None
    detect_anomaly: bool = False
    barebones: bool = False
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    default_root_dir: str | None = None
    enable_autolog_hparams: bool = True
    model_registry: str | None = None


# The `trainer` node of `vaelab eval`: the arguments of a test (its batches, devices,
# precision, output), typed and defaulted as above.
EVAL_TRAINER_KEYS = (
    "_target_",
    "compile",
    "accelerator",
    "devices",
    "precision",
    "limit_test_batches",
    "enable_checkpointing",
    "enable_progress_bar",
    "enable_model_summary",
    "inference_mode",
    "deterministic",
    "benchmark",
    "profiler",
)
EvalTrainerConfig = dataclasses.make_dataclass(
    "EvalTrainerConfig",
    [
        (f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata))
        for f in dataclasses.fields(TrainerConfig)
        if f.name in EVAL_TRAINER_KEYS
    ],
)
EvalTrainerConfig.__module__ = __name__  # found by name when a pickled config is loaded (joblib)
