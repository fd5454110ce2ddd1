"""Collators that keep label padding out of GradInit's loss, for every model family.

``DataCollatorForSeq2Seq(tokenizer, model=model)`` pads labels with -100 (ignored by the
loss), then builds ``decoder_input_ids`` with ``model.prepare_decoder_input_ids_from_labels``.
FSMT's version rewrites the labels in place (-100 -> the pad id), so padding is scored as a
target token, in GradInit and in training. :func:`label_safe_collator` gives that collator
the model's own shift on a copy of the labels; every loader that feeds GradInit uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch


@dataclasses.dataclass
class CopiedLabelsSeq2SeqCollator:
    """A ``DataCollatorForSeq2Seq`` whose decoder inputs come from a copy of the labels.

    Padding is the wrapped collator's own (same tokenizer, label pad id, multiple); only the
    model is held back and called on a copy, so no model can change the labels.
    """

    collator: Any  # a DataCollatorForSeq2Seq with a model

    def __post_init__(self) -> None:
        self._pad = dataclasses.replace(self.collator, model=None)

    @property
    def model(self) -> Any:
        return self.collator.model

    def __call__(self, features: list[dict[str, Any]], return_tensors: str | None = None) -> Any:
        batch = self._pad(features, return_tensors=return_tensors)
        labels = batch.get("labels")
        if labels is not None:
            copy = labels.clone() if isinstance(labels, torch.Tensor) else labels.copy()
            batch["decoder_input_ids"] = self.model.prepare_decoder_input_ids_from_labels(
                labels=copy
            )
        return batch


def label_safe_collator(collator: Callable | None) -> Callable | None:
    """``collator``, or for a ``DataCollatorForSeq2Seq`` that builds decoder inputs with a
    model, the same collator building them from a copy of the labels (see the module
    docstring). Any other collator is returned unchanged."""
    from transformers import DataCollatorForSeq2Seq

    if (
        isinstance(collator, DataCollatorForSeq2Seq)
        and collator.model is not None
        and hasattr(collator.model, "prepare_decoder_input_ids_from_labels")
    ):
        return CopiedLabelsSeq2SeqCollator(collator)
    return collator
