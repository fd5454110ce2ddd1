"""What GradInit takes from a ``transformers.Trainer``: its loss, its optimizer, its data
pipeline and the number of steps it will train. Used by :class:`~hf_gradinit.GradInitCallback`
and :class:`~hf_gradinit.GradInitTrainer` alike."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from .config import GradInitError
from .core.probe import MakeOptimizer


def trainer_compute_loss(trainer: Trainer):
    """GradInit's loss: the trainer's ``compute_loss`` as training calls it, with
    ``num_items_in_batch`` counted as training counts it, on a copy of the batch."""
    count = getattr(trainer, "_get_num_items_in_batch", None)

    def compute_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        num_items = count([batch], trainer.args.device) if callable(count) else None
        return trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)

    return compute_loss


def trainer_probe_optimizer(trainer: Trainer, model: torch.nn.Module) -> MakeOptimizer:
    """The optimizer of the probe on copies: the class and settings the trainer will train
    with (an instance passed to the Trainer: its class and first group's settings), with its
    weight-decay groups.

    Raises:
        GradInitError: an optimizer that cannot train copies of the weights (LOMO and
            AdaLomo step inside backward and take the model; GaLore-style ones take their own
            parameter groups), before any work.
    """
    import inspect

    instance = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    if instance is not None:
        cls = type(instance)
        accepted = inspect.signature(cls).parameters
        kwargs = {
            k: v
            for k, v in instance.param_groups[0].items()
            if k in accepted and k not in ("params", "weight_decay")
        }
    elif getattr(trainer, "optimizer_cls_and_kwargs", None) is not None:
        cls, kwargs = trainer.optimizer_cls_and_kwargs
    else:
        cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    kwargs = dict(kwargs)
    if "model" in kwargs or "params" in kwargs:
        raise GradInitError(
            f"The probe on copies cannot train with {cls.__name__} (optim="
            f"{getattr(trainer.args, 'optim', None)!r}): it takes the model or its own "
            "parameter groups. Call trainer.train() instead of run_gradinit() (there the probe "
            "is the run itself), or set gradinit_probe_steps=0."
        )
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
    """The Trainer whose event is running ``callback`` (it is on the call stack): the
    fallback for a callback that was not given its trainer."""
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


def _default_lr(cls: type) -> float | None:
    """The ``lr`` default of an optimizer class's constructor (RAdam: 1e-3), if it has one."""
    import inspect

    try:
        default = inspect.signature(cls).parameters["lr"].default
    except (KeyError, TypeError, ValueError):
        return None
    return float(default) if isinstance(default, (int, float)) else None


def training_optimizer(trainer: Trainer) -> dict[str, Any]:
    """What the run's first optimizer step is, as ``to_gradinit_config`` keywords:
    ``learning_rate``, ``optim`` (``args.optim``, or the class name of an optimizer passed as
    ``Trainer(optimizers=(opt, sched))`` or ``optimizer_cls_and_kwargs``), ``optim_args``
    (SGD's momentum), Adam's ``betas`` and ``eps``. The one source of GradInit's eta and inner
    optimizer in a Trainer."""
    args = trainer.args
    out = {
        "learning_rate": args.learning_rate,
        "optim": getattr(args, "optim", None),
        "optim_args": getattr(args, "optim_args", None),
        "betas": (args.adam_beta1, args.adam_beta2),
        "eps": args.adam_epsilon,
    }
    optimizer = trainer.optimizer
    if optimizer is not None:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # an accelerate wrapper
        cls, settings = type(optimizer), dict(optimizer.param_groups[0])
    elif getattr(trainer, "optimizer_cls_and_kwargs", None) is not None:
        cls, settings = trainer.optimizer_cls_and_kwargs
        settings = dict(settings)
        settings.setdefault("lr", _default_lr(cls))
    else:
        return out
    lr, betas = settings.get("lr"), settings.get("betas")
    momentum, dampening = settings.get("momentum"), settings.get("dampening", 0.0)
    out.update(
        optim=cls.__name__,
        optim_args=f"momentum={momentum},dampening={dampening}" if momentum else None,
    )
    if lr is not None:
        out["learning_rate"] = float(lr)
    if betas is not None:
        out["betas"] = tuple(betas)
    if settings.get("eps") is not None:
        out["eps"] = settings["eps"]
    return out
