"""GradInit in any ``transformers.Trainer``: :class:`GradInitCallback`.

``Trainer(..., callbacks=[GradInitCallback()])`` runs GradInit once when training starts:
the scales are learned on batches of the trainer's own data pipeline with the trainer's own
loss (``compute_loss``: label smoothing, ``compute_loss_func`` and subclass overrides
count); then the probe is the run's own first steps from both inits, and the run continues
from the winner (:mod:`hf_gradinit.probe_training`). ``GradInitTrainer`` runs the same code
(:meth:`GradInitCallback.run`) from its own training loop.

The GradInit entries (step 0, and the probe's two curves at the steps training logs) go
into ``state.log_history`` and to every callback's ``on_log`` when the kept run begins,
before training's own entries; the console shows the summary, not each iteration.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .adapters import (
    find_trainer,
    gradinit_dataloader,
    trainer_compute_loss,
    trainer_probe_optimizer,
    training_optimizer,
    training_steps,
)
from .api import compute_gradinit_scales
from .arguments import GradInitArguments
from .config import GradInitConfig, GradInitError
from .hub import restore_record
from .log_entries import default_logging_steps, gradinit_log_entries, probe_log_entries
from .probe_training import Branch, random_state_preserved, train_with_probe
from .record import (
    already_initialized_message,
    drop_stale_record,
    keep_current,
    loaded_weights_reason,
    record_in_config,
)
from .result import GradInitResult, unwrap_model

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# The callback
# --------------------------------------------------------------------------------------


class GradInitCallback(TrainerCallback):
    """Runs GradInit once when training starts, in any ``transformers.Trainer``.

    The scales are learned on the trainer's data with its loss; then the Trainer's own loop
    trains ``probe_steps`` steps (at most the run's) from the original and from the learned
    init, and the run continues from the better one's step (:mod:`hf_gradinit.probe_training`):
    training's first steps are the winner's, so a run no longer than the probe never ends
    worse than without GradInit.

    Settings: ``config`` if given, else the ``gradinit_*`` fields of the trainer's
    arguments when they are :class:`~hf_gradinit.GradInitTrainingArguments`, else the
    defaults. In every case eta and the inner optimizer follow the optimizer training uses:
    an instance passed to the Trainer, ``optimizer_cls_and_kwargs``, or ``optim`` /
    ``optim_args`` and ``learning_rate``.

    GradInit does not run when resuming from a checkpoint (the checkpoint's record is put
    back into ``model.config.gradinit``), on a model that is already initialized
    (``config.gradinit`` matches its weights), or with ``args.gradinit=False``.

    Args:
        config: GradInit settings (``eta``, the inner optimizer and its betas/eps are the run's).
        trainer: the Trainer this callback belongs to, for ``trainer.add_callback(
            GradInitCallback(trainer=trainer))``; without it the callback finds the trainer
            that calls its ``on_init_end`` (pass it in ``Trainer(callbacks=[...])``).
        batch_size: examples per GradInit batch and device (default: the arguments'
            ``gradinit_batch_size``, else ``per_device_train_batch_size``).
        logging_steps: log the metrics averaged over this many iterations.
    """

    def __init__(
        self,
        config: GradInitConfig | None = None,
        *,
        trainer: Trainer | None = None,
        batch_size: int | None = None,
        logging_steps: int | None = None,
    ):
        self.config = config
        self.batch_size = batch_size
        self.logging_steps = logging_steps
        self._results: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._pending: list[dict[str, Any]] = []
        self.result: GradInitResult | None = None  # the last run's
        self._trainer: weakref.ref | None = None
        self._probe_loss_sum: float | None = None  # the kept branch's, for train_loss
        self._trained: weakref.WeakSet = weakref.WeakSet()  # models whose training ended
        if trainer is not None:
            self.attach(trainer)

    # ---- settings ------------------------------------------------------------------------

    @staticmethod
    def enabled(args: Any) -> bool:
        return bool(getattr(args, "gradinit", True))

    def config_for(self, trainer: Trainer) -> GradInitConfig:
        """This run's settings (see the class docstring)."""
        args = trainer.args
        source = args if isinstance(args, GradInitArguments) else GradInitArguments()
        derived = source.to_gradinit_config(seed=args.seed, **training_optimizer(trainer))
        if self.config is None:
            return derived
        values = self.config.to_dict()
        run_step = ("eta", "inner_optimizer", "inner_betas", "inner_eps")
        values.update({name: getattr(derived, name) for name in run_step})
        return GradInitConfig.from_dict(values)

    # ---- attaching to the trainer's loop -------------------------------------------------

    def attach(self, trainer: Trainer) -> None:
        """Run the trainer's training loop through :meth:`run` (once per trainer; a
        :class:`~hf_gradinit.GradInitTrainer` does it in its own loop)."""
        if getattr(type(trainer), "runs_gradinit", False) or "_gradinit_loop" in vars(trainer):
            return
        loop = trainer._inner_training_loop
        trainer._gradinit_loop = self
        self._trainer = weakref.ref(trainer)

        def inner_training_loop(*args: Any, **kwargs: Any) -> Any:
            return self.run(trainer, loop, *args, **kwargs)

        trainer._inner_training_loop = inner_training_loop

    def on_init_end(self, args, state, control, **kwargs):
        self.attach(find_trainer(self))
        return control

    # ---- running -------------------------------------------------------------------------

    def run(
        self,
        trainer: Trainer,
        inner_loop: Callable[..., Any],
        batch_size: int | None = None,
        args: Any = None,
        resume_from_checkpoint: str | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> Any:
        """The trainer's training loop with GradInit in front: the one place that decides
        whether GradInit runs now, learns the scales, runs the probe as the start of
        training and continues from its winner."""
        self._trainer = weakref.ref(trainer)
        loop_kwargs = dict(
            batch_size=batch_size, args=args, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
        )
        model = unwrap_model(trainer.model)
        reason = self.skip_reason(trainer, model, resume_from_checkpoint)
        if reason is not None:
            if reason != "off":
                log = logger.warning if reason.startswith("GradInit is an init") else logger.info
                log("Not running GradInit: %s.", reason)
            return inner_loop(resume_from_checkpoint=resume_from_checkpoint, **loop_kwargs)
        config = self.config_for(trainer)
        horizon = training_steps(trainer)
        steps = config.probe_steps if horizon is None else min(config.probe_steps, horizon)
        config = dataclasses.replace(config, probe_steps=steps)
        sharded = getattr(trainer, "is_fsdp_enabled", False) or getattr(
            trainer, "is_deepspeed_enabled", False
        )
        result = self.learn(trainer, model, config, probe_on_copies=sharded)
        if sharded or steps == 0:  # no branches: the copy-probe's decision (if any) stands
            self._finish(trainer, model, result)
            return inner_loop(resume_from_checkpoint=None, **loop_kwargs)

        def on_decided(record: dict[str, Any], branches: dict[str, Branch]) -> None:
            result.probe = record
            if record["decision"] != "learned":
                result.scales = dict.fromkeys(result.scales, 1.0)
            winner = branches[record["decision"]]
            self._finish(trainer, model, result, probe_log_entries(branches, winner.log_history))
            self._probe_loss_sum = sum(winner.losses)

        return train_with_probe(
            trainer,
            inner_loop,
            loop_kwargs,
            dict(result.scales),
            config,
            steps,
            on_decided,
            show_progress=not trainer.args.disable_tqdm,
            ends_run=horizon is not None and steps >= horizon,
        )

    def skip_reason(
        self, trainer: Trainer, model: torch.nn.Module, resume_from_checkpoint: Any
    ) -> str | None:
        """Why GradInit does not run now (None: it runs). Resuming puts the checkpoint's
        record back in the model's config."""
        if resume_from_checkpoint is not None:
            restored = restore_record(model, resume_from_checkpoint)
            if restored is not None:
                self._results[model] = restored
            keep_current(model)
            return "resuming from a checkpoint"
        result = self._results.get(model)
        if result is not None:
            if model not in self._trained:  # a retried loop: its new state gets the entries
                self._queue(trainer, result)
            return "it already ran for this model (a second train() or a retried loop)"
        if drop_stale_record(model) in ("initialized", "unverified"):
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
            if os.path.isdir(name):  # from_pretrained of an initialized checkpoint
                restored = restore_record(model, name)
                if restored is not None:
                    self._results[model] = restored
            keep_current(model)
            return "the model is already GradInit-initialized (its config.gradinit)"
        if not self.enabled(trainer.args):
            return "off"
        loaded = loaded_weights_reason(model)
        if loaded and not getattr(trainer.args, "gradinit_on_loaded_weights", False):
            return (
                f"GradInit is an init, not a fine-tuning step, and {loaded} (set "
                "gradinit_on_loaded_weights=True in GradInitTrainingArguments to run it anyway)"
            )
        return None

    def learn(
        self,
        trainer: Trainer,
        model: torch.nn.Module,
        config: GradInitConfig,
        probe_on_copies: bool = False,
    ) -> GradInitResult:
        """Learn the scales with the trainer's data and loss; the model is not changed.
        ``probe_on_copies``: also run the probe on copies (where the branches cannot run)."""
        batch_size = getattr(trainer.args, "gradinit_batch_size", None) or self.batch_size
        loader = gradinit_dataloader(trainer, batch_size)
        learn_config = config if probe_on_copies else dataclasses.replace(config, probe_steps=0)
        probe_optimizer = None
        if learn_config.probe_steps > 0:  # refuses an optimizer it cannot build, before work
            probe_optimizer = trainer_probe_optimizer(trainer, model)
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
            with random_state_preserved(trainer.data_collator):
                result = compute_gradinit_scales(
                    model,
                    loader,
                    learn_config,
                    accelerator=trainer.accelerator,
                    compute_loss=trainer_compute_loss(trainer),
                    probe_optimizer=probe_optimizer,
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
        result.config = config
        return result

    def initialize(self, trainer: Trainer, model: torch.nn.Module | None = None) -> GradInitResult:
        """Learn and apply GradInit now, outside training (the probe on copies): what
        ``GradInitTrainer.run_gradinit`` does to inspect the result before ``train()``.
        Refuses a model that is already initialized (scales would compound)."""
        model = unwrap_model(model if model is not None else trainer.model)
        if drop_stale_record(model) in ("initialized", "unverified"):
            raise GradInitError(already_initialized_message())
        config = self.config_for(trainer)
        horizon = training_steps(trainer)
        if horizon is not None:
            config = dataclasses.replace(config, probe_steps=min(config.probe_steps, horizon))
        result = self.learn(trainer, model, config, probe_on_copies=True)
        self._finish(trainer, model, result)
        return result

    def _finish(
        self,
        trainer: Trainer,
        model: torch.nn.Module,
        result: GradInitResult,
        probe_entries: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Record the outcome in the model (scales applied unless the weights are already
        the winner's), keep the result and queue its log entries."""
        if result.probe is None or not probe_entries:
            result.apply(model)  # also records it in model.config.gradinit
        else:
            record_in_config(model, result.config_entry(), result.scales)
        self._results[model] = result
        self.result = result
        self._queue(trainer, result, probe_entries)
        summary = result.summary()
        logger.warning(
            "GradInit (%.0f s): %s; scales %.3g..%.3g.",
            result.runtime_s,
            "kept the learned init"
            + (f" ({summary['decision_reason']})" if result.probe is not None else "")
            if result.kept
            else f"kept the original init ({summary['decision_reason']})",
            summary["scale_min"] or float("nan"),
            summary["scale_max"] or float("nan"),
        )
        for note in result.tied_notes():
            logger.info("GradInit: %s", note.replace("`", ""))

    def _queue(
        self, trainer: Trainer, result: GradInitResult, probe_entries: Sequence[dict] = ()
    ) -> None:
        every = getattr(trainer.args, "gradinit_logging_steps", None) or self.logging_steps
        entries = gradinit_log_entries(result, every or default_logging_steps(len(result.history)))
        self._pending = [{**e, "step": 0, "epoch": 0.0} for e in entries] + list(probe_entries)

    def result_for(self, model: torch.nn.Module) -> GradInitResult | None:
        return self._results.get(unwrap_model(model))

    # ---- logging -------------------------------------------------------------------------

    def _emit(self, trainer: Trainer, state: Any, control: Any) -> None:
        """Put the queued entries into the log history, in step order before training's
        entries of the same step, and send them (with training's entries already in the
        history: the probe winner's) to every callback's ``on_log``. Iteration entries do
        not go to the console callbacks."""
        entries, self._pending = self._pending, []
        history = sorted(
            [*entries, *state.log_history], key=lambda e: e.get("step", 0)
        )  # stable: GradInit's entries first at a step
        state.log_history = history
        handler = trainer.callback_handler
        saved = state.global_step, state.epoch, handler.callbacks
        quiet = [
            c for c in handler.callbacks if not isinstance(c, (ProgressCallback, PrinterCallback))
        ]
        try:
            for entry in history:
                logs = {k: v for k, v in entry.items() if k != "step"}
                state.global_step, state.epoch = entry.get("step", 0), entry.get("epoch", 0.0)
                handler.callbacks = quiet if "gradinit/iteration" in logs else saved[2]
                handler.on_log(trainer.args, state, control, logs=logs)
        finally:
            state.global_step, state.epoch, handler.callbacks = saved

    # ---- events --------------------------------------------------------------------------

    def _flush(self, state: Any, control: Any) -> None:
        """Emit the queued entries at the first event after every callback's
        ``on_train_begin`` (an epoch or step beginning, else the first log or the end)."""
        if not self._pending:
            return
        trainer = self._trainer() if self._trainer is not None else None
        trainer = trainer or find_trainer(self)
        if self._probe_loss_sum is not None and hasattr(trainer, "_total_loss_scalar"):
            # train_loss covers the whole run, the probe's kept steps included
            trainer._total_loss_scalar += self._probe_loss_sum
            trainer._initial_global_step = 0
            self._probe_loss_sum = None
        self._emit(trainer, state, control)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            self._flush(state, control)  # the probe was the whole run: no step, no epoch left

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._flush(state, control)

    def on_step_begin(self, args, state, control, **kwargs):
        self._flush(state, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._flush(state, control)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._flush(state, control)
        if model is not None:
            self._trained.add(unwrap_model(model))
