"""The GradInit settings as ``gradinit_*`` training arguments, and the one place where a
training run's optimizer and learning rate become GradInit's ``eta`` and inner optimizer.

:class:`GradInitArguments` is shared by :class:`GradInitTrainingArguments` (the trainer and
the callback) and ``hf-gradinit init``; ``HfArgumentParser`` turns every field into a
command-line option (``--gradinit_iterations 200``, ``--no_gradinit``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import Seq2SeqTrainingArguments

from .config import GradInitConfig

_CORE_FIELDS = {f.name: f for f in dataclasses.fields(GradInitConfig)}


def _core(name: str) -> Any:
    """A ``gradinit_<name>`` field with GradInitConfig's default and help text."""
    core = _CORE_FIELDS[name]
    metadata = {"help": core.metadata.get("help", "")}
    if isinstance(core.default, (list, tuple)):
        items = list(core.default)
        return field(default_factory=lambda: list(items), metadata=metadata)
    return field(default=core.default, metadata=metadata)


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
    without Nesterov). GradInit simulates a step of that size: eta = lr stalled a model on the
    shipped corpus that trains without GradInit (docs/results.md). Returns 1.0 without
    momentum, or for values that cannot be read (the optimizer then reports them itself).
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


@functools.cache
def _reference_recipe() -> GradInitConfig:
    """The reference recipe for a learning rate of 1 (its eta is then the multiplier)."""
    return GradInitConfig.reference(learning_rate=1.0)


@dataclass
class GradInitArguments:
    """The GradInit settings as ``gradinit_*`` arguments.

    ``eta`` and the inner optimizer are not set directly: they follow the run's
    ``learning_rate``, ``optim`` and ``optim_args`` (:meth:`to_gradinit_config`), since
    GradInit tunes the init for the step the real optimizer takes. Every other field is the
    :class:`~hf_gradinit.GradInitConfig` field of the same name without ``gradinit_``.
    """

    gradinit_recipe: Literal["default", "reference"] = field(
        default="default",
        metadata={
            "help": "'reference': the reference code's Post-LN Transformer recipe "
            "(GradInitConfig.reference) for every gradinit_* argument left at its default."
        },
    )
    gradinit_eta_multiplier: float = field(
        default=1.0,
        metadata={
            "help": "eta = this x learning_rate (x 1 / (1 - momentum) for SGD with momentum), "
            "unless gradinit_eta is set."
        },
    )
    gradinit_eta: float | None = field(
        default=None, metadata={"help": "Set eta directly (warns if it is not the run's step)."}
    )
    gradinit_inner_optimizer: Literal["adam", "sgd"] | None = field(
        default=None,
        metadata={"help": "The simulated optimizer (default: follows `optim`)."},
    )
    gradinit_iterations: int = _core("iterations")
    gradinit_scale_lr: float = _core("scale_lr")
    gradinit_normalize_sgd_grad: bool = _core("normalize_sgd_grad")
    gradinit_gamma: float | None = _core("gamma")
    gradinit_gamma_unit: Literal["absolute", "per_parameter", "init"] = _core("gamma_unit")
    gradinit_min_scale: float = _core("min_scale")
    gradinit_max_scale: float = _core("max_scale")
    gradinit_scale_betas: list[float] = _core("scale_betas")
    gradinit_scale_eps: float = _core("scale_eps")
    gradinit_scale_grad_clip: float | None = _core("scale_grad_clip")
    gradinit_constraint_moments: Literal["shared_second", "separate"] = _core("constraint_moments")
    gradinit_hvp: Literal["forward_difference", "double_backward"] = _core("hvp")
    gradinit_lookahead_steps: int = _core("lookahead_steps")
    gradinit_overlap: float = _core("overlap")
    gradinit_fixed_embeddings: bool = _core("fixed_embeddings")
    gradinit_probe_steps: int = _core("probe_steps")
    gradinit_probe_margin: float = _core("probe_margin")
    gradinit_on_nonfinite: Literal["raise", "skip"] = _core("on_nonfinite")
    gradinit_max_skipped: int = _core("max_skipped")
    gradinit_seed: int | None = field(
        default=None, metadata={"help": "Seed of GradInit's batch splits (default: `seed`)."}
    )
    gradinit_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Examples per GradInit batch and device, split into S and S~ (default: "
            "per_device_train_batch_size; 24 in `hf-gradinit init`)."
        },
    )

    def __post_init__(self) -> None:
        self._check_gradinit_fields()

    def _check_gradinit_fields(self) -> None:
        problems = []
        m = self.gradinit_eta_multiplier
        if not (isinstance(m, (int, float)) and math.isfinite(m) and m > 0):
            problems.append(f"gradinit_eta_multiplier must be a positive number, got {m!r}")
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
                "gradinit_batch_size must be >= 2 (each batch is split in two), got "
                f"{self.gradinit_batch_size}"
            )
        if problems:
            raise ValueError("Invalid GradInit arguments: " + "; ".join(problems) + ".")

    def _core_values(self) -> dict[str, Any]:
        """GradInitConfig fields from the gradinit_* arguments (the recipe's where asked)."""
        values = {
            name: getattr(self, f"gradinit_{name}")
            for name in _CORE_FIELDS
            if hasattr(self, f"gradinit_{name}") and name not in ("eta", "inner_optimizer", "seed")
        }
        if self.gradinit_recipe == "reference":
            recipe = _reference_recipe().to_dict()
            for name, value in values.items():
                default = _CORE_FIELDS[name].default
                same = list(value) == list(default) if isinstance(value, list) else value == default
                if same:
                    values[name] = recipe[name]
        return values

    def to_gradinit_config(
        self,
        learning_rate: float | None = None,
        optim: Any = None,
        seed: int | None = None,
        *,
        optim_args: str | None = None,
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
        warn: bool = True,
    ) -> GradInitConfig:
        """The :class:`GradInitConfig` for a run that trains with ``optim`` at ``learning_rate``.

        The one place eta is resolved: ``gradinit_eta``, or ``gradinit_eta_multiplier`` (2 with
        the reference recipe) x ``learning_rate``, x :func:`sgd_step_factor` of
        ``optim_args`` when the inner optimizer is SGD. The inner optimizer is
        ``gradinit_inner_optimizer`` or the one ``optim`` implies. Values forced against the
        run's optimizer are kept, with a warning (``warn``). ``betas``/``eps``: the run's
        Adam settings, used by lookahead steps.

        Raises:
            ValueError: no learning rate and no ``gradinit_eta``, or invalid values (named
                as the ``gradinit_*`` arguments).
        """
        multiplier = self.gradinit_eta_multiplier
        if self.gradinit_recipe == "reference" and multiplier == 1.0:
            multiplier = _reference_recipe().eta  # 2 x lr: its IWSLT script
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
        inner = inner or "adam"
        if inner == "sgd":
            multiplier *= sgd_step_factor(optim_args)
        expected = None if learning_rate is None else multiplier * learning_rate
        if self.gradinit_eta is None:
            if expected is None:
                raise ValueError(
                    "GradInit needs the training learning_rate (eta = gradinit_eta_multiplier x "
                    "learning_rate) or an explicit gradinit_eta."
                )
            eta = expected
        else:
            eta = self.gradinit_eta
            if warn and expected is not None and not math.isclose(eta, expected, rel_tol=1e-6):
                warnings.warn(
                    f"gradinit_eta={eta:g} is not the step this run takes, {multiplier:g} x "
                    f"learning_rate {learning_rate:g} = {expected:g}: GradInit will tune the "
                    "init for a step of another size than training takes. Set "
                    "gradinit_eta_multiplier instead to keep them tied.",
                    UserWarning,
                    stacklevel=3,
                )
        values = self._core_values()
        if betas is not None:
            values["inner_betas"] = tuple(betas)
        if eps is not None:
            values["inner_eps"] = eps
        seeds = (self.gradinit_seed, seed, _CORE_FIELDS["seed"].default)
        values.update(eta=eta, inner_optimizer=inner, seed=next(s for s in seeds if s is not None))
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
    settings of :class:`GradInitArguments`. Also usable with a plain ``Trainer`` and
    :class:`~hf_gradinit.GradInitCallback`."""

    gradinit: bool = field(
        default=True,
        metadata={
            "help": "Run GradInit once before the first optimizer step (not when resuming). "
            "--no_gradinit trains exactly like the trainer without it."
        },
    )
    gradinit_logging_steps: int | None = field(
        default=None,
        metadata={
            "help": "Log the GradInit metrics averaged over this many iterations (default: "
            "about 100 log entries)."
        },
    )
    gradinit_on_loaded_weights: bool = field(
        default=False,
        metadata={
            "help": "Run GradInit on weights loaded from a checkpoint (from_pretrained) or on a "
            "PEFT model. Off: GradInit is an init, and a fine-tuning run skips it with a log line."
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
        **kwargs: Any,
    ) -> GradInitConfig:
        """As :meth:`GradInitArguments.to_gradinit_config`; what is not given is this run's
        (learning rate, optim, seed, optim_args, Adam betas and eps)."""
        kwargs.setdefault("optim_args", self.optim_args)
        kwargs.setdefault("betas", (self.adam_beta1, self.adam_beta2))
        kwargs.setdefault("eps", self.adam_epsilon)
        return super().to_gradinit_config(
            self.learning_rate if learning_rate is None else learning_rate,
            self.optim if optim is None else optim,
            self.seed if seed is None else seed,
            **kwargs,
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
