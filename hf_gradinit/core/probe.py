"""The probe: is the learned init behind the original one once training is under way?

GradInit's objective looks one optimizer step ahead; training takes thousands. On some
families the scales that win that step lose the next hundreds (docs/results.md): a Post-LN
GPT leaves its initial plateau later, a BERT classifier collapses. So before the scales are
applied, the real optimizer trains a copy of the model ``probe_steps`` steps from each init,
on the same batches. The learned scales are kept unless their mean loss over the last
quarter of those steps is higher than the original init's (by more than ``NOISE_FLOOR`` of
the first loss, and more than ``probe_margin`` relative), or GradInit's own objective did
not improve. Otherwise the model keeps its original init, and the result says why.

Equal losses keep the learned init: where no-warmup training stalls, both inits usually
look alike for a few hundred steps and GradInit's advantage shows later (docs/results.md).
The probe trains as training does, dropout included (the model in training mode; the same
dropout masks from either init), on a copy of the trainable tensors and buffers: the model
itself is only read.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from ..config import GradInitConfig
from .batches import to_device
from .loop import Reduce
from .problem import ScaledModel

# make_optimizer([(name, tensor), ...]) -> a torch optimizer over those tensors.
MakeOptimizer = Callable[[Sequence[tuple[str, torch.Tensor]]], torch.optim.Optimizer]


def default_optimizer(config: GradInitConfig) -> MakeOptimizer:
    """The optimizer GradInit simulates: Adam at eta with ``inner_betas``/``inner_eps``, or
    SGD at eta (for SGD with momentum m, eta = lr / (1 - m) is the size of its steady
    steps). The trainer passes the optimizer training will use instead."""

    def make(named: Sequence[tuple[str, torch.Tensor]]) -> torch.optim.Optimizer:
        params = [t for _, t in named]
        if config.inner_optimizer == "adam":
            return torch.optim.Adam(
                params, lr=config.eta, betas=config.inner_betas, eps=config.inner_eps
            )
        return torch.optim.SGD(params, lr=config.eta)

    return make


def train_losses(
    problem: ScaledModel,
    scales: Mapping[str, float],
    batches: Iterable[Mapping[str, Any]],
    make_optimizer: MakeOptimizer,
    reduce: Reduce | None = None,
    on_step: Callable[[], None] | None = None,
    seed: int = 0,
) -> list[float]:
    """The training loss at each step of the real optimizer from ``w0 * scales`` (before
    the step); stops at the first non-finite loss, which ends the list. Step k draws its
    random numbers (dropout) from ``seed + k``, so two inits see the same masks."""
    named = list(problem.parameters_at(scales))
    optimizer = make_optimizer(named)
    leaves = dict(named)
    buffers = {n: b.clone() for n, b in problem.buffers.items()}  # training mode updates them
    devices = [problem.device] if problem.device.type == "cuda" else []
    losses = []
    for step, batch in enumerate(batches):
        with torch.random.fork_rng(devices=devices):  # the same dropout from either init
            torch.manual_seed(seed + step)
            loss, grads = problem.loss_and_grad(leaves, batch, buffers=buffers)
        stats = loss.detach().reshape(1).clone()
        if reduce is not None:
            reduce([*grads, stats])
        losses.append(stats.item())
        if not math.isfinite(losses[-1]):
            break
        for t, g in zip(leaves.values(), grads):
            t.grad = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step()
    return losses


# Loss differences below this fraction of the original init's first loss are noise, however
# large relative to a loss near zero (0.013 against 0.011 after a task is learned).
NOISE_FLOOR = 0.01


def tail_start(steps: int) -> int:
    """The first step (0-based) of the probe's last quarter."""
    return steps - max(1, steps // 4)


def tail_mean(losses: Sequence[float], steps: int) -> float:
    """Mean loss over the last quarter of ``steps`` steps; inf if the run diverged."""
    if len(losses) < steps or not all(math.isfinite(v) for v in losses):
        return math.inf
    return statistics.fmean(losses[tail_start(steps) :])


def decide(
    learned: Sequence[float],
    original: Sequence[float],
    config: GradInitConfig,
    objective_improved: bool = True,
    exact: bool = False,
) -> dict:
    """Which init training goes on from, by the mean loss over the probe's last quarter.

    ``exact``: the two curves are the training run's own first steps from each init (the
    Trainer's probe): the lower one wins, a tie keeps the original init (the run is then
    exactly the run without GradInit). Chosen on the family study's development set
    (benchmarks/results/probe_rule_study.md): at 300 probe steps as good as or better than
    release 0.2's rule on every workload; at 100 and 200 steps worse than no GradInit on as
    many workloads or fewer (all 18 workloads: 2 against 3 at 100, 1 against 2 at 200).

    Otherwise (the probe on copies, with batches of its own: ``apply_gradinit``): keep the
    learned init unless it is behind by more than ``probe_margin`` (relative) and more than
    ``NOISE_FLOOR`` of the original's first loss, or it diverged, or GradInit's objective did
    not improve (``objective_improved``); release 0.2's rule.

    Returns the record kept in the result: both loss curves, the two scores, the decision
    and its reason (rounded numbers, the tolerance in words)."""
    steps = config.probe_steps
    a, b = tail_mean(learned, steps), tail_mean(original, steps)
    window = f"probe steps {tail_start(steps) + 1}-{steps}"
    scores = f"mean loss over {window} {a:.4g} (learned) against {b:.4g} (original)"
    if exact:
        if math.isinf(a):
            decision = "original"
            reason = f"training from the learned init diverged within {steps} steps"
        elif a < b:
            decision = "learned"
            reason = f"training from the learned init was ahead: {scores}"
        else:
            decision = "original"
            reason = f"training from the learned init was not ahead: {scores}"
    elif not objective_improved:
        decision = "original"
        reason = "GradInit's objective (the loss after the simulated step) did not improve"
    elif math.isinf(a):
        decision = "original"
        reason = f"training from the learned init diverged within {steps} probe steps"
    elif a > b * (1 + config.probe_margin) and a - b > NOISE_FLOOR * original[0]:
        decision = "original"
        margin = f", more than {config.probe_margin:.0%} higher" if config.probe_margin else ""
        reason = (
            f"training from the learned init was behind: mean loss over {window} {a:.4g} "
            f"against {b:.4g} from the original init{margin}"
        )
    else:
        decision = "learned"
        reason = (
            f"training from the learned init was not behind: {scores} (a difference under 1% "
            "of the first loss counts as noise)"
        )
    return {
        "steps": steps,
        "margin": config.probe_margin,
        "learned_losses": [float(v) for v in learned],
        "original_losses": [float(v) for v in original],
        "learned_score": a,
        "original_score": b,
        "decision": decision,
        "reason": reason,
    }


def probe(
    problem: ScaledModel,
    scales: Mapping[str, float],
    data: Iterator[Mapping[str, Any]],
    config: GradInitConfig,
    make_optimizer: MakeOptimizer | None = None,
    reduce: Reduce | None = None,
    on_step: Callable[[], None] | None = None,
    objective_improved: bool = True,
) -> dict[str, Any]:
    """Train ``config.probe_steps`` steps from ``w0 * scales`` and from ``w0`` on the same
    next batches of ``data``; returns :func:`decide`'s record. ``on_step`` is called after
    each step (a progress bar)."""
    make_optimizer = make_optimizer or default_optimizer(config)
    batches = [next(data) for _ in range(config.probe_steps)]
    batches = [to_device(b, problem.device, problem.dtype) for b in batches]
    learned = train_losses(problem, scales, batches, make_optimizer, reduce, on_step, config.seed)
    original = train_losses(problem, {}, batches, make_optimizer, reduce, on_step, config.seed)
    return decide(learned, original, config, objective_improved)
