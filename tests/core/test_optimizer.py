"""core/optimizer.py: the scale optimizer (the reference's state)."""

from __future__ import annotations

import math

import pytest
import torch

from hf_gradinit import GradInitConfig
from hf_gradinit.core.optimizer import ScaleAdam

# --------------------------------------------------------------------------------------
# optimizer
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("moments", ["shared_second", "separate"])
def test_scale_adam_with_one_kind_of_step_is_torch_adam(moments):
    """With only objective steps both kinds of state are torch.optim.Adam's."""
    config = GradInitConfig(scale_lr=1e-2, scale_betas=(0.9, 0.98), constraint_moments=moments)
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(6)]
    alpha = torch.ones(5, dtype=torch.float64)
    infinite = torch.full((5,), math.inf, dtype=torch.float64)
    ours = ScaleAdam(alpha, config, torch.zeros(5, dtype=torch.float64), infinite)
    reference = torch.nn.Parameter(torch.ones(5, dtype=torch.float64))
    adam = torch.optim.Adam([reference], lr=1e-2, betas=(0.9, 0.98), eps=1e-8)
    for grad in grads:
        ours.step(grad, "objective")
        reference.grad = grad.clone()
        adam.step()
        torch.testing.assert_close(alpha, reference.detach(), rtol=1e-12, atol=1e-12)
    assert ours.steps == {"objective": 6, "constraint": 0}


def test_scale_adam_clamps_to_the_bounds_and_shares_the_second_moment():
    config = GradInitConfig(scale_lr=0.5)
    alpha = torch.ones(3)
    lower, upper = torch.tensor([0.9, 0.0, 0.9]), torch.tensor([1.1, math.inf, math.inf])
    shared = ScaleAdam(alpha, config, lower, upper)
    shared.step(torch.tensor([-1.0, 1.0, 1.0]), "objective")
    assert alpha.tolist() == pytest.approx([1.1, 0.5, 0.9])
    assert shared.exp_avg_sq["objective"] is shared.exp_avg_sq["constraint"]
    separate = ScaleAdam(torch.ones(3), GradInitConfig(constraint_moments="separate"), lower, upper)
    assert separate.exp_avg_sq["objective"] is not separate.exp_avg_sq["constraint"]
