"""GradInit on any model: learn the scales (:func:`compute_gradinit_scales`), or learn and
apply them (:func:`apply_gradinit`).

This layer connects the torch-only algorithm (:mod:`hf_gradinit.core`) to the Hugging Face
stack: Accelerate for the device and for averaging across processes, datasets and
collators for the batches, tqdm for progress. Data flows one way: dataset -> batches
(:mod:`.data`) -> scales (:mod:`.core`) -> :class:`~hf_gradinit.GradInitResult` -> weights
and ``config.gradinit`` (:mod:`.record`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .config import GradInitConfig, GradInitError
from .core.batches import cycle
from .core.loop import learn_scales
from .core.probe import MakeOptimizer, probe
from .core.problem import ComputeLoss, ScaledModel, gradinit_mode, model_device
from .core.selection import tensor_kind
from .data import make_dataloader
from .record import check_not_initialized, loaded_weights_reason
from .result import GradInitResult, unwrap_model

logger = logging.getLogger(__name__)

# loss_fn(outputs, batch) -> scalar, for models whose outputs carry no loss.
LossFn = Callable[[Any, Mapping[str, Any]], torch.Tensor]


def check_model(model: nn.Module) -> None:
    """Raise a :class:`GradInitError` for a model GradInit cannot work on."""
    params = list(model.parameters())
    if any(p.is_meta for p in params):
        raise GradInitError(
            "The model has parameters on the meta device (not materialized). Load or create "
            "it with real weights (e.g. without `device_map='meta'` / init_empty_weights)."
        )
    if not any(p.requires_grad for p in params):
        raise GradInitError("The model has no trainable parameters: nothing for GradInit to scale.")
    # Sharded parameters (FSDP2 DTensors, FSDP1 flat parameters, ZeRO-3 partitions) are
    # not whole tensors here. Before wrapping (where GradInitTrainer runs it) they are.
    if any(type(p).__name__ in ("DTensor", "FlatParameter") or hasattr(p, "ds_id") for p in params):
        raise GradInitError(
            "GradInit needs every full parameter tensor on each process and does not run on "
            "FSDP/DeepSpeed-sharded models. Run it before sharding: use GradInitTrainer "
            "(which runs it before wrapping), or `hf-gradinit init` to save an initialized "
            "checkpoint, then train from it with your sharded setup."
        )


def _reduce_for(accelerator: Any) -> Callable[[list[torch.Tensor]], None] | None:
    """Averages tensors in place across processes; None on one process."""
    if accelerator is None or getattr(accelerator, "num_processes", 1) == 1:
        return None
    from accelerate.utils import reduce  # works with an Accelerator or a PartialState

    def mean_(tensors: list[torch.Tensor]) -> None:
        flat = reduce(torch.cat([t.reshape(-1) for t in tensors]), reduction="mean")
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    return mean_


def _tied_records(problem: ScaledModel, scales: Mapping[str, float]) -> dict[str, dict]:
    """Each tensor tied across input embeddings and output projection: its names, 'shared'
    (one learned scale) or 'fixed' (no scale), and its scale."""
    return {
        name: {
            "names": list(group),
            "mode": "shared" if name in scales else "fixed",
            "scale": scales.get(name, 1.0),
        }
        for name, group in problem.tied.items()
    }


def _objective_improved(history: list[dict[str, Any]], window: int = 10) -> bool:
    """Whether the loss after the simulated step fell from GradInit's first iterations to its
    last (means over ``window`` objective iterations at each end)."""
    after = [h["loss_after_step"] for h in history if h["loss_after_step"] is not None]
    if len(after) < 2 * window:
        return True  # too few objective steps to tell (e.g. most in the bound's branch)
    return sum(after[-window:]) < sum(after[:window])


def compute_gradinit_scales(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    config: GradInitConfig | None = None,
    *,
    accelerator: Any = None,
    loss_fn: LossFn | None = None,
    compute_loss: ComputeLoss | None = None,
    probe_optimizer: MakeOptimizer | None = None,
    show_progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> GradInitResult:
    """Learn the GradInit scales of ``model`` from ``batches``; the model is not modified.

    Args:
        model: any ``nn.Module`` whose output has a loss (or see ``loss_fn``); a
            ``torch.compile`` or DDP wrapper is looked through (scales are named after the
            model inside).
        batches: dicts of tensors, re-iterated as often as needed; each batch is split into
            S and S~ (:func:`~hf_gradinit.core.batches.split_batch`), a batch of one is
            skipped.
        config: the settings (default :class:`GradInitConfig`).
        accelerator: an ``accelerate`` Accelerator or PartialState: the device and, with
            several processes, the averaging that gives every process the same scales.
        loss_fn: ``loss_fn(outputs, batch) -> scalar`` for models that return no loss.
        compute_loss: ``compute_loss(model, batch) -> scalar``, the whole loss computation
            (the trainer passes its own ``compute_loss``); overrides ``loss_fn``.
        probe_optimizer: ``make([(name, tensor), ...]) -> optimizer``, the optimizer of the
            probe (default: Adam or SGD at ``config.eta``).
        show_progress: a progress bar on the main process.
        callback: called with each iteration's record.

    Returns:
        A :class:`GradInitResult`. When the probe keeps the original init, every scale is 1
        and ``result.probe["reason"]`` says why.

    Raises:
        GradInitError: the model, the data or the loss do not allow GradInit.
    """
    config = config or GradInitConfig()
    model = unwrap_model(model)
    check_model(model)
    if compute_loss is None and loss_fn is not None:

        def compute_loss(m: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
            return loss_fn(m(**batch), batch)

    device = accelerator.device if accelerator is not None else model_device(model)
    is_main = getattr(accelerator, "is_local_main_process", True) if accelerator else True
    world = getattr(accelerator, "num_processes", 1) if accelerator else 1
    reduce = _reduce_for(accelerator)
    start = time.perf_counter()
    problem = ScaledModel(model, device, compute_loss, config.fixed_embeddings)

    from tqdm.auto import tqdm

    total = config.iterations + 2 * config.probe_steps
    progress = tqdm(total=total, desc="GradInit", disable=not (show_progress and is_main))

    def on_iteration(entry: dict[str, Any]) -> None:
        progress.update(1)
        progress.set_postfix(
            loss=f"{entry['loss']:.3f}", norm=f"{entry['grad_norm']:.4g}", refresh=False
        )
        if callback is not None:
            callback(entry)

    data = cycle(batches)
    probe_record = None
    try:
        exact_bound = config.hvp == "double_backward" and config.gamma is not None
        with gradinit_mode(model, device, double_backward=exact_bound):
            out = learn_scales(problem, data, config, reduce=reduce, on_iteration=on_iteration)
        scales = out.scales
        with gradinit_mode(model, device, training=True):
            if config.probe_steps > 0:
                progress.set_description("GradInit probe")
                probe_record = probe(
                    problem,
                    scales,
                    data,
                    config,
                    probe_optimizer,
                    reduce,
                    on_step=lambda: progress.update(1),
                    objective_improved=_objective_improved(out.history),
                )
    finally:
        progress.close()
    if probe_record is not None and probe_record["decision"] != "learned":
        scales = dict.fromkeys(scales, 1.0)
        if is_main:
            logger.warning(
                "GradInit kept the original init: %s. The model is left as it was.",
                probe_record["reason"],
            )
    tied = _tied_records(problem, scales)
    scaled_tied = [t["names"] for t in tied.values() if t["mode"] == "shared"]
    if scaled_tied and is_main:
        warnings.warn(
            "GradInit scaled a tensor that is both an input embedding and the output "
            f"projection ({' = '.join(scaled_tied[0])}). One scale for those uses stalled "
            "training on a toy task (docs/results.md); fixed_embeddings=True (the default) "
            "leaves embedding tables unscaled.",
            UserWarning,
            stacklevel=2,
        )
    aliases = {s.name: list(s.aliases) for s in problem.scaled if s.aliases}
    aliases.update({n: list(g[1:]) for n, g in problem.tied.items() if n in scales})
    return GradInitResult(
        scales=scales,
        config=config,
        history=out.history,
        kinds={n: tensor_kind(n, problem.w0[n]) for n in scales},
        aliases=aliases,
        gamma_value=out.gamma_value,
        runtime_s=time.perf_counter() - start,
        num_processes=world,
        tied=tied,
        probe=probe_record,
        unsplittable_batches=out.unsplittable_batches,
    )


def apply_gradinit(
    model: nn.Module,
    data: Any,
    config: GradInitConfig | None = None,
    *,
    data_collator: Callable | None = None,
    batch_size: int = 24,
    accelerator: Any = None,
    loss_fn: LossFn | None = None,
    probe_optimizer: MakeOptimizer | None = None,
    show_progress: bool = True,
) -> GradInitResult:
    """Learn GradInit scales for ``model`` on ``data`` and bake them into its weights.

    Args:
        model: any ``nn.Module`` whose output has a loss (``outputs.loss``, ``outputs["loss"]``
            or a scalar tensor), or pair it with ``loss_fn``.
        data: a ``datasets.Dataset`` (columns the model does not take are dropped), a torch
            Dataset or IterableDataset, or a DataLoader, giving dicts of tensors with labels.
        config: the :class:`GradInitConfig`; set ``eta`` from your training learning rate.
        data_collator: turns a list of examples into a batch (default: transformers'
            ``default_data_collator``); use ``DataCollatorForSeq2Seq`` for seq2seq data.
        batch_size: examples per GradInit batch (per process); it is split into S and S~.
        accelerator: an ``accelerate.Accelerator`` (or ``PartialState``) for the device and
            multi-process runs; by default the current one. The model is moved to its device.
        loss_fn: ``loss_fn(outputs, batch) -> scalar`` for models that return no loss.
        probe_optimizer: the probe's optimizer (see :func:`compute_gradinit_scales`).
        show_progress: a progress bar on the main process.

    Returns:
        A :class:`GradInitResult`. The model is changed only at the very end; if anything
        fails before, its weights are exactly as they were. An HF model gets
        ``config.gradinit``; one that already matches it is refused before any work.

    Raises:
        GradInitError: the model, the data or the loss do not allow GradInit, or the model
            is already initialized.
    """
    model = unwrap_model(model)
    check_not_initialized(model, warn_stale=True)
    loaded = loaded_weights_reason(model)
    if loaded:
        warnings.warn(
            f"apply_gradinit on a model whose weights are not an init: {loaded}. GradInit "
            "rescales them all (adapters and trained weights alike); it is meant for a model "
            "built from a config.",
            UserWarning,
            stacklevel=2,
        )
    if accelerator is None:
        from accelerate import PartialState

        accelerator = PartialState()
    config = config or GradInitConfig()
    check_model(model)
    world = getattr(accelerator, "num_processes", 1)
    loader = make_dataloader(
        model,
        data,
        batch_size=batch_size,
        data_collator=data_collator,
        seed=config.seed,
        num_processes=world,
    )
    if world > 1:
        from accelerate.data_loader import prepare_data_loader

        loader = prepare_data_loader(
            loader,
            device=accelerator.device,
            num_processes=world,
            process_index=accelerator.process_index,
            put_on_device=True,
        )
    original_device = model_device(model)
    model.to(accelerator.device)
    try:
        result = compute_gradinit_scales(
            model,
            loader,
            config,
            accelerator=accelerator,
            loss_fn=loss_fn,
            probe_optimizer=probe_optimizer,
            show_progress=show_progress,
        )
        result.apply(model)
    except BaseException:
        model.to(original_device)
        raise
    return result
