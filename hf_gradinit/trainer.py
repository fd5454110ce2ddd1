"""``GradInitTrainer``: a ``Seq2SeqTrainer`` that runs GradInit once before training.

Used exactly like ``Seq2SeqTrainer`` / ``Seq2SeqTrainingArguments``; the GradInit settings are
``gradinit_*`` fields of :class:`GradInitTrainingArguments` (``--gradinit_iterations 200``,
``--no_gradinit`` on the command line through ``HfArgumentParser``).

What the trainer adds, and where (the fewest overrides that do it):

* ``_inner_training_loop``: the one place where the model to train is final (after
  ``model_init``, hyperparameter-search setup and checkpoint loading) but not yet wrapped
  and without an optimizer. GradInit runs there on batches of the trainer's own training
  pipeline (``get_train_dataloader()``: its collator, sampler and device placement; random
  order instead of transformers' length grouping, see ``_gradinit_dataloader``). It is
  skipped when resuming from a checkpoint (whose weights are already initialized; its
  ``gradinit_scales.json`` is read back instead) and for a model that is already
  initialized: its ``config.gradinit`` matches its weights (a second ``train()`` call, a
  checkpoint made by ``hf-gradinit init`` or saved by this trainer). A stale record (a fresh
  random model built from an initialized checkpoint's config) is dropped and GradInit runs;
  see :mod:`hf_gradinit.record`. With ``model_init`` every ``train()`` builds a fresh random
  model, which is initialized again.
* a callback's ``on_train_begin`` logs the GradInit metrics: ``train()`` creates a new
  ``TrainerState`` after GradInit ran, so logging earlier would be lost.
* ``_save``, ``_push_from_checkpoint`` and ``create_model_card``: the scales file, the plot,
  ``config.gradinit`` and a GradInit model card (README.md) go with every save and every
  push.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import re
import warnings
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainerCallback

from . import hub, record
from .config import GradInitConfig, GradInitError
from .data import label_safe_collator
from .gradinit import GradInitResult, LossFn, compute_gradinit_scales

logger = logging.getLogger(__name__)

_CORE_FIELDS = {f.name: f for f in dataclasses.fields(GradInitConfig)}


def _core(name: str, *, default: Any = dataclasses.MISSING, help: str | None = None) -> Any:
    """A ``gradinit_<name>`` field that takes its default and help text from GradInitConfig.

    Keeps the core's defaults in one place; only the trainer's own choices are written here.
    """
    core = _CORE_FIELDS[name]
    value = core.default if default is dataclasses.MISSING else default
    metadata = {"help": help or core.metadata.get("help", "")}
    if isinstance(value, (list, tuple)):
        items = list(value)
        return field(default_factory=lambda: list(items), metadata=metadata)
    return field(default=value, metadata=metadata)


# Optimizers whose first step is (a constant times) sign(g), as Adam's bias-corrected first
# step is; and those whose first step is along g. Matched as substrings of `optim`.
_SIGN_STEP = ("adam", "ademamix", "lion", "adagrad", "rmsprop")
_GRADIENT_STEP = ("sgd", "lomo")
_APPROXIMATE = ("adafactor", "adalomo")  # factored second moments: roughly a sign step


def inner_optimizer_for(optim: Any) -> tuple[Literal["adam", "sgd"], bool]:
    """The GradInit inner optimizer that simulates ``optim``'s first step, and whether the
    match is known (False: a guess, 'adam').

    Adam-family, Lion, Adagrad and RMSprop first steps are ``c * sign(g)`` -> 'adam'; SGD and
    LOMO step along ``g`` -> 'sgd'; Adafactor's first step is close to a sign step.
    """
    name = str(getattr(optim, "value", optim)).lower()
    if any(k in name for k in _APPROXIMATE):  # before "lomo": adalomo is Adafactor-like
        return "adam", True
    if any(k in name for k in _GRADIENT_STEP):
        return "sgd", True
    if any(k in name for k in _SIGN_STEP):
        return "adam", True
    return "adam", False


def sgd_step_factor(optim_args: str | None) -> float:
    """How much larger than ``lr * g`` the steady steps of ``torch.optim.SGD`` with these
    ``optim_args`` (transformers' ``"momentum=0.9,dampening=0"`` string) are.

    SGD with momentum m steps ``lr * v`` with ``v = m * v + (1 - dampening) * g``: for a
    steady gradient ``v`` tends to ``(1 - dampening) / (1 - m) * g`` (10x for m = 0.9, with or
    without Nesterov). GradInit simulates a step of that size, not the first step ``lr * g``:
    on the shipped corpus (SGD, momentum 0.9, lr 0.1) eta = lr stalled a model that trains
    without GradInit, while eta = 10 x lr matched plain SGD on both seeds measured (README,
    Results). Returns 1.0 without momentum, or for values that cannot be read (the
    optimizer then reports them itself).
    """
    values = {}
    for pair in (optim_args or "").replace(" ", "").split(","):
        key, _, value = pair.partition("=")
        values[key] = value
    try:
        momentum = float(values.get("momentum") or 0.0)
        dampening = float(values.get("dampening") or 0.0)
    except ValueError:
        return 1.0
    if not 0 < momentum < 1 or not 0 <= dampening <= 1:
        return 1.0
    return (1 - dampening) / (1 - momentum)


_ETA_MULTIPLIER_DEFAULT = 1.0


@dataclass
class GradInitArguments:
    """The GradInit settings as ``gradinit_*`` command-line arguments.

    Shared by :class:`GradInitTrainingArguments` and ``hf-gradinit init``. The inner optimizer
    and ``eta`` are not set here directly but follow the training run's ``optim`` and
    ``learning_rate`` (see :meth:`to_gradinit_config`): GradInit tunes the init for the first
    step the real optimizer will take, so they should match it.
    """

    gradinit_recipe: Literal["default", "reference"] = field(
        default="default",
        metadata={
            "help": "'reference': the reference code's Post-LN Transformer recipe "
            "(GradInitConfig.reference: 780 iterations, scale lr 2.5e-3, an l1 bound of "
            "2.5e-5 per parameter, its fairseq scale-optimizer state, eta 2x lr) for every "
            "gradinit_* argument left at its default; arguments you set win."
        },
    )
    gradinit_iterations: int = _core(
        "iterations",
        default=200,
        help="Number of GradInit iterations (one batch each) before training. 200: in "
        "benchmarks/no_warmup_study.py 50 iterations left a Post-LN Transformer stalled at "
        "beta2 0.999 where 200 did not, and got it moving later at beta2 0.98.",
    )
    gradinit_eta_multiplier: float = field(
        default=_ETA_MULTIPLIER_DEFAULT,
        metadata={
            "help": "eta (the learning rate of the simulated first step) = this x "
            "learning_rate, unless gradinit_eta is set. 1.0: the step training will take "
            "(the paper's definition; the reference's CIFAR code). The reference's IWSLT "
            "script used 2.0 (eta 1e-3 for lr 5e-4; --gradinit_recipe reference keeps it); "
            "with 2.0 the defaults stalled toy Post-LN models at lr 2e-3 that train without "
            "GradInit, and lost to no GradInit on 1 of 5 seeds of the translation example "
            "(README, Results). With SGD momentum m (optim_args) eta is also multiplied by "
            "1 / (1 - m), the size of momentum's steady steps (see sgd_step_factor)."
        },
    )
    gradinit_eta: float | None = field(
        default=None,
        metadata={
            "help": "Set eta directly (default: gradinit_eta_multiplier x learning_rate). A "
            "value that differs from that product is used, with a warning."
        },
    )
    gradinit_inner_optimizer: Literal["adam", "sgd"] | None = field(
        default=None,
        metadata={
            "help": "Optimizer whose first step GradInit simulates (default: follows `optim`: "
            "Adam family -> adam (sign step, l1 norm), SGD -> sgd (l2 norm)). Forcing one "
            "that contradicts `optim` is allowed, with a warning."
        },
    )
    gradinit_normalize_sgd_grad: bool = _core("normalize_sgd_grad")
    gradinit_scale_lr: float = _core(
        "scale_lr",
        help="Learning rate of the Adam optimizer over the scales. 2.5e-3: the reference's; "
        "with 200 iterations a scale moves at most ~0.5 from 1. 1e-2 (the default until the "
        "no-warmup study v2) went further and was faster on the shipped corpus, but stalled "
        "a toy Post-LN Marian at lr 2e-3 that trains without GradInit (3 of 3 seeds; "
        "README, Results).",
    )
    gradinit_gamma: float | None = _core("gamma", default=None)
    gradinit_gamma_unit: Literal["absolute", "per_parameter", "init"] = _core("gamma_unit")
    gradinit_min_scale: float = _core("min_scale")
    gradinit_max_scale: float = _core("max_scale")
    gradinit_scale_betas: list[float] = _core("scale_betas")
    gradinit_scale_eps: float = _core("scale_eps")
    gradinit_scale_grad_clip: float | None = _core("scale_grad_clip")
    gradinit_constraint_moments: Literal["shared_second", "separate"] = _core("constraint_moments")
    gradinit_hvp: Literal["forward_difference", "central_difference", "double_backward"] = _core(
        "hvp"
    )
    gradinit_lookahead_steps: int = _core("lookahead_steps")
    gradinit_overlap: float = _core("overlap")
    gradinit_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of GradInit's batch splits (default: the run's `seed`)."},
    )
    gradinit_on_nonfinite: Literal["raise", "skip"] = _core("on_nonfinite")
    gradinit_max_skipped: int = _core("max_skipped")
    gradinit_tied_embeddings: Literal["shared", "fixed"] = _core("tied_embeddings")
    gradinit_fixed_embeddings: bool = _core("fixed_embeddings")
    gradinit_trial_steps: int = _core("trial_steps")
    gradinit_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Examples per GradInit batch, per device; each batch is split into the "
            "two overlapping sub-batches S and S~ (default: per_device_train_batch_size in "
            "the trainer, 24 in `hf-gradinit init`)."
        },
    )

    def __post_init__(self) -> None:
        self._check_gradinit_fields()

    def _check_gradinit_fields(self) -> None:
        problems = []
        if not (
            isinstance(self.gradinit_eta_multiplier, (int, float))
            and math.isfinite(self.gradinit_eta_multiplier)
            and self.gradinit_eta_multiplier > 0
        ):
            problems.append(
                f"gradinit_eta_multiplier must be a positive number, got {self.gradinit_eta_multiplier!r}"
            )
        if self.gradinit_inner_optimizer not in (None, "adam", "sgd"):
            problems.append(
                "gradinit_inner_optimizer must be 'adam', 'sgd' or None (follow `optim`), got "
                f"{self.gradinit_inner_optimizer!r}"
            )
        if self.gradinit_recipe not in ("default", "reference"):
            problems.append(
                f"gradinit_recipe must be 'default' or 'reference', got {self.gradinit_recipe!r}"
            )
        if self.gradinit_batch_size is not None and self.gradinit_batch_size < 2:
            problems.append(
                f"gradinit_batch_size must be >= 2 (each batch is split in two), got "
                f"{self.gradinit_batch_size}"
            )
        if problems:
            raise ValueError("Invalid GradInit arguments: " + "; ".join(problems) + ".")

    def _recipe_values(self) -> dict[str, Any]:
        """The reference recipe's value of every core field left at its argument default."""
        defaults = {
            f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(self)
        }
        recipe = GradInitConfig.reference(learning_rate=1.0).to_dict()
        out = {}
        for name, value in recipe.items():
            arg = f"gradinit_{name}"
            if name in ("eta", "seed", "inner_optimizer") or arg not in defaults:
                continue
            current = getattr(self, arg)
            same = (
                list(current) == list(defaults[arg])
                if isinstance(current, (list, tuple))
                else current == defaults[arg]
            )
            if same:
                out[name] = value
        return out

    def to_gradinit_config(
        self,
        learning_rate: float | None = None,
        optim: Any = None,
        seed: int | None = None,
        *,
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
        warn: bool = True,
        step_factor: float = 1.0,
    ) -> GradInitConfig:
        """The :class:`GradInitConfig` for a run that trains with ``optim`` at ``learning_rate``.

        eta = ``gradinit_eta`` or ``gradinit_eta_multiplier * learning_rate`` (times
        ``step_factor`` when the inner optimizer is SGD: see :func:`sgd_step_factor`);
        the inner optimizer = ``gradinit_inner_optimizer`` or the one ``optim`` implies.
        Values forced against the run's optimizer are kept, with a warning (``warn``).
        ``betas`` and ``eps`` (the run's Adam settings) are those of the simulated lookahead
        steps.
        """
        multiplier = self.gradinit_eta_multiplier
        if self.gradinit_recipe == "reference" and multiplier == _ETA_MULTIPLIER_DEFAULT:
            # the recipe's eta / lr (2: its IWSLT script), unless the user set a multiplier
            multiplier = GradInitConfig.reference(learning_rate=1.0).eta
        inner = self.gradinit_inner_optimizer
        if optim is not None:
            implied, known = inner_optimizer_for(optim)
            optim_name = str(getattr(optim, "value", optim))
            if inner is None:
                inner = implied
                if warn and not known:
                    warnings.warn(
                        f"GradInit cannot tell the first step of optim={optim_name!r}; it "
                        "simulates an Adam-like sign step. Set gradinit_inner_optimizer.",
                        UserWarning,
                        stacklevel=3,
                    )
            elif warn and known and inner != implied:
                warnings.warn(
                    f"gradinit_inner_optimizer={inner!r} contradicts optim={optim_name!r} (whose "
                    f"first step GradInit would simulate as {implied!r}); GradInit will tune the "
                    "init for an optimizer that training does not use.",
                    UserWarning,
                    stacklevel=3,
                )
        if inner == "sgd":
            multiplier *= step_factor
        expected_eta = None if learning_rate is None else multiplier * learning_rate
        if self.gradinit_eta is None:
            if expected_eta is None:
                raise ValueError(
                    "GradInit needs the training learning_rate (eta = gradinit_eta_multiplier x "
                    "learning_rate) or an explicit gradinit_eta."
                )
            eta = expected_eta
        else:
            eta = self.gradinit_eta
            if (
                warn
                and expected_eta is not None
                and not math.isclose(eta, expected_eta, rel_tol=1e-6)
            ):
                warnings.warn(
                    f"gradinit_eta={eta:g} is not the step this run takes, {multiplier:g} x "
                    f"learning_rate {learning_rate:g} = {expected_eta:g}: GradInit will tune the "
                    "init for a step of another size than training takes. Set "
                    "gradinit_eta_multiplier instead to keep them tied.",
                    UserWarning,
                    stacklevel=3,
                )
        values = {
            name: getattr(self, f"gradinit_{name}")
            for name in _CORE_FIELDS
            if hasattr(self, f"gradinit_{name}")
        }
        if self.gradinit_recipe == "reference":
            values.update(self._recipe_values())
        if betas is not None:
            values["inner_betas"] = tuple(betas)
        if eps is not None:
            values["inner_eps"] = eps
        values.update(
            eta=eta,
            inner_optimizer=inner or "adam",
            seed=next(
                s for s in (self.gradinit_seed, seed, _CORE_FIELDS["seed"].default) if s is not None
            ),
        )
        try:
            return GradInitConfig(**values)
        except ValueError as err:  # name the arguments the user actually set
            names = "|".join(sorted(_CORE_FIELDS, key=len, reverse=True))
            message = re.sub(rf"(?<![\w.])({names})(?![\w])", r"gradinit_\1", str(err))
            message = message.replace("Invalid GradInitConfig", "Invalid GradInit arguments")
            raise ValueError(message) from err


@dataclass
class GradInitTrainingArguments(GradInitArguments, Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` plus ``gradinit`` (on by default) and the ``gradinit_*``
    settings of :class:`GradInitArguments`."""

    gradinit: bool = field(
        default=True,
        metadata={
            "help": "Run GradInit once before the first optimizer step (not when resuming from "
            "a checkpoint). --no_gradinit trains exactly like Seq2SeqTrainer."
        },
    )
    gradinit_logging_steps: int | None = field(
        default=None,
        metadata={
            "help": "Log the GradInit metrics averaged over this many iterations (default: "
            "every iteration up to 100 iterations, else ~100 log entries). The full "
            "per-iteration history is always in gradinit_scales.json."
        },
    )

    def __post_init__(self) -> None:
        Seq2SeqTrainingArguments.__post_init__(self)
        self._check_gradinit_fields()
        if self.gradinit_logging_steps is not None and self.gradinit_logging_steps < 1:
            raise ValueError(
                f"gradinit_logging_steps must be >= 1, got {self.gradinit_logging_steps}."
            )
        if self.gradinit:
            self.to_gradinit_config()  # validate now, with clear messages and warnings
            check_gradinit_batch_size(self)

    def to_gradinit_config(
        self,
        learning_rate: float | None = None,
        optim: Any = None,
        seed: int | None = None,
        *,
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
        warn: bool = True,
        step_factor: float | None = None,
    ) -> GradInitConfig:
        """The :class:`GradInitConfig` of this run (eta and inner optimizer follow
        ``learning_rate``, ``optim`` and, for SGD, the momentum in ``optim_args``, unless
        set)."""
        lr = self.learning_rate if learning_rate is None else learning_rate
        config = super().to_gradinit_config(
            learning_rate=lr,
            optim=self.optim if optim is None else optim,
            seed=self.seed if seed is None else seed,
            betas=(self.adam_beta1, self.adam_beta2) if betas is None else betas,
            eps=self.adam_epsilon if eps is None else eps,
            warn=warn,
            step_factor=sgd_step_factor(self.optim_args) if step_factor is None else step_factor,
        )
        # The guard's trial trains as this run does.
        return dataclasses.replace(
            config, trial_lr=lr, trial_betas=(self.adam_beta1, self.adam_beta2)
        )


def check_gradinit_batch_size(args: Any) -> None:
    """Raise ``ValueError`` when GradInit's batches would hold one example: each batch is split
    into two sub-batches, so training would otherwise stop at GradInit's first iteration.

    The GradInit batch is ``gradinit_batch_size``, else ``per_device_train_batch_size`` (not
    the accumulated batch: accumulation is usually there because a bigger batch does not fit
    in memory, and GradInit processes its batch at once).
    """
    own = getattr(args, "gradinit_batch_size", None)
    batch = own or getattr(args, "per_device_train_batch_size", 8)
    overlap = getattr(args, "gradinit_overlap", _CORE_FIELDS["overlap"].default)
    if batch >= 2 or overlap >= 1:
        return
    accumulation = getattr(args, "gradient_accumulation_steps", 1)
    suggestion = f" (e.g. {accumulation}, the accumulated batch, if it fits in memory)"
    where = (
        "--gradinit_batch_size"
        if isinstance(args, GradInitArguments)
        else "gradinit_batch_size (use GradInitTrainingArguments)"
    )
    raise ValueError(
        "GradInit splits each batch into two overlapping sub-batches, so its batches need at "
        f"least 2 examples (3 or more is better), but per_device_train_batch_size is {batch}"
        + (
            f" (gradient_accumulation_steps {accumulation} does not change that)"
            if accumulation > 1
            else ""
        )
        + f". Set {where}"
        + (suggestion if accumulation > 1 else " to 3 or more")
        + ", or turn GradInit off (--no_gradinit)."
    )


# --------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------


def default_logging_steps(iterations: int) -> int:
    """Every iteration up to 100, else about 100 log entries."""
    return max(1, math.ceil(iterations / 100))


def gradinit_log_entries(result: GradInitResult, every: int = 1) -> list[dict[str, float]]:
    """Log entries for ``Trainer.log``: per window of ``every`` iterations the mean loss,
    gradient norm and loss after the simulated step, then one summary entry.

    ``gradinit/iteration`` counts iterations done (1..N); all entries are logged at global
    step 0, before the first training step.
    """
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
        if isinstance(v, (int, float)) and v is not None
    }
    summary["gradinit/runtime_s"] = float(result.runtime_s)
    entries.append(summary)
    return entries


def _mean(values: Any) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")


class _GradInitLogCallback(TrainerCallback):
    """Sends the queued GradInit log entries once the new TrainerState of train() exists."""

    def __init__(self, trainer: GradInitTrainer):
        self._trainer = weakref.ref(trainer)

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self._trainer()
        if trainer is None:
            return
        entries, trainer._gradinit_pending_logs = trainer._gradinit_pending_logs, []
        for entry in entries:
            trainer.log(dict(entry))


# --------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------


def _dataset_phrase(dataset: str | list[str] | None) -> str | None:
    names = hub._as_list(dataset)
    return " and ".join(f"the {n} dataset" for n in names) if names else None


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """GradInit draws data (DataLoader seeds) but leaves training's random streams as they
    were: with the same seed, gradinit on/off differ only in the initial weights."""
    py_state = random.getstate()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy ships with torch
        np, np_state = None, None
    try:
        yield
    finally:
        random.setstate(py_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        if np is not None:
            np.random.set_state(np_state)


class GradInitTrainer(Seq2SeqTrainer):
    """A ``Seq2SeqTrainer`` that initializes the model with GradInit before training.

    Takes the same arguments as ``Seq2SeqTrainer``; ``args`` should be
    :class:`GradInitTrainingArguments` (plain ``Seq2SeqTrainingArguments`` get the default
    GradInit settings). After ``train()``, ``trainer.gradinit_result`` holds the
    :class:`~hf_gradinit.GradInitResult` (None if GradInit did not run or is off).

    ``optimizer_cls_and_kwargs`` (``Trainer``'s, which ``Seq2SeqTrainer`` does not pass on)
    trains with another ``torch.optim`` class, e.g. ``(torch.optim.RAdam, {"lr": 1e-3})``.
    GradInit still simulates the optimizer that ``optim`` implies (Adam unless SGD), so
    pair such a class with ``gradinit=False`` unless its first step is Adam's or SGD's.
    """

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
        self.gradinit_result: GradInitResult | None = None
        self._gradinit_pending_logs: list[dict[str, float]] = []
        self._gradinit_models: weakref.WeakSet = weakref.WeakSet()
        self._card_kwargs: dict[str, Any] = {}  # of the last create_model_card call
        self.add_callback(_GradInitLogCallback(self))
        if not isinstance(self.args, GradInitArguments):
            logger.warning(
                "GradInitTrainer got %s, not GradInitTrainingArguments: GradInit runs with its "
                "default settings.",
                type(self.args).__name__,
            )

    # ---- settings -------------------------------------------------------------------

    @property
    def gradinit_enabled(self) -> bool:
        return bool(getattr(self.args, "gradinit", True))

    def gradinit_config(self) -> GradInitConfig:
        """The :class:`GradInitConfig` of this run (from the arguments, for the current
        learning rate and optimizer; hyperparameter search may have changed them)."""
        source = self.args if isinstance(self.args, GradInitArguments) else GradInitArguments()
        return source.to_gradinit_config(
            learning_rate=self.args.learning_rate,
            optim=self.args.optim,
            seed=self.args.seed,
            step_factor=sgd_step_factor(getattr(self.args, "optim_args", None)),
        )

    def gradinit_loss_fn(self) -> LossFn | None:
        """The loss GradInit optimizes: the model's own, or the trainer's label-smoothed one
        or ``compute_loss_func`` when set, as ``compute_loss`` does. A subclass that overrides
        ``compute_loss`` should override this too."""
        if self.compute_loss_func is None and self.label_smoother is None:
            return None
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        shift = self.model._get_name() in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()

        def loss_fn(outputs: Any, batch: Mapping[str, Any]) -> torch.Tensor:
            labels = batch.get("labels")
            if self.compute_loss_func is not None:
                return self.compute_loss_func(outputs, labels, num_items_in_batch=None)
            if labels is None:
                return outputs["loss"] if isinstance(outputs, Mapping) else outputs[0]
            return self.label_smoother(outputs, labels, shift_labels=shift)

        return loss_fn

    # ---- running GradInit -----------------------------------------------------------

    def _groups_by_length_as_transformers(self) -> bool:
        """True when training batches come from transformers' own ``LengthGroupedSampler``
        (``train_sampling_strategy="group_by_length"`` and ``_get_train_sampler`` not
        overridden by a subclass)."""
        return (
            self.args.train_sampling_strategy == "group_by_length"
            and type(self)._get_train_sampler is Trainer._get_train_sampler
        )

    def _gradinit_dataloader(self) -> Any:
        """The trainer's own training loader, at gradinit_batch_size if that is set.

        In uniformly random order where transformers would group by length: its
        ``LengthGroupedSampler`` walks each chunk of up to 50 training batches from the
        longest examples to the shortest (the longest of all first), so GradInit, which
        often sees fewer examples than a chunk holds, would get only the longest ones: a
        biased sample. A subclass's own ``_get_train_sampler`` is used as it is. Training
        keeps its length grouping.
        """
        saved = (
            self.args.train_sampling_strategy,
            self._train_batch_size,
            self.args.dataloader_drop_last,
        )
        if self._groups_by_length_as_transformers():
            self.args.train_sampling_strategy = "random"
        batch_size = getattr(self.args, "gradinit_batch_size", None)
        if batch_size is not None:
            self._train_batch_size = batch_size * max(1, self.args.n_gpu)
        # Whole batches only: a short last batch (dataset size modulo the batch size) could
        # not be split into S and S~. A dataset smaller than one batch per process gives
        # batches of all it has.
        size = self._gradinit_dataset_size()
        if size is not None:
            world = max(1, self.args.world_size)
            self._train_batch_size = max(1, min(self._train_batch_size, size // world))
            self.args.dataloader_drop_last = True
        try:
            return self.get_train_dataloader()
        finally:
            (
                self.args.train_sampling_strategy,
                self._train_batch_size,
                self.args.dataloader_drop_last,
            ) = saved

    def _gradinit_dataset_size(self) -> int | None:
        """Examples in the training set, None for an iterable dataset (no length)."""
        dataset = self.train_dataset
        if isinstance(dataset, torch.utils.data.IterableDataset):
            return None
        try:
            return len(dataset)
        except TypeError:
            return None

    def run_gradinit(self) -> GradInitResult:
        """Run GradInit on ``self.model`` now and apply the scales.

        ``train()`` calls this itself; call it directly to inspect the result before training
        (``train()`` then sees the model is initialized and does not run it again). A model
        that is already initialized is refused before any work (scales would compound).
        """
        model = self.model
        if self._already_initialized(model):
            raise GradInitError(
                "This model is already GradInit-initialized (a GradInit run of this trainer, "
                "or a model.config.gradinit that matches its weights); running GradInit again "
                "would compound the scales. Train it as it is."
            )
        config = self.gradinit_config()
        factor = sgd_step_factor(getattr(self.args, "optim_args", None))
        if config.inner_optimizer == "sgd" and factor != 1.0:
            logger.info(
                "GradInit: SGD momentum (optim_args %r): eta = %g, the size of momentum's "
                "steady steps (%g x the first)",
                self.args.optim_args,
                config.eta,
                factor,
            )
        loader = self._gradinit_dataloader()
        logger.info(
            "Running GradInit: %d iterations, inner optimizer %s, eta %g",
            config.iterations,
            config.inner_optimizer,
            config.eta,
        )
        try:
            with _rng_preserved():
                result = compute_gradinit_scales(
                    model,
                    loader,
                    config,
                    accelerator=self.accelerator,
                    loss_fn=self.gradinit_loss_fn(),
                    show_progress=not self.args.disable_tqdm and self.is_local_process_zero(),
                )
        finally:
            # Stopping midway leaves an accelerate loader registered as "active" in the
            # GradientState; end it so training's own loader is the only one.
            end = getattr(loader, "end", None)
            if callable(end):
                end()
        result.apply(model)  # also records it in model.config.gradinit
        self._gradinit_models.add(model)
        self.gradinit_result = result
        every = getattr(self.args, "gradinit_logging_steps", None)
        every = every or default_logging_steps(len(result.history))
        self._gradinit_pending_logs = gradinit_log_entries(result, every)
        summary = result.summary()
        logger.info(
            "GradInit done in %.1fs: scales %.3g..%.3g, loss after step %s -> %s",
            result.runtime_s,
            summary["scale_min"] or float("nan"),
            summary["scale_max"] or float("nan"),
            summary["first_loss_after_step"],
            summary["last_loss_after_step"],
        )
        for note in result.tied_notes():
            logger.info("GradInit: %s", note.replace("`", ""))
        return result

    def _already_initialized(self, model: Any) -> bool:
        """Initialized by this trainer, or its ``config.gradinit`` matches its weights. A stale
        record is dropped here (with a warning), so it is never trusted nor saved again."""
        if model in self._gradinit_models:
            return True
        if record.drop_stale_record(model) in ("initialized", "unverified"):
            self._gradinit_models.add(model)
            return True
        return False

    def _restore_gradinit_record(
        self, folder: str | os.PathLike, *, must_match_config: bool = False
    ) -> None:
        """Take the GradInit record of a checkpoint or of the folder the model came from
        (``must_match_config``: only if it is the run the model's ``config.gradinit`` names)."""
        path = os.path.join(str(folder), hub.SCALES_FILE)
        if not os.path.isfile(path):
            return
        try:
            result = hub.load_gradinit_result(path)
        except ValueError as err:
            logger.warning("Ignoring %s: %s", path, err)
            return
        entry = getattr(getattr(self.model, "config", None), hub.CONFIG_KEY, None)
        if must_match_config and entry and not hub.same_run(entry, result):
            logger.warning(
                "Ignoring %s: it is not the GradInit run the model's config names.", path
            )
            return
        self.gradinit_result = result
        hub.record_in_config(self.model, self.gradinit_result)
        self._gradinit_models.add(self.model)

    def _inner_training_loop(
        self,
        batch_size: int | None = None,
        args: Any = None,
        resume_from_checkpoint: str | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> Any:
        """Runs GradInit (see the module docstring for why here), then trains as usual."""
        if resume_from_checkpoint is not None:
            # The checkpoint's weights are already initialized (and trained); keep its record.
            self._restore_gradinit_record(resume_from_checkpoint)
        elif not self._already_initialized(self.model):
            if self.gradinit_enabled:
                self.run_gradinit()
        elif self.gradinit_enabled and self.gradinit_result is None:
            name = getattr(getattr(self.model, "config", None), "_name_or_path", "") or ""
            if name and os.path.isdir(name):
                self._restore_gradinit_record(name, must_match_config=True)
            logger.info("The model is already GradInit-initialized; not running GradInit again.")
        return super()._inner_training_loop(
            batch_size=batch_size,
            args=args,
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
        )

    # ---- saving and the Hub ---------------------------------------------------------

    def _write_gradinit_files(self, folder: str) -> bool:
        result = self.gradinit_result
        if result is None:
            return False
        cached = getattr(self, "_gradinit_png", None)
        if cached is None or cached[0] is not result:  # render once, write into every save
            cached = (result, hub.render_scales_plot(result) or False)
            self._gradinit_png = cached
        return hub.write_gradinit_files(folder, result, plot=cached[1])

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Also writes gradinit_scales.json (and the plot) into every saved folder."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        # Before config.json is written: the record (and its fingerprint) must describe the
        # weights saved now, which training has moved since GradInit.
        if self.gradinit_result is not None:
            hub.record_in_config(self.model, self.gradinit_result, state_dict)
        elif self.model in self._gradinit_models:
            record.refresh_fingerprint(self.model, state_dict)
        super()._save(output_dir, state_dict)
        if self.args.should_save and self.gradinit_result is not None:
            # A card wherever a model is saved, not only on a push (with the metadata of
            # the last create_model_card call).
            self._write_model_card(output_dir, **self._card_kwargs)

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
        GradInit did not run): Hub metadata, settings, scales table and plot, training
        hyperparameters and results. ``results`` (e.g. BLEU scores) replaces the card's
        evaluation list, which otherwise comes from the log history. Later saves write the
        card again with these arguments."""
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

    def _write_model_card(
        self,
        folder: str,
        *,
        tags: str | list[str] | None = None,
        results: Mapping[str, Any] | None = None,
        **card_kwargs: Any,
    ) -> None:
        """The GradInit files and the GradInit model card (README.md) into ``folder``.
        ``card_kwargs``: the other arguments of :meth:`create_model_card`."""
        from transformers.modelcard import TrainingSummary

        summary = TrainingSummary.from_trainer(
            self, tags=[tags] if isinstance(tags, str) else list(tags or []), **card_kwargs
        )
        base = summary.finetuned_from
        if not base or os.path.isdir(base):  # built from a config, or a local folder
            base = None
        output_dir = self.args.output_dir
        os.makedirs(folder, exist_ok=True)
        has_plot = self._write_gradinit_files(folder)
        model = self.accelerator.unwrap_model(self.model)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        tags_out = [*hub._as_list(summary.tags), *hub._as_list(model_type)]
        card = hub.make_model_card(
            self.gradinit_result,
            model_name=summary.model_name or os.path.basename(os.path.abspath(output_dir)),
            model_class=type(model).__name__,
            repo_id=self.hub_model_id or self.args.hub_model_id,
            trained=self.state.global_step > 0,
            language=summary.language,
            license=summary.license,
            datasets=summary.dataset_tags,
            tags=tags_out,
            base_model=base,
            pipeline_tag=summary.tasks if isinstance(summary.tasks, str) else None,
            training_hyperparameters=summary.hyperparameters,
            training_results=summary.eval_lines,
            eval_results=dict(results) if results is not None else summary.eval_results,
            plot_file=hub.PLOT_FILE if has_plot else None,
            data_description=_dataset_phrase(summary.dataset),
            optim=str(getattr(self.args.optim, "value", self.args.optim)),
            learning_rate=self.args.learning_rate,
        )
        card.save(os.path.join(folder, hub.CARD_FILE))


__all__ = [
    "GradInitArguments",
    "GradInitError",
    "GradInitTrainer",
    "GradInitTrainingArguments",
    "default_logging_steps",
    "gradinit_log_entries",
    "inner_optimizer_for",
]
