"""Adam over the scales, with the state the reference's ``RescaleAdam`` keeps."""

from __future__ import annotations

import torch

from ..config import GradInitConfig


class ScaleAdam:
    """Adam over the scales; the objective's and the bound's steps keep separate state.

    Each kind of step has its own first moment and step count. With
    ``constraint_moments="shared_second"`` (the reference's CIFAR code) they share one
    second moment, bias-corrected by the total count of steps of both kinds; with
    ``"separate"`` (its fairseq code) each kind has its own, corrected by its own count.
    After each step the scales are clamped to ``[lower, upper]``. Step formula as
    ``torch.optim.Adam``: alpha -= lr / bc1 * m / (sqrt(v / bc2) + eps).
    """

    BRANCHES = ("objective", "constraint")

    def __init__(
        self, alpha: torch.Tensor, config: GradInitConfig, lower: torch.Tensor, upper: torch.Tensor
    ):
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
