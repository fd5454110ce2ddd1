"""Peer check: the scales the reference code (zhuchen03/gradinit, CIFAR path, HEAD 777c407)
learns on a tiny MLP, run unmodified on CPU outside this repository. Only the settings and
its numbers are here (see ``../shared/docs/gradinit-reference.md``, "A peer check").

Setup of every case: ``torch.manual_seed(0); Sequential(Linear(8, 32), ReLU, Linear(32, 32),
ReLU, Linear(32, 4))``; one example ``torch.manual_seed(1); x = randn(1, 8); y = 2``, every
batch only copies of it (so how a batch is split cannot matter); mean cross-entropy; scale
optimizer lr 1e-2, betas (0.9, 0.999), eps 1e-8, min scale 0.01 (biases 0), no clipping;
50 iterations; an absolute bound (``norm > gamma`` takes the bound's branch). The l1 norm
at init is 12.367765, the l2 norm 1.252886.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_gradinit import GradInitConfig, compute_gradinit_scales

NAMES = ("0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias")

# case: (settings, reference alphas in NAMES order, reference branch sequence; C = bound)
CASES = {
    "adam_no_bound": (
        dict(inner_optimizer="adam", eta=1e-2),
        (1.5271, 0.65195, 0.81471, 1.4977, 1.5214, 0.50552),
        "O" * 50,
    ),
    "sgd_l2_bound_1.0": (
        dict(inner_optimizer="sgd", eta=0.1, gamma=1.0),
        (0.6819, 0.58996, 0.61174, 0.84806, 0.71217, 0.32512),
        "C" * 35 + "OOOOOOCOCCOOCOO",
    ),
    "adam_l1_bound_12": (
        dict(inner_optimizer="adam", eta=1e-2, gamma=12.0),
        (1.0099, 0.61407, 0.80392, 1.3076, 1.1142, 0.55052),
        "CCOCOOCOOOCOOCOOOCOOOCOCOOCOOCOOOOCOOCOOCOCOOCOOCO",
    ),
    "adam_l1_bound_11.5": (
        dict(inner_optimizer="adam", eta=1e-2, gamma=11.5),
        (0.98689, 0.64236, 0.8095, 1.2814, 1.0745, 0.50885),
        "CCCCCOOCOOCOOOCOOCOOCOOCOOCOCOOOOCOOCOOCOOCOCOOCOO",
    ),
    "sgd_normalized_l2_bound_1.1": (
        dict(inner_optimizer="sgd", normalize_sgd_grad=True, eta=0.1, gamma=1.1),
        (0.83671, 0.57671, 0.62023, 1.1697, 0.93507, 0.38283),
        "C" * 17 + "OOOCOOOOOOOCOOOCOOOCCCOOCOOCOOCOO",
    ),
}


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
        )

    def forward(self, x, labels):
        return nn.functional.cross_entropy(self.net(x), labels)


def _batch(copies: int = 6):
    torch.manual_seed(1)
    x = torch.randn(1, 8)
    return {"x": x.repeat(copies, 1), "labels": torch.full((copies,), 2)}


def _run(settings: dict, **extra):
    values = dict(
        iterations=50,
        scale_lr=1e-2,
        scale_betas=(0.9, 0.999),
        scale_eps=1e-8,
        min_scale=0.01,
        scale_grad_clip=None,
        gamma_unit="absolute",
        probe_steps=0,  # the reference code has no probe
    )
    config = GradInitConfig(**{**values, **settings, **extra})
    model = _MLP()
    result = compute_gradinit_scales(model, [_batch()], config, show_progress=False)
    branches = "".join("C" if h["branch"] == "constraint" else "O" for h in result.history)
    return [result.scales[f"net.{n}"] for n in NAMES], branches, result


_BOUNDED = [c for c, (settings, _, _) in CASES.items() if "gamma" in settings]


@pytest.mark.parametrize(
    "case,hvp",
    [(c, "double_backward") for c in CASES] + [(c, "forward_difference") for c in _BOUNDED],
)
def test_scales_match_the_reference_code(case, hvp):
    """Every case within 2% per tensor, and the same branch taken at every iteration."""
    settings, expected, expected_branches = CASES[case]
    alphas, branches, _ = _run(settings, hvp=hvp)
    assert branches == expected_branches
    for name, got, want in zip(NAMES, alphas, expected):
        assert got == pytest.approx(want, rel=0.02), name


def test_initial_norms_are_the_reference_codes():
    _, _, adam = _run(CASES["adam_no_bound"][0], iterations=1)
    _, _, sgd = _run(CASES["sgd_l2_bound_1.0"][0], iterations=1)
    assert adam.initial_grad_norm == pytest.approx(12.367765, rel=1e-5)
    assert sgd.initial_grad_norm == pytest.approx(1.252886, rel=1e-5)


def test_fairseq_state_differs_where_the_branches_alternate():
    """The fairseq RescaleAdam (independent Adams per branch) is not the CIFAR one: with
    both branches taken, ``constraint_moments`` must change the result."""
    settings = CASES["adam_l1_bound_12"][0]
    shared, _, _ = _run(settings, hvp="double_backward")
    separate, _, _ = _run(settings, hvp="double_backward", constraint_moments="separate")
    assert max(abs(a - b) / b for a, b in zip(shared, separate)) > 0.05
