"""GradInitTrainer / GradInitTrainingArguments: when GradInit runs, what training starts from,
what gets logged and saved, and that --no_gradinit is plain Seq2SeqTrainer."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings

import pytest
import torch
from conftest import seq2seq_examples, snapshot, tiny_bart, tiny_marian
from transformers import (
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    default_data_collator,
    set_seed,
)
from transformers.trainer_pt_utils import LengthGroupedSampler

import hf_gradinit.trainer as trainer_module
from hf_gradinit import (
    GradInitConfig,
    GradInitResult,
    GradInitTrainer,
    GradInitTrainingArguments,
    load_gradinit_result,
)
from hf_gradinit.trainer import (
    GradInitArguments,
    default_logging_steps,
    inner_optimizer_for,
    sgd_step_factor,
)

COMMON = dict(
    use_cpu=True,
    report_to="none",
    disable_tqdm=True,
    per_device_train_batch_size=6,
    logging_steps=1,
    learning_rate=1e-3,
    seed=0,
    save_strategy="no",
)


def _args(tmp_path, **overrides) -> GradInitTrainingArguments:
    kwargs = {**COMMON, "output_dir": str(tmp_path / "out"), "max_steps": 2}
    kwargs.setdefault("gradinit_iterations", 3)
    kwargs.update(overrides)
    return GradInitTrainingArguments(**kwargs)


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


def _never_called(*args, **kwargs):
    raise AssertionError("GradInit ran, but it must not run here")


def _scaled(original: dict[str, torch.Tensor], result: GradInitResult) -> dict[str, torch.Tensor]:
    """original * scale exactly as apply_scales computes it, every alias of a tied tensor."""
    expected = dict(original)
    for name, scale in result.scales.items():
        for n in [name, *result.aliases.get(name, [])]:
            t = original[n]
            expected[n] = t * torch.tensor(scale, dtype=t.dtype)
    return expected


def _gradinit_entries(log_history):
    return [e for e in log_history if any(k.startswith("gradinit/") for k in e)]


# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------


def test_arguments_follow_optim_and_learning_rate(tmp_path):
    args = GradInitTrainingArguments(output_dir=str(tmp_path), learning_rate=5e-4, use_cpu=True)
    config = args.to_gradinit_config()
    assert args.gradinit is True
    # eta = the learning rate: GradInit simulates the step training will take
    assert config.eta == pytest.approx(5e-4) and config.inner_optimizer == "adam"
    assert (config.iterations, config.scale_lr, config.gamma) == (200, 2.5e-3, None)
    assert config.seed == args.seed
    sgd = GradInitTrainingArguments(output_dir=str(tmp_path), optim="sgd", learning_rate=0.1)
    assert sgd.to_gradinit_config().inner_optimizer == "sgd"
    assert inner_optimizer_for("adafactor") == ("adam", True)
    assert inner_optimizer_for("lomo") == ("sgd", True)
    assert inner_optimizer_for("something_new")[1] is False
    assert default_logging_steps(100) == 1 and default_logging_steps(780) == 8

    # Every GradInitConfig setting has a gradinit_* argument that reaches the config.
    core = {f.name for f in dataclasses.fields(GradInitConfig)}
    mine = {f.name for f in dataclasses.fields(GradInitArguments)}
    # from learning_rate / optim / seed / adam_beta1, adam_beta2 / adam_epsilon (the
    # lookahead's and the trial guard's settings follow the run's)
    derived = {
        "eta",
        "inner_optimizer",
        "seed",
        "inner_betas",
        "inner_eps",
        "trial_lr",
        "trial_betas",
    }
    assert {f"gradinit_{n}" for n in core - derived} <= mine
    custom = GradInitTrainingArguments(
        output_dir=str(tmp_path), gradinit_min_scale=0.2, gradinit_scale_betas=[0.5, 0.6]
    ).to_gradinit_config()
    assert custom.min_scale == 0.2 and custom.scale_betas == (0.5, 0.6)


def test_reference_recipe_in_one_argument(tmp_path):
    from hf_gradinit.cli import _parsers, _to_dataclass

    args = GradInitTrainingArguments(
        output_dir=str(tmp_path), learning_rate=5e-4, adam_beta2=0.999, gradinit_recipe="reference"
    )
    config = args.to_gradinit_config()
    expected = GradInitConfig.reference(
        5e-4, seed=args.seed, inner_betas=(0.9, 0.999), trial_lr=5e-4, trial_betas=(0.9, 0.999)
    )
    assert config == expected
    assert (config.iterations, config.scale_lr, config.eta) == (780, 2.5e-3, 1e-3)  # 2x lr
    assert (config.gamma, config.gamma_unit) == (2.5e-5, "per_parameter")
    own = GradInitTrainingArguments(  # a multiplier the user sets wins over the recipe's
        output_dir=str(tmp_path), learning_rate=5e-4, gradinit_recipe="reference",
        gradinit_eta_multiplier=3.0,
    ).to_gradinit_config()  # fmt: skip
    assert own.eta == pytest.approx(1.5e-3)
    assert config.constraint_moments == "separate"
    # An argument set away from its default wins over the recipe.
    mine = GradInitTrainingArguments(
        output_dir=str(tmp_path), gradinit_recipe="reference", gradinit_iterations=50
    ).to_gradinit_config()
    assert (mine.iterations, mine.scale_lr) == (50, 2.5e-3)
    # The same argument in `hf-gradinit init`.
    namespace = _parsers().parse_args(
        ["init", "--model_path", "m", "--train_file", "t", "--output_dir", "o"]
        + ["--gradinit_recipe", "reference"]
    )
    cli = _to_dataclass(GradInitArguments, namespace).to_gradinit_config(learning_rate=5e-4)
    assert cli == GradInitConfig.reference(5e-4, seed=cli.seed)
    with pytest.raises(ValueError, match="gradinit_recipe"):
        GradInitTrainingArguments(output_dir=str(tmp_path), gradinit_recipe="paper")


def test_forced_mismatches_warn_and_bad_values_raise(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = GradInitTrainingArguments(
            output_dir=str(tmp_path),
            learning_rate=5e-4,
            gradinit_eta=5e-3,
            gradinit_inner_optimizer="sgd",
        )
    messages = " | ".join(str(w.message) for w in caught)
    assert "gradinit_eta=0.005" in messages and "contradicts optim" in messages
    config = args.to_gradinit_config(warn=False)
    assert (config.eta, config.inner_optimizer) == (5e-3, "sgd")  # allowed, only warned about

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consistent settings: no warning
        GradInitTrainingArguments(output_dir=str(tmp_path), learning_rate=5e-4, gradinit_eta=5e-4)

    with pytest.raises(ValueError, match="gradinit_scale_lr must be a positive"):
        GradInitTrainingArguments(output_dir=str(tmp_path), gradinit_scale_lr=-1.0)
    with pytest.raises(ValueError, match="gradinit_batch_size must be >= 2"):
        GradInitTrainingArguments(output_dir=str(tmp_path), gradinit_batch_size=1)
    with pytest.raises(ValueError, match="gradinit_logging_steps"):
        GradInitTrainingArguments(output_dir=str(tmp_path), gradinit_logging_steps=0)
    # --no_gradinit skips the GradInit checks entirely.
    GradInitTrainingArguments(output_dir=str(tmp_path), gradinit=False, gradinit_scale_lr=-1.0)


def test_plain_seq2seq_arguments_get_the_default_gradinit_settings(tmp_path):
    args = Seq2SeqTrainingArguments(str(tmp_path), learning_rate=3e-4, optim="sgd", **{
        k: v for k, v in COMMON.items() if k not in ("learning_rate",)
    })  # fmt: skip
    trainer = GradInitTrainer(model=tiny_bart(), args=args, train_dataset=seq2seq_examples(6))
    config = trainer.gradinit_config()
    assert trainer.gradinit_enabled
    assert (config.eta, config.inner_optimizer, config.iterations) == (3e-4, "sgd", 200)


def test_hf_argument_parser_sees_the_gradinit_arguments(tmp_path):
    parser = HfArgumentParser(GradInitTrainingArguments)
    (on,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--gradinit_iterations", "7", "--gradinit_gamma", "2"]
    )
    assert on.gradinit and on.gradinit_iterations == 7 and on.gradinit_gamma == 2.0
    (off,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--no_gradinit"])
    assert off.gradinit is False
    help_text = parser.format_help()
    assert "--gradinit_eta_multiplier" in help_text and "--no_gradinit" in help_text


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


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
    entries = _gradinit_entries(history)
    assert [e["gradinit/iteration"] for e in entries[:-1]] == [1, 2, 3, 4]
    assert {"gradinit/loss", "gradinit/grad_norm", "gradinit/loss_after_step"} <= set(entries[0])
    assert entries[0]["gradinit/loss"] == pytest.approx(result.history[0]["loss"])
    assert entries[-1]["gradinit/runtime_s"] == pytest.approx(result.runtime_s)
    first_train = next(i for i, e in enumerate(history) if "loss" in e)
    assert history.index(entries[-1]) < first_train
    assert len(_gradinit_entries(spy.logs)) == len(entries)  # reporters got them too

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
    logged_before = len(_gradinit_entries(first.state.log_history))

    monkeypatch.setattr(trainer_module, "compute_gradinit_scales", _never_called)
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
    assert len(_gradinit_entries(resumed.state.log_history)) == logged_before  # none new
    assert resumed.gradinit_result.scales == first.gradinit_result.scales  # record kept
    assert resumed.model.config.gradinit == first.model.config.gradinit
    resumed.save_model()  # the scales file survives the interruption and the resume
    survived = load_gradinit_result(os.path.join(resumed.args.output_dir, "gradinit_scales.json"))
    assert survived.scales == first.gradinit_result.scales


def test_second_train_call_does_not_rerun_gradinit(tmp_path, monkeypatch):
    trainer = GradInitTrainer(
        model=tiny_bart(), args=_args(tmp_path), train_dataset=seq2seq_examples(24)
    )
    trainer.train()
    result = trainer.gradinit_result
    monkeypatch.setattr(trainer_module, "compute_gradinit_scales", _never_called)
    trainer.train()
    assert trainer.gradinit_result is result
    assert _gradinit_entries(trainer.state.log_history) == []


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
    assert len(_gradinit_entries(trainer.state.log_history)) == 4
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


def _record_gradinit_batches(monkeypatch) -> list[dict]:
    """Patch the trainer's GradInit call to record every batch GradInit draws (in a list)."""
    seen: list[dict] = []
    real = trainer_module.compute_gradinit_scales

    def spy(model, batches, config, **kwargs):
        def recorded():
            for batch in batches:
                seen.append(batch)
                yield batch

        class Again:  # re-iterable, like a DataLoader
            def __iter__(self):
                return recorded()

        return real(model, Again(), config, **kwargs)

    monkeypatch.setattr(trainer_module, "compute_gradinit_scales", spy)
    return seen


def test_run_gradinit_uses_gradinit_batch_size_and_logging_steps(tmp_path, monkeypatch):
    batches = _record_gradinit_batches(monkeypatch)
    args = _args(tmp_path, gradinit_iterations=5, gradinit_batch_size=4, gradinit_logging_steps=2)
    trainer = GradInitTrainer(model=tiny_bart(), args=args, train_dataset=seq2seq_examples(24))
    rng = torch.get_rng_state()
    result = trainer.run_gradinit()
    assert torch.equal(torch.get_rng_state(), rng)  # training's random streams are untouched
    sizes = [batch["input_ids"].shape[0] for batch in batches]
    assert sizes[:5] == [4] * 5
    assert trainer._train_batch_size == 6  # the training batch size is left alone
    trainer.train()  # the model is initialized: train() only logs what run_gradinit did
    entries = _gradinit_entries(trainer.state.log_history)
    assert [e["gradinit/iteration"] for e in entries[:-1]] == [2, 4, 5]
    mean = sum(h["loss"] for h in result.history[:2]) / 2
    assert entries[0]["gradinit/loss"] == pytest.approx(mean)


def test_trainer_logs_what_gradinit_did_with_a_tied_input_output_tensor(tmp_path, caplog):
    args = _args(tmp_path, gradinit_iterations=2)
    trainer = GradInitTrainer(model=tiny_bart(), args=args, train_dataset=seq2seq_examples(12))
    with caplog.at_level(logging.INFO, logger="hf_gradinit.trainer"):
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
    batches = _record_gradinit_batches(monkeypatch)
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
    trainer._gradinit_dataloader()
    assert strategies == ["group_by_length"]


def test_gradinit_optimizes_the_trainers_label_smoothed_loss(tmp_path):
    model = tiny_bart()
    args = _args(tmp_path, label_smoothing_factor=0.1)
    trainer = GradInitTrainer(model=model, args=args, train_dataset=seq2seq_examples(24))
    loss_fn = trainer.gradinit_loss_fn()
    assert loss_fn is not None
    batch = default_data_collator(seq2seq_examples(6))
    # as DataCollatorForSeq2Seq(model=...) gives them; compute_loss drops the labels
    batch["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    model.eval()
    with torch.no_grad():
        outputs = model(**batch)
        expected = trainer.compute_loss(model, dict(batch))
        assert torch.allclose(loss_fn(outputs, batch), expected)
        assert not torch.allclose(outputs.loss, expected)  # it is not the plain model loss


@pytest.mark.parametrize(
    ("optim_args", "factor"),
    [
        ("momentum=0.9", 10.0),
        ("nesterov=True, momentum = 0.5", 2.0),
        ("momentum=0.9,dampening=0.5", 5.0),
        (None, 1.0),
        ("momentum=0", 1.0),
        ("momentum=abc", 1.0),  # unreadable: torch's SGD will say so itself
    ],
)
def test_sgd_step_factor_is_the_steady_step_of_torch_sgd(optim_args, factor):
    """Checked against torch.optim.SGD itself: under a constant gradient, its step settles
    at factor x lr x g."""
    assert sgd_step_factor(optim_args) == pytest.approx(factor)
    if factor == 1.0 and optim_args:
        return
    kwargs = {
        k.strip(): (v.strip() == "True" if k.strip() == "nesterov" else float(v))
        for k, v in (kv.split("=") for kv in (optim_args or "").split(",") if kv)
    }
    p = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([p], lr=0.1, **kwargs)
    for _ in range(300):
        before = p.detach().clone()
        p.grad = torch.ones(())
        opt.step()
    assert float(before - p.detach()) == pytest.approx(factor * 0.1, rel=1e-4)


@pytest.mark.parametrize(
    ("optim", "optim_args", "inner", "eta"),
    [
        ("sgd", "momentum=0.9", None, 1.0),  # lr 0.1 / (1 - 0.9)
        ("sgd", None, None, 0.1),
        ("sgd", "momentum=0.9", "adam", 0.1),  # a forced sign step: no momentum factor
        ("adamw_torch", "momentum=0.9", None, 0.1),  # not an SGD step
    ],
)
def test_eta_with_sgd_momentum_is_the_steady_step(tmp_path, optim, optim_args, inner, eta):
    forced = pytest.warns(UserWarning, match="contradicts") if inner else warnings.catch_warnings()
    with forced:
        args = _args(
            tmp_path, optim=optim, optim_args=optim_args, learning_rate=0.1,
            gradinit_inner_optimizer=inner,
        )  # fmt: skip
    assert args.to_gradinit_config(warn=False).eta == pytest.approx(eta)
    if inner is not None:  # forcing the inner optimizer against optim is warned about
        return
    # the trainer gets the same eta, also from plain Seq2SeqTrainingArguments
    trainer = GradInitTrainer(model=tiny_marian(), args=args, train_dataset=seq2seq_examples(6))
    assert trainer.gradinit_config().eta == pytest.approx(eta)
    plain = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path / "plain"), optim=optim, optim_args=optim_args,
        learning_rate=0.1, report_to="none", use_cpu=True,
    )  # fmt: skip
    trainer = GradInitTrainer(model=tiny_marian(), args=plain, train_dataset=seq2seq_examples(6))
    assert trainer.gradinit_config().eta == pytest.approx(eta)


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
