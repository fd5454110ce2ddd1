"""hf_gradinit.trainer (and the parts of hf_gradinit.callbacks it runs): when GradInit runs,
what training starts from, what gets logged and saved, and that --no_gradinit is plain
Seq2SeqTrainer. GradInitCallback in other Trainers: tests/test_callbacks.py."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from testing_utils import (
    TRAINING_DEFAULTS,
    assert_label_padding_masked,
    fresh_from_config,
    gradinit_args,
    gradinit_entries,
    initialized_checkpoint,
    never_called,
    record_batches,
    seq2seq_examples,
    snapshot,
    tiny_bart,
    tiny_fsmt,
    tiny_marian,
    tiny_tokenizer,
    training_args,
    translation_features,
)
from transformers import (
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    default_data_collator,
    set_seed,
)
from transformers.trainer_pt_utils import LengthGroupedSampler

import hf_gradinit.callbacks as callbacks_module
from hf_gradinit import (
    GradInitResult,
    GradInitTrainer,
    GradInitTrainingArguments,
    load_gradinit_result,
)
from hf_gradinit.callbacks import gradinit_dataloader, trainer_compute_loss, trainer_probe_optimizer
from hf_gradinit.hub import SCALES_FILE
from hf_gradinit.record import is_initialized

FAMILIES = {"marian": tiny_marian, "bart": tiny_bart, "fsmt": tiny_fsmt}

COMMON = {**TRAINING_DEFAULTS, "learning_rate": 1e-3}

# No probe unless a test asks for one: by default it trains 2 x 300 steps.
FAST = dict(learning_rate=1e-3, gradinit_iterations=3, gradinit_probe_steps=0)


def _args(tmp_path, **overrides) -> GradInitTrainingArguments:
    return training_args(tmp_path, **{**FAST, "max_steps": 2, **overrides})


def _train_args(tmp_path, name="run", **overrides) -> GradInitTrainingArguments:
    kwargs = {**FAST, "max_steps": 1, "output_dir": str(tmp_path / name), **overrides}
    return training_args(tmp_path, **kwargs)


class StartWeights(TrainerCallback):
    """Keeps the weights each optimizer step starts from (first step of each train() call)."""

    def __init__(self):
        self.first: dict[str, torch.Tensor] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.first = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.first is None:
            self.first = snapshot(model)


class LogSpy(TrainerCallback):
    """What the configured reporters receive (they are on_log callbacks too)."""

    def __init__(self):
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def _without_fingerprint(model) -> dict:
    entry = copy.deepcopy(model.config.gradinit)
    entry.pop("fingerprint")
    return entry


def _scaled(original: dict[str, torch.Tensor], result: GradInitResult) -> dict[str, torch.Tensor]:
    """original * scale exactly as apply_scales computes it, every alias of a tied tensor."""
    expected = dict(original)
    for name, scale in result.scales.items():
        for n in [name, *result.aliases.get(name, [])]:
            t = original[n]
            expected[n] = t * torch.tensor(scale, dtype=t.dtype)
    return expected


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def test_plain_seq2seq_arguments_get_the_default_gradinit_settings(tmp_path):
    args = Seq2SeqTrainingArguments(str(tmp_path), learning_rate=3e-4, optim="sgd", **{
        k: v for k, v in COMMON.items() if k not in ("learning_rate",)
    })  # fmt: skip
    trainer = GradInitTrainer(model=tiny_bart(), args=args, train_dataset=seq2seq_examples(6))
    config = trainer.gradinit_config()
    assert trainer.gradinit_enabled
    assert (config.eta, config.inner_optimizer, config.iterations) == (3e-4, "sgd", 200)


@pytest.mark.parametrize("factory", [tiny_bart, tiny_marian], ids=["bart", "marian"])
def test_training_starts_from_the_scaled_init_and_saves_it(tmp_path, factory):
    model = factory()
    original = snapshot(model)
    start, spy = StartWeights(), LogSpy()
    args = _args(tmp_path, save_strategy="steps", save_steps=2, gradinit_iterations=4)
    trainer = GradInitTrainer(
        model=model, args=args, train_dataset=seq2seq_examples(24), callbacks=[start, spy]
    )
    trainer.train()
    result = trainer.gradinit_result
    assert isinstance(result, GradInitResult) and len(result.history) == 4
    assert any(abs(s - 1) > 1e-4 for s in result.scales.values())

    # The first optimizer step starts from exactly original * scale.
    expected = _scaled(original, result)
    assert set(start.first) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(start.first[name], tensor), name

    # GradInit metrics are in the log history, before the first training loss.
    history = trainer.state.log_history
    entries = gradinit_entries(history)
    assert [e["gradinit/iteration"] for e in entries[:-1]] == [1, 2, 3, 4]
    assert {"gradinit/loss", "gradinit/grad_norm", "gradinit/loss_after_step"} <= set(entries[0])
    assert entries[0]["gradinit/loss"] == pytest.approx(result.history[0]["loss"])
    assert entries[-1]["gradinit/runtime_s"] == pytest.approx(result.runtime_s)
    first_train = next(i for i, e in enumerate(history) if "loss" in e)
    assert history.index(entries[-1]) < first_train
    assert len(gradinit_entries(spy.logs)) == len(entries)  # reporters got them too

    # Scales file in the checkpoint and in output_dir; config.gradinit; reload is exact.
    trainer.save_model()
    for folder in [args.output_dir, os.path.join(args.output_dir, "checkpoint-2")]:
        loaded = load_gradinit_result(folder)
        assert loaded.scales == result.scales and loaded.config == result.config
        assert loaded.history == json.loads(json.dumps(result.history))
        assert os.path.isfile(os.path.join(folder, "gradinit_scales.png"))
    reloaded = type(model).from_pretrained(args.output_dir)
    assert reloaded.config.gradinit["summary"]["num_scales"] == len(result.scales)
    assert reloaded.config.gradinit["settings"] == result.config.to_dict()
    trained = trainer.model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, trained[name]), name


def test_resume_restores_the_checkpoint_and_does_not_run_gradinit(tmp_path, monkeypatch):
    data = seq2seq_examples(24)
    args = _args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    first = GradInitTrainer(model=tiny_marian(), args=args, train_dataset=data)
    first.train()
    checkpoint = os.path.join(args.output_dir, "checkpoint-2")
    saved = snapshot(type(first.model).from_pretrained(checkpoint))
    logged_before = len(gradinit_entries(first.state.log_history))

    monkeypatch.setattr(callbacks_module, "compute_gradinit_scales", never_called)
    start = StartWeights()
    torch.manual_seed(123)  # a different random init, which the checkpoint must replace
    resumed = GradInitTrainer(
        model=tiny_marian(),
        args=_args(tmp_path, max_steps=3),
        train_dataset=data,
        callbacks=[start],
    )
    resumed.train(resume_from_checkpoint=checkpoint)
    for name, tensor in saved.items():
        assert torch.equal(start.first[name], tensor), name
    assert resumed.state.global_step == 3
    assert len(gradinit_entries(resumed.state.log_history)) == logged_before  # none new
    assert resumed.gradinit_result.scales == first.gradinit_result.scales  # record kept
    # the same entry; its fingerprint follows each model's own weights (record.LiveRecord)
    assert _without_fingerprint(resumed.model) == _without_fingerprint(first.model)
    resumed.save_model()  # the scales file survives the interruption and the resume
    survived = load_gradinit_result(os.path.join(resumed.args.output_dir, "gradinit_scales.json"))
    assert survived.scales == first.gradinit_result.scales


def test_second_train_call_does_not_rerun_gradinit(tmp_path, monkeypatch):
    trainer = GradInitTrainer(
        model=tiny_bart(), args=_args(tmp_path), train_dataset=seq2seq_examples(24)
    )
    trainer.train()
    result = trainer.gradinit_result
    monkeypatch.setattr(callbacks_module, "compute_gradinit_scales", never_called)
    trainer.train()
    assert trainer.gradinit_result is result
    assert gradinit_entries(trainer.state.log_history) == []


def test_model_init_gets_each_fresh_model_initialized(tmp_path):
    start = StartWeights()
    args = _args(tmp_path, seed=3)
    trainer = GradInitTrainer(
        model_init=lambda: tiny_bart(),
        args=args,
        train_dataset=seq2seq_examples(24),
        callbacks=[start],
    )
    trainer.train()
    set_seed(args.seed)  # train() seeds before calling model_init
    expected = _scaled(snapshot(tiny_bart()), trainer.gradinit_result)
    for name, tensor in expected.items():
        assert torch.equal(start.first[name], tensor), name
    assert len(gradinit_entries(trainer.state.log_history)) == 4
    assert trainer.model.config.gradinit["summary"]["iterations"] == 3


def test_gradinit_off_trains_exactly_like_seq2seq_trainer(tmp_path):
    data = seq2seq_examples(24)
    kwargs = {**COMMON, "max_steps": 3}

    def losses(trainer_cls, args):
        torch.manual_seed(0)
        trainer = trainer_cls(model=tiny_bart(dropout=0.1), args=args, train_dataset=data)
        trainer.train()
        return [e["loss"] for e in trainer.state.log_history if "loss" in e], trainer

    plain, _ = losses(Seq2SeqTrainer, Seq2SeqTrainingArguments(str(tmp_path / "a"), **kwargs))
    off, trainer = losses(
        GradInitTrainer, GradInitTrainingArguments(str(tmp_path / "b"), gradinit=False, **kwargs)
    )
    assert len(plain) == 3 and off == plain
    assert trainer.gradinit_result is None
    assert not hasattr(trainer.model.config, "gradinit")


def test_run_gradinit_uses_gradinit_batch_size_and_logging_steps(tmp_path, monkeypatch):
    batches = record_batches(monkeypatch, callbacks_module)
    args = _args(tmp_path, gradinit_iterations=5, gradinit_batch_size=4, gradinit_logging_steps=2)
    trainer = GradInitTrainer(model=tiny_bart(), args=args, train_dataset=seq2seq_examples(24))
    rng = torch.get_rng_state()
    result = trainer.run_gradinit()
    assert torch.equal(torch.get_rng_state(), rng)  # training's random streams are untouched
    sizes = [batch["input_ids"].shape[0] for batch in batches]
    assert sizes[:5] == [4] * 5
    assert trainer._train_batch_size == 6  # the training batch size is left alone
    trainer.train()  # the model is initialized: train() only logs what run_gradinit did
    entries = gradinit_entries(trainer.state.log_history)
    assert [e["gradinit/iteration"] for e in entries[:-1]] == [2, 4, 5]
    mean = sum(h["loss"] for h in result.history[:2]) / 2
    assert entries[0]["gradinit/loss"] == pytest.approx(mean)


def test_trainer_logs_what_gradinit_did_with_a_tied_input_output_tensor(tmp_path, caplog):
    args = _args(tmp_path, gradinit_iterations=2)
    trainer = GradInitTrainer(model=tiny_bart(), args=args, train_dataset=seq2seq_examples(12))
    with caplog.at_level(logging.INFO, logger="hf_gradinit"):
        trainer.run_gradinit()
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "model.shared.weight = model.encoder.embed_tokens.weight" in logged
    assert "is both an input embedding and the output projection: GradInit left it" in logged


def _varied_length_examples(n: int) -> list[dict]:
    """Sources of 2..40 tokens (each length about equally often); labels: the reversed source."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        src = torch.randint(3, 64, (2 + (i * 17) % 39,), generator=g)
        out.append({"input_ids": src, "labels": torch.flip(src, [0])})
    return out


def _pad_collator(seen: list[list[int]]):
    """Pads each batch (labels with -100) and records its examples' lengths in ``seen``."""

    def collate(features):
        lengths = [len(f["input_ids"]) for f in features]
        seen.append(lengths)
        longest = max(lengths)
        ids = torch.zeros(len(features), longest, dtype=torch.long)
        labels = torch.full((len(features), longest), -100)
        for row, f in enumerate(features):
            ids[row, : len(f["input_ids"])] = f["input_ids"]
            labels[row, : len(f["labels"])] = f["labels"]
        return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": labels}

    return collate


def test_gradinit_batches_are_random_not_the_longest_under_group_by_length(tmp_path, monkeypatch):
    data = _varied_length_examples(240)
    lengths = sorted(len(ex["input_ids"]) for ex in data)
    batches = record_batches(monkeypatch, callbacks_module)
    collated: list[list[int]] = []
    args = _args(
        tmp_path,
        train_sampling_strategy="group_by_length",
        gradinit_iterations=4,
        gradinit_batch_size=3,
    )
    trainer = GradInitTrainer(
        model=tiny_marian(), args=args, train_dataset=data, data_collator=_pad_collator(collated)
    )
    trainer.run_gradinit()
    # transformers' LengthGroupedSampler would give GradInit the longest 12 of a random 60
    # (mean ~37, none below ~30); a uniform sample has the dataset's mean, 21.
    gradinit_lengths = [n for b in batches for n in b["attention_mask"].sum(1).tolist()]
    assert len(gradinit_lengths) == 12
    median, upper_quartile = lengths[len(lengths) // 2], lengths[3 * len(lengths) // 4]
    assert sum(gradinit_lengths) / 12 < upper_quartile
    assert min(gradinit_lengths) < median

    # Training still groups by length: its first batch holds the longest example, with
    # others of similar length.
    assert trainer.args.train_sampling_strategy == "group_by_length"
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    collated.clear()
    trainer.train()
    first = collated[0]
    assert len(first) == 6 and max(first) == lengths[-1] and min(first) > median


def test_a_subclass_sampler_is_left_alone_for_gradinit(tmp_path):
    strategies = []

    class OwnSampler(GradInitTrainer):
        def _get_train_sampler(self, train_dataset=None):
            strategies.append(self.args.train_sampling_strategy)
            return super()._get_train_sampler(train_dataset)

    args = _args(tmp_path, train_sampling_strategy="group_by_length")
    trainer = OwnSampler(model=tiny_marian(), args=args, train_dataset=seq2seq_examples(24))
    gradinit_dataloader(trainer)
    assert strategies == ["group_by_length"]


def test_gradinit_optimizes_the_trainers_label_smoothed_loss(tmp_path, monkeypatch):
    model = tiny_bart()
    args = _args(tmp_path, label_smoothing_factor=0.1)

    def collate(features):  # as DataCollatorForSeq2Seq(model=...): decoder inputs given
        batch = default_data_collator(features)
        batch["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(
            labels=batch["labels"]
        )
        return batch

    trainer = GradInitTrainer(
        model=model, args=args, train_dataset=seq2seq_examples(24), data_collator=collate
    )
    loss_fn = trainer_compute_loss(trainer)
    batch = default_data_collator(seq2seq_examples(6))
    # as DataCollatorForSeq2Seq(model=...) gives them; compute_loss drops the labels
    batch["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    model.eval()
    with torch.no_grad():
        outputs = model(**batch)
        expected = trainer.compute_loss(model, dict(batch))
        assert torch.allclose(loss_fn(model, batch), expected)
        assert not torch.allclose(outputs.loss, expected)  # it is not the plain model loss
        assert "labels" in batch  # GradInit's batch is left as it was
    # and it is the loss GradInit gets
    real = callbacks_module.compute_gradinit_scales
    given = []

    def spy(model, batches, config=None, **kwargs):
        given.append(kwargs["compute_loss"])
        return real(model, batches, config, **kwargs)

    monkeypatch.setattr(callbacks_module, "compute_gradinit_scales", spy)
    trainer.run_gradinit()
    (compute_loss,) = given
    with torch.no_grad():
        assert torch.allclose(compute_loss(model, batch), trainer.compute_loss(model, dict(batch)))


def test_optimizer_cls_and_kwargs_is_the_optimizer_that_trains(tmp_path):
    """Seq2SeqTrainer.__init__ drops Trainer's optimizer_cls_and_kwargs; GradInitTrainer
    takes it, so another torch.optim class (RAdam here) is what create_optimizer builds."""
    args = _args(tmp_path, gradinit=False, learning_rate=3e-4, adam_beta2=0.98)
    radam = (torch.optim.RAdam, {"lr": 3e-4, "betas": (0.9, 0.98)})
    trainer = GradInitTrainer(
        model=tiny_marian(),
        args=args,
        train_dataset=seq2seq_examples(12),
        optimizer_cls_and_kwargs=radam,
    )
    optimizer = trainer.create_optimizer()
    optimizer = getattr(optimizer, "optimizer", optimizer)  # an accelerate wrapper, if any
    assert isinstance(optimizer, torch.optim.RAdam)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.98)
    plain = GradInitTrainer(model=tiny_marian(), args=args, train_dataset=seq2seq_examples(12))
    assert not isinstance(plain.create_optimizer(), torch.optim.RAdam)


def test_trainer_initializes_a_fresh_model_built_from_an_initialized_config(tmp_path):
    folder, _, old = initialized_checkpoint(tmp_path, iterations=2)
    fresh = fresh_from_config(folder)
    trainer = GradInitTrainer(
        model=fresh, args=_train_args(tmp_path), train_dataset=seq2seq_examples(24)
    )
    trainer.train()
    result = trainer.gradinit_result
    assert result is not None and len(result.history) == 3  # it ran, 3 iterations, not 2
    assert result.scales != old.scales
    trainer.save_model()
    out = Path(trainer.args.output_dir)
    assert load_gradinit_result(out).scales == result.scales  # not the other checkpoint's file
    # A checkpoint saved after training is initialized (the record follows the trained
    # weights); a fresh model from its config is not.
    assert is_initialized(AutoModelForSeq2SeqLM.from_pretrained(out))
    assert not is_initialized(fresh_from_config(out))


def test_no_gradinit_does_not_save_a_stale_record(tmp_path):
    folder, _, _ = initialized_checkpoint(tmp_path)
    trainer = GradInitTrainer(
        model=fresh_from_config(folder),
        args=_train_args(tmp_path, gradinit=False),
        train_dataset=seq2seq_examples(24),
    )
    trainer.train()
    trainer.save_model()
    saved = json.loads((Path(trainer.args.output_dir) / "config.json").read_text())
    assert "gradinit" not in saved
    assert not (Path(trainer.args.output_dir) / SCALES_FILE).exists()


def test_trained_initialized_checkpoint_continues_without_rescaling(tmp_path, monkeypatch):
    """Training moves the weights away from the init; the saved record follows them."""
    folder, _, old = initialized_checkpoint(tmp_path)
    first = GradInitTrainer(
        model=AutoModelForSeq2SeqLM.from_pretrained(folder),
        args=_train_args(tmp_path, "first", max_steps=3, learning_rate=1e-2),
        train_dataset=seq2seq_examples(24),
    )
    first.train()
    first.save_model()
    monkeypatch.setattr(callbacks_module, "compute_gradinit_scales", never_called)
    trained = AutoModelForSeq2SeqLM.from_pretrained(first.args.output_dir)
    assert is_initialized(trained)
    second = GradInitTrainer(
        model=trained, args=_train_args(tmp_path, "second"), train_dataset=seq2seq_examples(24)
    )
    second.train()
    assert second.gradinit_result.scales == old.scales  # the record travels with the weights


@pytest.mark.parametrize("family", FAMILIES)
def test_trainer_with_a_seq2seq_collator_masks_label_padding(tmp_path, monkeypatch, family):
    model = FAMILIES[family]()
    batches = record_batches(monkeypatch, callbacks_module)
    trainer = GradInitTrainer(
        model=model,
        args=_train_args(tmp_path, gradinit_iterations=2),
        train_dataset=translation_features(),
        data_collator=DataCollatorForSeq2Seq(tiny_tokenizer(), model=model),
    )
    trainer.run_gradinit()
    assert_label_padding_masked(batches)


@pytest.mark.parametrize("examples,expected", [(4, 3), (7, 3), (2, 2)])
def test_trainer_gradinit_batches_are_whole(tmp_path, monkeypatch, examples, expected):
    batches = record_batches(monkeypatch, callbacks_module)
    args = _train_args(tmp_path, per_device_train_batch_size=3, gradinit_iterations=5)
    trainer = GradInitTrainer(
        model=tiny_marian(), args=args, train_dataset=seq2seq_examples(examples)
    )
    trainer.train()
    assert [b["input_ids"].shape[0] for b in batches][:5] == [expected] * 5
    assert trainer.args.dataloader_drop_last is False  # training's loader is left alone


def test_a_gradinit_batch_of_one_is_refused_and_gradinit_batch_size_is_used(tmp_path, monkeypatch):
    # (the arguments themselves: tests/test_arguments.py)
    plain = Seq2SeqTrainingArguments(
        str(tmp_path / "plain"), per_device_train_batch_size=1, use_cpu=True, report_to="none"
    )
    with pytest.raises(ValueError, match="gradinit_batch_size"):
        GradInitTrainer(model=tiny_marian(), args=plain, train_dataset=seq2seq_examples(8))

    batches = record_batches(monkeypatch, callbacks_module)
    args = _train_args(
        tmp_path, per_device_train_batch_size=1, gradient_accumulation_steps=8,
        gradinit_batch_size=4, gradinit_iterations=2,
    )  # fmt: skip
    GradInitTrainer(model=tiny_marian(), args=args, train_dataset=seq2seq_examples(12)).train()
    assert [b["input_ids"].shape[0] for b in batches][:2] == [4, 4]


def test_trainer_writes_the_card_wherever_it_saves(tmp_path):
    args = _train_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer = GradInitTrainer(model=tiny_marian(), args=args, train_dataset=seq2seq_examples(24))
    trainer.train()
    checkpoint = Path(args.output_dir) / "checkpoint-2"
    assert "## GradInit" in (checkpoint / "README.md").read_text()
    # the usage line loads the folder the card is in, not output_dir
    assert f'from_pretrained("{checkpoint}")' in (checkpoint / "README.md").read_text()
    trainer.create_model_card(language=["de", "en"], results={"test BLEU": 12.5})
    (Path(args.output_dir) / "README.md").unlink()
    trainer.save_model()  # no push: the card is written, with the metadata given before
    card = ModelCard.load(Path(args.output_dir) / "README.md")
    assert card.data.language == ["de", "en"] and "- test BLEU: 12.5" in card.text
    assert "## GradInit" in card.text


def _dtypes(seen, gradinit: bool) -> set[torch.dtype]:
    return {dtype for inside, dtype in seen if inside == gradinit}


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
        gradinit_probe_steps=2,  # the probe, too, in fp32
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


# --------------------------------------------------------------------------------------
# The probe trains with the trainer's optimizer (GradInitCallback in any Trainer:
# tests/test_callbacks.py)
# --------------------------------------------------------------------------------------


def test_the_probe_trains_with_the_trainers_optimizer(tmp_path):
    args = _args(tmp_path, learning_rate=3e-4, adam_beta2=0.95, weight_decay=0.1)
    trainer = GradInitTrainer(model=tiny_marian(), args=args, train_dataset=seq2seq_examples(6))
    model = trainer.model
    named = [(n, p.detach().clone().requires_grad_(True)) for n, p in model.named_parameters()]
    optimizer = trainer_probe_optimizer(trainer, model)(named)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert decay["lr"] == 3e-4 and decay["betas"] == (0.9, 0.95)
    assert len(decay["params"]) + len(no_decay["params"]) == len(named)
    radam = GradInitTrainer(
        model=tiny_marian(), args=args, train_dataset=seq2seq_examples(6),
        optimizer_cls_and_kwargs=(torch.optim.RAdam, {"lr": 3e-4}),
    )  # fmt: skip
    assert isinstance(trainer_probe_optimizer(radam, radam.model)(named), torch.optim.RAdam)


# ---- A streaming dataset's short last batch ------------------------------------------------


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, examples):
        self.examples = examples

    def __iter__(self):
        return iter(self.examples)


def test_a_short_last_batch_of_one_is_skipped_not_fatal(tmp_path):
    trainer = GradInitTrainer(
        model=tiny_marian(),
        args=gradinit_args(tmp_path, gradinit_iterations=8),
        train_dataset=_Stream(seq2seq_examples(25)),  # batches of 6, 6, 6, 6, 1
        data_collator=default_data_collator,
    )
    trainer.train()
    assert len(trainer.gradinit_result.history) == 8
    assert trainer.gradinit_result.summary()["unsplittable_batches"] >= 1
