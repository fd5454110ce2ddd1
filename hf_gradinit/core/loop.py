"""The GradInit iterations (Zhu et al., 2021, Algorithm 1).

One iteration, as the reference code does it: with theta = alpha * w0, take the gradient g
of the loss on a sub-batch S. If its norm exceeds the bound, step alpha to lower the norm (a
Hessian-vector product: :meth:`ScaleLearner.constraint_step`). Otherwise simulate one step of the
real optimizer, theta' = theta - eta * A(g) with A(g) = sign(g) for Adam and g for SGD (A(g)
detached, as in the reference), and step alpha to lower the loss on the overlapping sub-batch
S~ at theta' (:meth:`ScaleLearner.objective_step`). Because A(g) is detached, that objective needs
no double backward.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..config import GradInitConfig, GradInitError
from .batches import LABEL_NAMES, UnsplittableBatch, split_batch, to_device
from .optimizer import ScaleAdam
from .problem import ScaledModel

# Averages tensors in place across processes (None: one process).
# reduce(tensors): averages them in place across processes (None on one process).
Reduce = Callable[[list[torch.Tensor]], None]

# Consecutive batches too small to split that end the phase with an error.
MAX_UNSPLITTABLE_IN_A_ROW = 100


@dataclass
class LoopOutput:
    """What the iterations learned: a scale per tensor name, and how."""

    scales: dict[str, float]
    history: list[dict[str, Any]]
    gamma_value: float | None
    unsplittable_batches: int


def _norm(grads: list[torch.Tensor], norm_type: str) -> float:
    if norm_type == "l1":
        return float(sum(g.abs().sum() for g in grads))
    return float(torch.sqrt(sum((g * g).sum() for g in grads)))


def norm_direction(grads: list[torch.Tensor], norm_type: str) -> list[torch.Tensor]:
    """The gradient of the norm with respect to the gradient itself."""
    if norm_type == "l1":
        return [torch.sign(g) for g in grads]
    total = math.sqrt(sum(float((g * g).sum()) for g in grads)) or 1.0
    return [g / total for g in grads]


def inner_step(grads: list[torch.Tensor], config: GradInitConfig) -> list[torch.Tensor]:
    """A(g): the direction of the first step of the real optimizer (without eta)."""
    if config.inner_optimizer == "adam":
        return [torch.sign(g) for g in grads]  # first bias-corrected Adam step ~ lr * sign(g)
    if config.normalize_sgd_grad:
        total = math.sqrt(sum(float((g * g).sum()) for g in grads)) or 1.0
        return [g / total for g in grads]
    return grads


def _is_out_of_memory(err: BaseException) -> bool:
    """Out-of-memory errors pass through unchanged: a caller may retry with a smaller
    batch (``auto_find_batch_size``) and has to recognize them."""
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


class ScaleLearner:
    """One GradInit run's state: the scales, their optimizer, the bound's value and the batch
    splits. ``iteration(k)`` runs iteration k and returns its record; :func:`learn_scales`
    drives it (benchmarks and tests time or check single iterations with it)."""

    def __init__(
        self,
        problem: ScaledModel,
        data: Iterator[Mapping[str, Any]],
        config: GradInitConfig,
        reduce: Reduce | None,
    ):
        self.problem, self.config = problem, config
        self.reduce = reduce
        self.data = data
        self.generator = torch.Generator().manual_seed(config.seed)
        self.alpha = problem.ones().requires_grad_(True)
        kinds = [s.kind for s in problem.scaled]
        dtype, device = problem.dtype, problem.device
        lower = [0.0 if k == "bias" else config.min_scale for k in kinds]
        upper = [config.max_scale if k == "gain" else math.inf for k in kinds]
        self.optimizer = ScaleAdam(
            self.alpha,
            config,
            torch.tensor(lower, dtype=dtype, device=device),
            torch.tensor(upper, dtype=dtype, device=device),
        )
        self.gamma_value = None
        if config.gamma is not None and config.gamma_unit == "absolute":
            self.gamma_value = config.gamma
        elif config.gamma is not None and config.gamma_unit == "per_parameter":
            n = problem.num_trainable
            self.gamma_value = config.gamma * (n if config.norm_type == "l1" else math.sqrt(n))
        self.exact = config.hvp == "double_backward"
        # With the exact norm gradient, build the graph through g only when the bound's
        # branch is expected (it was taken last time); a wrong guess costs one extra pass,
        # never a different result.
        self.graph_next = self.exact and config.gamma is not None
        self.unsplittable = 0

    # ---- batches ---------------------------------------------------------------------

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        if self.reduce is not None:
            self.reduce(tensors)

    def draw(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The next batch, split into S and S~. A batch too small to split is skipped (on
        every process at once, so they stay in step) and counted."""
        in_a_row = 0
        while True:
            batch = to_device(next(self.data), self.problem.device, self.problem.dtype)
            try:
                pair, sizes = split_batch(batch, self.config.overlap, self.generator), None
            except UnsplittableBatch as err:
                pair, sizes = None, str(err)
            if self.reduce is not None:  # skip unless every process could split its batch
                flag = torch.tensor([float(pair is None)], device=self.problem.device)
                self.reduce([flag])
                if flag.item() > 0:
                    pair = None
            if pair is not None:
                return pair
            self.unsplittable += 1
            in_a_row += 1
            if in_a_row >= MAX_UNSPLITTABLE_IN_A_ROW:
                raise GradInitError(
                    f"No usable batch in {in_a_row} draws: "
                    f"{sizes or 'another process saw a batch it could not split'} GradInit "
                    "splits each batch into two sub-batches S and S~, so it needs batches of "
                    "at least 2 examples (3 or more is better): raise the batch size (or "
                    "gradinit_batch_size), or set overlap=1.0 to use the whole batch for both."
                )

    # ---- one iteration -----------------------------------------------------------------

    def first_gradient(self, batch: Mapping[str, Any]):
        """The first forward/backward, with errors that say what the batch lacked."""
        try:
            return self.problem.gradient(self.alpha, batch, create_graph=self.graph_next)
        except GradInitError:
            raise
        except Exception as e:
            if _is_out_of_memory(e):
                raise
            keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            hint = ""
            if isinstance(e, TypeError) and "keyword argument" in str(e):
                hint = (
                    " GradInit calls `model(**batch)`, so the batch's keys must be the names of "
                    "forward's arguments: rename the columns, or wrap a model whose forward "
                    "takes positional inputs (an nn.Sequential) in a module that takes named ones."
                )
            elif isinstance(batch, Mapping) and not set(batch) & set(LABEL_NAMES):
                hint = (
                    f" The batch has none of the label keys ({', '.join(LABEL_NAMES)}): "
                    "GradInit needs batches the model computes a loss from (keep the labels "
                    "column; a collator that pads labels, such as DataCollatorForSeq2Seq, needs "
                    "it in the dataset), or a `loss_fn`."
                )
            raise GradInitError(
                "The model's forward/backward failed on the first GradInit batch (keys "
                f"{keys}): {type(e).__name__}: {e}.{hint}"
            ) from e

    def iteration(self, it: int) -> dict[str, Any]:
        config, problem = self.config, self.problem
        t0 = time.perf_counter()
        batch_s, batch_t = self.draw()
        if it == 0:
            loss_s, grads = self.first_gradient(batch_s)
        else:
            loss_s, grads = problem.gradient(self.alpha, batch_s, create_graph=self.graph_next)
        # The process mean of g (g itself on one process: no copy).
        g_mean = [g.detach() if self.reduce is None else g.detach().clone() for g in grads]
        stats = loss_s.detach().reshape(1).clone()
        self.mean_([*g_mean, stats])
        loss, norm = stats.item(), _norm(g_mean, config.norm_type)
        finite = math.isfinite(loss) and math.isfinite(norm)
        if it == 0 and not finite:
            raise GradInitError(
                f"The loss ({loss}) or its gradient norm ({norm}) is not finite at the model's "
                "initialization; fix the model or data before GradInit."
            )
        if config.gamma is not None and config.gamma_unit == "init" and it == 0:
            self.gamma_value = config.gamma * norm
        record: dict[str, Any] = {
            "iteration": it,
            "loss": loss,
            "grad_norm": norm,
            "loss_after_step": None,
        }
        if not finite:
            branch = "skipped"
        elif self.gamma_value is not None and norm > self.gamma_value:
            branch = "constraint"
            self.constraint_step(batch_s, loss_s, grads, g_mean)
        else:
            branch = "objective"
            del grads, loss_s
            after = self.objective_step(g_mean, batch_t)
            record["loss_after_step"] = after
            if after is None:
                branch = "skipped"
        self.graph_next = self.exact and branch == "constraint"
        record["branch"] = branch
        record["time_s"] = time.perf_counter() - t0
        return record

    def constraint_step(self, batch_s, loss_s, grads, g_mean) -> None:
        """Step alpha to lower the gradient norm: d||G||/d alpha = <dnorm/dG, dg/d alpha>,
        G = the process mean of g."""
        direction = norm_direction(g_mean, self.config.norm_type)
        if self.exact:
            if not self.graph_next:  # guessed wrong: redo S with the graph through g
                loss_s, grads = self.problem.gradient(self.alpha, batch_s, create_graph=True)
            grad = self.problem.norm_grad(self.alpha, grads, direction)
        else:
            base = self.problem.w_dot(grads)  # on this process; then g can go
            del grads, g_mean, loss_s
            grad = self.problem.norm_grad_fd(self.alpha, direction, batch_s, base)
        self.mean_([grad])
        self.optimizer.step(grad, "constraint")

    def objective_step(self, g_mean, batch_t) -> float | None:
        """Step alpha to lower the loss on S~ after the simulated step(s); returns that loss
        (None if it or its gradient is not finite: no step)."""
        config = self.config
        steps = inner_step(g_mean, config)
        if config.lookahead_steps > 1:
            steps, batch_t = self.lookahead(g_mean, steps)
        loss_t, grad = self.problem.objective_grad(self.alpha, steps, config.eta, batch_t)
        stats = loss_t.reshape(1).clone()
        self.mean_([grad, stats])
        if not (math.isfinite(stats.item()) and bool(torch.isfinite(grad).all())):
            return None
        self.optimizer.step(grad, "objective")
        return stats.item()

    def lookahead(self, g_first, first_step):
        """Directions of steps 2..k of the simulated optimizer, summed with the first's.

        Step j's gradient is taken at the simulated point theta(alpha) - eta * (sum of the
        earlier directions), on the S half of a batch of its own, and detached (as the paper
        detaches the first step). Adam steps follow torch.optim.Adam with ``inner_betas`` and
        ``inner_eps``, except that the first is the eps -> 0 limit, sign(g). Returns the total
        direction and the S~ of the last batch, where the objective is taken.
        """
        config = self.config
        total = [s.clone() for s in first_step]
        beta1, beta2 = config.inner_betas
        exp_avg = [(1 - beta1) * g for g in g_first]
        exp_avg_sq = [(1 - beta2) * g * g for g in g_first]
        batch_t = None
        for j in range(2, config.lookahead_steps + 1):
            batch_s, batch_t = self.draw()
            _, grads = self.problem.gradient(self.alpha, batch_s, steps=total, eta=config.eta)
            grads = [g.detach() for g in grads]
            self.mean_(grads)
            if config.inner_optimizer == "adam":
                bias1, bias2 = 1 - beta1**j, 1 - beta2**j
                step = []
                for m, v, g in zip(exp_avg, exp_avg_sq, grads):
                    m.mul_(beta1).add_(g, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    step.append((m / bias1) / ((v / bias2).sqrt() + config.inner_eps))
            else:
                step = inner_step(grads, config)
            total = [t + s for t, s in zip(total, step)]
        return total, batch_t


def learn_scales(
    problem: ScaledModel,
    data: Iterator[Mapping[str, Any]],
    config: GradInitConfig,
    *,
    reduce: Reduce | None = None,
    on_iteration: Callable[[dict[str, Any]], None] | None = None,
) -> LoopOutput:
    """Run ``config.iterations`` iterations on batches drawn from ``data`` (e.g.
    ``batches.cycle(loader)``); the model is only read. ``reduce`` averages tensors across
    processes; ``on_iteration`` gets each iteration's record."""
    loop = ScaleLearner(problem, data, config, reduce)
    history: list[dict[str, Any]] = []
    skipped_in_row = 0
    for it in range(config.iterations):
        record = loop.iteration(it)
        if record["branch"] == "skipped":
            skipped_in_row += 1
            if config.on_nonfinite == "raise" or skipped_in_row > config.max_skipped:
                raise GradInitError(
                    f"GradInit iteration {it}: the loss or gradient became non-finite (loss "
                    f"{record['loss']}, grad norm {record['grad_norm']}, loss after step "
                    f"{record['loss_after_step']}). The model was not modified. Try a smaller "
                    "scale_lr or eta, or on_nonfinite='skip' to skip such batches."
                )
        else:
            skipped_in_row = 0
        history.append(record)
        if on_iteration is not None:
            on_iteration(record)
    scales = dict(zip(problem.names, loop.alpha.detach().cpu().tolist()))
    return LoopOutput(scales, history, loop.gamma_value, loop.unsplittable)
