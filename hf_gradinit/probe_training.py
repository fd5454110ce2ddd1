"""The probe as the start of training: where a Trainer trains, the run's own first N steps.

After GradInit learns its scales, the Trainer's own training loop trains ``N`` steps
(``probe_steps``, never more than the run) from the original init and from the learned one:
the trainer's batches in the trainer's order, its optimizer as the Trainer builds it (or the
instance it was given), clipping, scheduler, gradient accumulation, precision and random
streams, each branch from the same starting state. Each branch ends with the Trainer's own
checkpoint of step N (weights, optimizer, scheduler, RNG, trainer state) in a folder of its
own; :func:`~hf_gradinit.core.probe.decide` picks the winner, and the run resumes from the
winner's checkpoint with the Trainer's resume machinery, which restores that state and skips
the batches already consumed. So training's first N steps *are* the winner's, and a run of at
most N steps ends at the better of the two runs: never worse than no GradInit by
construction. The probe costs N extra steps (the loser's), not 2N.

During the branches the user's callbacks and reporters are muted (only the Trainer's flow
control runs); no checkpoint is written and nothing is pushed before step N. Afterwards the
callbacks see the winner's log entries of steps 1..N, in order, before the run goes on.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import DefaultFlowCallback

from .config import GradInitConfig, GradInitError
from .core.probe import decide
from .result import apply_scales, unwrap_model

PROBE_FOLDER = "gradinit-probe"  # under output_dir, removed after the decision


# --------------------------------------------------------------------------------------
# The state every branch starts from
# --------------------------------------------------------------------------------------


_GENERATORS = (torch.Generator, np.random.Generator, random.Random)


def _generators(obj: Any, depth: int = 2) -> list[tuple[Any, str, Any]]:
    """The random generators an object (a data collator) keeps in its attributes, and its
    attributes that are None (a seeded ``DataCollatorForLanguageModeling`` creates its
    generator on first use): ``(owner, name, value)``."""
    found: list[tuple[Any, str, Any]] = []
    attributes = getattr(obj, "__dict__", None)
    if not isinstance(attributes, dict):
        return found
    for name, value in attributes.items():
        if value is None or isinstance(value, _GENERATORS):
            found.append((obj, name, value))
        elif depth > 0 and hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):
            found.extend(_generators(value, depth - 1))
    return found


def _generator_state(g: Any) -> Any:
    if isinstance(g, torch.Generator):
        return g.get_state()
    if isinstance(g, np.random.Generator):
        return copy.deepcopy(g.bit_generator.state)
    return g.getstate()


def _set_generator_state(g: Any, state: Any) -> None:
    if isinstance(g, torch.Generator):
        g.set_state(state)
    elif isinstance(g, np.random.Generator):
        g.bit_generator.state = state
    else:
        g.setstate(state)


@dataclass
class RandomState:
    """The global random streams and those of the collator: what the data and dropout of a
    run depend on besides the seed."""

    python: Any
    numpy: Any
    torch_cpu: torch.Tensor
    cuda: list[torch.Tensor] | None
    collator: list[tuple[Any, str, Any, Any]]  # owner, attribute, generator (or None), state

    @classmethod
    def capture(cls, collator: Any = None) -> RandomState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        gens = [
            (owner, name, g, None if g is None else _generator_state(g))
            for owner, name, g in _generators(collator)
        ]
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda, gens)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch_cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        self.restore_collator()

    def restore_collator(self) -> None:
        for owner, name, g, state in self.collator:
            if g is not None:
                _set_generator_state(g, state)
                setattr(owner, name, g)
            elif isinstance(getattr(owner, name, None), _GENERATORS):
                setattr(owner, name, None)  # made since: made again, from its seed


@contextlib.contextmanager
def random_state_preserved(collator: Any = None) -> Iterator[None]:
    """GradInit draws data but leaves training's random streams (and the collator's own
    generators) as they were: with the same seed, GradInit on and off differ only in the
    initial weights."""
    state = RandomState.capture(collator)
    try:
        yield
    finally:
        state.restore()


def _metrics_of(trainer: Trainer) -> dict | None:
    """trl trainers collect per-step metrics in ``_metrics`` and flush them in ``log``."""
    metrics = getattr(trainer, "_metrics", None)
    return metrics if isinstance(metrics, dict) else None


@dataclass
class TrainingStart:
    """What a training run starts from, so that each branch and the resumed run start from
    it: random streams, the original weights (on the CPU), and an optimizer or scheduler the
    user passed in (objects and states; ones the Trainer builds are built again)."""

    random: RandomState
    weights: dict[str, torch.Tensor]
    optimizer: Any
    scheduler: Any
    optimizer_state: dict | None
    scheduler_state: dict | None
    metrics: dict | None = None

    @classmethod
    def capture(cls, trainer: Trainer) -> TrainingStart:
        model = unwrap_model(trainer.model)
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        optimizer, scheduler = trainer.optimizer, trainer.lr_scheduler
        return cls(
            random=RandomState.capture(trainer.data_collator),
            weights=weights,
            optimizer=optimizer,
            scheduler=scheduler,
            optimizer_state=copy.deepcopy(optimizer.state_dict()) if optimizer else None,
            scheduler_state=copy.deepcopy(scheduler.state_dict()) if scheduler else None,
            metrics=copy.deepcopy(_metrics_of(trainer)),
        )

    def restore(self, trainer: Trainer, weights: bool = True) -> None:
        """Back to the start: random streams, optimizer and scheduler (and, with
        ``weights``, the original weights)."""
        self.random.restore()
        trainer.optimizer, trainer.lr_scheduler = self.optimizer, self.scheduler
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(copy.deepcopy(self.scheduler_state))
        metrics = _metrics_of(trainer)
        if metrics is not None and self.metrics is not None:
            metrics.clear()
            metrics.update(copy.deepcopy(self.metrics))
        if weights:
            unwrap_model(trainer.model).load_state_dict(self.weights)


# --------------------------------------------------------------------------------------
# One branch: the Trainer's loop for N steps, muted, ending with its own checkpoint
# --------------------------------------------------------------------------------------


@dataclass
class Branch:
    """One branch of the probe: its per-step training losses and its step-N checkpoint."""

    init: str  # "learned" or "original"
    losses: list[float] = field(default_factory=list)
    checkpoint: str | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict | None = None  # a trl trainer's unflushed metrics at step N
    collator_state: RandomState | None = None  # the collator's generators after its batches


class _BranchControl(TrainerCallback):
    """The only callback besides the Trainer's flow control while a branch runs: it stops
    the run at step N with a checkpoint, keeps earlier checkpoints from being written, and
    sums each step's loss (``training_step`` returns each micro-batch's share)."""

    def __init__(self, trainer: Trainer, branch: Branch, steps: int, progress: Any) -> None:
        self.trainer, self.branch, self.steps, self.progress = trainer, branch, steps, progress
        self.trainer_collator = trainer.data_collator
        self.step_loss: torch.Tensor | float = 0.0
        self.losses: list[torch.Tensor | float] = []
        self.batches = 0  # micro-batches trained
        self.collator_states: list[RandomState] = []  # after each batch the collator made

    def add(self, loss: torch.Tensor) -> None:
        self.step_loss = self.step_loss + loss.detach().float()
        self.batches += 1

    def collated(self) -> None:
        self.collator_states.append(RandomState.capture(self.trainer_collator))

    def on_step_end(self, args, state, control, **kwargs):
        self.losses.append(self.step_loss)
        if self.progress is not None:
            self.progress.set_postfix(
                {"step": state.global_step, "loss": f"{float(self.step_loss):.4g}"}, refresh=False
            )
            self.progress.update(1)
        self.step_loss = 0.0
        if state.global_step >= self.steps:
            control.should_training_stop = True
            control.should_save = True
            self.branch.metrics = copy.deepcopy(_metrics_of(self.trainer))
        else:
            control.should_save = False
        return control


@contextlib.contextmanager
def _branch_mode(trainer: Trainer, control: _BranchControl, folder: str) -> Iterator[None]:
    """The trainer as a branch runs it: callbacks muted but the flow control and ours,
    checkpoints into ``folder`` (full ones: the optimizer's state is needed to resume),
    nothing pushed, each training step's loss recorded."""
    args, handler = trainer.args, trainer.callback_handler
    saved_args = {
        k: getattr(args, k)
        for k in ("output_dir", "push_to_hub", "save_only_model", "save_total_limit")
    }
    saved_callbacks = handler.callbacks
    flow = [c for c in saved_callbacks if isinstance(c, DefaultFlowCallback)]
    original_step = trainer.training_step

    def training_step(*a: Any, **k: Any) -> torch.Tensor:
        loss = original_step(*a, **k)
        control.add(loss)
        return loss

    collator = trainer.data_collator

    def collate(*a: Any, **k: Any) -> Any:
        batch = collator(*a, **k)
        control.collated()
        return batch

    own_step = trainer.__dict__.get("training_step")  # an instance attribute, if any
    args.output_dir, args.push_to_hub, args.save_only_model = folder, False, False
    args.save_total_limit = None
    handler.callbacks = [*(flow or [DefaultFlowCallback()]), control]
    trainer.training_step = training_step
    if getattr(collator, "seed", None) is not None or any(
        g is not None for *_, g in _generators(collator)
    ):  # a collator with random streams of its own (a seeded MLM collator)
        trainer.data_collator = collate
    try:
        yield
    finally:
        trainer.data_collator = collator
        if own_step is None:
            del trainer.training_step  # the class's method again
        else:
            trainer.training_step = own_step
        handler.callbacks = saved_callbacks
        for k, v in saved_args.items():
            setattr(args, k, v)


def run_branch(
    trainer: Trainer,
    inner_loop: Callable[..., Any],
    loop_kwargs: dict[str, Any],
    branch: Branch,
    steps: int,
    folder: str,
    progress: Any = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Branch:
    """Train ``steps`` steps with the Trainer's own loop from the model's current weights
    and the current optimizer/scheduler/random state; fills ``branch``."""
    control = _BranchControl(trainer, branch, steps, progress)
    with _branch_mode(trainer, control, folder):
        inner_loop(resume_from_checkpoint=None, **loop_kwargs)
    losses = torch.tensor([float(v) for v in control.losses], dtype=torch.float64)
    if reduce is not None and losses.numel():
        losses = reduce(losses)
    branch.losses = [float(v) for v in losses]
    branch.checkpoint = os.path.join(folder, f"checkpoint-{trainer.state.global_step}")
    if trainer.state.global_step < steps:
        branch.checkpoint = None  # the loop stopped early (an iterable dataset ran out)
    if control.batches and len(control.collator_states) >= control.batches:
        # the resumed run skips the consumed batches without collating them: its collator
        # starts where this branch's stood after its last trained batch
        branch.collator_state = control.collator_states[control.batches - 1]
    branch.log_history = [
        dict(e)
        for e in trainer.state.log_history
        if e.get("step", 0) <= steps and "train_runtime" not in e  # not the loop's summary
    ]
    return branch


def train_with_probe(
    trainer: Trainer,
    inner_loop: Callable[..., Any],
    loop_kwargs: dict[str, Any],
    scales: dict[str, float],
    config: GradInitConfig,
    steps: int,
    on_decided: Callable[[dict[str, Any], dict[str, Branch]], None],
    show_progress: bool = True,
    ends_run: bool = False,
) -> Any:
    """Train ``steps`` steps from the original init and from ``w0 * scales`` with the
    Trainer's loop, decide (:func:`~hf_gradinit.core.probe.decide`), call
    ``on_decided(record, branches)`` with the winner's weights in the model, then resume the
    run from the winner's step. If anything fails before the run resumes, the model keeps
    its original weights. ``ends_run``: the probe is the whole run (the resumed loop only
    finishes it: a Trainer resumed at ``max_steps`` would take one more step). Returns what
    the training loop returns."""
    from tqdm.auto import tqdm

    model = unwrap_model(trainer.model)
    start = TrainingStart.capture(trainer)
    root = os.path.join(trainer.args.output_dir, PROBE_FOLDER)
    reduce = None
    if trainer.accelerator.num_processes > 1:
        reduce = lambda t: trainer.accelerator.reduce(t.to(trainer.args.device), "mean").cpu()  # noqa: E731
    progress = tqdm(
        total=2 * steps,
        desc="GradInit probe",
        disable=not (show_progress and trainer.is_local_process_zero()),
    )
    try:
        try:
            branches: dict[str, Branch] = {}
            for init in ("original", "learned"):
                start.restore(trainer)
                if init == "learned":
                    apply_scales(model, scales)
                progress.set_description(f"GradInit probe ({init} init)")
                branches[init] = run_branch(
                    trainer,
                    inner_loop,
                    loop_kwargs,
                    Branch(init),
                    steps,
                    os.path.join(root, init),
                    progress,
                    reduce,
                )
                if branches[init].checkpoint is None:
                    raise GradInitError(
                        f"The training loop stopped before the probe's {steps} steps "
                        f"(at step {trainer.state.global_step}); set gradinit_probe_steps "
                        "lower or max_steps."
                    )
                progress.set_postfix(
                    {f"{k} loss": f"{b.losses[-1]:.4g}" for k, b in branches.items()},
                    refresh=True,
                )
            record = decide(
                branches["learned"].losses, branches["original"].losses, config, exact=True
            )
            winner = branches[record["decision"]]
            start.restore(trainer, weights=False)
            if winner.collator_state is not None:
                winner.collator_state.restore_collator()
            trainer._load_from_checkpoint(winner.checkpoint)  # the Trainer's own loading
            if winner.metrics is not None and _metrics_of(trainer) is not None:
                _metrics_of(trainer).update(copy.deepcopy(winner.metrics))
        except BaseException:
            start.restore(trainer)  # the original weights, as if GradInit had not run
            raise
        finally:
            progress.close()
        on_decided(record, branches)
        if not ends_run:
            return inner_loop(resume_from_checkpoint=winner.checkpoint, **loop_kwargs)

        def finished_epoch(*args: Any, **kwargs: Any) -> None:
            trainer.control.should_training_stop = True

        trainer._run_epoch = finished_epoch
        try:
            return inner_loop(resume_from_checkpoint=winner.checkpoint, **loop_kwargs)
        finally:
            del trainer._run_epoch
    finally:
        trainer.accelerator.wait_for_everyone()
        if trainer.args.should_save:
            shutil.rmtree(root, ignore_errors=True)
