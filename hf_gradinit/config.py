"""Settings of the GradInit phase (one dataclass, validated on creation)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

InnerOptimizer = Literal["adam", "sgd"]
GammaUnit = Literal["absolute", "per_parameter", "init"]


class GradInitError(RuntimeError):
    """Raised when GradInit cannot run or has to stop; the model is left untouched."""


@dataclass
class GradInitConfig:
    """How GradInit learns one positive scale per parameter tensor.

    The defaults follow the reference code's Post-LN Transformer (IWSLT'14) setup, except
    for the gradient-norm bound: see ``gamma`` and ``gamma_unit``.
    """

    inner_optimizer: InnerOptimizer = field(
        default="adam",
        metadata={
            "help": "Optimizer whose first step is simulated. 'adam': step eta*sign(g) and "
            "the bound is on the l1 norm of g. 'sgd': step eta*g and the bound is on the "
            "l2 norm. Use the optimizer you will train with."
        },
    )
    eta: float = field(
        default=1e-3,
        metadata={
            "help": "Learning rate of the simulated step. Set it from the training learning "
            "rate: the reference IWSLT script uses 2x the training lr (1e-3 for lr 5e-4)."
        },
    )
    normalize_sgd_grad: bool = field(
        default=False,
        metadata={"help": "With inner_optimizer='sgd', step along g/||g||_2 (the CIFAR code)."},
    )
    scale_lr: float = field(
        default=2.5e-3, metadata={"help": "Learning rate of the Adam optimizer over the scales."}
    )
    iterations: int = field(
        default=780, metadata={"help": "Number of GradInit iterations (one batch each)."}
    )
    gamma: float | None = field(
        default=None,
        metadata={
            "help": "Bound on the gradient norm at the initialization, in `gamma_unit` units. "
            "While the norm exceeds it, an iteration lowers the norm instead of the loss. "
            "None: no bound."
        },
    )
    gamma_unit: GammaUnit = field(
        default="init",
        metadata={
            "help": "How `gamma` is read. 'absolute': the norm itself (the reference's 1000 "
            "is for a 37M-parameter model and does not transfer). 'per_parameter': gamma * N "
            "for the l1 norm, gamma * sqrt(N) for l2, N = trainable parameter count (1000 "
            "for 37M is ~2.7e-5). 'init': gamma times the norm at the original "
            "initialization (1.0 = never let the norm grow above where it started)."
        },
    )
    min_scale: float = field(
        default=0.01, metadata={"help": "Lower bound of the scales of weights (and gains)."}
    )
    max_scale: float = field(
        default=100.0,
        metadata={"help": "Upper bound of the scales of 1-D gains (normalization weights)."},
    )
    scale_betas: tuple[float, float] = field(
        default=(0.9, 0.98), metadata={"help": "Adam betas of the scale optimizer."}
    )
    scale_eps: float = field(default=1e-8, metadata={"help": "Adam eps of the scale optimizer."})
    scale_grad_clip: float | None = field(
        default=None,
        metadata={
            "help": "Clip each scale's gradient to [-c, c] (reference: 1 for CIFAR, off for "
            "the Transformer). None: no clipping."
        },
    )
    separate_constraint_moments: bool = field(
        default=True,
        metadata={
            "help": "Give the gradient-norm steps their own Adam moments (as the reference's "
            "fairseq code does) instead of sharing those of the objective steps."
        },
    )
    overlap: float = field(
        default=0.5,
        metadata={
            "help": "Fraction of the sub-batch S that S~ shares. Each batch is shuffled and "
            "split: 0.5 gives S = first two thirds, S~ = last two thirds (the reference); "
            "0 gives two disjoint halves; 1 uses the whole batch for both."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of data order and batch splits."})
    on_nonfinite: Literal["raise", "skip"] = field(
        default="raise",
        metadata={
            "help": "What to do when a loss or gradient becomes NaN/inf during GradInit: "
            "'raise' stops and leaves the model untouched; 'skip' skips that batch "
            "(at most `max_skipped` times in a row)."
        },
    )
    max_skipped: int = field(
        default=10, metadata={"help": "Consecutive non-finite batches tolerated with 'skip'."}
    )
    # ---- tied input/output embeddings and the trial guard (issue #13) ----------------
    tied_embeddings: Literal["shared", "per_use", "fixed"] = field(
        default="shared",
        metadata={
            "help": "A tensor that is the output projection and the input embedding of "
            "several modules (HF Marian/BART, tied T5: find_tied_input_output). 'shared': one "
            "scale, as any tied tensor. 'per_use': each use its own scale during GradInit, "
            "then the tensor keeps the output projection's. 'fixed': no scale (1); the "
            "other scales are learned around it."
        },
    )
    fixed_embeddings: bool = field(
        default=True,
        metadata={
            "help": "Give no scale (1) to any nn.Embedding weight: token embeddings, tied or "
            "not, and learned position tables; the other scales are learned around them. "
            "Scaling them stalled HF Marian on a toy task (one matrix for the encoder input, "
            "the decoder input and the output: the output wanted ~0.4, the encoder input ~3) "
            "and BART (its encoder positions shrank to ~0.03: the one-step objective does "
            "not see that order matters later); see benchmarks/results/toy_study.md."
        },
    )
    trial_steps: int = field(
        default=0,
        metadata={
            "help": "Guard: after learning the scales, train this many steps of the real "
            "optimizer (trial_lr, trial_betas) from the scaled and from the original init on "
            "the same batches, without touching the model, and keep the scales only if the "
            "mean loss of the last half is not worse; else try the scales to the power 0.5, "
            "else keep the original init and warn. 0: off."
        },
    )
    trial_lr: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the trial (default: eta / 2, the reference's ratio)."},
    )
    trial_betas: tuple[float, float] = field(
        default=(0.9, 0.999), metadata={"help": "Adam betas of the trial (the training run's)."}
    )

    def __post_init__(self) -> None:
        self.scale_betas = tuple(self.scale_betas)  # JSON/YAML give lists
        problems = []
        if self.inner_optimizer not in ("adam", "sgd"):
            problems.append(
                f"inner_optimizer must be 'adam' or 'sgd', got {self.inner_optimizer!r}"
            )
        for name in ("eta", "scale_lr", "min_scale", "max_scale", "scale_eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a positive finite number, got {value!r}")
        if not isinstance(self.iterations, int) or self.iterations < 1:
            problems.append(f"iterations must be an integer >= 1, got {self.iterations!r}")
        if self.gamma is not None and not (math.isfinite(self.gamma) and self.gamma > 0):
            problems.append(f"gamma must be positive (or None for no bound), got {self.gamma!r}")
        if self.gamma_unit not in ("absolute", "per_parameter", "init"):
            problems.append(
                f"gamma_unit must be 'absolute', 'per_parameter' or 'init', got {self.gamma_unit!r}"
            )
        if (
            isinstance(self.min_scale, (int, float))
            and isinstance(self.max_scale, (int, float))
            and self.min_scale > self.max_scale
        ):
            problems.append(
                f"min_scale ({self.min_scale}) must not exceed max_scale ({self.max_scale})"
            )
        if len(self.scale_betas) != 2 or not all(0 <= b < 1 for b in self.scale_betas):
            problems.append(f"scale_betas must be two numbers in [0, 1), got {self.scale_betas!r}")
        if self.scale_grad_clip is not None and not self.scale_grad_clip > 0:
            problems.append(f"scale_grad_clip must be positive or None, got {self.scale_grad_clip}")
        if not 0 <= self.overlap <= 1:
            problems.append(f"overlap must be in [0, 1], got {self.overlap!r}")
        if self.on_nonfinite not in ("raise", "skip"):
            problems.append(f"on_nonfinite must be 'raise' or 'skip', got {self.on_nonfinite!r}")
        if self.tied_embeddings not in ("shared", "per_use", "fixed"):
            problems.append(
                f"tied_embeddings must be 'shared', 'per_use' or 'fixed', got {self.tied_embeddings!r}"
            )
        if not isinstance(self.trial_steps, int) or self.trial_steps < 0:
            problems.append(f"trial_steps must be an integer >= 0, got {self.trial_steps!r}")
        if self.trial_lr is not None and not (math.isfinite(self.trial_lr) and self.trial_lr > 0):
            problems.append(f"trial_lr must be positive or None, got {self.trial_lr!r}")
        self.trial_betas = tuple(self.trial_betas)
        if len(self.trial_betas) != 2 or not all(0 <= b < 1 for b in self.trial_betas):
            problems.append(f"trial_betas must be two numbers in [0, 1), got {self.trial_betas!r}")
        if not isinstance(self.max_skipped, int) or self.max_skipped < 0:
            problems.append(f"max_skipped must be an integer >= 0, got {self.max_skipped!r}")
        if problems:
            raise ValueError("Invalid GradInitConfig: " + "; ".join(problems) + ".")

    @property
    def norm_type(self) -> Literal["l1", "l2"]:
        """The gradient norm bounded for this inner optimizer (l1 for Adam, l2 for SGD)."""
        return "l1" if self.inner_optimizer == "adam" else "l2"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scale_betas"] = list(self.scale_betas)
        d["trial_betas"] = list(self.trial_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GradInitConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown GradInitConfig fields: {unknown}. Known: {sorted(known)}.")
        return cls(**d)
