"""GradInit (Zhu et al., NeurIPS 2021) for Hugging Face Transformers.

``apply_gradinit(model, dataset)`` learns one positive scale per parameter tensor so that
one step of the real optimizer lowers the loss the most under a gradient-norm bound, then
bakes the scales into the weights. ``GradInitTrainer`` runs it before training.
"""

from .config import GradInitConfig, GradInitError
from .gradinit import (
    GradInitResult,
    apply_gradinit,
    apply_scales,
    compute_gradinit_scales,
    find_scaled_tensors,
    make_dataloader,
    split_batch,
)

__version__ = "0.1.0"

__all__ = [
    "GradInitConfig",
    "GradInitError",
    "GradInitResult",
    "apply_gradinit",
    "apply_scales",
    "compute_gradinit_scales",
    "find_scaled_tensors",
    "make_dataloader",
    "split_batch",
]
from .hub import (  # noqa: E402
    load_gradinit_result,
    make_model_card,
    save_gradinit_result,
    save_initialized_checkpoint,
)
from .trainer import (  # noqa: E402
    GradInitArguments,
    GradInitTrainer,
    GradInitTrainingArguments,
)

__all__ += [
    "GradInitArguments",
    "GradInitTrainer",
    "GradInitTrainingArguments",
    "load_gradinit_result",
    "make_model_card",
    "save_gradinit_result",
    "save_initialized_checkpoint",
]
