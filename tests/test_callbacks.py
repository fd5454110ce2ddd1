"""GradInitCallback: GradInit in any Trainer (plain Trainer, Seq2SeqTrainer, trl's
SFTTrainer), with the trainer's loss, data and optimizer, and the Trainer's event order."""

from __future__ import annotations

import pytest
import torch
from testing_utils import (
    classification_examples,
    seq2seq_examples,
    tiny_bert_classifier,
    tiny_marian,
    tiny_tokenizer,
    training_args,
)
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    MarianMTModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

import hf_gradinit.api as api
from hf_gradinit import (
    GradInitCallback,
    GradInitConfig,
    GradInitError,
    GradInitTrainer,
    GradInitTrainingArguments,
)
from hf_gradinit.callbacks import gradinit_log_entries
from hf_gradinit.record import initialization_state

FAST = dict(iterations=3, probe_steps=0)


def _training_args(tmp_path, cls=TrainingArguments, **kw):
    return training_args(tmp_path, cls, **{"max_steps": 2, "learning_rate": 5e-3, **kw})


def _gradinit_args(tmp_path, **kw):
    kw = {"gradinit_iterations": 3, "gradinit_probe_steps": 0, **kw}
    return _training_args(tmp_path, GradInitTrainingArguments, **kw)


class _FirstStepWeights(TrainerCallback):
    """The weights at the beginning of the first optimizer step."""

    def __init__(self):
        self.weights = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_scaled_before_step_one(original, first_step, result):
    assert result.scales and any(abs(v - 1) > 1e-6 for v in result.scales.values())
    for name, value in result.scales.items():
        torch.testing.assert_close(first_step[name], original[name] * value)


def _gradinit_steps(trainer):
    return [h["step"] for h in trainer.state.log_history if "gradinit/loss" in h]


# --------------------------------------------------------------------------------------
# The callback in three trainers
# --------------------------------------------------------------------------------------


def tiny_gpt2():
    config = GPT2Config(
        vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=2,
        eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def _lm_examples(n=24, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 64, (length,), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


@pytest.mark.parametrize(
    "make_model, data",
    [(tiny_gpt2, _lm_examples), (tiny_bert_classifier, classification_examples)],
    ids=["causal-lm", "encoder-classifier"],
)
def test_plain_trainer_runs_gradinit_before_the_first_step(tmp_path, make_model, data):
    model = make_model()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    spy, callback = _FirstStepWeights(), GradInitCallback(GradInitConfig(**FAST))
    trainer = Trainer(
        model=model, args=_training_args(tmp_path), train_dataset=data(24),
        callbacks=[callback, spy],
    )  # fmt: skip
    trainer.train()
    _assert_scaled_before_step_one(original, spy.weights, callback.result)
    assert set(_gradinit_steps(trainer)) == {0}
    assert initialization_state(model) == "initialized"


def test_sft_trainer_runs_gradinit_before_the_first_step(tmp_path):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    texts = ["ich sieht hund", "du liest buch", "er hat katze", "wir kauft haus rot"] * 6
    model = tiny_gpt2()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    spy, callback = _FirstStepWeights(), GradInitCallback(GradInitConfig(**FAST))
    args = trl.SFTConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=6, report_to="none",
        use_cpu=True, logging_steps=1, disable_tqdm=True, max_length=16, learning_rate=5e-3,
    )  # fmt: skip
    trainer = trl.SFTTrainer(
        model=model, args=args, processing_class=tiny_tokenizer(),
        train_dataset=datasets.Dataset.from_dict({"text": texts}), callbacks=[callback, spy],
    )  # fmt: skip
    trainer.train()
    _assert_scaled_before_step_one(original, spy.weights, callback.result)
    assert set(_gradinit_steps(trainer)) == {0}
    # GradInit's own loss evaluations are not counted as the SFT trainer's metrics
    assert all(not values for values in trainer._metrics["eval"].values())


def test_sft_trainer_with_packing_splits_the_packed_row_over_its_sequences(tmp_path):
    """trl's packing puts a whole batch into one row (padding-free): GradInit splits it
    over its sequences instead of skipping every batch as a batch of one."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    texts = ["ich sieht hund", "du liest buch", "er hat katze", "wir kauft haus rot"] * 6
    callback = GradInitCallback(GradInitConfig(iterations=3, probe_steps=2))
    args = trl.SFTConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=6, report_to="none",
        use_cpu=True, disable_tqdm=True, max_length=16, packing=True,
    )  # fmt: skip
    trainer = trl.SFTTrainer(
        model=tiny_gpt2(), args=args, processing_class=tiny_tokenizer(),
        train_dataset=datasets.Dataset.from_dict({"text": texts}), callbacks=[callback],
    )  # fmt: skip
    assert next(iter(trainer.get_train_dataloader()))["input_ids"].shape[0] == 1  # packed
    trainer.train()
    assert callback.result is not None and callback.result.unsplittable_batches == 0


@pytest.mark.parametrize(
    "schedule, steps",
    [(dict(max_steps=4), 4), (dict(max_steps=-1, num_train_epochs=1), 6)],
    ids=["max_steps", "one_epoch"],
)
def test_the_probe_is_no_longer_than_the_training_run(tmp_path, schedule, steps):
    """Counted in the trainer's optimizer steps (48 examples, batches of 8), not in GradInit's
    batches (16 here)."""
    callback = GradInitCallback(GradInitConfig(iterations=2, probe_steps=50), batch_size=16)
    trainer = Trainer(
        model=tiny_bert_classifier(), train_dataset=classification_examples(48),
        args=_training_args(tmp_path, per_device_train_batch_size=8, **schedule),
        callbacks=[callback],
    )  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == steps
    assert len(callback.result.probe["learned_losses"]) == steps


def test_eta_and_inner_optimizer_follow_the_trainer_not_the_given_config(tmp_path):
    callback = GradInitCallback(GradInitConfig(eta=0.5, iterations=2, probe_steps=0))
    trainer = Trainer(
        model=tiny_bert_classifier(),
        args=_training_args(tmp_path, learning_rate=3e-4, optim="sgd", optim_args="momentum=0.9"),
        train_dataset=classification_examples(24),
        callbacks=[callback],
    )
    config = callback.config_for(trainer)
    assert config.inner_optimizer == "sgd"
    assert config.eta == pytest.approx(3e-3)  # lr / (1 - momentum)
    assert config.iterations == 2  # the rest is the given config's


def test_gradinit_training_arguments_configure_the_callback_in_a_plain_trainer(tmp_path):
    callback = GradInitCallback()
    trainer = Trainer(
        model=tiny_bert_classifier(),
        args=_gradinit_args(tmp_path, gradinit_iterations=4, gradinit_scale_lr=1e-2),
        train_dataset=classification_examples(24),
        callbacks=[callback],
    )
    trainer.train()
    assert len(callback.result.history) == 4
    assert callback.result.config.scale_lr == 1e-2


def test_no_gradinit_in_the_arguments_turns_the_callback_off(tmp_path):
    callback = GradInitCallback()
    trainer = Trainer(
        model=tiny_bert_classifier(),
        args=_gradinit_args(tmp_path, gradinit=False),
        train_dataset=classification_examples(24),
        callbacks=[callback],
    )
    trainer.train()
    assert callback.result is None and _gradinit_steps(trainer) == []


def test_an_already_sharded_model_is_refused_with_what_to_use_instead(tmp_path):
    model = tiny_bert_classifier()
    for p in model.parameters():
        p.ds_id = 0  # how DeepSpeed ZeRO-3 marks its partitioned parameters
    trainer = Trainer(
        model=model, args=_training_args(tmp_path), train_dataset=classification_examples(24),
        callbacks=[GradInitCallback(GradInitConfig(**FAST))],
    )  # fmt: skip
    with pytest.raises(GradInitError, match="GradInitTrainer.*hf-gradinit init"):
        trainer.train()


def test_log_entries_say_whether_the_scales_were_kept(tmp_path):
    trainer = Trainer(
        model=tiny_bert_classifier(), args=_training_args(tmp_path),
        train_dataset=classification_examples(24),
        callbacks=[callback := GradInitCallback(GradInitConfig(iterations=2, probe_steps=3))],
    )  # fmt: skip
    trainer.train()
    summary = [h for h in trainer.state.log_history if "gradinit/kept" in h]
    assert len(summary) == 1
    assert summary[0]["gradinit/kept"] == float(callback.result.kept)
    assert "gradinit/probe_learned_score" in summary[0]
    assert gradinit_log_entries(callback.result)[-1]["gradinit/kept"] in (0.0, 1.0)


# --------------------------------------------------------------------------------------
# The trainer's loss, as training computes it
# --------------------------------------------------------------------------------------


def test_compute_loss_func_gets_num_items_in_batch(tmp_path):
    seen = []

    def loss_sum_over_items(outputs, labels, num_items_in_batch=None):
        seen.append(num_items_in_batch)
        total = torch.nn.functional.cross_entropy(outputs.logits, labels, reduction="sum")
        return total / num_items_in_batch  # as transformers documents it

    trainer = GradInitTrainer(
        model=tiny_bert_classifier(), args=_gradinit_args(tmp_path),
        train_dataset=classification_examples(24), data_collator=default_data_collator,
        compute_loss_func=loss_sum_over_items,
    )  # fmt: skip
    trainer.train()
    assert len(seen) > trainer.state.global_step  # GradInit called it too
    assert all(n is not None for n in seen)


def test_a_compute_loss_override_is_the_loss_gradinit_optimizes(tmp_path):
    calls = []

    class WithAttentions(GradInitTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs, output_attentions=True)  # a forward argument it adds
            calls.append(model.training)
            penalty = sum(a.float().pow(2).mean() for a in outputs.encoder_attentions)
            loss = outputs.loss + 1e-3 * penalty
            return (loss, outputs) if return_outputs else loss

    model = tiny_marian()
    model.config._attn_implementation = "eager"
    trainer = WithAttentions(
        model=model, args=_gradinit_args(tmp_path), train_dataset=seq2seq_examples(24),
        data_collator=default_data_collator,
    )  # fmt: skip
    trainer.train()
    assert False in calls  # called in GradInit (eval mode), not only in training


# --------------------------------------------------------------------------------------
# The Trainer's promises: event order, re-entered and retried training loops
# --------------------------------------------------------------------------------------


class _Recorder(TrainerCallback):
    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            events = object.__getattribute__(self, "events")
            return lambda args, state, control, **kwargs: events.append(name)
        return object.__getattribute__(self, name)


@pytest.mark.parametrize("door", ["trainer", "callback"])
def test_callbacks_added_any_way_see_on_train_begin_before_any_log(tmp_path, door):
    given, added_later = _Recorder(), _Recorder()
    if door == "trainer":
        trainer = GradInitTrainer(
            model=tiny_marian(), args=_gradinit_args(tmp_path), callbacks=[given],
            train_dataset=seq2seq_examples(24), data_collator=default_data_collator,
        )  # fmt: skip
    else:
        trainer = Trainer(
            model=tiny_bert_classifier(), args=_training_args(tmp_path),
            train_dataset=classification_examples(24),
            callbacks=[GradInitCallback(GradInitConfig(**FAST)), given],
        )  # fmt: skip
    trainer.add_callback(added_later)
    trainer.train()
    assert _gradinit_steps(trainer)
    for recorder in (given, added_later):
        events = recorder.events
        assert events.index("on_train_begin") < events.index("on_log"), events[:6]
        # after every callback's on_train_begin, before training's first step
        assert events.index("on_log") < events.index("on_step_end"), events[:6]


def test_a_retried_training_loop_does_not_run_gradinit_twice(tmp_path, monkeypatch):
    class OutOfMemoryOnce(TrainerCallback):
        raised = False

        def on_step_end(self, args, state, control, **kwargs):
            if not self.raised:
                self.raised = True
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    calls = []
    real = api.compute_gradinit_scales
    monkeypatch.setattr(
        api, "compute_gradinit_scales", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    import hf_gradinit.callbacks as callbacks_module

    monkeypatch.setattr(callbacks_module, "compute_gradinit_scales", api.compute_gradinit_scales)
    oom = OutOfMemoryOnce()
    trainer = GradInitTrainer(
        model=tiny_marian(),
        args=_gradinit_args(tmp_path, auto_find_batch_size=True, per_device_train_batch_size=8),
        train_dataset=seq2seq_examples(48), data_collator=default_data_collator, callbacks=[oom],
    )  # fmt: skip
    trainer.train()
    assert oom.raised and len(calls) == 1
    assert _gradinit_steps(trainer)  # the retried run's log history has them too


def test_out_of_memory_inside_gradinit_is_retried_with_a_smaller_batch(tmp_path):
    sizes = []

    class Model(MarianMTModel):
        def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
            if input_ids.shape[0] > 3 and not self.training:  # GradInit's batches are too big
                sizes.append(input_ids.shape[0])
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().forward(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs
            )

    model = Model(tiny_marian().config)
    trainer = GradInitTrainer(
        model=model,
        args=_gradinit_args(tmp_path, auto_find_batch_size=True, per_device_train_batch_size=8),
        train_dataset=seq2seq_examples(48), data_collator=default_data_collator,
    )  # fmt: skip
    trainer.train()
    assert sizes and trainer.gradinit_result is not None
    assert len(trainer.gradinit_result.history) == 3


def test_a_second_train_call_does_not_run_gradinit_again(tmp_path):
    callback = GradInitCallback(GradInitConfig(**FAST))
    trainer = Trainer(
        model=tiny_bert_classifier(), args=_training_args(tmp_path),
        train_dataset=classification_examples(24), callbacks=[callback],
    )  # fmt: skip
    trainer.train()
    first = callback.result
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.args.max_steps = 0
    trainer.args.num_train_epochs = 0
    trainer.train()
    assert callback.result is first
    for n, p in trainer.model.named_parameters():
        torch.testing.assert_close(p, weights[n])


# --------------------------------------------------------------------------------------
# The optimizer training uses: instances, optimizer_cls_and_kwargs
# --------------------------------------------------------------------------------------


def test_eta_follows_an_optimizer_instance_passed_to_the_trainer(tmp_path):
    """transformers#18635 kind: Trainer(optimizers=(SGD, scheduler)) trains SGD at 0.05; GradInit
    simulates that, not Adam at args.learning_rate."""
    model = tiny_bert_classifier()
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    callback = GradInitCallback(GradInitConfig(iterations=2, probe_steps=0))
    trainer = Trainer(
        model=model, args=_training_args(tmp_path, learning_rate=5e-5),
        train_dataset=classification_examples(24), callbacks=[callback], optimizers=(sgd, None),
    )  # fmt: skip
    config = callback.config_for(trainer)
    assert config.inner_optimizer == "sgd"
    assert config.eta == pytest.approx(0.05 / (1 - 0.9))


@pytest.mark.parametrize(
    "cls, kwargs, inner, eta",
    [
        (torch.optim.RAdam, {"lr": 1e-3}, "adam", 1e-3),
        (torch.optim.RAdam, {}, "adam", 1e-3),  # the class's default lr
        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}, "sgd", 0.5),
    ],
)
def test_eta_follows_optimizer_cls_and_kwargs(tmp_path, cls, kwargs, inner, eta):
    callback = GradInitCallback(GradInitConfig(iterations=2, probe_steps=0))
    trainer = GradInitTrainer(
        model=tiny_marian(), args=_gradinit_args(tmp_path, learning_rate=5e-5),
        train_dataset=seq2seq_examples(12), optimizer_cls_and_kwargs=(cls, kwargs),
        callbacks=[callback],
    )  # fmt: skip
    config = trainer.gradinit_callback.config_for(trainer)
    assert (config.inner_optimizer, config.eta) == (inner, pytest.approx(eta))


def test_the_copy_probe_refuses_an_optimizer_it_cannot_build_before_any_work(tmp_path):
    """LOMO kind: the optimizer takes the model; run_gradinit's probe on copies cannot use it."""

    class TakesTheModel(torch.optim.SGD):
        def __init__(self, params, lr=0.1, model=None):
            super().__init__(params, lr=lr)

    model = tiny_marian()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = GradInitTrainer(
        model=model, args=_gradinit_args(tmp_path, gradinit_probe_steps=2),
        train_dataset=seq2seq_examples(12),
        optimizer_cls_and_kwargs=(TakesTheModel, {"lr": 0.1, "model": model}),
    )  # fmt: skip
    with pytest.raises(GradInitError, match="TakesTheModel.*trainer.train"):
        trainer.run_gradinit()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_resume_through_the_callback_restores_the_record(tmp_path):
    """transformers#33336 kind: run 2 rebuilds the model from its config and resumes from
    run 1's checkpoint; GradInit does not run again, and the model saved at the end reloads
    as initialized (so a later GradInit-enabled run does not rescale trained weights)."""
    from hf_gradinit.record import initialization_state

    data = classification_examples(24)
    callback = GradInitCallback(GradInitConfig(iterations=2, probe_steps=0))
    args = _training_args(tmp_path, save_strategy="steps", save_steps=2, max_steps=2)
    Trainer(
        model=tiny_bert_classifier(), args=args, train_dataset=data, callbacks=[callback]
    ).train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "config.json").is_file()
    fresh = type(tiny_bert_classifier())(tiny_bert_classifier().config)
    again = GradInitCallback(GradInitConfig(iterations=2, probe_steps=0))
    args = _training_args(tmp_path, save_strategy="no", max_steps=4)
    trainer = Trainer(model=fresh, args=args, train_dataset=data, callbacks=[again])
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert again.result is None  # not run again
    trainer.save_model(str(tmp_path / "final"))
    reloaded = type(fresh).from_pretrained(tmp_path / "final")
    assert initialization_state(reloaded) == "initialized"


# --------------------------------------------------------------------------------------
# GradInit is an init: trained weights and adapters are left alone
# --------------------------------------------------------------------------------------


def _first_step_weights_after_training(tmp_path, model, args, caplog):
    spy = _FirstStepWeights()
    trainer = Trainer(
        model=model, args=args, train_dataset=classification_examples(24),
        callbacks=[GradInitCallback(GradInitConfig(**FAST)), spy],
    )  # fmt: skip
    with caplog.at_level("WARNING", logger="hf_gradinit"):
        trainer.train()
    return spy.weights


def test_a_model_loaded_with_from_pretrained_is_not_rescaled(tmp_path, caplog):
    """mflux#739 kind: a fine-tuning script that kept the callback; the trained weights reach
    the first step unchanged, with one log line saying why and how to force it."""
    trained = tiny_bert_classifier()
    trained.save_pretrained(tmp_path / "trained")
    model = type(trained).from_pretrained(tmp_path / "trained")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    first = _first_step_weights_after_training(tmp_path, model, _training_args(tmp_path), caplog)
    assert all(torch.equal(first[n], before[n]) for n in before)
    assert "loaded from a checkpoint" in caplog.text and "gradinit_on_loaded_weights" in caplog.text
    # forced: it runs
    model = type(trained).from_pretrained(tmp_path / "trained")
    args = _gradinit_args(tmp_path, gradinit_on_loaded_weights=True)
    first = _first_step_weights_after_training(tmp_path, model, args, caplog)
    assert any(not torch.equal(first[n], before[n]) for n in before)


def test_a_peft_model_is_not_rescaled_and_apply_gradinit_warns(tmp_path, caplog):
    """peft#1402 kind: neither the LoRA tensors nor the modules_to_save copy are scaled."""
    peft = pytest.importorskip("peft")
    from hf_gradinit import apply_gradinit

    base = tiny_bert_classifier()
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])
    model = peft.get_peft_model(base, lora)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    first = _first_step_weights_after_training(tmp_path, model, _training_args(tmp_path), caplog)
    assert all(torch.equal(first[n], before[n]) for n in first if n in before)
    assert "PEFT model" in caplog.text
    with pytest.warns(UserWarning, match="PEFT model"):
        apply_gradinit(
            model, classification_examples(12), GradInitConfig(**FAST), show_progress=False
        )


def test_iteration_entries_go_to_the_log_history_not_the_console(tmp_path, capsys):
    trainer = Trainer(
        model=tiny_bert_classifier(), args=_gradinit_args(tmp_path, gradinit_logging_steps=1),
        train_dataset=classification_examples(24), callbacks=[GradInitCallback()],
    )  # fmt: skip
    trainer.train()
    iterations = [e for e in trainer.state.log_history if "gradinit/iteration" in e]
    assert len(iterations) == 3
    printed = capsys.readouterr().out
    assert "'gradinit/iteration':" not in printed
    assert "gradinit/kept" in printed  # the summary is shown


@pytest.mark.parametrize("make_trainer", ["trainer", "seq2seq"])
def test_tensorboard_sees_gradinit_at_step_0_then_trainings_own_entries(tmp_path, make_trainer):
    """A real reporter: TensorBoard's event files hold GradInit's scalars at step 0 (probe
    losses at their probe steps), before every training scalar, and the training scalars
    are those of the log history, step for step, with no GradInit key among them."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    kw = dict(max_steps=6, logging_steps=2, report_to=["tensorboard"])
    if make_trainer == "trainer":
        args = _training_args(tmp_path, **kw)
        trainer = Trainer(
            model=tiny_bert_classifier(), args=args, train_dataset=classification_examples(48),
            callbacks=[GradInitCallback(GradInitConfig(iterations=3, probe_steps=2))],
        )  # fmt: skip
    else:
        args = _gradinit_args(tmp_path, gradinit_probe_steps=2, gradinit_logging_steps=1, **kw)
        trainer = GradInitTrainer(
            model=tiny_marian(), args=args, train_dataset=seq2seq_examples(48)
        )
    trainer.train()
    (logs,) = (tmp_path / "out" / "runs").iterdir()  # the callback's default folder
    events = EventAccumulator(str(logs), size_guidance={"scalars": 0}).Reload()
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    gradinit = {t: v for t, v in scalars.items() if "gradinit/" in t}
    training = {t: v for t, v in scalars.items() if "gradinit/" not in t}
    assert "train/gradinit/loss" in gradinit and "train/loss" in training
    for tag, points in gradinit.items():
        assert {p.step for p in points} <= ({0, 1, 2} if "probe_" in tag else {0}), tag
    last_gradinit = max(p.wall_time for points in gradinit.values() for p in points)
    assert last_gradinit <= min(p.wall_time for p in training["train/loss"])
    history = [e for e in trainer.state.log_history if "loss" in e]
    assert [p.step for p in training["train/loss"]] == [e["step"] for e in history]
    assert [p.value for p in training["train/loss"]] == pytest.approx([e["loss"] for e in history])
