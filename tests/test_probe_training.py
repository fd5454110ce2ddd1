"""The probe is the start of training: each branch is the Trainer's own run from its init,
step for step, and the run continues from the winner (checked against plain Trainer runs,
an independent computation: no GradInit code runs in them)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from testing_utils import (
    classification_examples,
    seq2seq_examples,
    tiny_bert_classifier,
    tiny_marian,
    training_args,
)
from transformers import Trainer, TrainingArguments, default_data_collator

import hf_gradinit.callbacks as callbacks_module
from hf_gradinit import GradInitCallback, GradInitConfig, GradInitTrainer, apply_scales
from hf_gradinit.core.probe import decide
from hf_gradinit.record import initialization_state

RTOL = 1e-6


def _bert_with_schedule(tmp_path, **kw):
    """BERT classifier (dropout on), linear decay, clipping, accumulation, a short epoch."""
    args = dict(max_steps=7, learning_rate=5e-3, lr_scheduler_type="linear", max_grad_norm=0.5)
    args.update(gradient_accumulation_steps=2, **kw)
    return tiny_bert_classifier, classification_examples(48), args, {}


def _bert_with_optimizer_instance(tmp_path, **kw):
    """SGD with momentum and a LambdaLR passed to the Trainer as instances."""

    def optimizers(model):
        sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda step: 1.0 / (1 + step))

    args = dict(max_steps=6, learning_rate=5e-3, max_grad_norm=0.0, **kw)
    return tiny_bert_classifier, classification_examples(36), args, {"optimizers": optimizers}


def _marian_whole_run(tmp_path, **kw):
    """A seq2seq run no longer than the probe (the run *is* the winner's branch)."""
    args = dict(max_steps=5, learning_rate=1e-2, **kw)
    return tiny_marian, seq2seq_examples(30), args, {"data_collator": default_data_collator}


def _trained(folder, factory, weights, data, args, extra, callbacks=(), scales=None):
    """A Trainer run from ``weights`` (times ``scales``) with ``callbacks``; returns the
    trainer and its model. ``extra``: Trainer keywords; ``optimizers`` is made from the
    model."""
    model = factory()
    model.load_state_dict(weights)
    if scales:
        apply_scales(model, scales)
    extra = dict(extra)
    if "optimizers" in extra:
        extra["optimizers"] = extra["optimizers"](model)
    trainer = Trainer(
        model=model,
        args=training_args(folder, TrainingArguments, **args),
        train_dataset=data,
        callbacks=list(callbacks),
        **extra,
    )
    trainer.train()
    return trainer, model


def _plain_run(tmp_path, factory, weights, scales, data, args, extra):
    """A plain Trainer run (no GradInit code) from ``weights`` times ``scales``."""
    trainer, model = _trained(
        tmp_path / "plain", factory, weights, data, args, extra, scales=scales
    )
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


def _assert_close(a, b, what):
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b)):
        assert math.isclose(x, y, rel_tol=RTOL, abs_tol=1e-9), f"{what}, step {i + 1}: {x} != {y}"


def _assert_same_weights(a, b):
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=RTOL, atol=1e-7, msg=name)


@pytest.mark.parametrize(
    "setup, probe_steps",
    [(_bert_with_schedule, 3), (_bert_with_optimizer_instance, 3), (_marian_whole_run, 5)],
    ids=["schedule-clipping-accumulation", "optimizer-instance", "run-no-longer-than-probe"],
)
def test_branches_and_the_run_equal_plain_trainer_runs(tmp_path, monkeypatch, setup, probe_steps):
    factory, data, args, extra = setup(tmp_path)
    torch.manual_seed(0)
    weights = copy.deepcopy(factory().state_dict())
    seen = {}
    real = callbacks_module.train_with_probe

    def spy(trainer, inner_loop, loop_kwargs, scales, *a, **k):
        seen["scales"] = dict(scales)
        return real(trainer, inner_loop, loop_kwargs, scales, *a, **k)

    monkeypatch.setattr(callbacks_module, "train_with_probe", spy)
    config = GradInitConfig(iterations=3, scale_lr=5e-2, probe_steps=probe_steps)
    callback = GradInitCallback(config)
    trainer, model = _trained(tmp_path, factory, weights, data, args, extra, [callback])
    probe = callback.result.probe
    original, original_weights = _plain_run(tmp_path, factory, weights, None, data, args, extra)
    learned, learned_weights = _plain_run(
        tmp_path, factory, weights, seen["scales"], data, args, extra
    )
    # (a) each branch's per-step losses are the plain run's from that init
    _assert_close(probe["original_losses"], original[:probe_steps], "original-init branch")
    _assert_close(probe["learned_losses"], learned[:probe_steps], "learned-init branch")
    # (b) the run is the plain run from the winner's init: every logged loss and the weights
    expected = decide(learned[:probe_steps], original[:probe_steps], config, exact=True)
    assert expected["decision"] == (
        "learned" if expected["learned_score"] < expected["original_score"] else "original"
    )
    expected = expected["decision"]
    assert probe["decision"] == expected
    plain, plain_weights = (
        (learned, learned_weights) if expected == "learned" else (original, original_weights)
    )
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    _assert_close(logged, plain, "the run's logged losses")
    _assert_same_weights(model.state_dict(), plain_weights)
    assert trainer.state.global_step == args["max_steps"]
    # one summary entry, whose train_loss covers the whole run, the probe's steps included
    summaries = [e for e in trainer.state.log_history if "train_loss" in e]
    assert len(summaries) == 1
    assert summaries[0]["train_loss"] == pytest.approx(sum(plain) / len(plain), rel=1e-5)
    # the loser's curve is logged as gradinit/*, at the steps training logged
    curves = [e for e in trainer.state.log_history if "gradinit/probe_original_loss" in e]
    assert [e["step"] for e in curves] == list(range(1, probe_steps + 1))


def test_a_run_no_longer_than_the_probe_ends_at_the_better_of_the_two(tmp_path, monkeypatch):
    """Whatever GradInit learns, a run of at most N steps ends where the better branch ends:
    force a harmful init (every tensor scaled by 30) and check the original is kept."""
    real = callbacks_module.train_with_probe

    def harmful(trainer, inner_loop, loop_kwargs, scales, *a, **k):
        return real(trainer, inner_loop, loop_kwargs, dict.fromkeys(scales, 30.0), *a, **k)

    monkeypatch.setattr(callbacks_module, "train_with_probe", harmful)
    torch.manual_seed(0)
    weights = copy.deepcopy(tiny_bert_classifier().state_dict())
    args = dict(max_steps=6, learning_rate=5e-3)
    data = classification_examples(36)
    callback = GradInitCallback(GradInitConfig(iterations=2, probe_steps=6))
    _, model = _trained(tmp_path, tiny_bert_classifier, weights, data, args, {}, [callback])
    original, original_weights = _plain_run(
        tmp_path, tiny_bert_classifier, weights, None, data, args, {}
    )
    probe = callback.result.probe
    assert probe["decision"] == "original", probe["reason"]
    assert not callback.result.kept and set(callback.result.scales.values()) == {1.0}
    _assert_same_weights(model.state_dict(), original_weights)


def test_a_failure_inside_the_probe_leaves_the_original_weights(tmp_path):
    torch.manual_seed(0)
    model = tiny_bert_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(
        model=model,
        args=training_args(tmp_path, TrainingArguments, max_steps=4, learning_rate=5e-3),
        train_dataset=classification_examples(24),
        callbacks=[GradInitCallback(GradInitConfig(iterations=2, probe_steps=3))],
    )
    calls = []
    real = trainer.training_step

    def fails_in_second_branch(*a, **k):
        calls.append(1)
        if len(calls) == 5:  # the learned-init branch's second step
            raise KeyboardInterrupt
        return real(*a, **k)

    trainer.training_step = fails_in_second_branch
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    _assert_same_weights(model.state_dict(), before)
    assert initialization_state(model) == "absent"
    assert not (tmp_path / "out" / "gradinit-probe").exists()


def test_gradinit_trainer_runs_the_same_probe_and_saves_the_winner(tmp_path):
    args = training_args(
        tmp_path, max_steps=4, learning_rate=1e-2, gradinit_iterations=2, gradinit_probe_steps=2
    )
    trainer = GradInitTrainer(
        model=tiny_marian(), args=args, train_dataset=seq2seq_examples(24),
        data_collator=default_data_collator,
    )  # fmt: skip
    trainer.train()
    result = trainer.gradinit_result
    assert result.probe is not None and len(result.probe["learned_losses"]) == 2
    assert initialization_state(trainer.model) == "initialized"
    trainer.save_model()
    assert (tmp_path / "out" / "gradinit_scales.json").is_file()
    assert not (tmp_path / "out" / "gradinit-probe").exists()


# --------------------------------------------------------------------------------------
# What training sees is what it sees without GradInit
# --------------------------------------------------------------------------------------


def _train_recording(trainer, key: str) -> list[torch.Tensor]:
    """Train, recording ``inputs[key]`` of every batch training steps on."""
    seen, real = [], trainer.training_step

    def record(model, inputs, *a, **k):
        seen.append(inputs[key].clone())
        return real(model, inputs, *a, **k)

    trainer.training_step = record
    trainer.train()
    return seen


def _mlm_run(tmp_path, probe_steps: int | None):
    """BERT MLM with a seeded DataCollatorForLanguageModeling; returns the labels (the
    collator's masks) of every batch training_step sees. None: no GradInit."""
    import random

    from testing_utils import VOCAB, tiny_tokenizer
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"mask_token": "<unk>"})
    rng = random.Random(0)
    words = "ich du er wir sie haus baum hund katze buch".split()  # noqa: SIM905
    data = [tokenizer(" ".join(rng.choice(words) for _ in range(8))) for _ in range(48)]
    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=32,
        )
    )  # fmt: skip
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3, seed=123)
    callbacks = []
    if probe_steps is not None:
        callbacks = [GradInitCallback(GradInitConfig(iterations=2, probe_steps=probe_steps))]
    trainer = Trainer(
        model=model,
        args=training_args(tmp_path / str(probe_steps), TrainingArguments, max_steps=5),
        train_dataset=data, data_collator=collator, callbacks=callbacks,
    )  # fmt: skip
    return _train_recording(trainer, "labels")


def test_a_seeded_collator_gives_training_the_same_masks_with_gradinit_on_and_off(tmp_path):
    """GradInit's own batches and the probe's branches leave the collator's generator where
    training without GradInit has it: each branch and the run after the probe see the masks
    of the run without GradInit, batch for batch."""
    plain = _mlm_run(tmp_path, None)
    assert len(plain) == 5
    no_probe = _mlm_run(tmp_path, 0)
    assert all(torch.equal(a, b) for a, b in zip(plain, no_probe, strict=True))
    probe = _mlm_run(tmp_path, 2)  # original branch 1-2, learned branch 1-2, then 3-5
    expected = plain[:2] + plain[:2] + plain[2:]
    assert [torch.equal(a, b) for a, b in zip(expected, probe, strict=True)] == [True] * 7


def test_sft_trainer_entries_carry_only_their_own_metrics(tmp_path):
    """trl#5800 kind: GradInit's step-0 entries hold GradInit's metrics only, and training's
    first entry keeps trl's own (mean_token_accuracy, entropy, num_tokens)."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from testing_utils import tiny_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    texts = ["ich sieht hund", "du liest buch", "er hat katze", "wir kauft haus rot"] * 6
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)
    )
    args = trl.SFTConfig(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=6, report_to="none",
        use_cpu=True, logging_steps=1, disable_tqdm=True, max_length=16, learning_rate=5e-3,
        bf16=False,
    )  # fmt: skip
    trainer = trl.SFTTrainer(
        model=model, args=args, processing_class=tiny_tokenizer(),
        train_dataset=datasets.Dataset.from_dict({"text": texts}),
        callbacks=[GradInitCallback(GradInitConfig(iterations=2, probe_steps=2))],
    )  # fmt: skip
    trainer.train()
    history = trainer.state.log_history
    gradinit = [e for e in history if any(k.startswith("gradinit/") for k in e)]
    training = [e for e in history if "loss" in e]
    assert gradinit and len(training) == 4
    for entry in gradinit:
        assert set(entry) <= {"step", "epoch"} | {k for k in entry if k.startswith("gradinit/")}
    for entry in training:
        assert {"mean_token_accuracy", "entropy", "num_tokens"} <= set(entry), entry


def test_sft_trainer_sees_the_same_batches_with_gradinit_on_and_off(tmp_path):
    """With the same seed, trl's SFTTrainer trains on the same batches in the same order with
    GradInit (its own batches, then the probe's branches) as without it."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from testing_utils import tiny_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    texts = [f"{a} {b} hund" for a in ("ich", "du", "er", "wir") for b in ("sieht", "hat", "mag")]

    def run(gradinit: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2))
        args = trl.SFTConfig(
            output_dir=str(tmp_path / str(gradinit)), max_steps=4, per_device_train_batch_size=4,
            report_to="none", use_cpu=True, disable_tqdm=True, max_length=16, bf16=False,
        )  # fmt: skip
        callbacks = (
            [GradInitCallback(GradInitConfig(iterations=2, probe_steps=2))] if gradinit else []
        )
        trainer = trl.SFTTrainer(
            model=model, args=args, processing_class=tiny_tokenizer(),
            train_dataset=datasets.Dataset.from_dict({"text": texts}), callbacks=callbacks,
        )  # fmt: skip
        return _train_recording(trainer, "input_ids")

    plain, with_gradinit = run(False), run(True)
    expected = plain[:2] + plain[:2] + plain[2:]  # each branch's 2 steps, then steps 3-4
    assert len(with_gradinit) == len(expected) == 6
    assert all(torch.equal(a, b) for a, b in zip(expected, with_gradinit, strict=True))
