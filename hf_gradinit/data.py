"""From a dataset to GradInit's batches: a DataLoader, and collators that keep label
padding out of the loss for every model family.

``DataCollatorForSeq2Seq(tokenizer, model=model)`` pads labels with -100 (ignored by the
loss), then builds ``decoder_input_ids`` with ``model.prepare_decoder_input_ids_from_labels``.
FSMT's version rewrites the labels in place (-100 -> the pad id), so padding is scored as a
target token, in GradInit and in training. :func:`label_safe_collator` gives that collator
the model's own shift on a copy of the labels; every loader that feeds GradInit uses it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .config import GradInitError
from .core.batches import LABEL_NAMES


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


def forward_arg_names(model: nn.Module) -> set[str] | None:
    """Named arguments of forward (as the Trainer keeps them); None: keep every column."""
    params = inspect.signature(model.forward).parameters
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named | set(LABEL_NAMES) if named else None


def make_dataloader(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 24,
    data_collator: Callable | None = None,
    seed: int = 42,
    num_processes: int = 1,
) -> torch.utils.data.DataLoader:
    """A shuffled DataLoader of whole batches over ``data``.

    ``data``: a ``datasets.Dataset``, a torch ``Dataset`` or an ``IterableDataset`` (read in
    order, its last batch possibly short); a DataLoader is returned unchanged. Columns of a
    ``datasets`` dataset that ``model.forward`` does not take are dropped, as the Trainer
    does. A ``DataCollatorForSeq2Seq`` builds decoder inputs from a copy of the labels
    (:func:`label_safe_collator`). With ``num_processes`` > 1 (each process then gets every
    n-th batch) a dataset smaller than one batch per process gives batches of all it has,
    so that every process gets one.

    Raises:
        GradInitError: an empty dataset, or one that is not a dataset.
    """
    from torch.utils.data import DataLoader, IterableDataset

    if isinstance(data, DataLoader):
        return data
    iterable = isinstance(data, IterableDataset) or (
        hasattr(data, "__iter__") and not hasattr(data, "__getitem__")
    )
    if not iterable and not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        raise GradInitError(
            "`data` must be a datasets.Dataset, a torch Dataset (with __len__ and "
            f"__getitem__), an IterableDataset or a DataLoader; got {type(data).__name__}."
        )
    if batch_size < 1:
        raise GradInitError(f"batch_size must be >= 1, got {batch_size}.")
    column_names = getattr(data, "column_names", None)
    if column_names:
        accepted = forward_arg_names(model)
        if accepted is not None:
            unused = [c for c in column_names if c not in accepted]
            if len(unused) == len(column_names):
                raise GradInitError(
                    f"None of the dataset's columns {column_names} is an argument of the "
                    "model's forward(); tokenize the data first."
                )
            if unused:
                data = data.remove_columns(unused)
    if data_collator is None:
        from transformers import default_data_collator

        data_collator = default_data_collator
    data_collator = label_safe_collator(data_collator)  # no model may rewrite the labels
    if iterable:
        return DataLoader(data, batch_size=batch_size, collate_fn=data_collator)
    if len(data) == 0:
        raise GradInitError("The dataset is empty: GradInit needs examples with labels.")
    per_process = max(1, min(batch_size, len(data) // max(1, num_processes)))
    return DataLoader(
        data,
        batch_size=per_process,
        shuffle=True,
        drop_last=True,
        collate_fn=data_collator,
        generator=torch.Generator().manual_seed(seed),
    )
