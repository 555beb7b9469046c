"""The model parts and their builders: a VAE (a model option's class: its networks) is an
encoder, a decoder, a prior and a posterior, trained by an objective, its KL weighted by a
beta schedule; each part is named by a `_target_` in its config group and built by
`vaelab.models.build`.

The builders are exported here on first use (PEP 562): the torch-free modules of this
package (the capabilities, the beta schedules) are then imported by the config check without torch.
"""

import importlib
from typing import Any

__all__ = [
    "ACTIVATIONS",
    "VAE",
    "build_objective",
    "build_part",
    "build_part_class",
    "build_posterior",
    "build_prior",
    "build_vae",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("vaelab.models.build"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
