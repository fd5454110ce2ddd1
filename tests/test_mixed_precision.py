"""GradInit computes in fp32 whatever the training precision; training keeps its own."""

from __future__ import annotations

import pytest
import torch
from conftest import seq2seq_examples, snapshot, tiny_marian
from transformers import default_data_collator

import hf_gradinit.gradinit as gradinit_module
from hf_gradinit import GradInitConfig, GradInitTrainer, GradInitTrainingArguments, apply_gradinit


@pytest.fixture
def forward_dtypes(monkeypatch):
    """Records (inside GradInit?, output dtype of the first FFN layer) for each forward.

    An inner Linear shows what autocast does (Marian's logits are upcast by an fp32 bias).
    """
    seen: list[tuple[bool, torch.dtype]] = []
    inside = {"gradinit": False}
    real = gradinit_module.functional_call

    def spy(*args, **kwargs):
        inside["gradinit"] = True
        try:
            return real(*args, **kwargs)
        finally:
            inside["gradinit"] = False

    monkeypatch.setattr(gradinit_module, "functional_call", spy)

    def watch(model):
        fc1 = model.model.encoder.layers[0].fc1
        fc1.register_forward_hook(lambda m, i, out: seen.append((inside["gradinit"], out.dtype)))
        return model

    return seen, watch


def _dtypes(seen, gradinit: bool) -> set[torch.dtype]:
    return {dtype for inside, dtype in seen if inside == gradinit}


def test_half_precision_model_runs_gradinit_in_fp32(forward_dtypes):
    seen, watch = forward_dtypes
    model = watch(tiny_marian().to(torch.bfloat16))
    before = snapshot(model)
    config = GradInitConfig(iterations=3, scale_lr=5e-2)
    result = apply_gradinit(model, seq2seq_examples(24), config, batch_size=12, show_progress=False)
    assert _dtypes(seen, gradinit=True) == {torch.float32}
    params = dict(model.named_parameters())
    for name, scale in result.scales.items():
        assert params[name].dtype == torch.bfloat16  # the model keeps its precision
        expected = before[name] * torch.tensor(scale, dtype=torch.bfloat16)
        assert torch.equal(params[name].detach(), expected), name


def test_autocast_is_off_during_gradinit(forward_dtypes):
    seen, watch = forward_dtypes
    model = watch(tiny_marian())
    config = GradInitConfig(iterations=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(**default_data_collator(seq2seq_examples(4)))  # autocast is really on here
        apply_gradinit(model, seq2seq_examples(24), config, batch_size=12, show_progress=False)
    assert _dtypes(seen, gradinit=False) == {torch.bfloat16}
    assert _dtypes(seen, gradinit=True) == {torch.float32}


def test_trainer_with_bf16_runs_gradinit_in_fp32_then_trains_in_bf16(tmp_path, forward_dtypes):
    seen, watch = forward_dtypes
    model = watch(tiny_marian())
    args = GradInitTrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=True,
        report_to="none",
        disable_tqdm=True,
        per_device_train_batch_size=6,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-3,
        gradinit_iterations=3,
        save_strategy="no",
    )
    trainer = GradInitTrainer(
        model=model,
        args=args,
        train_dataset=seq2seq_examples(24),
        data_collator=default_data_collator,
    )
    trainer.train()
    assert len(trainer.gradinit_result.history) == 3
    assert _dtypes(seen, gradinit=True) == {torch.float32}  # GradInit: fp32
    assert _dtypes(seen, gradinit=False) == {torch.bfloat16}  # training: bf16 autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
