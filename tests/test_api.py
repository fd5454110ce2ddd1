"""hf_gradinit.api and hf_gradinit.data: compute_gradinit_scales / apply_gradinit on any
model, make_dataloader; bad input and faults (a clear error, the weights untouched), mixed
precision, the probe's decision, and initialized models."""

from __future__ import annotations

import warnings

import pytest
import torch
from testing_utils import (
    assert_label_padding_masked,
    assert_same_weights,
    classification_examples,
    fresh_from_config,
    fsmt_examples,
    initialized_checkpoint,
    never_called,
    record_batches,
    seq2seq_batch,
    seq2seq_examples,
    snapshot,
    tiny_bart,
    tiny_bert_classifier,
    tiny_fsmt,
    tiny_marian,
    tiny_tokenizer,
    translation_features,
)
from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq, default_data_collator

import hf_gradinit.api as api_module
from hf_gradinit import (
    GradInitConfig,
    GradInitError,
    apply_gradinit,
    compute_gradinit_scales,
    make_dataloader,
)
from hf_gradinit.record import is_initialized

FAMILIES = {"marian": tiny_marian, "bart": tiny_bart, "fsmt": tiny_fsmt}


def _run(model, data=None, config=None, **kwargs):
    data = seq2seq_examples(24) if data is None else data
    config = config or GradInitConfig(iterations=4, scale_lr=1e-2, probe_steps=0)
    return apply_gradinit(model, data, config, batch_size=12, show_progress=False, **kwargs)


# --------------------------------------------------------------------------------------
# Any model
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory,data",
    [
        (tiny_bart, seq2seq_examples),
        (tiny_marian, seq2seq_examples),
        (tiny_fsmt, fsmt_examples),
        (tiny_bert_classifier, classification_examples),
    ],
    ids=["bart", "marian", "fsmt", "bert-classifier"],
)
def test_works_unchanged_on_architectures(factory, data):
    model = factory()
    model.train()
    attn = getattr(model.config, "_attn_implementation", None)
    before = snapshot(model)
    config = GradInitConfig(
        iterations=4, scale_lr=5e-2, gamma=0.5, gamma_unit="init", probe_steps=0
    )
    result = apply_gradinit(model, data(18), config, batch_size=9, show_progress=False)
    assert len(result.history) == 4
    assert {h["branch"] for h in result.history} <= {"objective", "constraint"}
    assert "constraint" in {h["branch"] for h in result.history}  # the bound's branch ran
    assert model.training and all(m.training for m in model.modules())
    assert getattr(model.config, "_attn_implementation", None) == attn
    changed = [n for n, t in model.state_dict().items() if not torch.equal(t, before[n])]
    assert changed


def test_same_seed_same_scales_and_other_seed_differs():
    def run(seed):
        model = tiny_marian()
        torch.manual_seed(0)
        model = tiny_marian()
        cfg = GradInitConfig(iterations=6, scale_lr=2e-2, seed=seed, probe_steps=0)
        return apply_gradinit(
            model, seq2seq_examples(36), cfg, batch_size=9, show_progress=False
        ).scales

    torch.manual_seed(0)
    a, b, c = run(1), run(1), run(2)
    assert a == b
    assert a != c


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


def test_by_default_no_embedding_table_gets_a_scale():
    model = tiny_bart()
    tables = {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if isinstance(model.get_submodule(n.rpartition(".")[0]), torch.nn.Embedding)
    }
    assert {"model.shared.weight", "model.encoder.embed_positions.weight"} <= set(tables)
    config = GradInitConfig(iterations=3, scale_lr=5e-2, probe_steps=0)
    result = compute_gradinit_scales(model, [seq2seq_batch(9)], config, show_progress=False)
    assert not set(tables) & set(result.scales)
    assert result.tied["model.shared.weight"]["mode"] == "fixed"
    assert any(v != 1.0 for v in result.scales.values())  # the rest is learned
    result.apply(model)
    for n, p in model.named_parameters():
        if n in tables:
            torch.testing.assert_close(p, tables[n], rtol=0, atol=0)


def test_a_scaled_tied_input_output_tensor_is_warned_about_and_named_in_logs():
    """Where a user turns the default off, the known harm is said plainly; the notes that
    the trainer logs, the CLI prints and the card shows name the tensor either way."""
    with pytest.warns(UserWarning, match="both an input embedding and the output projection"):
        scaled = compute_gradinit_scales(
            tiny_marian(), [seq2seq_batch(9)],
            GradInitConfig(iterations=2, fixed_embeddings=False, probe_steps=0),
            show_progress=False,
        )  # fmt: skip
    (note,) = scaled.tied_notes()
    assert note.startswith("`model.shared.weight` = `model.encoder.embed_tokens.weight`")
    assert f"one scale, {scaled.scales['model.shared.weight']:.4g}" in note
    assert scaled.summary()["tied_input_output"][0]["mode"] == "shared"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default and the reference layout: no warning
        fixed = compute_gradinit_scales(
            tiny_marian(), [seq2seq_batch(9)], GradInitConfig(iterations=2, probe_steps=0),
            show_progress=False,
        )  # fmt: skip
        reference = tiny_marian(share_encoder_decoder_embeddings=False, tie_word_embeddings=True)
        config = GradInitConfig(iterations=2, fixed_embeddings=False, probe_steps=0)
        none = compute_gradinit_scales(reference, [seq2seq_batch(9)], config, show_progress=False)
    assert "left it at its init (fixed_embeddings" in fixed.tied_notes()[0]
    assert none.tied_notes() == []


# --------------------------------------------------------------------------------------
# The probe's decision
# --------------------------------------------------------------------------------------


def test_when_the_probe_keeps_the_original_init_every_scale_is_one(caplog, probe_keeps_original):
    model = tiny_marian()
    before = snapshot(model)
    config = GradInitConfig(iterations=3, scale_lr=5e-2, probe_steps=4)
    with caplog.at_level("WARNING", logger="hf_gradinit.api"):
        result = _run(model, config=config)
    assert result.probe["decision"] == "original" and not result.kept
    assert len(result.probe["learned_losses"]) == len(result.probe["original_losses"]) == 4
    assert set(result.scales.values()) == {1.0}
    assert len(result.history) == 3  # the scales were learned, then not kept
    summary = result.summary()
    assert summary["decision"] == "original"
    assert summary["decision_reason"] == "forced by the test"
    assert "kept the original init: forced by the test" in caplog.text
    assert_same_weights(model, before)  # x 1.0 leaves every weight as it was
    assert model.config.gradinit["summary"]["decision"] == "original"


def test_the_probe_draws_its_own_batches_after_the_iterations():
    batches = [seq2seq_batch(6, seed=s) for s in range(10)]

    class Counting(list):
        drawn = 0

        def __iter__(self):
            for b in super().__iter__():
                Counting.drawn += 1
                yield b

    config = GradInitConfig(iterations=3, probe_steps=5)
    result = compute_gradinit_scales(tiny_marian(), Counting(batches), config, show_progress=False)
    assert Counting.drawn == 3 + 5
    assert result.probe["steps"] == 5 and len(result.probe["original_losses"]) == 5
    assert result.summary()["decision"] in ("learned", "original")


# --------------------------------------------------------------------------------------
# Bad input and faults: a clear error, the weights untouched
# --------------------------------------------------------------------------------------


def test_empty_dataset():
    model = tiny_marian()
    before = snapshot(model)
    with pytest.raises(GradInitError, match="empty"):
        _run(model, data=[])
    assert_same_weights(model, before)


def test_buffers_are_left_as_they_were_by_the_iterations_and_the_probe():
    """Only parameters get scales. Buffers that a forward pass updates in place (BatchNorm's
    running statistics and its integer step count, a call counter) must not carry the
    marks of GradInit's forward passes or of the probe's training steps."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
            )  # fmt: skip
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))

        def forward(self, x, y=None):
            self.calls += 1
            return torch.nn.functional.cross_entropy(self.net(x), y)

    data = [{"x": torch.randn(4), "y": torch.tensor(i % 2)} for i in range(48)]
    model = Net()
    before = {n: b.clone() for n, b in model.named_buffers()}
    assert {"net.1.num_batches_tracked", "net.1.running_mean", "calls"} <= set(before)
    _run(model, data=data, config=GradInitConfig(eta=1e-3, iterations=3, probe_steps=3))
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_a_tuple_output_gives_its_loss_first_as_the_trainer_reads_it():
    model = tiny_bert_classifier(return_dict=False)
    outputs = model(**default_data_collator(list(classification_examples(4))))
    assert isinstance(outputs, tuple) and outputs[0].dim() == 0  # the loss first
    result = _run(model, data=classification_examples(24))
    assert result.scales


def test_batch_keys_that_forward_does_not_take_are_named_in_the_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))  # forward(input): positional only
    data = [{"x": torch.randn(4), "y": torch.tensor(i % 2)} for i in range(24)]
    with pytest.raises(GradInitError, match=r"model\(\*\*batch\).*keys must be the names"):
        _run(model, data=data, loss_fn=lambda out, batch: out.sum())


def test_batches_without_labels():
    model = tiny_marian()
    before = snapshot(model)
    data = [{k: v for k, v in ex.items() if k != "labels"} for ex in seq2seq_examples(24)]
    with pytest.raises(GradInitError, match="none of the label keys"):
        _run(model, data=data)
    assert_same_weights(model, before)


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
        _run(model, config=GradInitConfig(iterations=6, probe_steps=0), loss_fn=_nan_after(5))
    assert_same_weights(model, before)


def test_skip_option_skips_non_finite_batches():
    model = tiny_marian()
    count = {"n": 0}

    def flaky(outputs, batch):  # the 4th call (the 2nd iteration's loss on S~) is NaN
        count["n"] += 1
        return outputs.loss * (float("nan") if count["n"] == 4 else 1.0)

    config = GradInitConfig(iterations=5, on_nonfinite="skip", probe_steps=0)
    result = _run(model, config=config, loss_fn=flaky)
    branches = [h["branch"] for h in result.history]
    assert branches.count("skipped") == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # but a run of NaNs longer than max_skipped still stops, leaving the model alone
    model = tiny_marian()
    before = snapshot(model)
    config = GradInitConfig(iterations=8, on_nonfinite="skip", max_skipped=2, probe_steps=0)
    with pytest.raises(GradInitError, match="non-finite"):
        _run(model, config=config, loss_fn=_nan_after(3))
    assert_same_weights(model, before)


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


# --------------------------------------------------------------------------------------
# Data: make_dataloader and the collators that feed GradInit
# --------------------------------------------------------------------------------------


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
    loader = make_dataloader(tiny_marian(), ds, batch_size=12)
    assert set(next(iter(loader))) == {"input_ids", "attention_mask", "labels"}
    result = _run(tiny_marian(), data=ds)
    assert len(result.history) == 4
    with pytest.raises(GradInitError, match="tokenize"):
        _run(tiny_marian(), data=ds.select_columns(["text"]))


@pytest.mark.parametrize("family", FAMILIES)
def test_apply_gradinit_with_a_seq2seq_collator_masks_label_padding(monkeypatch, family):
    model = FAMILIES[family]()
    batches = record_batches(monkeypatch, api_module)
    collator = DataCollatorForSeq2Seq(tiny_tokenizer(), model=model)
    config = GradInitConfig(iterations=2, probe_steps=0)
    apply_gradinit(
        model, translation_features(), config, data_collator=collator, batch_size=6,
        show_progress=False,
    )  # fmt: skip
    assert_label_padding_masked(batches)


# --------------------------------------------------------------------------------------
# Mixed precision: GradInit computes in fp32, the model keeps its precision
# --------------------------------------------------------------------------------------


def _dtypes(seen, gradinit: bool) -> set[torch.dtype]:
    return {dtype for inside, dtype in seen if inside == gradinit}


def test_half_precision_model_runs_gradinit_in_fp32(forward_dtypes):
    seen, watch = forward_dtypes
    model = watch(tiny_marian().to(torch.bfloat16))
    before = snapshot(model)
    config = GradInitConfig(iterations=3, scale_lr=5e-2, probe_steps=2)
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
    config = GradInitConfig(iterations=2, probe_steps=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(**default_data_collator(seq2seq_examples(4)))  # autocast is really on here
        apply_gradinit(model, seq2seq_examples(24), config, batch_size=12, show_progress=False)
    assert _dtypes(seen, gradinit=False) == {torch.bfloat16}
    assert _dtypes(seen, gradinit=True) == {torch.float32}


class FloatInputNet(torch.nn.Module):
    """A model whose inputs are floats (features, not token ids) and returns a loss."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
        )

    def forward(self, features, labels=None):
        logits = self.net(features)
        return {"loss": torch.nn.functional.cross_entropy(logits.float(), labels)}


def _input_dtypes(model: torch.nn.Module, name: str) -> list[torch.dtype]:
    seen = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs[name].dtype), with_kwargs=True
    )
    return seen


@pytest.mark.parametrize(
    "extra",
    [{}, {"lookahead_steps": 2}, {"probe_steps": 2}],
    ids=["paper", "lookahead", "probe"],  # every place that draws batches
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_float_inputs_follow_the_compute_dtype(dtype, extra):
    model = FloatInputNet().to(dtype)
    seen = _input_dtypes(model, "features")
    g = torch.Generator().manual_seed(0)
    data = [
        {"features": torch.randn(4, generator=g).to(dtype), "labels": torch.tensor(i % 3)}
        for i in range(24)
    ]
    before = snapshot(model)
    config = GradInitConfig(iterations=3, **{"probe_steps": 0, **extra})
    result = apply_gradinit(model, data, config, batch_size=6, show_progress=False)
    assert seen and set(seen) == {torch.float32}
    for name, p in model.named_parameters():  # the model keeps its own precision
        assert p.dtype == dtype
        expected = before[name] * torch.tensor(result.scales[name], dtype=dtype)
        assert torch.equal(p.detach(), expected), name


def test_hf_model_with_float_inputs_gets_them_in_fp32():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        image_size=8, patch_size=4, num_labels=3,
    )  # fmt: skip
    model = ViTForImageClassification(config).to(torch.bfloat16)
    seen = _input_dtypes(model, "pixel_values")
    g = torch.Generator().manual_seed(0)
    data = [
        {
            "pixel_values": torch.randn(3, 8, 8, generator=g).bfloat16(),
            "labels": torch.tensor(i % 3),
        }
        for i in range(12)
    ]
    config = GradInitConfig(iterations=2, probe_steps=2)
    apply_gradinit(model, data, config, batch_size=6, show_progress=False)
    assert seen and set(seen) == {torch.float32}
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


# --------------------------------------------------------------------------------------
# Initialized models (see hf_gradinit.record)
# --------------------------------------------------------------------------------------


def test_apply_gradinit_refuses_an_initialized_model(tmp_path, monkeypatch):
    folder, _, _ = initialized_checkpoint(tmp_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    before = snapshot(model)
    monkeypatch.setattr(api_module, "compute_gradinit_scales", never_called)
    with pytest.raises(GradInitError, match="already GradInit-initialized.*del model.config"):
        apply_gradinit(model, seq2seq_examples(12), GradInitConfig(iterations=2), batch_size=6)
    assert_same_weights(model, before)


def test_apply_gradinit_on_a_fresh_model_from_an_initialized_config_records_it(tmp_path):
    folder, _, old = initialized_checkpoint(tmp_path)
    fresh = fresh_from_config(folder)
    config = GradInitConfig(iterations=3, scale_lr=0.05, eta=1e-2, probe_steps=0)
    result = apply_gradinit(fresh, seq2seq_examples(24), config, batch_size=6, show_progress=False)
    assert is_initialized(fresh)
    assert fresh.config.gradinit["summary"]["iterations"] == 3 != old.config.iterations
    assert fresh.config.gradinit["summary"]["num_scales"] == len(result.scales)


def test_the_probe_keeps_the_original_init_when_gradinits_objective_did_not_improve(
    monkeypatch,
):
    def history(after):
        return [{"loss_after_step": v} for v in after]

    improved, worse = [4.0] * 10 + [3.0] * 10, [3.0] * 10 + [4.0] * 10
    assert api_module._objective_improved(history(improved)) is True
    assert api_module._objective_improved(history(worse)) is False
    assert api_module._objective_improved(history(worse[:19])) is True  # too few to tell
    assert api_module._objective_improved(history([None] * 30 + worse)) is False
    # and that verdict reaches the probe's decision
    monkeypatch.setattr(api_module, "_objective_improved", lambda history: False)
    config = GradInitConfig(iterations=2, probe_steps=2)
    result = compute_gradinit_scales(tiny_marian(), [seq2seq_batch(9)], config, show_progress=False)
    assert result.probe["decision"] == "original" and "did not improve" in result.probe["reason"]
    assert set(result.scales.values()) == {1.0}


def test_an_error_on_a_qa_batch_does_not_say_it_has_no_labels():
    """start_positions/end_positions are a QA model's labels: a forward that fails for another
    reason (token type ids out of range here) gets the real error, not a labels hint."""
    from transformers import BertConfig, BertForQuestionAnswering

    model = BertForQuestionAnswering(
        BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=64, type_vocab_size=2)
    )  # fmt: skip
    batch = {
        "input_ids": torch.randint(4, 64, (6, 8)),
        "token_type_ids": torch.full((6, 8), 5),
        "start_positions": torch.zeros(6, dtype=torch.long),
        "end_positions": torch.ones(6, dtype=torch.long),
    }
    with pytest.raises(GradInitError) as info:
        compute_gradinit_scales(model, [batch], GradInitConfig(iterations=1, probe_steps=0))
    assert "label keys" not in str(info.value) and "index" in str(info.value).lower()
    del batch["start_positions"], batch["end_positions"]
    with pytest.raises(GradInitError, match="none of the label keys.*start_positions"):
        compute_gradinit_scales(model, [batch], GradInitConfig(iterations=1, probe_steps=0))


@pytest.mark.parametrize("collator_name", ["DataCollatorForSeq2Seq", "DataCollatorWithPadding"])
def test_a_dataset_without_labels_gets_an_error_naming_the_labels_and_the_fix(collator_name):
    """GPT-2 on tokenized text without labels: DataCollatorForSeq2Seq leaves `labels` None,
    which the error says, instead of listing 'labels' among the batch's keys."""
    import transformers
    from testing_utils import tiny_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_tokenizer()
    data = [tokenizer("ich sieht hund rot") for _ in range(12)]
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2))
    collator = getattr(transformers, collator_name)(tokenizer)
    with pytest.raises(GradInitError) as info:
        apply_gradinit(
            model, data, GradInitConfig(iterations=1, probe_steps=0), data_collator=collator,
            batch_size=4, show_progress=False,
        )  # fmt: skip
    message = str(info.value)
    assert "labels" in message and "DataCollatorForLanguageModeling" in message
    assert "'labels']" not in message  # not listed as a key the batch had
    if collator_name == "DataCollatorForSeq2Seq":
        assert "'labels' was None" in message
