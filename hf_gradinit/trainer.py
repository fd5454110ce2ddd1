"""``GradInitTrainer``: a ``Seq2SeqTrainer`` that runs GradInit once before training.

Used exactly like ``Seq2SeqTrainer``; the settings are the ``gradinit_*`` fields of
:class:`~hf_gradinit.GradInitTrainingArguments`. It is :class:`~hf_gradinit.GradInitCallback`
(the same code, for any Trainer) plus three things the callback cannot do:

* ``_inner_training_loop``: GradInit runs where the model to train is final (after
  ``model_init`` and checkpoint loading) but not yet wrapped, so FSDP and DeepSpeed work
  (with them, the probe runs on copies: the branches would wrap the model twice).
* ``_save`` / ``_push_from_checkpoint``: the scales file, its plot and a GradInit model card
  go with every saved folder and every push.
* ``create_model_card``: that card, with the run's metadata and results.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from transformers import Seq2SeqTrainer

from .arguments import (  # noqa: F401 - re-exported: their home before release 0.2
    GradInitArguments,
    GradInitTrainingArguments,
    check_gradinit_batch_size,
    inner_optimizer_for,
    sgd_step_factor,
)
from .callbacks import (  # noqa: F401 - re-exported, as above
    GradInitCallback,
    default_logging_steps,
    gradinit_log_entries,
)
from .card import CARD_FILE, render_scales_plot, trainer_model_card
from .config import GradInitConfig, GradInitError
from .data import label_safe_collator
from .hub import write_gradinit_files
from .record import keep_current, record_in_config
from .result import GradInitResult

logger = logging.getLogger(__name__)


class GradInitTrainer(Seq2SeqTrainer):
    """A ``Seq2SeqTrainer`` that initializes the model with GradInit before training.

    Takes the same arguments as ``Seq2SeqTrainer``; ``args`` should be
    :class:`GradInitTrainingArguments` (plain ``Seq2SeqTrainingArguments`` get the default
    GradInit settings). After ``train()``, ``trainer.gradinit_result`` holds the
    :class:`~hf_gradinit.GradInitResult` (None if GradInit did not run or is off).

    ``optimizer_cls_and_kwargs`` (``Trainer``'s, which ``Seq2SeqTrainer`` does not pass on)
    trains with another ``torch.optim`` class, e.g. ``(torch.optim.RAdam, {"lr": 1e-3})``.
    """

    runs_gradinit = True  # its own training loop runs GradInit (GradInitCallback.attach)

    def __init__(
        self,
        model: Any = None,
        args: Any = None,
        *more: Any,
        optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = GradInitTrainingArguments(output_dir="tmp_trainer")
        super().__init__(model, args, *more, **kwargs)
        if optimizer_cls_and_kwargs is not None:  # what Trainer.create_optimizer reads
            self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
        # DataCollatorForSeq2Seq(model=fsmt) would score label padding; see hf_gradinit.data.
        self.data_collator = label_safe_collator(self.data_collator)
        if self.gradinit_enabled:
            check_gradinit_batch_size(self.args)  # also for plain Seq2SeqTrainingArguments
        found = [c for c in self.callback_handler.callbacks if isinstance(c, GradInitCallback)]
        self.gradinit_callback = found[0] if found else GradInitCallback()
        if not found:
            self.add_callback(self.gradinit_callback)
        self._card_kwargs: dict[str, Any] = {}  # of the last create_model_card call
        if not isinstance(self.args, GradInitArguments):
            logger.warning(
                "GradInitTrainer got %s, not GradInitTrainingArguments: GradInit runs with its "
                "default settings.",
                type(self.args).__name__,
            )

    # ---- settings and state --------------------------------------------------------------

    @property
    def gradinit_enabled(self) -> bool:
        return GradInitCallback.enabled(self.args)

    @property
    def gradinit_result(self) -> GradInitResult | None:
        """The GradInit result of the current model (run here, or read from a checkpoint)."""
        if self.model is None:
            return None
        return self.gradinit_callback.result_for(self.model)

    def gradinit_config(self) -> GradInitConfig:
        """The :class:`GradInitConfig` of this run (for the current learning rate and
        optimizer; hyperparameter search may have changed them)."""
        return self.gradinit_callback.config_for(self)

    def run_gradinit(self) -> GradInitResult:
        """Run GradInit on ``self.model`` now and apply the scales.

        ``train()`` calls this itself; call it directly to inspect the result before training
        (``train()`` then sees the model is initialized and does not run it again). A model
        that is already initialized is refused before any work (scales would compound).
        """
        return self.gradinit_callback.initialize(self, self.model)

    # ---- running GradInit -----------------------------------------------------------------

    def _inner_training_loop(
        self,
        batch_size: int | None = None,
        args: Any = None,
        resume_from_checkpoint: str | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> Any:
        """GradInit runs here, where the model to train is final (after ``model_init`` and
        checkpoint loading) but not yet wrapped: :meth:`GradInitCallback.run`."""
        if self.args.auto_find_batch_size and batch_size is not None:
            self._train_batch_size = batch_size  # a retry with a smaller batch
        return self.gradinit_callback.run(
            self,
            super()._inner_training_loop,
            batch_size=batch_size,
            args=args,
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
        )

    # ---- saving and the Hub ---------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Also writes gradinit_scales.json, the plot and the card into every saved folder."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        result = self.gradinit_result
        if result is not None and state_dict is not None:
            # the weights saved are this state dict's (a sharded model's full copy)
            record_in_config(self.model, result.config_entry(), result.scales, state_dict)
        super()._save(output_dir, state_dict)
        if result is not None:
            keep_current(self.model)
            if self.args.should_save:
                self._write_model_card(output_dir, **self._card_kwargs)

    def push_to_hub(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.push_to_hub``, with the folder saved first: offline, without a valid
        token or when the Hub fails, ``output_dir`` is complete (model, tokenizer, GradInit
        files, card) and one :class:`~hf_gradinit.hub.PushError` line says what failed."""
        from .hub import PushError, one_line

        if self.args.should_save:
            self.save_model(self.args.output_dir, _internal_call=True)  # no upload yet
        try:
            return super().push_to_hub(*args, **kwargs)
        except Exception as err:
            if isinstance(err, (PushError, KeyboardInterrupt)):
                raise
            raise PushError(
                f"The model was saved in {self.args.output_dir}, but pushing it to the Hub "
                f"failed ({one_line(err)}). Check the network and your token (`hf auth "
                "login`), then call push_to_hub() again."
            ) from err

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer copies only the standard model files from the checkpoint into output_dir
        before uploading it; put the GradInit files and card there too."""
        if self.gradinit_result is not None and self.is_world_process_zero():
            self._write_model_card(self.args.output_dir, **self._card_kwargs)
        super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        results: Mapping[str, Any] | None = None,
    ) -> None:
        """Writes the GradInit model card to output_dir/README.md (Trainer's card when
        GradInit did not run). ``results`` (e.g. BLEU scores) replaces the card's evaluation
        list, which otherwise comes from the log history. Later saves write the card again
        with these arguments."""
        card_kwargs = dict(
            language=language,
            license=license,
            tags=tags,
            model_name=model_name,
            finetuned_from=finetuned_from,
            tasks=tasks,
            dataset_tags=dataset_tags,
            dataset=dataset,
            dataset_args=dataset_args,
        )
        if self.gradinit_result is None:
            super().create_model_card(**card_kwargs)
            return
        self._card_kwargs = {**card_kwargs, "results": results}
        if self.is_world_process_zero():
            self._write_model_card(self.args.output_dir, **self._card_kwargs)

    def _write_model_card(self, folder: str, **card_kwargs: Any) -> None:
        """The GradInit files and model card (README.md) into ``folder``; ``card_kwargs``:
        the arguments of :meth:`create_model_card`."""
        result = self.gradinit_result
        os.makedirs(folder, exist_ok=True)
        cached = getattr(self, "_gradinit_png", None)
        if cached is None or cached[0] is not result:  # render once, write into every save
            cached = (result, render_scales_plot(result) or False)
            self._gradinit_png = cached
        has_plot = write_gradinit_files(folder, result, plot=cached[1])
        card = trainer_model_card(self, result, has_plot=has_plot, folder=folder, **card_kwargs)
        card.save(os.path.join(folder, CARD_FILE))


__all__ = ["GradInitArguments", "GradInitError", "GradInitTrainer", "GradInitTrainingArguments"]
