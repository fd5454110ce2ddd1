"""The model as a function of its scales: theta = alpha * w0 on the scaled tensors.

The model is only read: its tensors are swapped in with ``torch.func.functional_call`` for
each forward *and* backward pass (so a layer that recomputes its forward in the backward
pass, under gradient checkpointing, sees the same tensors). An error midway leaves the
weights exactly as they were.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from ..config import GradInitError
from .batches import LABEL_NAMES
from .selection import find_scaled_tensors, find_tied_input_output

# compute_loss(model, batch) -> scalar: called with the model's tensors swapped in.
ComputeLoss = Callable[[nn.Module, Mapping[str, Any]], torch.Tensor]


def default_compute_loss(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """``model(**batch)`` and the loss it returns: ``outputs.loss``, ``outputs["loss"]``,
    the scalar output itself, or, as the Trainer reads it, the first element of a tuple
    (HF models with ``return_dict=False``)."""
    outputs = model(**batch)
    loss = None
    if isinstance(outputs, torch.Tensor):
        loss = outputs
    elif isinstance(outputs, Mapping) or hasattr(outputs, "loss"):
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs.loss
    elif isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        loss = outputs[0] if outputs[0].dim() == 0 else None
    if loss is None:
        present = sorted(k for k, v in batch.items() if v is not None)
        empty = sorted(k for k in LABEL_NAMES if k in batch and batch[k] is None)
        raise GradInitError(
            "The model returned no loss: GradInit needs batches with labels (one of "
            f"{', '.join(LABEL_NAMES)}); the batch had keys {present}"
            + (
                f", and {empty[0]!r} was None (the collator found no {empty[0]!r} in the examples)"
                if empty
                else ""
            )
            + ". Add a labels column to the dataset (for a causal LM, "
            "DataCollatorForLanguageModeling(tokenizer, mlm=False) makes them), or pass "
            "`loss_fn=lambda outputs, batch: ...`."
        )
    if loss.dim() != 0:
        raise GradInitError(
            f"The model returned a tensor of shape {tuple(loss.shape)}, not a scalar loss. "
            "Give it labels so it returns a loss, or pass `loss_fn=lambda outputs, batch: ...`."
        )
    return loss


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """GradInit's dtype for tensors of ``dtype``: fp32 for half precision."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def _same_device(a: torch.device, b: torch.device) -> bool:
    """'cpu' and 'cpu:0' (or 'cuda' and 'cuda:0') are the same place."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """The innermost modules with HF's ``gradient_checkpointing`` switched on."""
    flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    return [m for m in flagged if not any(c is not m and c in flagged for c in m.modules())]


@contextlib.contextmanager
def gradinit_mode(
    model: nn.Module,
    device: torch.device,
    double_backward: bool = False,
    training: bool = False,
):
    """Dropout off (``training``: on, as in training), autocast off, the model's gradient
    checkpointing kept; everything restored after.

    HF's own gradient checkpointing runs only in training mode and may be the reentrant
    kind, which ``torch.autograd.grad`` cannot go through; the layers it would checkpoint are
    checkpointed here instead (non-reentrant), so GradInit needs no more activation memory
    than a training step. With ``double_backward`` (the exact HVP, which differentiates
    through a gradient after the forward pass has ended) nothing is checkpointed, and
    attention kernels without a double backward (e.g. flash_attention_2) are switched to
    eager for the phase.
    """
    modes = [(m, m.training) for m in model.modules()]
    config = getattr(model, "config", None)
    attn = getattr(config, "_attn_implementation", None)
    switch_attn = (
        double_backward
        and attn not in (None, "eager", "sdpa")
        and hasattr(model, "set_attn_implementation")
    )
    wrapped = [] if double_backward else _checkpointed_layers(model)
    model.train(training)
    try:
        for layer in wrapped:
            layer.gradient_checkpointing = False
            layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
        if switch_attn:
            model.set_attn_implementation("eager")
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        for layer in wrapped:
            del layer.forward  # the instance attribute; the class's forward again
            layer.gradient_checkpointing = True
        for m, training in modes:
            m.training = training
        if switch_attn:
            model.set_attn_implementation(attn)


def math_attention() -> contextlib.AbstractContextManager:
    """SDPA's fused CPU/GPU kernels have no double backward; the math kernel does."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


class _Runner(nn.Module):
    """Holds the model so that ``functional_call`` swaps its tensors for a whole
    forward-and-backward ``work``."""

    def __init__(self, model: nn.Module, compute_loss: ComputeLoss):
        super().__init__()
        self.model = model
        self.compute_loss = compute_loss

    def forward(self, batch: Mapping[str, Any], work: Callable[[torch.Tensor], Any]) -> Any:
        return work(self.compute_loss(self.model, batch))


class ScaledModel:
    """The model as a function of its scales, and the gradients one iteration needs.

    Holds read-only fp32 (fp64 if the model is fp64) views of the model's tensors. Tests
    compare the gradients with finite differences.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        compute_loss: ComputeLoss | None = None,
        fixed_embeddings: bool = False,
    ):
        self.model = model
        self.runner = _Runner(model, compute_loss or default_compute_loss)
        self.scaled = find_scaled_tensors(model, fixed_embeddings)
        self.tied = {g[0]: g for g in find_tied_input_output(model)}
        self.names = [s.name for s in self.scaled]
        self.index = {n: i for i, n in enumerate(self.names)}
        named = dict(model.named_parameters())
        self.trainable = [n for n, p in named.items() if p.requires_grad]
        self.num_trainable = sum(named[n].numel() for n in self.trainable)
        if any(not _same_device(t.device, device) for t in [*model.parameters(), *model.buffers()]):
            raise GradInitError(
                f"The model is on {model_device(model)} but GradInit runs on {device}; move "
                "it first (`model.to(accelerator.device)`); apply_gradinit does this for you."
            )

        def view(t: torch.Tensor, copy: bool = False) -> torch.Tensor:
            return t.detach().to(dtype=compute_dtype(t.dtype), copy=copy)

        self.w0 = {n: view(p) for n, p in named.items()}
        # Copies, integer ones too: a forward pass may update a buffer in place (BatchNorm's
        # statistics and step count in training mode), and the model must not keep the marks.
        self.buffers = {n: view(b, copy=True) for n, b in model.named_buffers()}
        self.dtype = self.w0[self.names[0]].dtype if self.names else torch.float32
        self.device = device

    # ---- evaluating the model --------------------------------------------------------

    def ones(self) -> torch.Tensor:
        return torch.ones(len(self.names), dtype=self.dtype, device=self.device)

    def theta(self, alpha: torch.Tensor, steps: list[torch.Tensor] | None = None, eta: float = 0.0):
        """{name: alpha_i * w0_i - eta * step_i} over the trainable tensors (alpha_i = 1 if
        unscaled)."""
        theta = {}
        for k, n in enumerate(self.trainable):
            i = self.index.get(n)
            t = self.w0[n] if i is None else alpha[i] * self.w0[n]
            if steps is not None:
                t = t - eta * steps[k]
            theta[n] = t
        return theta

    def run(
        self,
        tensors: Mapping[str, torch.Tensor],
        batch: Mapping[str, Any],
        work,
        buffers: Mapping[str, torch.Tensor] | None = None,
    ) -> Any:
        """``work(loss)`` with ``tensors`` (the others: the model's) in the model, for the
        forward pass and whatever backward pass ``work`` does. ``buffers``: the buffers to
        use instead of this problem's copies (a fresh copy that training mode may update)."""
        swapped = {**self.w0, **(self.buffers if buffers is None else buffers), **tensors}
        return functional_call(
            self.runner, {f"model.{k}": v for k, v in swapped.items()}, (batch, work)
        )

    def loss_and_grad(
        self,
        leaves: dict[str, torch.Tensor],
        batch,
        create_graph: bool = False,
        buffers: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The loss at ``leaves`` and its gradient w.r.t. each of them (zeros if unused)."""

        def work(loss: torch.Tensor):
            loss = loss.to(self.dtype)
            grads = torch.autograd.grad(
                loss, list(leaves.values()), create_graph=create_graph, allow_unused=True
            )
            return loss, grads

        context = math_attention() if create_graph else contextlib.nullcontext()
        with context:
            loss, grads = self.run(leaves, batch, work, buffers)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves.values(), grads)]
        return loss, grads

    def gradient(
        self,
        alpha: torch.Tensor,
        batch: Mapping[str, Any],
        create_graph: bool = False,
        steps: list[torch.Tensor] | None = None,
        eta: float = 0.0,
    ):
        """Loss on ``batch`` at theta(alpha) (minus ``eta * steps``) and its gradient g
        w.r.t. theta, one tensor per trainable tensor. With ``create_graph`` g stays
        differentiable w.r.t. alpha (the exact norm gradient, ``hvp="double_backward"``)."""
        a = alpha if create_graph else alpha.detach()
        leaves = {}
        for n, t in self.theta(a, steps, eta).items():
            if not create_graph or n not in self.index:
                t = t.detach().requires_grad_(True)
            leaves[n] = t
        return self.loss_and_grad(leaves, batch, create_graph)

    # ---- the gradients w.r.t. the scales ---------------------------------------------

    def objective_grad(self, alpha, steps, eta: float, batch: Mapping[str, Any]):
        """Loss on ``batch`` after the simulated step, and d(loss / eta) / d alpha.

        ``steps`` (A(g), or the sum of the lookahead's directions) are constants: the
        reference detaches the step direction.
        """
        alpha = alpha.detach().requires_grad_(True)

        def work(loss: torch.Tensor):
            loss = loss.to(self.dtype)
            (grad,) = torch.autograd.grad(loss / eta, alpha)
            return loss.detach(), grad

        return self.run(self.theta(alpha, steps, eta), batch, work)

    def norm_grad(self, alpha: torch.Tensor, grads: list[torch.Tensor], direction):
        """d<g(alpha), direction>/d alpha: the gradient of ||g|| when direction = dnorm/dg.
        Exact, by double backward: ``grads`` come from ``gradient(..., create_graph=True)``."""
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
        base: torch.Tensor,
    ) -> torch.Tensor:
        """The same as :meth:`norm_grad` from gradients only: no graph through g.

        With theta_i = alpha_i * w0_i, d<g, d>/d alpha_i = <w0_i, (H d)_i>, H the Hessian of
        the loss w.r.t. theta (symmetric). H d is the forward difference (g(theta + r d) -
        g(theta)) / r, with ``base`` = ``w_dot(g(theta))`` on ``batch`` (so g itself can be
        freed first). The step moves theta by a fraction h = sqrt(eps) of the compute dtype
        of its own norm, ||r d|| = h ||theta||: the usual balance of truncation against
        rounding error for differences of gradients (Nocedal & Wright, Numerical
        Optimization, sec. 8.1).
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
        r = torch.finfo(self.dtype).eps ** 0.5 * max(t_norm, 1e-3) / d_norm
        leaves = {
            n: (t + r * d).detach().requires_grad_(True)
            for (n, t), d in zip(self.theta(alpha).items(), direction)
        }
        grads = self.loss_and_grad(leaves, batch)[1]
        del leaves
        return (self.w_dot(grads) - base) / r

    def parameters_at(self, scales: Mapping[str, float]) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, w0 * scale) of every trainable tensor, as fresh leaves (for the probe)."""
        for n in self.trainable:
            yield n, (self.w0[n] * scales.get(n, 1.0)).detach().clone().requires_grad_(True)
