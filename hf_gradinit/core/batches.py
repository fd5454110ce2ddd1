"""Batches: their size, the split into the sub-batches S and S~, and moving them.

A batch is a mapping of per-example tensors (the batch in the first dimension) and
anything else a collator or a trainer puts there: scalars, per-batch tensors, strings,
nested mappings. Only per-example entries are split; everything else goes to both halves.
A padding-free batch (every sequence packed into one row) is split over its sequences.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from ..config import GradInitError

# Keys whose first dimension is the batch, looked at first (a per-batch tensor such as a
# (1, L) position_ids must not decide the batch size).
# The keys a batch's labels go by in transformers' models (QA models: the answer span).
LABEL_NAMES = ("labels", "label", "label_ids", "start_positions", "end_positions")
_BATCH_KEYS = ("labels", "input_ids", "pixel_values", "input_values", "inputs_embeds")


class UnsplittableBatch(GradInitError):
    """A batch too small to form the two sub-batches S and S~ (it is skipped)."""


def _leading_sizes(batch: Any, out: list[int]) -> list[int]:
    if isinstance(batch, Mapping):
        for v in batch.values():
            _leading_sizes(v, out)
    elif isinstance(batch, torch.Tensor) and batch.dim() > 0:
        out.append(batch.shape[0])
    return out


def batch_size(batch: Any) -> int:
    """Examples in ``batch``: the first dimension of its labels or inputs, else the most
    common first dimension of its tensors (ties: the largest)."""
    if not isinstance(batch, Mapping):
        raise GradInitError(
            "GradInit needs batches that are dicts of tensors with the batch in the first "
            f"dimension (got {type(batch).__name__})."
        )
    if not batch:
        raise GradInitError(
            "A batch is empty (a dict with no keys): the data collator produced nothing. Were "
            "all columns removed (`remove_unused_columns`, or columns the model's forward() "
            "does not take)? Tokenize the data so that it has the model's inputs and labels."
        )
    for key in _BATCH_KEYS:
        value = batch.get(key)
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    sizes = _leading_sizes(batch, [])
    if not sizes:
        lists = [len(v) for v in batch.values() if isinstance(v, (list, tuple))]
        if lists:
            return max(lists)
        raise GradInitError(
            f"A batch has no tensor with a batch dimension (keys {sorted(batch)}); GradInit "
            "needs the model's inputs as tensors."
        )
    return max(set(sizes), key=lambda s: (sizes.count(s), s))


def select(batch: Any, index: torch.Tensor, n: int) -> Any:
    """The examples ``index`` of a batch of ``n``: per-example tensors and lists are indexed,
    nested mappings followed, everything else kept as it is."""
    if isinstance(batch, Mapping):
        return {k: select(v, index, n) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor) and batch.dim() > 0 and batch.shape[0] == n:
        return batch.index_select(0, index.to(batch.device))
    if isinstance(batch, (list, tuple)) and len(batch) == n:
        return type(batch)(batch[i] for i in index.tolist())
    return batch


def packed_spans(batch: Mapping[str, Any]) -> list[tuple[int, int]] | None:
    """The token spans of the sequences packed into a one-row batch, or None.

    Padding-free batches (transformers' ``DataCollatorWithFlattening``, trl's ``packing``)
    put every sequence into one row of shape (1, L); their ``position_ids`` restart at 0
    where a sequence starts.
    """
    position_ids = batch.get("position_ids")
    if not (isinstance(position_ids, torch.Tensor) and position_ids.dim() == 2):
        return None
    if position_ids.shape[0] != 1:
        return None
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if len(starts) < 2 or starts[0] != 0:
        return None
    return list(zip(starts, [*starts[1:], position_ids.shape[1]]))


def _select_packed(batch: Mapping[str, Any], spans: list[tuple[int, int]]) -> dict[str, Any]:
    """The sequences ``spans`` of a packed batch, packed again: (1, L) tensors keep their
    tokens, the boundaries (``cu_seq_lens_*``, ``max_length_*``, ``seq_idx``) are rebuilt."""
    length = batch["position_ids"].shape[1]
    device = batch["position_ids"].device
    tokens = torch.cat([torch.arange(a, b, device=device) for a, b in spans])
    lengths = torch.tensor([b - a for a, b in spans], device=device)
    out = {}
    for key, value in batch.items():
        if key.startswith("cu_seq_lens") and isinstance(value, torch.Tensor):
            out[key] = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(value.dtype)
        elif key.startswith("max_length_"):
            out[key] = int(lengths.max())
        elif key == "seq_idx" and isinstance(value, torch.Tensor):
            index = torch.arange(len(spans), device=device).repeat_interleave(lengths)
            out[key] = index.to(value.dtype).unsqueeze(0)
        elif (
            isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == (1, length)
        ):
            out[key] = value.index_select(1, tokens)
        else:
            out[key] = value
    return out


def split_batch(
    batch: Mapping[str, Any], overlap: float, generator: torch.Generator | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Shuffle a batch and cut it into two sub-batches S and S~ that share ``overlap`` of S.

    With B examples, |S| = |S~| = n = round(B / (2 - overlap)) and they share 2n - B
    examples: overlap 0.5 gives thirds (S = parts 1+2, S~ = parts 2+3), as the reference.
    The shuffle keeps S from being biased to long sentences in a length-sorted batch.

    A packed (padding-free) batch of one row is split the same way over its sequences.

    Raises:
        UnsplittableBatch: a batch of one example (or one packed sequence) with
            ``overlap < 1``.
    """
    b = batch_size(batch)
    spans = packed_spans(batch) if b == 1 else None
    count = b if spans is None else len(spans)  # examples, or packed sequences
    if count < 2 and overlap < 1:
        raise UnsplittableBatch(
            f"A batch of {b} example(s) cannot be split into two sub-batches S and S~."
        )
    n = min(count, max(1, round(count / (2 - overlap))))
    perm = torch.randperm(count, generator=generator)
    halves = perm[:n], perm[count - n :]
    if spans is None:
        return select(batch, halves[0], b), select(batch, halves[1], b)
    s, t = ([spans[i] for i in sorted(half.tolist())] for half in halves)
    return _select_packed(batch, s), _select_packed(batch, t)


def to_device(batch: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """The batch on ``device`` (mappings, lists and tuples followed), its floating-point
    tensors in ``dtype``: half-precision inputs must not meet fp32 copies of the weights."""
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, dtype) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, dtype) for v in batch)
    if isinstance(batch, torch.Tensor):
        if dtype is not None and batch.is_floating_point():
            return batch.to(device, dtype=dtype, non_blocking=True)
        return batch.to(device, non_blocking=True)
    return batch


def cycle(batches: Iterable[Any]) -> Iterator[Any]:
    """``batches`` over and over; an error if a pass gives nothing."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise GradInitError("The data gave no batch: GradInit needs a non-empty dataset.")
