"""GradInit in any ``transformers.Trainer``: :class:`GradInitCallback`.

``Trainer(..., callbacks=[GradInitCallback()])`` runs GradInit once before the first
optimizer step, on batches of the trainer's own data pipeline, with the trainer's own loss
(``compute_loss``, so label smoothing, ``compute_loss_func`` and subclass overrides count)
and, for the probe, the trainer's own optimizer class and settings. ``GradInitTrainer`` is
the same code, run a little earlier (before the model is wrapped, so FSDP/DeepSpeed work).

The GradInit metrics reach ``state.log_history`` and the reporters through ``Trainer.log``,
just before the trainer's first log of its own: every callback sees them after its
``on_train_begin`` and in the order the Trainer logs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import random
import sys
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from .api import compute_gradinit_scales
from .arguments import GradInitArguments
from .config import GradInitConfig, GradInitError
from .core.probe import MakeOptimizer
from .record import drop_stale_record, keep_current
from .result import GradInitResult, unwrap_model

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Log entries
# --------------------------------------------------------------------------------------


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
        summary["gradinit/probe_learned_loss"] = float(result.probe["learned_score"])
        summary["gradinit/probe_original_loss"] = float(result.probe["original_score"])
    entries.append(summary)
    return entries


# --------------------------------------------------------------------------------------
# What GradInit takes from the trainer
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """GradInit draws data (DataLoader seeds) but leaves training's random streams as they
    were: with the same seed, GradInit on/off differ only in the initial weights."""
    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def trainer_compute_loss(trainer: Trainer):
    """GradInit's loss: the trainer's ``compute_loss`` as training calls it, with
    ``num_items_in_batch`` counted as training counts it, on a copy of the batch."""
    count = getattr(trainer, "_get_num_items_in_batch", None)

    def compute_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        num_items = count([batch], trainer.args.device) if callable(count) else None
        return trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)

    return compute_loss


def trainer_probe_optimizer(trainer: Trainer, model: torch.nn.Module) -> MakeOptimizer:
    """The probe's optimizer: the class and settings the trainer will train with, with its
    weight-decay groups."""
    if getattr(trainer, "optimizer_cls_and_kwargs", None) is not None:
        cls, kwargs = trainer.optimizer_cls_and_kwargs
    else:
        cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    kwargs = dict(kwargs)
    decay = set(trainer.get_decay_parameter_names(model))

    def make(named: Sequence[tuple[str, torch.Tensor]]) -> torch.optim.Optimizer:
        groups = [
            {
                "params": [t for n, t in named if n in decay],
                "weight_decay": trainer.args.weight_decay,
            },
            {"params": [t for n, t in named if n not in decay], "weight_decay": 0.0},
        ]
        return cls([g for g in groups if g["params"]], **kwargs)

    return make


def _dataset_size(trainer: Trainer) -> int | None:
    """Examples in the training set, None for an iterable dataset (no length)."""
    dataset = trainer.train_dataset
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return None
    try:
        return len(dataset)
    except TypeError:
        return None


def gradinit_dataloader(trainer: Trainer, batch_size: int | None = None) -> Any:
    """The trainer's own training loader (collator, sampler, device placement), at
    ``batch_size`` if given, whole batches only, and in random order where transformers
    would group by length: its ``LengthGroupedSampler`` starts each chunk of batches with
    the longest examples, a biased sample for a phase that sees few batches. A subclass's
    own ``_get_train_sampler`` is used as it is."""
    args = trainer.args
    saved = (args.train_sampling_strategy, trainer._train_batch_size, args.dataloader_drop_last)
    if (
        args.train_sampling_strategy == "group_by_length"
        and type(trainer)._get_train_sampler is Trainer._get_train_sampler
    ):
        args.train_sampling_strategy = "random"
    if batch_size is not None:
        trainer._train_batch_size = batch_size * max(1, args.n_gpu)
    size = _dataset_size(trainer)
    if size is not None:  # a dataset smaller than a batch per process: batches of all it has
        trainer._train_batch_size = max(
            1, min(trainer._train_batch_size, size // max(1, args.world_size))
        )
        args.dataloader_drop_last = True
    try:
        return trainer.get_train_dataloader()
    finally:
        args.train_sampling_strategy, trainer._train_batch_size, args.dataloader_drop_last = saved


def training_steps(trainer: Trainer) -> int | None:
    """The optimizer steps this run will take, counted as the Trainer counts them:
    ``max_steps``, else epochs x the training loader's batches / accumulation, a partial
    accumulation ending an epoch counting as a step (None: unknown, an iterable dataset
    without ``max_steps``)."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    try:
        batches = len(trainer.get_train_dataloader())
    except TypeError:
        return None
    per_epoch = max(1, math.ceil(batches / max(1, args.gradient_accumulation_steps)))
    return math.ceil(args.num_train_epochs * per_epoch)


def find_trainer(callback: TrainerCallback) -> Trainer:
    """The Trainer whose event is running ``callback`` (it is on the call stack)."""
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer) and callback in owner.callback_handler.callbacks:
            return owner
        frame = frame.f_back
    raise GradInitError(
        "GradInitCallback could not find the Trainer it belongs to: add it with "
        "Trainer(callbacks=[GradInitCallback()]) or trainer.add_callback(...)."
    )


# --------------------------------------------------------------------------------------
# The callback
# --------------------------------------------------------------------------------------


class GradInitCallback(TrainerCallback):
    """Runs GradInit once before the first optimizer step of any ``transformers.Trainer``.

    Settings: ``config`` if given, else the ``gradinit_*`` fields of the trainer's
    arguments when they are :class:`~hf_gradinit.GradInitTrainingArguments`, else the
    defaults. In every case eta and the inner optimizer follow the run's ``learning_rate``,
    ``optim`` and ``optim_args`` (as :meth:`GradInitArguments.to_gradinit_config`), the loss
    is the trainer's ``compute_loss``, and the probe trains with the trainer's optimizer.

    GradInit does not run when resuming from a checkpoint, on a model that is already
    initialized (``config.gradinit`` matches its weights: a second ``train()``, a retry of
    the training loop, a checkpoint made by ``hf-gradinit init``), or with
    ``args.gradinit=False``. A model that is already sharded (FSDP, DeepSpeed ZeRO-3) when
    training starts is refused: use ``GradInitTrainer``, which runs before wrapping, or
    ``hf-gradinit init``.

    Args:
        config: GradInit settings (``eta`` and ``inner_optimizer`` are the run's).
        batch_size: examples per GradInit batch and device (default: the arguments'
            ``gradinit_batch_size``, else ``per_device_train_batch_size``).
        logging_steps: log the metrics averaged over this many iterations.
    """

    def __init__(
        self,
        config: GradInitConfig | None = None,
        *,
        batch_size: int | None = None,
        logging_steps: int | None = None,
    ):
        self.config = config
        self.batch_size = batch_size
        self.logging_steps = logging_steps
        self._results: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._trained: weakref.WeakSet = weakref.WeakSet()  # models whose training ended
        self._pending: list[dict[str, float]] = []
        self._logged_into: list[weakref.ref] = []  # the TrainerStates holding the entries
        self.result: GradInitResult | None = None  # the last run's

    # ---- settings ------------------------------------------------------------------------

    @staticmethod
    def enabled(args: Any) -> bool:
        return bool(getattr(args, "gradinit", True))

    def config_for(self, trainer: Trainer) -> GradInitConfig:
        """This run's settings (see the class docstring)."""
        args = trainer.args
        source = args if isinstance(args, GradInitArguments) else GradInitArguments()
        derived = source.config_for_run(args)
        if self.config is None:
            return derived
        values = self.config.to_dict()
        values.update(eta=derived.eta, inner_optimizer=derived.inner_optimizer)
        return GradInitConfig.from_dict(values)

    # ---- running -------------------------------------------------------------------------

    def initialize(self, trainer: Trainer, model: torch.nn.Module | None = None) -> GradInitResult:
        """Run GradInit on ``model`` (the trainer's) with the trainer's data, loss and
        optimizer, apply the scales and queue the log entries. Refuses a model that is
        already initialized (scales would compound)."""
        model = unwrap_model(model if model is not None else trainer.model)
        if drop_stale_record(model) in ("initialized", "unverified"):
            raise GradInitError(
                "This model is already GradInit-initialized (its model.config.gradinit "
                "matches its weights); running GradInit again would compound the scales. "
                "Train it as it is."
            )
        config = self.config_for(trainer)
        batch_size = getattr(trainer.args, "gradinit_batch_size", None) or self.batch_size
        loader = gradinit_dataloader(trainer, batch_size)
        horizon = training_steps(trainer)
        if horizon is not None and 0 < horizon < config.probe_steps:
            # the probe compares the inits where this training run will end, not beyond
            config = dataclasses.replace(config, probe_steps=horizon)
        logger.info(
            "Running GradInit: %d iterations, inner optimizer %s, eta %g, probe %d steps",
            config.iterations,
            config.inner_optimizer,
            config.eta,
            config.probe_steps,
        )
        metrics = getattr(trainer, "_metrics", None)  # trl trainers collect metrics per loss
        saved_metrics = copy.deepcopy(metrics) if isinstance(metrics, dict) else None
        try:
            with _rng_preserved():
                result = compute_gradinit_scales(
                    model,
                    loader,
                    config,
                    accelerator=trainer.accelerator,
                    compute_loss=trainer_compute_loss(trainer),
                    probe_optimizer=trainer_probe_optimizer(trainer, model),
                    show_progress=not trainer.args.disable_tqdm and trainer.is_local_process_zero(),
                )
        finally:
            # Stopping midway leaves an accelerate loader registered as "active" in the
            # GradientState; end it so training's own loader is the only one.
            end = getattr(loader, "end", None)
            if callable(end):
                end()
            if saved_metrics is not None:  # GradInit's losses are not training metrics
                metrics.clear()
                metrics.update(saved_metrics)
        result.apply(model)  # also records it in model.config.gradinit
        self._results[model] = result
        self.result = result
        self._queue(trainer, result)
        summary = result.summary()
        logger.info(
            "GradInit done in %.1fs: %s; scales %.3g..%.3g, loss after step %s -> %s",
            result.runtime_s,
            "learned scales applied"
            if result.kept
            else f"original init kept ({summary['decision_reason']})",
            summary["scale_min"] or float("nan"),
            summary["scale_max"] or float("nan"),
            summary["first_loss_after_step"],
            summary["last_loss_after_step"],
        )
        for note in result.tied_notes():
            logger.info("GradInit: %s", note.replace("`", ""))
        return result

    def result_for(self, model: torch.nn.Module) -> GradInitResult | None:
        return self._results.get(unwrap_model(model))

    # ---- logging -------------------------------------------------------------------------

    def _queue(self, trainer: Trainer, result: GradInitResult) -> None:
        every = getattr(trainer.args, "gradinit_logging_steps", None) or self.logging_steps
        self._pending = gradinit_log_entries(
            result, every or default_logging_steps(len(result.history))
        )
        self._install_log_hook(trainer)

    def _install_log_hook(self, trainer: Trainer) -> None:
        """Send the queued entries through ``trainer.log`` just before its next own log."""
        if getattr(trainer, "_gradinit_log_hook", None) is self:
            return
        original = trainer.log
        callback = weakref.ref(self)

        def log(logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            owner = callback()
            if owner is not None and owner._pending:
                owner._flush(trainer, original)
            return original(logs, *args, **kwargs)

        trainer.log = log
        trainer._gradinit_log_hook = self

    def _flush(self, trainer: Trainer, log: Any) -> None:
        entries, self._pending = self._pending, []
        state = trainer.state
        saved = state.global_step, state.epoch
        state.global_step, state.epoch = 0, 0.0  # GradInit happened before the first step
        try:
            for entry in entries:
                log(dict(entry))
        finally:
            state.global_step, state.epoch = saved
        self._logged_into.append(weakref.ref(state))

    # ---- events --------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        trainer = find_trainer(self)
        model = unwrap_model(model if model is not None else trainer.model)
        result = self._results.get(model)
        if state.global_step > 0:  # resuming: the checkpoint's weights are initialized
            keep_current(model)
        elif result is None:
            initialized = drop_stale_record(model) in ("initialized", "unverified")
            if initialized:
                logger.info("The model is already GradInit-initialized; not running GradInit.")
                keep_current(model)
            elif self.enabled(args):
                self.initialize(trainer, model)
        elif (
            model not in self._trained
            and not self._pending
            and all(r() is not state for r in self._logged_into)
        ):
            # the training loop was entered again before it ended (a retry with a smaller
            # batch): its new TrainerState gets the entries too
            self._queue(trainer, result)
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self._trained.add(unwrap_model(model))
        return control
