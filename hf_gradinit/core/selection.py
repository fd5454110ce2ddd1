"""Which parameter tensors get a scale: read off the model, no name lists."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ScaledTensor:
    """One parameter tensor that gets a scale."""

    name: str
    kind: str  # "weight" (>= 2-D), "gain" (1-D, e.g. a LayerNorm weight) or "bias"
    aliases: tuple[str, ...] = ()  # other names of the same (tied) tensor
    numel: int = 0


def tensor_kind(name: str, param: torch.Tensor) -> str:
    """'bias' (by its name), 'weight' (>= 2-D) or 'gain' (other 1-D tensors)."""
    leaf = name.rsplit(".", 1)[-1]
    if "bias" in leaf:
        return "bias"
    return "weight" if param.dim() >= 2 else "gain"


def names_by_tensor(model: nn.Module) -> dict[int, list[str]]:
    """Every name of each parameter (tied tensors have several), by tensor identity."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def find_scaled_tensors(model: nn.Module, fixed_embeddings: bool = False) -> list[ScaledTensor]:
    """Every trainable tensor that a scale can move: trainable and non-zero.

    No module or name list: any architecture works. Tied tensors appear once (under the
    name ``named_parameters()`` gives them) with their other names as aliases. Left out:
    zero tensors (most biases at init; a scale cannot move them), tensors the model does not
    save (``_keys_to_ignore_on_save``, e.g. Marian's sinusoidal positions: a scale on them
    would be lost on reload) and, with ``fixed_embeddings``, every ``nn.Embedding`` weight.
    """
    unsaved = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_save", None) or []]
    tables = (
        {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        if fixed_embeddings
        else set()
    )
    aliases = names_by_tensor(model)
    found = []
    for name, p in model.named_parameters():
        if not p.requires_grad or p.is_meta or id(p) in tables:
            continue
        if any(u.search(name) for u in unsaved):
            continue
        with torch.no_grad():
            if not torch.any(p != 0):
                continue
        others = tuple(n for n in aliases[id(p)] if n != name)
        found.append(ScaledTensor(name, tensor_kind(name, p), others, p.numel()))
    return found


def find_tied_input_output(model: nn.Module) -> list[list[str]]:
    """Tensors that are the output projection AND the input embedding of several modules.

    A parameter with several names, one of them the weight of
    ``model.get_output_embeddings()`` (else of an ``nn.Linear``) and at least two the weights
    of ``nn.Embedding`` modules: one matrix for the encoder input, the decoder input and the
    output (HF Marian's and BART's defaults, tied T5). One scale for those uses stalled
    training on toy tasks (docs/results.md), hence ``fixed_embeddings``. A tensor tied only
    between one stack's input and the output (GPT-2, the reference's fairseq layout) is not
    listed. Each entry holds all names of one tensor, the ``named_parameters()`` name first.
    """
    get_out = getattr(model, "get_output_embeddings", None)
    try:
        out = get_out() if callable(get_out) else None
    except Exception:  # noqa: BLE001 - models without output embeddings may raise
        out = None
    found = []
    for group in names_by_tensor(model).values():
        if len(group) < 2:
            continue
        owners = [model.get_submodule(n.rpartition(".")[0]) for n in group]
        inputs = sum(isinstance(m, nn.Embedding) for m in owners)
        if out is not None:
            outputs = sum(m is out for m in owners)
        else:
            outputs = sum(isinstance(m, nn.Linear) for m in owners)
        if inputs >= 2 and outputs >= 1:
            found.append(group)
    return found
