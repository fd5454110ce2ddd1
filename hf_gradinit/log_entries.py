"""GradInit's entries for a Trainer's log history and reporters: the iterations (averaged
over windows), one summary, and the probe's two curves at the steps training logs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .probe_training import Branch
from .result import GradInitResult


def default_logging_steps(iterations: int) -> int:
    """Every iteration up to 100, else about 100 log entries."""
    return max(1, math.ceil(iterations / 100))


def _mean(values: Any) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")


def gradinit_log_entries(result: GradInitResult, every: int = 1) -> list[dict[str, float]]:
    """Entries for ``Trainer.log``: per window of ``every`` iterations the mean loss, gradient
    norm and loss after the simulated step, then one summary entry (with the probe's
    losses and ``gradinit/kept``: 1 if the learned scales were applied)."""
    entries: list[dict[str, float]] = []
    history = result.history
    for start in range(0, len(history), every):
        window = history[start : start + every]
        entry = {
            "gradinit/iteration": float(window[-1]["iteration"] + 1),
            "gradinit/loss": _mean(r["loss"] for r in window),
            "gradinit/grad_norm": _mean(r["grad_norm"] for r in window),
        }
        after = [r["loss_after_step"] for r in window if r["loss_after_step"] is not None]
        if after:
            entry["gradinit/loss_after_step"] = _mean(after)
        entry["gradinit/constraint_fraction"] = _mean(
            float(r["branch"] == "constraint") for r in window
        )
        entry["gradinit/time_s"] = float(sum(r.get("time_s", 0.0) for r in window))
        entries.append(entry)
    summary = {
        f"gradinit/{k}": float(v)
        for k, v in result.summary().items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    summary["gradinit/runtime_s"] = float(result.runtime_s)
    summary["gradinit/kept"] = float(result.kept)
    if result.probe is not None:
        summary["gradinit/probe_learned_score"] = float(result.probe["learned_score"])
        summary["gradinit/probe_original_score"] = float(result.probe["original_score"])
    entries.append(summary)
    return entries


def probe_log_entries(
    branches: dict[str, Branch], winner_history: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The probe's two curves, one entry at each step where training logged its loss: the
    mean loss from each init over the steps since the previous entry."""
    entries, previous = [], 0
    for entry in winner_history:
        step = int(entry.get("step", 0))
        if "loss" not in entry or step <= previous:
            continue
        logged = {"step": step, "epoch": entry.get("epoch", 0.0)}
        for init, branch in branches.items():
            logged[f"gradinit/probe_{init}_loss"] = _mean(branch.losses[previous:step])
        entries.append(logged)
        previous = step
    return entries
