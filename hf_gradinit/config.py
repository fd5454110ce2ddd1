"""Settings of the GradInit phase: one dataclass, validated on creation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

InnerOptimizer = Literal["adam", "sgd"]
GammaUnit = Literal["absolute", "per_parameter", "init"]
ConstraintMoments = Literal["shared_second", "separate"]
HvpMethod = Literal["forward_difference", "double_backward"]

_BETAS = ("scale_betas", "inner_betas")  # pairs in [0, 1)

# Fields of earlier versions that loading a saved result ignores.
_REMOVED_FIELDS = {
    "separate_constraint_moments",
    "tied_embeddings",
    "trial_steps",
    "trial_lr",
    "trial_betas",
}


class GradInitError(RuntimeError):
    """Raised when GradInit cannot run or has to stop; the model is left untouched."""


@dataclass
class GradInitConfig:
    """How GradInit learns one positive scale per parameter tensor, and checks it.

    The defaults are the recommended settings (chosen on the development workloads of
    ``benchmarks/family_study.py``; see docs/results.md). :meth:`reference` gives the
    reference code's Post-LN Transformer recipe.

    > The simulated step

    Parameters:
        inner_optimizer: the optimizer whose step is simulated: ``"adam"`` (step
            ``eta * sign(g)``, bound on the l1 norm of g) or ``"sgd"`` (step ``eta * g``,
            l2 norm). The one you train with.
        eta: learning rate of the simulated step: the training learning rate (for SGD with
            momentum m, lr / (1 - m), the size of its steady steps).
        normalize_sgd_grad: with ``"sgd"``, step along g / ||g||_2 (the reference's CIFAR code).
        lookahead_steps: steps of the real optimizer simulated before the loss on S~ is
            taken (1: the paper).
        inner_betas, inner_eps: Adam settings of the lookahead's later steps.

    > The scales and their optimizer

    Parameters:
        iterations: GradInit iterations, one batch each.
        scale_lr: learning rate of the Adam over the scales.
        scale_betas, scale_eps, scale_grad_clip: the rest of that Adam (clip: each scale's
            gradient to [-c, c]; None: off).
        min_scale: lower bound of the scales of weights and gains (biases: 0).
        max_scale: upper bound of the scales of 1-D gains (normalization weights).
        fixed_embeddings: give no scale to ``nn.Embedding`` weights.
        overlap: fraction of the sub-batch S that S~ shares (0.5: thirds, the reference).
        seed: seed of the batch splits.

    > The gradient-norm bound

    Parameters:
        gamma: bound on the gradient norm, in ``gamma_unit`` units; None: no bound.
        gamma_unit: ``"absolute"``, ``"per_parameter"`` or ``"init"`` (times the norm at
            the original init).
        constraint_moments: the bound's steps' optimizer state (``"shared_second"``: the
            reference's CIFAR code; ``"separate"``: its fairseq code).
        hvp: the bound's gradient: ``"forward_difference"`` (no double backward) or
            ``"double_backward"`` (exact).

    > The probe: is the learned init better than the original?

    Parameters:
        probe_steps: steps of the real optimizer taken from the learned and from the original
            init on the same batches; the learned scales are dropped if training from them is
            behind (0: no probe, always keep them). In a trainer, at most the run's steps.
        probe_margin: how far behind (relative loss over the probe's last quarter, on top of
            1% of the first loss) the learned init may be and still be kept.

    > Failures

    Parameters:
        on_nonfinite: ``"raise"`` (stop, model untouched) or ``"skip"`` a batch whose loss or
            gradient is not finite.
        max_skipped: non-finite batches tolerated in a row with ``"skip"``.
    """

    inner_optimizer: InnerOptimizer = field(
        default="adam",
        metadata={
            "help": "Optimizer whose step is simulated: 'adam' or 'sgd' (the one you train with)."
        },
    )
    eta: float = field(
        default=1e-3,
        metadata={"help": "Learning rate of the simulated step: the training learning rate."},
    )
    normalize_sgd_grad: bool = field(
        default=False, metadata={"help": "With 'sgd', step along g / ||g||_2."}
    )
    scale_lr: float = field(
        default=2.5e-3,
        metadata={"help": "Learning rate of the Adam over the scales (the reference's 2.5e-3)."},
    )
    iterations: int = field(default=200, metadata={"help": "GradInit iterations (one batch each)."})
    gamma: float | None = field(
        default=None,
        metadata={
            "help": "Bound on the gradient norm at the init, in gamma_unit units (None: none)."
        },
    )
    gamma_unit: GammaUnit = field(
        default="init",
        metadata={
            "help": "'absolute', 'per_parameter' (x N or sqrt N) or 'init' (x the norm at init)."
        },
    )
    min_scale: float = field(
        default=0.01, metadata={"help": "Lower bound of the scales of weights and gains."}
    )
    max_scale: float = field(
        default=100.0, metadata={"help": "Upper bound of the scales of normalization gains."}
    )
    scale_betas: tuple[float, float] = field(
        default=(0.9, 0.98), metadata={"help": "Adam betas of the scale optimizer."}
    )
    scale_eps: float = field(default=1e-8, metadata={"help": "Adam eps of the scale optimizer."})
    scale_grad_clip: float | None = field(
        default=None, metadata={"help": "Clip each scale's gradient to [-c, c] (None: off)."}
    )
    constraint_moments: ConstraintMoments = field(
        default="shared_second",
        metadata={"help": "The bound's steps' Adam state: 'shared_second' or 'separate'."},
    )
    hvp: HvpMethod = field(
        default="forward_difference",
        metadata={
            "help": "The bound's gradient: 'forward_difference' or 'double_backward' (exact)."
        },
    )
    lookahead_steps: int = field(
        default=1,
        metadata={"help": "Optimizer steps simulated before the loss on S~ (1: the paper)."},
    )
    inner_betas: tuple[float, float] = field(
        default=(0.9, 0.98), metadata={"help": "Adam betas of the lookahead's later steps."}
    )
    inner_eps: float = field(default=1e-8, metadata={"help": "Adam eps of the lookahead's steps."})
    overlap: float = field(
        default=0.5, metadata={"help": "Fraction of S that S~ shares (0.5: thirds, the reference)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the batch splits."})
    fixed_embeddings: bool = field(
        default=True, metadata={"help": "Give no scale to nn.Embedding weights."}
    )
    probe_steps: int = field(
        default=300,
        metadata={
            "help": "Real optimizer steps from the learned and from the original init; the "
            "learned scales are dropped if behind (0: no probe)."
        },
    )
    probe_margin: float = field(
        default=0.0,
        metadata={"help": "How far behind (relative loss) the learned init may be and be kept."},
    )
    on_nonfinite: Literal["raise", "skip"] = field(
        default="raise",
        metadata={"help": "A non-finite loss or gradient: 'raise' (model untouched) or 'skip'."},
    )
    max_skipped: int = field(
        default=10, metadata={"help": "Non-finite batches tolerated in a row with 'skip'."}
    )

    def __post_init__(self) -> None:
        for name in _BETAS:  # JSON/YAML give lists
            setattr(self, name, tuple(getattr(self, name)))
        problems = []

        def choice(name: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, name) not in allowed:
                options = " or ".join(repr(a) for a in allowed)
                problems.append(f"{name} must be {options}, got {getattr(self, name)!r}")

        def integer(name: str, low: int) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                problems.append(f"{name} must be an integer >= {low}, got {value!r}")

        choice("inner_optimizer", ("adam", "sgd"))
        choice("gamma_unit", ("absolute", "per_parameter", "init"))
        choice("constraint_moments", ("shared_second", "separate"))
        choice("hvp", ("forward_difference", "double_backward"))
        choice("on_nonfinite", ("raise", "skip"))
        for name in ("eta", "scale_lr", "min_scale", "max_scale", "scale_eps", "inner_eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a positive finite number, got {value!r}")
        integer("iterations", 1)
        integer("lookahead_steps", 1)
        integer("probe_steps", 0)
        integer("max_skipped", 0)
        if self.gamma is not None and not (math.isfinite(self.gamma) and self.gamma > 0):
            problems.append(f"gamma must be positive (or None for no bound), got {self.gamma!r}")
        if (
            isinstance(self.min_scale, (int, float))
            and isinstance(self.max_scale, (int, float))
            and self.min_scale > self.max_scale
        ):
            problems.append(
                f"min_scale ({self.min_scale}) must not exceed max_scale ({self.max_scale})"
            )
        for name in _BETAS:
            betas = getattr(self, name)
            if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
                problems.append(f"{name} must be two numbers in [0, 1), got {betas!r}")
        if self.scale_grad_clip is not None and not self.scale_grad_clip > 0:
            problems.append(f"scale_grad_clip must be positive or None, got {self.scale_grad_clip}")
        if not 0 <= self.overlap <= 1:
            problems.append(f"overlap must be in [0, 1], got {self.overlap!r}")
        if not (isinstance(self.probe_margin, (int, float)) and 0 <= self.probe_margin < 1):
            problems.append(f"probe_margin must be in [0, 1), got {self.probe_margin!r}")
        if problems:
            raise ValueError("Invalid GradInitConfig: " + "; ".join(problems) + ".")

    @classmethod
    def reference(cls, learning_rate: float, **overrides: Any) -> GradInitConfig:
        """The reference's Post-LN Transformer recipe (fairseq IWSLT'14 script of
        zhuchen03/gradinit), for a run that trains with Adam at ``learning_rate``.

        * ``eta`` = 2 x ``learning_rate`` (the script: eta 1e-3 for lr 5e-4);
        * 780 iterations at scale lr 2.5e-3, scale betas (0.9, 0.98), eps 1e-8, no clipping;
        * min scale 0.01, max scale 100 for normalization gains, biases >= 0;
        * an l1 bound of 2.5e-5 per parameter: the script leaves fairseq's default gamma
          1000 for a ~39.5M-parameter model (1000 / 39.5M ~ 2.5e-5);
        * S and S~ = the first and last two thirds of each batch (``overlap`` 0.5);
        * the bound's steps with their own Adam state (``constraint_moments="separate"``);
        * every tensor scaled, embedding tables too; no probe.

        The loss is the one training computes (the reference's is label-smoothed 0.1): pass
        it with ``loss_fn`` (the trainer uses its own loss). ``overrides`` replace any field.
        """
        values: dict[str, Any] = dict(
            inner_optimizer="adam",
            eta=2.0 * learning_rate,
            iterations=780,
            scale_lr=2.5e-3,
            scale_betas=(0.9, 0.98),
            scale_eps=1e-8,
            scale_grad_clip=None,
            gamma=2.5e-5,
            gamma_unit="per_parameter",
            min_scale=0.01,
            max_scale=100.0,
            overlap=0.5,
            constraint_moments="separate",
            lookahead_steps=1,
            fixed_embeddings=False,
            probe_steps=0,
        )
        values.update(overrides)
        return cls(**values)

    @property
    def norm_type(self) -> Literal["l1", "l2"]:
        """The gradient norm bounded for this inner optimizer (l1 for Adam, l2 for SGD)."""
        return "l1" if self.inner_optimizer == "adam" else "l2"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in _BETAS:
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GradInitConfig:
        """The config of ``to_dict`` (also of files written by earlier versions)."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in _REMOVED_FIELDS}
        if d.get("hvp") == "central_difference":  # removed; the nearest method
            d["hvp"] = "forward_difference"
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown GradInitConfig fields: {unknown}. Known: {sorted(known)}.")
        return cls(**d)
