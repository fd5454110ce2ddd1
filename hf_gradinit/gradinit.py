"""GradInit: learn one positive scale per parameter tensor, then bake the scales in.

The work is split in two, so the state can be inspected, saved and tested on its own:

* :func:`compute_gradinit_scales` learns the scales from batches. It never writes to the
  model: the model's tensors are read through ``torch.func.functional_call``, so an error,
  a NaN or a Ctrl-C midway leaves the weights exactly as they were.
* :func:`apply_scales` multiplies each tensor by its scale (tied tensors once).

:func:`apply_gradinit` does both from a dataset or a DataLoader.

One iteration, as the reference code does it (Zhu et al., 2021): with theta = alpha * w0,
take the gradient g of the loss on a sub-batch S. If its norm exceeds the bound, step alpha
to lower the norm (a Hessian-vector product). Otherwise simulate one step of the real
optimizer, theta' = theta - eta * A(g) with A(g) = sign(g) for Adam and g for SGD (A(g)
detached, as in the reference), and step alpha to lower the loss on the overlapping
sub-batch S~ at theta'. Because A(g) is detached, that objective needs no double backward:
the graph through g is only built when the norm branch needs it.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .config import GradInitConfig, GradInitError
from .data import label_safe_collator
from .record import check_not_initialized, record_in_config

LossFn = Callable[[Any, Mapping[str, Any]], torch.Tensor]

_LABEL_NAMES = ("labels", "label", "label_ids", "start_positions", "end_positions")


# --------------------------------------------------------------------------------------
# Which tensors get a scale
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaledTensor:
    """One parameter tensor that gets a scale."""

    name: str
    kind: str  # "weight" (>= 2-D), "gain" (1-D, e.g. a LayerNorm weight) or "bias"
    aliases: tuple[str, ...] = ()  # other names of the same (tied) tensor
    numel: int = 0


def _kind(name: str, param: torch.Tensor) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if "bias" in leaf:
        return "bias"
    return "weight" if param.dim() >= 2 else "gain"


def _names_by_tensor(model: nn.Module) -> dict[int, list[str]]:
    """Every name of each parameter (tied tensors have several), by tensor identity."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def find_scaled_tensors(model: nn.Module) -> list[ScaledTensor]:
    """Every trainable tensor that a scale can move: trainable and non-zero.

    No module or name list: any architecture works. Tied tensors appear once (under the
    name ``named_parameters()`` gives them) with their other names as aliases. Zero tensors
    (most biases at init) are left out, since a scale cannot move them, and so are tensors
    the model does not save (``_keys_to_ignore_on_save``, e.g. Marian's sinusoidal
    positions, trainable after ``from_pretrained``): a scale on them would be lost on reload.
    """
    unsaved = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_save", None) or []]
    aliases = _names_by_tensor(model)
    found = []
    for name, p in model.named_parameters():
        if not p.requires_grad or p.is_meta or any(u.search(name) for u in unsaved):
            continue
        with torch.no_grad():
            if not torch.any(p != 0):
                continue
        others = tuple(n for n in aliases[id(p)] if n != name)
        found.append(ScaledTensor(name, _kind(name, p), others, p.numel()))
    return found


# ---- tied input/output embeddings (issue #13) -----------------------------------------


def find_tied_input_output(model: nn.Module) -> list[list[str]]:
    """Tensors that are the output projection AND the input embedding of several modules.

    Read off the model's structure, no name lists: a parameter with several names, one of
    them the weight of ``model.get_output_embeddings()`` (else of an ``nn.Linear``) and at
    least two the weights of ``nn.Embedding`` modules. That is one matrix for the encoder
    input, the decoder input and the output projection: the HF defaults of Marian and BART,
    T5 with tied weights. A tensor tied only between one stack's input and the output (the
    reference's fairseq layout: the decoder's input and output embeddings; GPT-2) is not
    listed. Each entry holds all names of one tensor, the ``named_parameters()`` name first.
    """
    get_out = getattr(model, "get_output_embeddings", None)
    try:
        out = get_out() if callable(get_out) else None
    except Exception:  # noqa: BLE001 - models without output embeddings may raise
        out = None
    found = []
    for group in _names_by_tensor(model).values():
        if len(group) < 2:
            continue
        owners = [model.get_submodule(n.rpartition(".")[0]) for n in group]
        inputs = sum(isinstance(m, nn.Embedding) for m in owners)
        if out is not None:
            outputs = sum(m is out for m in owners)
        else:
            outputs = sum(isinstance(m, nn.Linear) for m in owners)
        if inputs >= 2 and outputs >= 1:
            found.append(group)
    return found


# --------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------


@dataclass
class GradInitResult:
    """What GradInit learned: one scale per tensor name, and how it got there."""

    scales: dict[str, float]
    config: GradInitConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    gamma_value: float | None = None  # the bound in norm units, once resolved
    runtime_s: float = 0.0
    num_processes: int = 1
    tied: dict[str, dict[str, Any]] = field(default_factory=dict)  # tied input/output tensors
    trial: dict[str, Any] | None = None  # the guard's trial losses and choice

    @property
    def initial_grad_norm(self) -> float | None:
        return self.history[0]["grad_norm"] if self.history else None

    def summary(self) -> dict[str, Any]:
        """A small JSON-able summary (for ``config.gradinit`` and logs)."""
        values = list(self.scales.values())
        objective = [h for h in self.history if h["branch"] == "objective"]
        return {
            "num_scales": len(values),
            "iterations": len(self.history),
            "constraint_iterations": sum(h["branch"] == "constraint" for h in self.history),
            "skipped_iterations": sum(h["branch"] == "skipped" for h in self.history),
            "scale_min": min(values) if values else None,
            "scale_max": max(values) if values else None,
            "initial_grad_norm": self.initial_grad_norm,
            "final_grad_norm": self.history[-1]["grad_norm"] if self.history else None,
            "gamma_value": self.gamma_value,
            "first_loss_after_step": objective[0]["loss_after_step"] if objective else None,
            "last_loss_after_step": objective[-1]["loss_after_step"] if objective else None,
            "runtime_s": round(self.runtime_s, 3),
            "num_processes": self.num_processes,
            "tied_input_output": [
                {"names": t["names"], "mode": t["mode"], "scale": t["scale"]}
                for t in self.tied.values()
            ],
        }

    def tied_notes(self) -> list[str]:
        """One sentence per tensor that is both an input embedding and the output
        projection, naming it and saying what GradInit did with it (for logs and cards)."""
        notes = []
        for t in self.tied.values():
            names = " = ".join(f"`{n}`" for n in t["names"])
            what = (
                f"GradInit gave it one scale, {t['scale']:.4g} (tied_embeddings='shared')"
                if t["mode"] == "shared"
                else "GradInit left it at its init, with no scale"
                + (
                    " (fixed_embeddings: no embedding table gets one)"
                    if self.config.fixed_embeddings
                    else " (tied_embeddings='fixed')"
                )
            )
            notes.append(f"{names} is both an input embedding and the output projection: {what}.")
        return notes

    def to_dict(self) -> dict[str, Any]:
        return {
            "scales": dict(self.scales),
            "kinds": dict(self.kinds),
            "aliases": {k: list(v) for k, v in self.aliases.items()},
            "config": self.config.to_dict(),
            "summary": self.summary(),
            "history": list(self.history),
            "gamma_value": self.gamma_value,
            "runtime_s": self.runtime_s,
            "num_processes": self.num_processes,
            "tied": self.tied,
            "trial": self.trial,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GradInitResult:
        return cls(
            scales={k: float(v) for k, v in d["scales"].items()},
            config=GradInitConfig.from_dict(d.get("config", {})),
            history=list(d.get("history", [])),
            kinds=dict(d.get("kinds", {})),
            aliases={k: list(v) for k, v in d.get("aliases", {}).items()},
            gamma_value=d.get("gamma_value"),
            runtime_s=float(d.get("runtime_s", 0.0)),
            num_processes=int(d.get("num_processes", 1)),
            tied=dict(d.get("tied") or {}),
            trial=d.get("trial"),
        )

    def apply(self, model: nn.Module) -> None:
        """Multiply the model's tensors by the learned scales (see :func:`apply_scales`) and
        record it in ``model.config.gradinit`` (an HF model), so it is not scaled twice."""
        apply_scales(model, self.scales)
        record_in_config(model, self)


# --------------------------------------------------------------------------------------
# Applying scales
# --------------------------------------------------------------------------------------


def apply_scales(model: nn.Module, scales: Mapping[str, float]) -> None:
    """Multiply each named tensor of ``model`` by its scale, in place.

    Names may be any alias of a tied tensor; a tied tensor is scaled once and stays tied.
    Everything is checked before the first tensor changes, and if the update is interrupted
    the tensors already changed are put back. A model whose ``config.gradinit`` matches its
    weights is already initialized and is refused (see :mod:`hf_gradinit.record`).
    """
    check_not_initialized(model)
    by_name = dict(model.named_parameters(remove_duplicate=False))
    unknown = sorted(set(scales) - set(by_name))
    if unknown:
        raise GradInitError(
            f"{len(unknown)} scale name(s) are not parameters of this model, e.g. {unknown[:3]}. "
            "Were the scales learned on a different architecture?"
        )
    todo: dict[int, tuple[nn.Parameter, float, str]] = {}
    for name, value in scales.items():
        value = float(value)
        if not (math.isfinite(value) and value >= 0):
            raise GradInitError(f"Scale of {name!r} is {value}; scales must be finite and >= 0.")
        p = by_name[name]
        if id(p) in todo and todo[id(p)][1] != value:
            raise GradInitError(
                f"{name!r} and {todo[id(p)][2]!r} are the same (tied) tensor but have "
                f"different scales ({value} vs {todo[id(p)][1]})."
            )
        todo[id(p)] = (p, value, name)
    swapped: list[tuple[nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for p, value, _ in todo.values():
                new = p.detach() * torch.tensor(value, dtype=p.dtype, device=p.device)
                swapped.append((p, p.data))
                p.data = new
    except BaseException:
        for p, old in swapped:
            p.data = old
        raise


# --------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Mapping):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return v.shape[0]
            if isinstance(v, (list, tuple)):
                return len(v)
    raise GradInitError(
        "Could not read the batch size: GradInit needs batches that are dicts of tensors "
        f"with the batch in the first dimension (got {type(batch).__name__})."
    )


def _select(batch: Mapping[str, Any], index: torch.Tensor) -> dict[str, Any]:
    n = _batch_size(batch)
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
            out[k] = v.index_select(0, index.to(v.device))
        elif isinstance(v, (list, tuple)) and len(v) == n:
            out[k] = type(v)(v[i] for i in index.tolist())
        else:
            out[k] = v
    return out


def split_batch(
    batch: Mapping[str, Any], overlap: float, generator: torch.Generator | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Shuffle a batch and cut it into two sub-batches S and S~ that share ``overlap`` of S.

    With B examples, |S| = |S~| = n = round(B / (2 - overlap)) and they share 2n - B
    examples: overlap 0.5 gives thirds (S = parts 1+2, S~ = parts 2+3), as the reference.
    The shuffle keeps S from being biased to long sentences in a length-sorted batch.
    """
    b = _batch_size(batch)
    if b < 2 and overlap < 1:
        raise GradInitError(
            f"A batch of {b} example(s) cannot be split into two sub-batches S and S~; use a "
            "batch size of at least 3 (or overlap=1.0 to use the whole batch for both)."
        )
    n = min(b, max(1, round(b / (2 - overlap))))
    perm = torch.randperm(b, generator=generator)
    return _select(batch, perm[:n]), _select(batch, perm[b - n :])


def _to_device(batch: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """The batch on ``device``, its floating-point tensors in ``dtype`` (GradInit's compute
    dtype: half-precision inputs must not meet the fp32 copies of the weights as they are)."""
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device, dtype) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor):
        if dtype is not None and batch.is_floating_point():
            return batch.to(device, dtype=dtype, non_blocking=True)
        return batch.to(device, non_blocking=True)
    return batch


def _next_batch(data: Iterator[Any], problem: ScaledModel) -> Any:
    """The next batch on GradInit's device, floating-point tensors in its compute dtype;
    every place that draws a batch (iterations, lookahead steps, the trial) goes here."""
    return _to_device(next(data), problem.device, problem.dtype)


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise GradInitError("The data gave no batch: GradInit needs a non-empty dataset.")


# --------------------------------------------------------------------------------------
# The model as a function of its tensors
# --------------------------------------------------------------------------------------


def _default_loss(outputs: Any, batch: Mapping[str, Any]) -> torch.Tensor:
    loss = None
    if isinstance(outputs, torch.Tensor):
        loss = outputs
    elif isinstance(outputs, Mapping) or hasattr(outputs, "loss"):
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs.loss
    if loss is None:
        raise GradInitError(
            "The model returned no loss. GradInit needs batches with labels (e.g. `labels` "
            f"for seq2seq or classification; the batch had keys {sorted(batch)}), or pass "
            "`loss_fn=lambda outputs, batch: ...`."
        )
    if loss.dim() != 0:
        raise GradInitError(
            f"The model returned a tensor of shape {tuple(loss.shape)}, not a scalar loss. "
            "Give it labels so it returns a loss, or pass `loss_fn=lambda outputs, batch: ...`."
        )
    return loss


@contextlib.contextmanager
def _gradinit_mode(model: nn.Module, device: torch.device, double_backward: bool = False):
    """Dropout off, autocast off; with ``double_backward``, attention that supports it.

    Everything is restored afterwards. Only ``hvp="double_backward"`` differentiates through
    a gradient; the other settings run every kernel the model normally uses.
    """
    modes = [(m, m.training) for m in model.modules()]
    config = getattr(model, "config", None)
    attn = getattr(config, "_attn_implementation", None)
    switch_attn = (
        double_backward
        and attn not in (None, "eager", "sdpa")
        and hasattr(model, "set_attn_implementation")
    )
    model.eval()
    try:
        if switch_attn:  # e.g. flash_attention_2 kernels have no double backward
            model.set_attn_implementation("eager")
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        for m, training in modes:
            m.training = training
        if switch_attn:
            model.set_attn_implementation(attn)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def _same_device(a: torch.device, b: torch.device) -> bool:
    """'cpu' and 'cpu:0' (or 'cuda' and 'cuda:0') are the same place."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_model(model: nn.Module) -> None:
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
            "FSDP/DeepSpeed-sharded models. Run it before sharding (e.g. `hf-gradinit init` "
            "to save an initialized checkpoint, then train from it with your sharded setup)."
        )


# --------------------------------------------------------------------------------------
# The learning loop
# --------------------------------------------------------------------------------------


class _Reducer:
    """Averages tensors across processes (a no-op on one process)."""

    def __init__(self, accelerator: Any):
        self.world = getattr(accelerator, "num_processes", 1) if accelerator is not None else 1
        self.accelerator = accelerator

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        if self.world == 1:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        from accelerate.utils import reduce  # works with an Accelerator or a PartialState

        flat = reduce(flat, reduction="mean")
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


class ScaledModel:
    """The model as a function of its scales: theta = alpha * w0 on the scaled tensors.

    Holds read-only fp32 (fp64 if the model is fp64) views of the model's tensors; the model
    itself is only read. The gradient computations of one GradInit iteration live here so
    they can be checked on their own (tests compare them with finite differences).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        loss_fn: LossFn | None = None,
        tied_embeddings: str = "shared",
        fixed_embeddings: bool = False,
    ):
        self.model = model
        self.loss_fn = loss_fn or _default_loss
        self.scaled = find_scaled_tensors(model)
        # Tied input/output embeddings (see GradInitConfig.tied_embeddings): "fixed" leaves
        # them out (scale 1).
        self.tied = {g[0]: g for g in find_tied_input_output(model)}
        if fixed_embeddings:
            tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
            named = dict(model.named_parameters())
            self.scaled = [s for s in self.scaled if id(named[s.name]) not in tables]
        if tied_embeddings == "fixed":
            self.scaled = [s for s in self.scaled if s.name not in self.tied]
        self.names = [s.name for s in self.scaled]
        self.index = {n: i for i, n in enumerate(self.names)}
        named = dict(model.named_parameters())
        self.trainable = [n for n, p in named.items() if p.requires_grad]
        self.num_trainable = sum(named[n].numel() for n in self.trainable)
        if any(not _same_device(t.device, device) for t in [*model.parameters(), *model.buffers()]):
            raise GradInitError(
                f"The model is on {_model_device(model)} but GradInit runs on {device}; move "
                "it first (`model.to(accelerator.device)`); apply_gradinit does this for you."
            )

        def view(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dtype=_compute_dtype(t.dtype))

        self.w0 = {n: view(p) for n, p in named.items()}
        self.buffers = {n: view(b) for n, b in model.named_buffers() if b.is_floating_point()}
        self.dtype = self.w0[self.names[0]].dtype if self.names else torch.float32
        self.device = device

    def ones(self) -> torch.Tensor:
        return torch.ones(len(self.names), dtype=self.dtype, device=self.device)

    def theta(self, alpha: torch.Tensor, steps: list[torch.Tensor] | None = None, eta: float = 0.0):
        """{name: alpha_i * w0_i - eta * step_i} over the trainable tensors (alpha_i = 1 if unscaled)."""
        theta = {}
        for k, n in enumerate(self.trainable):
            i = self.index.get(n)
            t = self.w0[n] if i is None else alpha[i] * self.w0[n]
            if steps is not None:
                t = t - eta * steps[k]
            theta[n] = t
        return theta

    def loss(self, theta: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> torch.Tensor:
        tensors = {**self.w0, **self.buffers, **theta}
        outputs = functional_call(self.model, tensors, args=(), kwargs=dict(batch))
        return self.loss_fn(outputs, batch).to(self.dtype)

    def gradient(
        self,
        alpha: torch.Tensor,
        batch: Mapping[str, Any],
        create_graph: bool = False,
        steps: list[torch.Tensor] | None = None,
        eta: float = 0.0,
    ):
        """Loss on ``batch`` at theta(alpha) (minus ``eta * steps``) and its gradient g
        w.r.t. theta, one tensor per trainable tensor.

        With ``create_graph`` g stays differentiable w.r.t. alpha (for the exact norm's
        gradient, ``hvp="double_backward"``).
        """
        a = alpha if create_graph else alpha.detach()
        theta = self.theta(a, steps, eta)
        leaves = {}
        for n, t in theta.items():
            if not create_graph or n not in self.index:
                t = t.detach().requires_grad_(True)
            leaves[n] = t
        return self._loss_and_grad(leaves, batch, create_graph)

    def _loss_and_grad(self, leaves: dict[str, torch.Tensor], batch, create_graph: bool = False):
        context = _math_attention() if create_graph else contextlib.nullcontext()
        with context:
            loss = self.loss(leaves, batch)
            grads = torch.autograd.grad(
                loss, list(leaves.values()), create_graph=create_graph, allow_unused=True
            )
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves.values(), grads)]
        return loss, grads

    def objective_grad(self, alpha, steps, eta: float, batch: Mapping[str, Any]):
        """Loss on ``batch`` after the simulated step, and d(loss / eta) / d alpha.

        ``steps`` (A(g), or the sum of the lookahead's directions) are constants: the
        reference detaches the step direction.
        """
        alpha = alpha.detach().requires_grad_(True)
        loss = self.loss(self.theta(alpha, steps, eta), batch)
        (grad,) = torch.autograd.grad(loss / eta, alpha)
        return loss.detach(), grad

    def norm_grad(self, alpha: torch.Tensor, grads: list[torch.Tensor], direction):
        """d<g(alpha), direction>/d alpha: the gradient of ||g|| when direction = dnorm/dg.

        Exact, by double backward: ``grads`` must come from
        ``gradient(alpha, ..., create_graph=True)``.
        """
        surrogate = sum((g * v).sum() for g, v in zip(grads, direction))
        (grad,) = torch.autograd.grad(surrogate, alpha)
        return grad

    def w_dot(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """<w0_i, grads_i> per scale: d(loss)/d alpha_i when ``grads`` = dL/dtheta."""
        out = torch.zeros(len(self.names), dtype=self.dtype, device=self.device)
        for k, n in enumerate(self.trainable):
            i = self.index.get(n)
            if i is not None:
                out[i] = (grads[k].detach() * self.w0[n]).sum()
        return out

    def norm_grad_fd(
        self,
        alpha: torch.Tensor,
        direction: list[torch.Tensor],
        batch: Mapping[str, Any],
        base: torch.Tensor | None = None,
        central: bool = False,
    ) -> torch.Tensor:
        """The same as :meth:`norm_grad` from gradients only: no graph through g.

        With theta_i = alpha_i * w0_i, d<g, d>/d alpha_i = <w0_i, (H d)_i>, H the Hessian of
        the loss w.r.t. theta (symmetric). H d is a finite difference of gradients along d:
        forward (g(theta + r d) - g(theta)) / r, with ``base`` = ``w_dot(g(theta))`` on
        ``batch`` (so g itself can be freed first), or central (g(theta + r d) -
        g(theta - r d)) / 2r. The step moves theta by a fraction h = sqrt(eps) of the
        compute dtype of its own norm, ||r d|| = h ||theta||: the usual balance of
        truncation against rounding error for differences of gradients (Nocedal & Wright,
        Numerical Optimization, sec. 8.1). A larger step (eps^(1/3) for central
        differences) was less accurate on relu models, whose kinks it crosses.
        """
        alpha = alpha.detach()
        d_norm = math.sqrt(sum(float((d * d).sum()) for d in direction))
        if d_norm == 0:
            return torch.zeros_like(alpha)
        t_norm = math.sqrt(
            sum(
                float((self.w0[n] * self.w0[n]).sum())
                * (1.0 if n not in self.index else float(alpha[self.index[n]]) ** 2)
                for n in self.trainable
            )
        )
        h = torch.finfo(self.dtype).eps ** 0.5
        r = h * max(t_norm, 1e-3) / d_norm

        def w_dot_gradient_at(sign: float) -> torch.Tensor:
            """<w0_i, g(theta + sign * r * d)_i> per scale; nothing of size N is kept."""
            leaves = {}
            for n, d in zip(self.trainable, direction):
                i = self.index.get(n)
                t = self.w0[n] if i is None else alpha[i] * self.w0[n]
                leaves[n] = (t + sign * r * d).detach().requires_grad_(True)
            grads = self._loss_and_grad(leaves, batch)[1]
            del leaves
            return self.w_dot(grads)

        if central:
            return (w_dot_gradient_at(1.0) - w_dot_gradient_at(-1.0)) / (2 * r)
        if base is None:
            raise ValueError("The forward difference needs base = w_dot(g(theta)).")
        return (w_dot_gradient_at(1.0) - base) / r


class ScaleAdam:
    """Adam over the scales, with the state the reference's ``RescaleAdam`` keeps.

    The objective's steps and the bound's steps each have their own first moment and step
    count. With ``constraint_moments="shared_second"`` (the reference's CIFAR code) they
    share one second moment, bias-corrected by the total count of steps of both kinds;
    with ``"separate"`` (its fairseq code) each kind has its own, corrected by its own
    count. After each step the scales are clamped to ``[lower, upper]``. Step formula as
    ``torch.optim.Adam``: alpha -= lr / bc1 * m / (sqrt(v / bc2) + eps).
    """

    BRANCHES = ("objective", "constraint")

    def __init__(self, alpha: torch.Tensor, config: GradInitConfig, lower, upper):
        self.alpha = alpha
        self.lr, self.eps, self.clip = config.scale_lr, config.scale_eps, config.scale_grad_clip
        self.betas = config.scale_betas
        self.shared = config.constraint_moments == "shared_second"
        self.lower, self.upper = lower, upper
        self.exp_avg = {b: torch.zeros_like(alpha) for b in self.BRANCHES}
        shared = torch.zeros_like(alpha)
        self.exp_avg_sq = {
            b: shared if self.shared else torch.zeros_like(alpha) for b in self.BRANCHES
        }
        self.steps = dict.fromkeys(self.BRANCHES, 0)

    @torch.no_grad()
    def step(self, grad: torch.Tensor, branch: str) -> None:
        if self.clip is not None:
            grad = grad.clamp(-self.clip, self.clip)
        beta1, beta2 = self.betas
        self.steps[branch] += 1
        second_count = sum(self.steps.values()) if self.shared else self.steps[branch]
        m = self.exp_avg[branch].mul_(beta1).add_(grad, alpha=1 - beta1)
        v = self.exp_avg_sq[branch].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1 = 1 - beta1 ** self.steps[branch]
        bias2 = 1 - beta2**second_count
        denom = (v / bias2).sqrt_().add_(self.eps)
        self.alpha.sub_(self.lr / bias1 * m / denom)
        self.alpha.copy_(torch.maximum(torch.minimum(self.alpha, self.upper), self.lower))


def compute_gradinit_scales(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    config: GradInitConfig | None = None,
    *,
    accelerator: Any = None,
    loss_fn: LossFn | None = None,
    show_progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> GradInitResult:
    """Learn the GradInit scales of ``model`` from ``batches``; the model is not modified.

    ``batches`` is re-iterated as often as needed; each batch is split into S and S~ (see
    :func:`split_batch`); an iteration takes ``config.lookahead_steps`` batches. ``accelerator``
    (optional) gives the device and, with several processes, averages gradients so every
    process learns the same scales. ``callback`` receives each iteration's record.
    """
    config = config or GradInitConfig()
    _check_model(model)
    device = accelerator.device if accelerator is not None else _model_device(model)
    is_main = getattr(accelerator, "is_local_main_process", True) if accelerator else True
    reducer = _Reducer(accelerator)
    start = time.perf_counter()

    problem = ScaledModel(model, device, loss_fn, config.tied_embeddings, config.fixed_embeddings)
    scaled = problem.scaled
    dtype = problem.dtype
    alpha = problem.ones().requires_grad_(True)
    lower = torch.tensor(
        [0.0 if s.kind == "bias" else config.min_scale for s in scaled], dtype=dtype, device=device
    )
    upper = torch.tensor(
        [config.max_scale if s.kind == "gain" else math.inf for s in scaled],
        dtype=dtype,
        device=device,
    )
    optimizer = ScaleAdam(alpha, config, lower, upper)
    gamma_value: float | None = None
    if config.gamma is not None and config.gamma_unit == "absolute":
        gamma_value = config.gamma
    elif config.gamma is not None and config.gamma_unit == "per_parameter":
        n = problem.num_trainable
        gamma_value = config.gamma * (n if config.norm_type == "l1" else math.sqrt(n))

    exact = config.hvp == "double_backward"
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    # With the exact norm gradient, build the graph through g only when the norm branch is
    # expected (it was taken last time); a wrong guess costs one extra pass, never a
    # different result. The finite-difference methods never need that graph.
    graph_next = exact and config.gamma is not None
    skipped_in_row = 0
    progress = _progress(config.iterations, show_progress and is_main)
    data = _cycle(batches)
    try:
        with _gradinit_mode(model, device, double_backward=exact and config.gamma is not None):
            for it in range(config.iterations):
                t0 = time.perf_counter()
                batch = _next_batch(data, problem)
                batch_s, batch_t = split_batch(batch, config.overlap, generator)

                if it == 0:
                    loss_s, grads = _first_gradient(problem, alpha, batch_s, graph_next, loss_fn)
                else:
                    loss_s, grads = problem.gradient(alpha, batch_s, create_graph=graph_next)
                # The process mean of g (g itself on one process: no copy).
                g_mean = [g.detach() if reducer.world == 1 else g.detach().clone() for g in grads]
                stats = loss_s.detach().reshape(1).clone()
                reducer.mean_([*g_mean, stats])
                loss_value = stats.item()
                norm = _norm(g_mean, config.norm_type)
                if it == 0 and not (math.isfinite(loss_value) and math.isfinite(norm)):
                    raise GradInitError(
                        f"The loss ({loss_value}) or its gradient norm ({norm}) is not finite "
                        "at the model's initialization; fix the model or data before GradInit."
                    )
                if config.gamma is not None and config.gamma_unit == "init" and it == 0:
                    gamma_value = config.gamma * norm
                record: dict[str, Any] = {
                    "iteration": it,
                    "loss": loss_value,
                    "grad_norm": norm,
                    "loss_after_step": None,
                }
                if not (math.isfinite(loss_value) and math.isfinite(norm)):
                    branch = "skipped"
                elif gamma_value is not None and norm > gamma_value:
                    branch = "constraint"
                    # d||G||/d alpha = <dnorm/dG, dg/d alpha>, G = the process mean of g.
                    direction = _norm_direction(g_mean, config.norm_type)
                    if exact:
                        if not graph_next:  # guessed wrong: redo S with the graph through g
                            loss_s, grads = problem.gradient(alpha, batch_s, create_graph=True)
                        grad = problem.norm_grad(alpha, grads, direction)
                        del grads, loss_s
                    else:
                        # <w0, g> on this process, then g can go before the extra pass.
                        base = problem.w_dot(grads)
                        del grads, g_mean, loss_s
                        central = config.hvp == "central_difference"
                        grad = problem.norm_grad_fd(alpha, direction, batch_s, base, central)
                    reducer.mean_([grad])
                    optimizer.step(grad, "constraint")
                else:
                    branch = "objective"
                    del grads, loss_s
                    steps = _inner_step(g_mean, config)
                    if config.lookahead_steps > 1:
                        steps, batch_t = _lookahead(
                            problem, alpha, g_mean, steps, batch_t, data, config, reducer, generator
                        )
                    loss_t, grad = problem.objective_grad(alpha, steps, config.eta, batch_t)
                    stats = loss_t.reshape(1).clone()
                    reducer.mean_([grad, stats])
                    record["loss_after_step"] = stats.item()
                    if math.isfinite(stats.item()) and bool(torch.isfinite(grad).all()):
                        optimizer.step(grad, "objective")
                    else:
                        branch = "skipped"
                graph_next = exact and branch == "constraint"
                if branch == "skipped":
                    skipped_in_row += 1
                    if config.on_nonfinite == "raise" or skipped_in_row > config.max_skipped:
                        raise GradInitError(
                            f"GradInit iteration {it}: the loss or gradient became non-finite "
                            f"(loss {loss_value}, grad norm {norm}, loss after step "
                            f"{record['loss_after_step']}). The model was not modified. Try a "
                            "smaller scale_lr or eta, or on_nonfinite='skip' to skip such batches."
                        )
                else:
                    skipped_in_row = 0
                record["branch"] = branch
                record["time_s"] = time.perf_counter() - t0
                history.append(record)
                if callback is not None:
                    callback(record)
                progress.update(1)
                progress.set_postfix(
                    loss=f"{loss_value:.3f}", norm=f"{norm:.4g}", branch=branch[:5], refresh=False
                )
    finally:
        progress.close()

    scales = dict(zip(problem.names, alpha.detach().cpu().tolist()))
    tied = _tied_records(problem, scales, config)
    scaled_tied = [t["names"] for t in tied.values() if t["mode"] == "shared"]
    if scaled_tied and is_main:
        warnings.warn(
            "GradInit scaled a tensor that is both an input embedding and the output "
            f"projection ({' = '.join(scaled_tied[0])}). One scale for those uses stalled "
            "training on a toy task (benchmarks/results/toy_study.md); the defaults "
            "(fixed_embeddings=True) leave embedding tables unscaled. Layouts that tie only the "
            "decoder's input and output (e.g. Marian with share_encoder_decoder_embeddings="
            "False) are not affected.",
            UserWarning,
            stacklevel=2,
        )
    aliases = {s.name: list(s.aliases) for s in scaled if s.aliases}
    aliases.update({n: list(g[1:]) for n, g in problem.tied.items() if n in scales})
    trial = None
    if config.trial_steps > 0:
        scales, trial = _guard(problem, scales, data, config, device, reducer)
    return GradInitResult(
        scales=scales,
        config=config,
        history=history,
        kinds={n: _kind(n, problem.w0[n]) for n in scales},
        aliases=aliases,
        gamma_value=gamma_value,
        runtime_s=time.perf_counter() - start,
        num_processes=reducer.world,
        tied=tied,
        trial=trial,
    )


def _lookahead(problem, alpha, g_first, first_step, batch_t, data, config, reducer, generator):
    """Directions of steps 2..k of the simulated optimizer, summed with the first's.

    Step j's gradient is taken at the simulated point theta(alpha) - eta * (sum of the
    earlier directions), on the S half of a batch of its own, and detached (as the paper
    detaches the first step). Adam steps follow torch.optim.Adam with ``inner_betas`` and
    ``inner_eps``, except that the first is the eps -> 0 limit, sign(g). Returns the total
    direction and the S~ of the last batch, where the objective is taken.
    """
    total = [s.clone() for s in first_step]
    beta1, beta2 = config.inner_betas
    exp_avg = [(1 - beta1) * g for g in g_first]
    exp_avg_sq = [(1 - beta2) * g * g for g in g_first]
    for j in range(2, config.lookahead_steps + 1):
        batch = _next_batch(data, problem)
        batch_s, batch_t = split_batch(batch, config.overlap, generator)
        _, grads = problem.gradient(alpha, batch_s, steps=total, eta=config.eta)
        grads = [g.detach() for g in grads]
        reducer.mean_(grads)
        if config.inner_optimizer == "adam":
            bias1, bias2 = 1 - beta1**j, 1 - beta2**j
            step = []
            for m, v, g in zip(exp_avg, exp_avg_sq, grads):
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                step.append((m / bias1) / ((v / bias2).sqrt() + config.inner_eps))
        else:
            step = _inner_step(grads, config)
        total = [t + s for t, s in zip(total, step)]
    return total, batch_t


# ---- tied input/output embeddings and the trial guard (issue #13) ---------------------


def _tied_records(problem: ScaledModel, scales: dict[str, float], config: GradInitConfig):
    """What happened to each tensor tied across input embeddings and output projection:
    its names, 'shared' (one learned scale) or 'fixed' (left at 1), and its scale."""
    tied: dict[str, dict[str, Any]] = {}
    for name, group in problem.tied.items():
        mode = "shared" if name in scales else "fixed"
        tied[name] = {"names": list(group), "mode": mode, "scale": scales.get(name, 1.0)}
    return tied


def _trial_loss(problem: ScaledModel, scales, batches, config, reducer) -> float:
    """Mean loss over the last half of ``len(batches)`` real optimizer steps from w0 * scales
    (the model is only read). inf if the loss turns non-finite."""
    params = {
        n: (problem.w0[n] * scales.get(n, 1.0)).detach().clone().requires_grad_(True)
        for n in problem.trainable
    }
    lr = config.trial_lr if config.trial_lr is not None else config.eta / 2
    if config.inner_optimizer == "adam":
        opt = torch.optim.Adam(params.values(), lr=lr, betas=config.trial_betas)
    else:
        opt = torch.optim.SGD(params.values(), lr=lr)
    losses = []
    for batch in batches:
        loss, grads = problem._loss_and_grad(params, batch)
        stats = loss.detach().reshape(1).clone()
        reducer.mean_([*grads, stats])
        if not math.isfinite(stats.item()):
            return math.inf
        losses.append(stats.item())
        for p, g in zip(params.values(), grads):
            p.grad = g
        opt.step()
    tail = losses[len(losses) // 2 :]
    return sum(tail) / len(tail)


def _guard(problem, scales, data, config, device, reducer):
    """Keep the scales only if a short trial of the real optimizer is not worse from them
    than from the original init; else the scales to the power 0.5; else none (warn)."""
    batches = [_next_batch(data, problem) for _ in range(config.trial_steps)]
    damped = {n: v**0.5 for n, v in scales.items()}
    with _gradinit_mode(problem.model, device):
        record = {
            "steps": config.trial_steps,
            "original": _trial_loss(problem, {}, batches, config, reducer),
            "scaled": _trial_loss(problem, scales, batches, config, reducer),
        }
        if record["scaled"] <= record["original"]:
            record["choice"] = "scaled"
            return scales, record
        record["damped"] = _trial_loss(problem, damped, batches, config, reducer)
    if record["damped"] <= record["original"]:
        record["choice"] = "damped"
        return damped, record
    record["choice"] = "original"
    tied = ", ".join(" = ".join(g) for g in problem.tied.values())
    warnings.warn(
        f"GradInit: a {config.trial_steps}-step trial of the real optimizer did worse from the "
        f"learned scales ({record['scaled']:.4g}) and from their square roots "
        f"({record['damped']:.4g}) than from the original init ({record['original']:.4g}); "
        "the original init is kept (all scales 1)."
        + (
            f" The model ties one tensor across its input embeddings and output projection "
            f"({tied}); GradInit is known to work with the decoder's input and output tied "
            "and the encoder embedding separate (e.g. Marian with "
            "share_encoder_decoder_embeddings=False, tie_word_embeddings=True)."
            if tied
            else ""
        ),
        UserWarning,
        stacklevel=3,
    )
    return {n: 1.0 for n in scales}, record


def _first_gradient(problem, alpha, batch, create_graph, loss_fn):
    """The first forward/backward, with errors that say what the batch lacked."""
    try:
        return problem.gradient(alpha, batch, create_graph=create_graph)
    except GradInitError:
        raise
    except Exception as e:
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        hint = ""
        if loss_fn is None and isinstance(batch, Mapping) and not set(batch) & set(_LABEL_NAMES):
            hint = (
                " The batch has no labels: GradInit needs batches the model computes a loss "
                "from (e.g. `labels`), or a `loss_fn`."
            )
        raise GradInitError(
            f"The model's forward/backward failed on the first GradInit batch (keys {keys}): "
            f"{type(e).__name__}: {e}.{hint}"
        ) from e


def _norm(grads: list[torch.Tensor], norm_type: str) -> float:
    if norm_type == "l1":
        return float(sum(g.abs().sum() for g in grads))
    return float(torch.sqrt(sum((g * g).sum() for g in grads)))


def _norm_direction(grads: list[torch.Tensor], norm_type: str) -> list[torch.Tensor]:
    """The gradient of the norm with respect to the gradient itself."""
    if norm_type == "l1":
        return [torch.sign(g) for g in grads]
    total = math.sqrt(sum(float((g * g).sum()) for g in grads)) or 1.0
    return [g / total for g in grads]


def _inner_step(grads: list[torch.Tensor], config: GradInitConfig) -> list[torch.Tensor]:
    """A(g): the direction of the first step of the real optimizer (without eta)."""
    if config.inner_optimizer == "adam":
        return [torch.sign(g) for g in grads]  # first bias-corrected Adam step ~ lr * sign(g)
    if config.normalize_sgd_grad:
        total = math.sqrt(sum(float((g * g).sum()) for g in grads)) or 1.0
        return [g / total for g in grads]
    return grads


def _math_attention():
    """SDPA's fused CPU/GPU kernels have no double backward; the math kernel does."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="GradInit", disable=not enabled, dynamic_ncols=True)


# --------------------------------------------------------------------------------------
# The one-call entry point
# --------------------------------------------------------------------------------------


def _forward_arg_names(model: nn.Module) -> set[str] | None:
    """Named arguments of forward (as the Trainer keeps them); None: keep every column."""
    params = inspect.signature(model.forward).parameters
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named | set(_LABEL_NAMES) if named else None


def make_dataloader(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 24,
    data_collator: Callable | None = None,
    seed: int = 42,
) -> torch.utils.data.DataLoader:
    """A shuffled DataLoader over ``data`` (a datasets.Dataset or a torch Dataset).

    Columns of a ``datasets.Dataset`` that ``model.forward`` does not take are dropped, as
    the Trainer does. A ``DataCollatorForSeq2Seq`` builds decoder inputs from a copy of the
    labels (:func:`~hf_gradinit.data.label_safe_collator`). A DataLoader is returned unchanged.
    """
    from torch.utils.data import DataLoader

    if isinstance(data, DataLoader):
        return data
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise GradInitError(
            "`data` must be a datasets.Dataset, a torch Dataset (with __len__ and "
            f"__getitem__) or a DataLoader; got {type(data).__name__}."
        )
    if len(data) == 0:
        raise GradInitError("The dataset is empty: GradInit needs examples with labels.")
    if batch_size < 1:
        raise GradInitError(f"batch_size must be >= 1, got {batch_size}.")
    column_names = getattr(data, "column_names", None)
    if column_names is not None:
        accepted = _forward_arg_names(model)
        if accepted is not None:
            unused = [c for c in column_names if c not in accepted]
            if len(unused) == len(column_names):
                raise GradInitError(
                    f"None of the dataset's columns {column_names} is an argument of the "
                    "model's forward(); tokenize the data first."
                )
            if unused:
                data = data.remove_columns(unused)
    if data_collator is None:
        from transformers import default_data_collator

        data_collator = default_data_collator
    data_collator = label_safe_collator(data_collator)  # no model may rewrite the labels
    return DataLoader(
        data,
        batch_size=min(batch_size, len(data)),
        shuffle=True,
        drop_last=len(data) >= batch_size,
        collate_fn=data_collator,
        generator=torch.Generator().manual_seed(seed),
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
    show_progress: bool = True,
) -> GradInitResult:
    """Learn GradInit scales for ``model`` on ``data`` and bake them into its weights.

    Args:
        model: any ``nn.Module`` whose output has a loss (``outputs.loss``, ``outputs["loss"]``
            or a scalar tensor), or pair it with ``loss_fn``.
        data: a ``datasets.Dataset`` (columns the model does not take are dropped), a torch
            Dataset or a DataLoader, giving dicts of tensors with labels.
        config: the :class:`GradInitConfig`; set ``eta`` from your training learning rate.
        data_collator: turns a list of examples into a batch (default: transformers'
            ``default_data_collator``); use ``DataCollatorForSeq2Seq`` for seq2seq data.
        batch_size: examples per GradInit batch (per process); it is split into S and S~.
        accelerator: an ``accelerate.Accelerator`` (or ``PartialState``) for the device and
            multi-process runs; by default the current one. The model is moved to its device.
        loss_fn: ``loss_fn(outputs, batch) -> scalar`` for models that return no loss.
        show_progress: a progress bar on the main process.

    Returns:
        A :class:`GradInitResult`. The model is changed only at the very end; if anything
        fails before, its weights are exactly as they were. An HF model gets
        ``config.gradinit``; one that already matches it is refused before any work.
    """
    check_not_initialized(model, warn_stale=True)
    if accelerator is None:
        from accelerate import PartialState

        accelerator = PartialState()
    config = config or GradInitConfig()
    _check_model(model)
    loader = make_dataloader(
        model, data, batch_size=batch_size, data_collator=data_collator, seed=config.seed
    )
    if getattr(accelerator, "num_processes", 1) > 1:
        from accelerate.data_loader import prepare_data_loader

        loader = prepare_data_loader(
            loader,
            device=accelerator.device,
            num_processes=accelerator.num_processes,
            process_index=accelerator.process_index,
            put_on_device=True,
        )
    original_device = _model_device(model)
    model.to(accelerator.device)
    try:
        result = compute_gradinit_scales(
            model,
            loader,
            config,
            accelerator=accelerator,
            loss_fn=loss_fn,
            show_progress=show_progress,
        )
        result.apply(model)
    except BaseException:
        model.to(original_device)
        raise
    return result
