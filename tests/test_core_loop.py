"""hf_gradinit.core: Adam over the scales (optimizer), the iterations (loop), the
lookahead, and the probe that checks the learned init against the original one."""

from __future__ import annotations

import math

import pytest
import torch
from testing_utils import (
    float64_model,
    model_at,
    perturbed_alpha,
    seq2seq_batch,
    seq2seq_examples,
    tiny_bart,
    tiny_marian,
)
from transformers import default_data_collator

from hf_gradinit import GradInitConfig, GradInitError, compute_gradinit_scales
from hf_gradinit.core.loop import _Loop, inner_step
from hf_gradinit.core.optimizer import ScaleAdam
from hf_gradinit.core.probe import decide, probe, tail_mean
from hf_gradinit.core.problem import ScaledModel, gradinit_mode

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


# --------------------------------------------------------------------------------------
# loop
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("hvp", ["forward_difference", "double_backward"])
def test_tiny_bound_takes_constraint_branch_and_lowers_the_norm(hvp):
    model = tiny_marian()
    config = GradInitConfig(
        iterations=15, scale_lr=2e-2, gamma=1e-3, gamma_unit="absolute", hvp=hvp, probe_steps=0
    )
    result = compute_gradinit_scales(model, [seq2seq_batch(12)], config, show_progress=False)
    assert [h["branch"] for h in result.history] == ["constraint"] * 15
    norms = [h["grad_norm"] for h in result.history]
    assert norms[-1] < 0.8 * norms[0]


@pytest.mark.parametrize("factory", [tiny_bart, tiny_marian], ids=["bart", "marian"])
def test_objective_goes_down_without_bound(factory):
    model = factory()
    # One fixed batch used as both S and S~: the objective is a deterministic function.
    config = GradInitConfig(iterations=25, scale_lr=5e-2, eta=1e-2, overlap=1.0, probe_steps=0)
    result = compute_gradinit_scales(model, [seq2seq_batch(12)], config, show_progress=False)
    after = [h["loss_after_step"] for h in result.history]
    assert all(h["branch"] == "objective" for h in result.history)
    assert after[-1] < after[0] - 0.05
    assert sum(b < a for a, b in zip(after, after[1:])) >= 0.8 * (len(after) - 1)


def test_scale_bounds_hold():
    model = tiny_marian()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.1)
    config = GradInitConfig(
        iterations=20, scale_lr=0.2, eta=0.05, min_scale=0.9, max_scale=1.1, probe_steps=0
    )
    result = compute_gradinit_scales(model, [seq2seq_batch(12)], config, show_progress=False)
    kinds = result.kinds
    assert {"weight", "gain", "bias"} <= set(kinds.values())
    for name, s in result.scales.items():
        if kinds[name] == "bias":
            assert s >= 0
        else:
            assert s >= 0.9 - 1e-6, name
        if kinds[name] == "gain":
            assert s <= 1.1 + 1e-6, name
    # the bounds bind somewhere (the test would be vacuous otherwise)
    assert any(abs(s - 0.9) < 1e-6 or abs(s - 1.1) < 1e-6 for s in result.scales.values())


def test_batches_too_small_to_split_are_skipped_and_counted():
    config = GradInitConfig(iterations=3, probe_steps=0)
    data = [seq2seq_batch(1), seq2seq_batch(6)]  # every other batch has one example
    result = compute_gradinit_scales(tiny_marian(), data, config, show_progress=False)
    assert len(result.history) == 3
    assert result.unsplittable_batches == 3
    assert result.summary()["unsplittable_batches"] == 3


# --------------------------------------------------------------------------------------
# lookahead
# --------------------------------------------------------------------------------------


def test_lookahead_follows_the_real_optimizer_and_its_gradient_matches_finite_differences():
    """k=3: the simulated points are where torch.optim.Adam takes a copy of the model (an
    independent path), and d(loss/eta)/d alpha with the detached directions matches central
    finite differences."""
    model = float64_model()
    eta, betas = 1e-2, (0.9, 0.98)
    # eps tiny on both sides, so Adam's real first step eta * g / (|g| + eps) is the
    # paper's eta * sign(g) to rounding.
    config = GradInitConfig(
        eta=eta, lookahead_steps=3, inner_betas=betas, inner_eps=1e-30, overlap=1.0
    )
    problem = ScaledModel(model, torch.device("cpu"))
    alpha = perturbed_alpha(problem)
    batches = [seq2seq_batch(seed=s) for s in (0, 1, 2)]
    loop = _Loop(problem, iter(batches[1:]), config, reduce=None)
    loop.alpha = alpha  # the lookahead's gradients are taken at theta(alpha)
    _, g1 = problem.gradient(alpha, batches[0])
    total, batch_t = loop.lookahead(g1, inner_step(g1, config))
    simulated = problem.theta(alpha, total, eta)

    real = model_at(model, problem.theta(alpha))
    params = dict(real.named_parameters())
    optimizer = torch.optim.Adam(
        [params[n] for n in problem.trainable], lr=eta, betas=betas, eps=1e-30
    )
    for batch in batches:
        real(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for n in problem.trainable:
        if n.endswith("k_proj.bias"):
            # The softmax ignores a key bias: its gradient is rounding noise, whose sign
            # (the paper's step) differs between the two paths.
            continue
        torch.testing.assert_close(simulated[n], params[n].detach(), rtol=0, atol=eta * 1e-6)

    _, analytic = problem.objective_grad(alpha, total, eta, batch_t)

    def objective(a):
        with torch.no_grad():
            theta = problem.theta(a, total, eta)
            return problem.run(theta, batch_t, lambda loss: loss.item()) / eta

    for i in range(0, len(alpha), 3):
        up, down = alpha.clone(), alpha.clone()
        up[i] += 1e-6
        down[i] -= 1e-6
        numeric = (objective(up) - objective(down)) / 2e-6
        assert analytic[i].item() == pytest.approx(numeric, rel=1e-5, abs=1e-6), problem.names[i]


def test_lookahead_runs_end_to_end_and_draws_one_batch_per_step():
    seen = []

    class Counting(list):
        def __iter__(self):
            for b in super().__iter__():
                seen.append(1)
                yield b

    config = GradInitConfig(iterations=4, eta=1e-2, scale_lr=1e-2, lookahead_steps=3, probe_steps=0)
    data = Counting([seq2seq_batch(9, seed=s) for s in range(5)])
    result = compute_gradinit_scales(tiny_marian(), data, config, show_progress=False)
    assert len(seen) == 4 * 3
    assert all(h["branch"] == "objective" for h in result.history)
    assert result.scales != dict.fromkeys(result.scales, 1.0)


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


# ---- Batches of one: skipped and counted; an error only when no batch can be split ---------


def test_variable_batch_sizes_from_a_user_dataloader():
    loader = torch.utils.data.DataLoader(
        seq2seq_examples(13), batch_sampler=[list(range(6)), [6], list(range(7, 13))],
        collate_fn=default_data_collator,
    )  # fmt: skip
    config = GradInitConfig(iterations=4, probe_steps=0)
    result = compute_gradinit_scales(tiny_marian(), loader, config, show_progress=False)
    assert len(result.history) == 4


def test_only_batches_of_one_is_an_error_that_names_the_batch_seen():
    loader = torch.utils.data.DataLoader(
        seq2seq_examples(4), batch_size=1, collate_fn=default_data_collator
    )
    config = GradInitConfig(iterations=2)
    with pytest.raises(GradInitError, match="batch of 1 example"):
        compute_gradinit_scales(tiny_marian(), loader, config, show_progress=False)
