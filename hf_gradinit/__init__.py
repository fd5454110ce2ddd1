"""GradInit (Zhu et al., NeurIPS 2021) for Hugging Face Transformers.

``apply_gradinit(model, dataset)`` learns one positive scale per parameter tensor so that
one step of the real optimizer lowers the loss the most under a gradient-norm bound, checks
that the learned init trains better than the original, then bakes the scales into the
weights. ``GradInitTrainer`` and ``GradInitCallback`` run it before training.

The trainer, callback and Hub parts import transformers; they are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .api import apply_gradinit, compute_gradinit_scales
from .config import GradInitConfig, GradInitError
from .core.batches import split_batch
from .core.selection import find_scaled_tensors
from .data import make_dataloader
from .result import GradInitResult, apply_scales
from .version import __version__

_LAZY = {
    "GradInitArguments": "arguments",
    "GradInitTrainingArguments": "arguments",
    "GradInitCallback": "callbacks",
    "GradInitTrainer": "trainer",
    "load_gradinit_result": "hub",
    "make_model_card": "card",
    "save_gradinit_result": "hub",
    "save_initialized_checkpoint": "hub",
}

__all__ = [
    "GradInitConfig",
    "GradInitError",
    "GradInitResult",
    "__version__",
    "apply_gradinit",
    "apply_scales",
    "compute_gradinit_scales",
    "find_scaled_tensors",
    "make_dataloader",
    "split_batch",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
