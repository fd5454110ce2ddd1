"""Settings of the GradInit phase (one dataclass, validated on creation)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

InnerOptimizer = Literal["adam", "sgd"]
GammaUnit = Literal["absolute", "per_parameter", "init"]
ConstraintMoments = Literal["shared_second", "separate"]
HvpMethod = Literal["forward_difference", "central_difference", "double_backward"]

_BETAS = ("scale_betas", "inner_betas", "trial_betas")  # pairs in [0, 1)

# Fields of earlier versions that loading a saved result ignores.
_REMOVED_FIELDS = {"separate_constraint_moments"}


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
            "rate: the step training takes (for SGD with momentum m, lr / (1 - m), the size "
            "of its steady steps; see trainer.sgd_step_factor). The reference IWSLT script "
            "uses 2x the training lr (1e-3 for lr 5e-4)."
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
        default=(0.9, 0.98),
        metadata={
            "help": "Adam betas of the scale optimizer (see constraint_moments for how its "
            "state is shared between the objective's and the bound's steps)."
        },
    )
    scale_eps: float = field(default=1e-8, metadata={"help": "Adam eps of the scale optimizer."})
    scale_grad_clip: float | None = field(
        default=None,
        metadata={
            "help": "Clip each scale's gradient to [-c, c] (reference: 1 for CIFAR, off for "
            "the Transformer). None: no clipping."
        },
    )
    constraint_moments: ConstraintMoments = field(
        default="shared_second",
        metadata={
            "help": "Scale-optimizer state of the bound's steps. 'shared_second' (the "
            "reference's CIFAR RescaleAdam): own first moment and step count, second moment "
            "shared with the objective's steps and bias-corrected by the total step count. "
            "'separate' (its fairseq RescaleAdam): two independent Adams sharing only the "
            "scales."
        },
    )
    hvp: HvpMethod = field(
        default="forward_difference",
        metadata={
            "help": "How the bound's branch gets the gradient of the gradient norm, "
            "<w0, H d> (H the loss Hessian, d = dnorm/dg). 'forward_difference': "
            "(g(theta + r d) - g(theta)) / r, one extra forward/backward pass, no graph "
            "through g, so fused SDPA / flash-attention kernels work; 'central_difference': "
            "two extra passes, more accurate in float32; 'double_backward': exact, "
            "differentiates through g (math attention kernel, ~2.6x a step's memory)."
        },
    )
    lookahead_steps: int = field(
        default=1,
        metadata={
            "help": "Number of early steps of the real optimizer simulated before the loss "
            "on S~ is taken (1: the paper). Step j's direction is computed at the current "
            "simulated point on its own batch and detached, as the paper detaches the first; "
            "Adam steps use inner_betas. Costs one more forward/backward pass per extra step."
        },
    )
    inner_betas: tuple[float, float] = field(
        default=(0.9, 0.98),
        metadata={
            "help": "Adam betas of the simulated optimizer; only used by lookahead steps "
            "after the first (whose Adam step is eta * sign(g) whatever the betas)."
        },
    )
    inner_eps: float = field(
        default=1e-8, metadata={"help": "Adam eps of the simulated optimizer (lookahead)."}
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
    tied_embeddings: Literal["shared", "fixed"] = field(
        default="shared",
        metadata={
            "help": "A tensor that is the output projection and the input embedding of "
            "several modules (HF Marian/BART, tied T5: find_tied_input_output). 'shared': one "
            "scale, as any tied tensor. 'fixed': no scale (1); the other scales are learned "
            "around it. (Only matters with fixed_embeddings=False.) One scale per use, then "
            "the output's kept, was measured and dropped: it stalled one of two toy seeds."
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
        for name in _BETAS:  # JSON/YAML give lists
            setattr(self, name, tuple(getattr(self, name)))
        problems = []
        if self.inner_optimizer not in ("adam", "sgd"):
            problems.append(
                f"inner_optimizer must be 'adam' or 'sgd', got {self.inner_optimizer!r}"
            )
        for name in ("eta", "scale_lr", "min_scale", "max_scale", "scale_eps", "inner_eps"):
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
        for name in _BETAS:
            betas = getattr(self, name)
            if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
                problems.append(f"{name} must be two numbers in [0, 1), got {betas!r}")
        if self.constraint_moments not in ("shared_second", "separate"):
            problems.append(
                "constraint_moments must be 'shared_second' or 'separate', got "
                f"{self.constraint_moments!r}"
            )
        if self.hvp not in ("forward_difference", "central_difference", "double_backward"):
            problems.append(
                "hvp must be 'forward_difference', 'central_difference' or 'double_backward', "
                f"got {self.hvp!r}"
            )
        if not isinstance(self.lookahead_steps, int) or self.lookahead_steps < 1:
            problems.append(
                f"lookahead_steps must be an integer >= 1, got {self.lookahead_steps!r}"
            )
        if self.scale_grad_clip is not None and not self.scale_grad_clip > 0:
            problems.append(f"scale_grad_clip must be positive or None, got {self.scale_grad_clip}")
        if not 0 <= self.overlap <= 1:
            problems.append(f"overlap must be in [0, 1], got {self.overlap!r}")
        if self.on_nonfinite not in ("raise", "skip"):
            problems.append(f"on_nonfinite must be 'raise' or 'skip', got {self.on_nonfinite!r}")
        if self.tied_embeddings not in ("shared", "fixed"):
            problems.append(
                f"tied_embeddings must be 'shared' or 'fixed', got {self.tied_embeddings!r}"
            )
        if not isinstance(self.trial_steps, int) or self.trial_steps < 0:
            problems.append(f"trial_steps must be an integer >= 0, got {self.trial_steps!r}")
        if self.trial_lr is not None and not (math.isfinite(self.trial_lr) and self.trial_lr > 0):
            problems.append(f"trial_lr must be positive or None, got {self.trial_lr!r}")
        if not isinstance(self.max_skipped, int) or self.max_skipped < 0:
            problems.append(f"max_skipped must be an integer >= 0, got {self.max_skipped!r}")
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
          1000 for a ~39.5M-parameter model (1000 / 39.5M ~ 2.5e-5), whose l1 gradient norm
          at init (~25,000) starts far above it;
        * S and S~ = the first and last two thirds of each batch (``overlap`` 0.5);
        * the fairseq code's scale optimizer: the bound's steps have their own Adam state
          (``constraint_moments="separate"``);
        * every tensor scaled, embedding tables too (``fixed_embeddings=False``).

        The loss is the one training computes (the reference's is label-smoothed 0.1): pass
        it with ``loss_fn`` (``GradInitTrainer`` uses the trainer's own loss). ``overrides``
        replace any field.
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
            tied_embeddings="shared",
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
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in _REMOVED_FIELDS}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown GradInitConfig fields: {unknown}. Known: {sorted(known)}.")
        return cls(**d)
