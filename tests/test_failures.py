"""Bad input and faults: each gives a clear error and leaves the model's weights untouched."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_weights, seq2seq_examples, snapshot, tiny_bart, tiny_marian

from hf_gradinit import GradInitConfig, GradInitError, apply_gradinit, compute_gradinit_scales


def _run(model, data=None, config=None, **kwargs):
    data = seq2seq_examples(24) if data is None else data
    config = config or GradInitConfig(iterations=4, scale_lr=1e-2)
    return apply_gradinit(model, data, config, batch_size=12, show_progress=False, **kwargs)


def test_empty_dataset():
    model = tiny_marian()
    before = snapshot(model)
    with pytest.raises(GradInitError, match="empty"):
        _run(model, data=[])
    assert_same_weights(model, before)


def test_batches_without_labels():
    model = tiny_marian()
    before = snapshot(model)
    data = [{k: v for k, v in ex.items() if k != "labels"} for ex in seq2seq_examples(24)]
    with pytest.raises(GradInitError, match="no labels"):
        _run(model, data=data)
    assert_same_weights(model, before)


def test_model_returning_no_loss_can_use_loss_fn():
    class Plain(torch.nn.Module):  # a plain PyTorch model that returns logits only
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
            )

        def forward(self, x, y=None):
            return self.net(x)

    data = [{"x": torch.randn(4), "y": torch.tensor(i % 2)} for i in range(24)]
    model = Plain()
    before = snapshot(model)
    with pytest.raises(GradInitError, match="not a scalar loss.*loss_fn"):
        _run(model, data=data)
    assert_same_weights(model, before)

    def loss_fn(outputs, batch):
        return torch.nn.functional.cross_entropy(outputs, batch["y"])

    result = _run(model, data=data, loss_fn=loss_fn)
    # nn.Linear biases are random (non-zero) at init, so they get scales too
    assert set(result.scales) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    assert result.kinds["net.0.bias"] == "bias"


def test_too_few_examples_for_two_subbatches():
    model = tiny_marian()
    before = snapshot(model)
    with pytest.raises(GradInitError, match="cannot be split"):
        _run(model, data=seq2seq_examples(1))
    assert_same_weights(model, before)


def test_non_finite_loss_at_init():
    model = tiny_marian()
    with torch.no_grad():
        model.model.encoder.layers[0].fc1.weight.fill_(float("nan"))
    before = snapshot(model)
    with pytest.raises(GradInitError, match="not finite at the model's initialization"):
        _run(model)
    assert_same_weights(model, before)


def _nan_after(calls: int):
    """A loss_fn that turns NaN after ``calls`` calls: a loss blowing up midway."""
    count = {"n": 0}

    def loss_fn(outputs, batch):
        count["n"] += 1
        return outputs.loss * (float("nan") if count["n"] > calls else 1.0)

    return loss_fn


def test_loss_becoming_non_finite_midway_stops_and_leaves_model():
    model = tiny_marian()
    before = snapshot(model)
    with pytest.raises(GradInitError, match="non-finite.*not modified"):
        _run(model, config=GradInitConfig(iterations=6), loss_fn=_nan_after(5))
    assert_same_weights(model, before)


def test_skip_option_skips_non_finite_batches():
    model = tiny_marian()
    count = {"n": 0}

    def flaky(outputs, batch):  # every third call (one per iteration's loss on S~) is NaN
        count["n"] += 1
        return outputs.loss * (float("nan") if count["n"] == 4 else 1.0)

    config = GradInitConfig(iterations=5, on_nonfinite="skip")
    result = _run(model, config=config, loss_fn=flaky)
    branches = [h["branch"] for h in result.history]
    assert branches.count("skipped") == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # but a run of NaNs longer than max_skipped still stops, leaving the model alone
    model = tiny_marian()
    before = snapshot(model)
    config = GradInitConfig(iterations=8, on_nonfinite="skip", max_skipped=2)
    with pytest.raises(GradInitError, match="non-finite"):
        _run(model, config=config, loss_fn=_nan_after(3))
    assert_same_weights(model, before)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(eta=-1e-3), "eta must be a positive"),
        (dict(scale_lr=0.0), "scale_lr must be a positive"),
        (dict(min_scale=2.0, max_scale=1.0), "min_scale .* must not exceed max_scale"),
        (dict(iterations=0), "iterations must be an integer >= 1"),
        (dict(inner_optimizer="lamb"), "inner_optimizer must be 'adam' or 'sgd'"),
        (dict(overlap=1.5), "overlap must be in"),
        (dict(gamma=-3.0), "gamma must be positive"),
        (dict(gamma_unit="relative"), "gamma_unit must be"),
    ],
)
def test_invalid_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradInitConfig(**kwargs)


def test_no_trainable_parameters():
    model = tiny_marian()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(GradInitError, match="no trainable parameters"):
        _run(model)


def test_meta_device_model():
    with torch.device("meta"):
        model = tiny_marian()
    with pytest.raises(GradInitError, match="meta device"):
        _run(model)


def test_keyboard_interrupt_midway_leaves_model():
    model = tiny_bart()
    before = snapshot(model)

    def interrupt(record):
        if record["iteration"] == 2:
            raise KeyboardInterrupt

    loader = torch.utils.data.DataLoader(
        seq2seq_examples(24), batch_size=12, collate_fn=torch.utils.data.default_collate
    )
    with pytest.raises(KeyboardInterrupt):
        compute_gradinit_scales(
            model, loader, GradInitConfig(iterations=5), show_progress=False, callback=interrupt
        )
    assert_same_weights(model, before)
    assert model.training is False or all(m.training == model.training for m in model.modules())


def test_interrupt_while_applying_rolls_back(monkeypatch):
    model = tiny_marian()
    before = snapshot(model)
    result = compute_gradinit_scales(
        model, [_batch()], GradInitConfig(iterations=2, scale_lr=0.1), show_progress=False
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


def _batch():
    from transformers import default_data_collator

    return default_data_collator(seq2seq_examples(12))


def test_unsupported_data_type():
    with pytest.raises(GradInitError, match="must be a datasets.Dataset"):
        _run(tiny_marian(), data=42)


def test_hf_dataset_unused_text_columns_are_dropped():
    from datasets import Dataset

    examples = seq2seq_examples(24)
    ds = Dataset.from_dict(
        {
            "input_ids": [e["input_ids"].tolist() for e in examples],
            "attention_mask": [e["attention_mask"].tolist() for e in examples],
            "labels": [e["labels"].tolist() for e in examples],
            "text": ["raw text the model does not take"] * 24,
        }
    )
    result = _run(tiny_marian(), data=ds)
    assert len(result.history) == 4
    with pytest.raises(GradInitError, match="tokenize"):
        _run(tiny_marian(), data=ds.select_columns(["text"]))
