"""core/probe.py: the decision rule and the probe on copies."""

from __future__ import annotations

import math

import pytest
import torch
from testing_utils import (
    float64_model,
    model_at,
    perturbed_alpha,
    seq2seq_batch,
)

from hf_gradinit import GradInitConfig
from hf_gradinit.core.probe import decide, probe, tail_mean
from hf_gradinit.core.problem import ScaledModel, gradinit_mode

# --------------------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------------------


def test_decide_keeps_the_learned_init_unless_it_is_behind_by_the_margin():
    config = GradInitConfig(probe_steps=8, probe_margin=0.1)
    start = [9.0] * 6  # steps 1-6; the last quarter is steps 7-8
    assert tail_mean([*start, 2.0, 4.0], 8) == 3.0
    assert tail_mean([*start, 2.0], 8) == math.inf  # stopped early: diverged
    assert tail_mean([*start, 2.0, math.nan], 8) == math.inf
    ahead = decide([*start, 2.0, 2.0], [*start, 3.0, 3.0], config)
    assert ahead["decision"] == "learned" and "2 (learned) against 3 (original)" in ahead["reason"]
    assert (ahead["learned_score"], ahead["original_score"]) == (2.0, 3.0)
    assert ahead["steps"] == 8 and ahead["margin"] == 0.1
    assert "probe steps 7-8" in ahead["reason"]
    close = decide([*start, 3.2, 3.2], [*start, 3.0, 3.0], config)  # 6.7% behind: kept
    assert close["decision"] == "learned"
    # 18% behind, but by 0.002 after a loss of 9 (under 1% of it): noise, kept
    learned_task = decide([*start, 0.013, 0.013], [*start, 0.011, 0.011], config)
    assert learned_task["decision"] == "learned"
    assert decide([*start, 0.2, 0.2], [*start, 0.1, 0.1], config)["decision"] == "original"
    behind = decide([*start, 3.4, 3.4], [*start, 3.0, 3.0], config)  # 13% behind
    assert behind["decision"] == "original"
    assert "behind" in behind["reason"] and "more than 10% higher" in behind["reason"]
    diverged = decide([*start, 2.0], [*start, 3.0, 3.0], config)
    assert diverged["decision"] == "original" and "diverged" in diverged["reason"]
    assert decide([*start, 3.0, 3.0], [*start, 3.0], config)["decision"] == "learned"
    stalled = decide([*start, 2.0, 2.0], [*start, 3.0, 3.0], config, objective_improved=False)
    assert stalled["decision"] == "original" and "did not improve" in stalled["reason"]


def test_decide_on_exact_branches_keeps_the_lower_and_a_tie_keeps_the_original():
    """On the run's own branches there is no sampling noise between the two curves: the
    lower one wins, a tie leaves the run exactly as without GradInit."""
    config = GradInitConfig(probe_steps=8)
    start = [9.0] * 6
    ahead = decide([*start, 2.9, 2.9], [*start, 3.0, 3.0], config, exact=True)
    assert ahead["decision"] == "learned" and "was ahead" in ahead["reason"]
    tie = decide([*start, 3.0, 3.0], [*start, 3.0, 3.0], config, exact=True)
    assert tie["decision"] == "original" and "not ahead" in tie["reason"]
    # behind by less than 1% of the first loss: noise for the copies' rule, not here
    within_noise = ([*start, 3.05, 3.05], [*start, 3.0, 3.0])
    assert decide(*within_noise, config)["decision"] == "learned"
    assert decide(*within_noise, config, exact=True)["decision"] == "original"
    diverged = decide([*start, 2.0], [*start, 3.0, 3.0], config, exact=True)
    assert diverged["decision"] == "original" and "diverged" in diverged["reason"]
    both = decide(
        [*start, 2.0, 2.0], [*start, 3.0, 3.0], config, objective_improved=False, exact=True
    )
    assert both["decision"] == "learned"  # the run's own steps decide, not the objective


def test_probe_trains_the_real_optimizer_from_each_init_without_touching_the_model():
    """Each run is torch.optim.Adam at eta on a copy of the model (an independent path),
    from w0 * scales and from w0, on the same batches."""
    model = float64_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = GradInitConfig(eta=1e-2, inner_betas=(0.9, 0.98), probe_steps=4)
    problem = ScaledModel(model, torch.device("cpu"))
    scales = dict(zip(problem.names, perturbed_alpha(problem).tolist()))
    batches = [seq2seq_batch(seed=s) for s in range(4)]
    with gradinit_mode(model, problem.device):
        record = probe(problem, scales, iter(batches), config)

    def trained(scales):
        theta = {n: problem.w0[n] * scales.get(n, 1.0) for n in problem.trainable}
        copy = model_at(model, theta)
        optimizer = torch.optim.Adam(
            [p for n, p in copy.named_parameters() if n in theta], lr=1e-2, betas=(0.9, 0.98)
        )
        losses = []
        for batch in batches:
            loss = copy(**batch).loss
            losses.append(loss.item())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return losses

    assert record["learned_losses"] == pytest.approx(trained(scales), abs=1e-5)
    assert record["original_losses"] == pytest.approx(trained({}), abs=1e-5)
    assert record["learned_losses"][0] != record["original_losses"][0]
    assert record["decision"] in ("learned", "original") and record["steps"] == 4
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


class _DropoutNormNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.norm, self.out = (
            torch.nn.Linear(8, 16),
            torch.nn.BatchNorm1d(16),
            torch.nn.Linear(16, 3),
        )
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, x, labels):
        logits = self.out(self.dropout(torch.relu(self.norm(self.inp(x)))))
        return {"loss": torch.nn.functional.cross_entropy(logits, labels)}


def test_the_probe_trains_in_training_mode_with_the_same_dropout_from_either_init():
    model = _DropoutNormNet()
    stats = model.norm.running_mean.clone()
    g = torch.Generator().manual_seed(0)
    batches = [
        {"x": torch.randn(16, 8, generator=g), "labels": torch.randint(0, 3, (16,), generator=g)}
        for _ in range(5)
    ]
    problem = ScaledModel(model, torch.device("cpu"))
    config = GradInitConfig(eta=1e-2, probe_steps=5, seed=3)
    with gradinit_mode(model, problem.device, training=True):
        same = probe(problem, {}, iter(batches), config)  # the learned init is the original
        assert model.training and model.dropout.training
    assert same["learned_losses"] == same["original_losses"]  # the same masks, step by step
    with gradinit_mode(model, problem.device):  # no dropout: other losses
        plain = probe(problem, {}, iter(batches), config)
    assert plain["original_losses"][0] != same["original_losses"][0]
    assert torch.equal(model.norm.running_mean, stats)  # the model's buffers are not updated
