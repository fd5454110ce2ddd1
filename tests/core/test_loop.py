"""core/loop.py: the iterations, the lookahead, batches too small to split."""

from __future__ import annotations

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
from hf_gradinit.core.loop import ScaleLearner, inner_step
from hf_gradinit.core.problem import ScaledModel

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
    loop = ScaleLearner(problem, iter(batches[1:]), config, reduce=None)
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
