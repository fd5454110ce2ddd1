"""What GradInit learned (:class:`GradInitResult`), and applying it to a model."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import GradInitConfig, GradInitError
from .record import SCALES_FILE, check_not_initialized, record_in_config
from .version import __version__

# Prefixes that wrappers put before the wrapped model's parameter names.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile`` (``_orig_mod``) and DDP/DataParallel (``module``)
    wrappers, whose parameter names carry a prefix: scales are named after the model itself."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(
            model, (nn.DataParallel, nn.parallel.DistributedDataParallel)
        ):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _strip_wrapper_prefixes(name: str) -> str:
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


@dataclass
class GradInitResult:
    """What GradInit learned: one scale per tensor name, and how it got there.

    ``probe`` says whether the learned scales were kept: GradInit trains a few steps from
    the learned and from the original init and keeps the original when the learned one is
    not ahead (see :mod:`hf_gradinit.core.probe`); the scales are then all 1.
    """

    scales: dict[str, float]
    config: GradInitConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    gamma_value: float | None = None  # the bound in norm units, once resolved
    runtime_s: float = 0.0
    num_processes: int = 1
    tied: dict[str, dict[str, Any]] = field(default_factory=dict)  # tied input/output tensors
    probe: dict[str, Any] | None = None  # the probe's losses and decision
    unsplittable_batches: int = 0  # batches too small for S and S~, skipped

    @property
    def initial_grad_norm(self) -> float | None:
        return self.history[0]["grad_norm"] if self.history else None

    @property
    def kept(self) -> bool:
        """Whether the learned scales were kept (False: the probe kept the original init)."""
        return self.probe is None or self.probe.get("decision") == "learned"

    def summary(self) -> dict[str, Any]:
        """A small JSON-able summary (for ``config.gradinit``, logs and the model card)."""
        values = list(self.scales.values())
        objective = [h for h in self.history if h["branch"] == "objective"]
        out = {
            "num_scales": len(values),
            "iterations": len(self.history),
            "constraint_iterations": sum(h["branch"] == "constraint" for h in self.history),
            "skipped_iterations": sum(h["branch"] == "skipped" for h in self.history),
            "unsplittable_batches": self.unsplittable_batches,
            "scale_min": min(values) if values else None,
            "scale_max": max(values) if values else None,
            "initial_grad_norm": self.initial_grad_norm,
            "final_grad_norm": self.history[-1]["grad_norm"] if self.history else None,
            "gamma_value": self.gamma_value,
            "first_loss_after_step": objective[0]["loss_after_step"] if objective else None,
            "last_loss_after_step": objective[-1]["loss_after_step"] if objective else None,
            "runtime_s": round(self.runtime_s, 3),
            "num_processes": self.num_processes,
            "tied_input_output": [
                {"names": t["names"], "mode": t["mode"], "scale": t["scale"]}
                for t in self.tied.values()
            ],
        }
        if self.probe is not None:
            out["decision"] = self.probe.get("decision")
            out["decision_reason"] = self.probe.get("reason")
        return out

    def __repr__(self) -> str:
        """One line: how many scales and their range, iterations, runtime, and what was kept
        and why (the history and the probe's curves stay in the fields and ``to_dict()``)."""
        values = list(self.scales.values())
        span = f" in [{min(values):.4g}, {max(values):.4g}]" if values else ""
        its = len(self.history)
        if self.probe is None:
            kept = "kept the learned scales (no probe)"
        else:
            reason = self.probe.get("reason")
            kept = "kept " + ("the learned scales" if self.kept else "the original init")
            kept += f": {reason}" if reason else ""
        return (
            f"GradInitResult({len(values)} scales{span}, {its} iteration{'s' * (its != 1)}, "
            f"{self.runtime_s:.1f} s; {kept})"
        )

    def tied_notes(self) -> list[str]:
        """One sentence per tensor that is both an input embedding and the output
        projection, naming it and saying what GradInit did with it (for logs and cards)."""
        notes = []
        for t in self.tied.values():
            names = " = ".join(f"`{n}`" for n in t["names"])
            what = (
                f"GradInit gave it one scale, {t['scale']:.4g}"
                if t["mode"] == "shared"
                else "GradInit left it at its init (fixed_embeddings: no embedding table gets "
                "a scale)"
            )
            notes.append(f"{names} is both an input embedding and the output projection: {what}.")
        return notes

    def to_dict(self) -> dict[str, Any]:
        return {
            "scales": dict(self.scales),
            "kinds": dict(self.kinds),
            "aliases": {k: list(v) for k, v in self.aliases.items()},
            "config": self.config.to_dict(),
            "summary": self.summary(),
            "history": list(self.history),
            "gamma_value": self.gamma_value,
            "runtime_s": self.runtime_s,
            "num_processes": self.num_processes,
            "tied": self.tied,
            "probe": self.probe,
            "unsplittable_batches": self.unsplittable_batches,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GradInitResult:
        return cls(
            scales={k: float(v) for k, v in d["scales"].items()},
            config=GradInitConfig.from_dict(d.get("config", {})),
            history=list(d.get("history", [])),
            kinds=dict(d.get("kinds", {})),
            aliases={k: list(v) for k, v in d.get("aliases", {}).items()},
            gamma_value=d.get("gamma_value"),
            runtime_s=float(d.get("runtime_s", 0.0)),
            num_processes=int(d.get("num_processes", 1)),
            tied=dict(d.get("tied") or {}),
            probe=d.get("probe"),
            unsplittable_batches=int(d.get("unsplittable_batches", 0)),
        )

    def config_entry(self) -> dict[str, Any]:
        """The summary stored as ``model.config.gradinit``: settings and outcome, no scales
        (those live in ``gradinit_scales.json``)."""
        return {
            "hf_gradinit_version": __version__,
            "scales_file": SCALES_FILE,
            "settings": self.config.to_dict(),
            "summary": self.summary(),
        }

    def apply(self, model: nn.Module) -> None:
        """Multiply the model's tensors by the learned scales (see :func:`apply_scales`) and
        record it in ``model.config.gradinit`` (an HF model), so it is not scaled twice."""
        apply_scales(model, self.scales)
        record_in_config(unwrap_model(model), self.config_entry(), self.scales)


def apply_scales(model: nn.Module, scales: Mapping[str, float]) -> None:
    """Multiply each named tensor of ``model`` by its scale, in place.

    Names may be any alias of a tied tensor, with or without the prefix of a
    ``torch.compile`` or DDP wrapper; a tied tensor is scaled once and stays tied.
    Everything is checked before the first tensor changes, and if the update is interrupted
    the tensors already changed are put back. A model whose ``config.gradinit`` matches its
    weights is already initialized and is refused (see :mod:`hf_gradinit.record`).

    Raises:
        GradInitError: unknown names, negative or non-finite scales, tied names with
            different scales, or an initialized model.
    """
    model = unwrap_model(model)
    check_not_initialized(model)
    by_name = dict(model.named_parameters(remove_duplicate=False))
    named = {_strip_wrapper_prefixes(n): v for n, v in scales.items()}
    unknown = sorted(set(named) - set(by_name))
    if unknown:
        raise GradInitError(
            f"{len(unknown)} scale name(s) are not parameters of this model, e.g. {unknown[:3]}. "
            "Were the scales learned on a different architecture?"
        )
    todo: dict[int, tuple[nn.Parameter, float, str]] = {}
    for name, value in named.items():
        value = float(value)
        if not (math.isfinite(value) and value >= 0):
            raise GradInitError(f"Scale of {name!r} is {value}; scales must be finite and >= 0.")
        p = by_name[name]
        if id(p) in todo and todo[id(p)][1] != value:
            raise GradInitError(
                f"{name!r} and {todo[id(p)][2]!r} are the same (tied) tensor but have "
                f"different scales ({value} vs {todo[id(p)][1]})."
            )
        todo[id(p)] = (p, value, name)
    swapped: list[tuple[nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for p, value, _ in todo.values():
                new = p.detach() * torch.tensor(value, dtype=p.dtype, device=p.device)
                swapped.append((p, p.data))
                p.data = new
    except BaseException:
        for p, old in swapped:
            p.data = old
        raise
