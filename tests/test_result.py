"""hf_gradinit.result: applying scales (exact, all or nothing, ties kept) and the
GradInitResult's dict form."""

from __future__ import annotations

import json

import pytest
import torch
from testing_utils import (
    assert_same_weights,
    seq2seq_batch,
    seq2seq_examples,
    snapshot,
    tiny_marian,
)

from hf_gradinit import (
    GradInitConfig,
    GradInitError,
    GradInitResult,
    apply_gradinit,
    apply_scales,
    compute_gradinit_scales,
)
from hf_gradinit.result import unwrap_model


def test_apply_is_exact_and_keeps_ties():
    model = tiny_marian()
    before = snapshot(model)
    config = GradInitConfig(  # scale the embeddings; no probe (it may keep the original)
        iterations=5, scale_lr=5e-2, fixed_embeddings=False, probe_steps=0
    )
    with pytest.warns(UserWarning, match="both an input embedding and the output projection"):
        result = apply_gradinit(
            model, seq2seq_examples(24), config, batch_size=12, show_progress=False
        )
    params = dict(model.named_parameters(remove_duplicate=False))
    assert model.lm_head.weight is model.model.shared.weight
    assert model.model.encoder.embed_tokens.weight is model.model.shared.weight
    assert any(abs(s - 1) > 1e-3 for s in result.scales.values())
    for name, scale in result.scales.items():
        expected = before[name] * torch.tensor(scale, dtype=before[name].dtype)
        assert torch.equal(params[name].detach(), expected), name
    untouched = set(before) - set(result.scales) - {a for v in result.aliases.values() for a in v}
    for name in untouched:  # zero tensors and frozen positions
        assert torch.equal(model.state_dict()[name], before[name]), name
    # the tied tensor is listed once, with its aliases
    shared = "model.shared.weight"
    assert shared in result.scales
    assert "lm_head.weight" in result.aliases[shared]


def test_apply_scales_checks_everything_first():
    model = tiny_marian()
    before = snapshot(model)
    with pytest.raises(Exception, match="not parameters"):
        apply_scales(model, {"model.shared.weight": 2.0, "nope.weight": 1.0})
    with pytest.raises(Exception, match="finite"):
        apply_scales(model, {"model.shared.weight": 2.0, "lm_head.weight": float("nan")})
    with pytest.raises(Exception, match="tied"):
        apply_scales(model, {"model.shared.weight": 2.0, "lm_head.weight": 3.0})
    assert_same_weights(model, before)
    apply_scales(model, {"lm_head.weight": 2.0})  # an alias scales the shared tensor once
    assert torch.equal(model.model.shared.weight, before["model.shared.weight"] * 2.0)


def test_scales_named_through_a_wrapper_apply_to_the_model_inside():
    model = tiny_marian()
    before = snapshot(model)
    wrapped = torch.nn.DataParallel(model)
    assert unwrap_model(wrapped) is model
    name = "model.encoder.layers.0.fc1.weight"
    apply_scales(wrapped, {f"module.{name}": 0.5})
    assert torch.equal(dict(model.named_parameters())[name], before[name] * 0.5)


def test_interrupt_while_applying_rolls_back(monkeypatch):
    model = tiny_marian()
    before = snapshot(model)
    result = compute_gradinit_scales(
        model,
        [seq2seq_batch(12)],
        GradInitConfig(iterations=2, scale_lr=0.1, probe_steps=0),
        show_progress=False,
    )
    calls = {"n": 0}
    real_tensor = torch.tensor

    def failing_tensor(*args, **kwargs):  # fail on the 5th tensor being scaled
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_tensor(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", failing_tensor)
    with pytest.raises(KeyboardInterrupt):
        result.apply(model)
    monkeypatch.setattr(torch, "tensor", real_tensor)
    assert_same_weights(model, before)


def test_apply_records_the_run_and_refuses_a_second_application():
    model = tiny_marian()
    config = GradInitConfig(iterations=2, scale_lr=0.1, probe_steps=0)
    result = compute_gradinit_scales(model, [seq2seq_batch(12)], config, show_progress=False)
    result.apply(model)
    entry = model.config.gradinit
    assert entry["settings"] == result.config.to_dict()
    assert entry["summary"] == result.summary() and entry["fingerprint"]
    applied = snapshot(model)
    with pytest.raises(GradInitError, match="already GradInit-initialized"):
        result.apply(model)
    assert_same_weights(model, applied)


def test_result_dict_round_trips_and_reads_older_files():
    model = tiny_marian()
    config = GradInitConfig(iterations=3, scale_lr=0.1, probe_steps=2)
    result = compute_gradinit_scales(model, [seq2seq_batch(12)], config, show_progress=False)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["probe"]["steps"] == 2 and len(data["probe"]["learned_losses"]) == 2
    loaded = GradInitResult.from_dict(data)
    assert loaded.to_dict() == data
    assert loaded.scales == result.scales and loaded.config == result.config
    assert loaded.kept == result.kept
    summary = result.summary()
    assert summary["decision"] == result.probe["decision"]
    assert summary["decision_reason"] == result.probe["reason"]
    assert {"unsplittable_batches", "tied_input_output", "iterations"} <= set(summary)
    # a file of an earlier version: trial-guard fields, no probe
    older = {k: v for k, v in data.items() if k not in ("probe", "unsplittable_batches")}
    older["config"] = {**data["config"], "trial_steps": 50, "tied_embeddings": "fixed"}
    older["trial"] = {"choice": "scaled"}
    loaded = GradInitResult.from_dict(older)
    assert loaded.probe is None and loaded.kept and loaded.unsplittable_batches == 0
    assert "decision" not in loaded.summary()
    assert loaded.scales == result.scales


# ---- Scales are named after the model inside a torch.compile wrapper -----------------------


def test_scales_of_a_compiled_model_are_named_after_the_model():
    torch.manual_seed(0)
    model = tiny_marian()
    plain_names = {n for n, _ in model.named_parameters()}
    compiled = torch.compile(model)
    config = GradInitConfig(iterations=2, probe_steps=0)
    result = apply_gradinit(
        compiled, seq2seq_examples(12), config, batch_size=6, show_progress=False
    )
    assert set(result.scales) <= plain_names
    fresh = tiny_marian()
    apply_scales(fresh, result.scales)  # an uncompiled model takes them


def test_repr_is_a_short_summary_not_the_history():
    scales = {f"model.layers.{i}.weight": 1.0 + i / 100 for i in range(300)}
    history = [
        {"iteration": i, "branch": "objective", "loss": 5.0, "loss_after_step": 4.9, "grad_norm": 1}
        for i in range(200)
    ]
    probe = {
        "decision": "original",
        "reason": "training from the learned init was behind",
        "learned_losses": [5.0] * 300,
        "original_losses": [4.0] * 300,
    }
    result = GradInitResult(scales, GradInitConfig(), history, runtime_s=12.345, probe=probe)
    text = repr(result)
    assert text == str(result) and len(text) < 300 and "\n" not in text
    assert text.startswith("GradInitResult(") and "300 scales in [1, 3.99]" in text
    assert "200 iterations" in text and "12.3 s" in text
    assert "kept the original init: training from the learned init was behind" in text
    learned = GradInitResult(
        scales, GradInitConfig(), history, probe={**probe, "decision": "learned"}
    )
    assert "kept the learned scales: training from the learned init" in repr(learned)
    assert "kept the learned scales (no probe)" in repr(GradInitResult({}, GradInitConfig()))
    # still a dataclass: fields and equality as before
    assert result == GradInitResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert result != learned
