"""hf_gradinit.arguments: the gradinit_* arguments, and how a training run's optimizer,
learning rate and batch size become GradInit's settings."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from testing_utils import seq2seq_examples, tiny_marian, training_args
from transformers import HfArgumentParser, Seq2SeqTrainingArguments

from hf_gradinit import GradInitConfig, GradInitTrainer, GradInitTrainingArguments
from hf_gradinit.arguments import (
    GradInitArguments,
    check_gradinit_batch_size,
    inner_optimizer_for,
    sgd_step_factor,
)
from hf_gradinit.callbacks import default_logging_steps


def _args(tmp_path, **overrides) -> GradInitTrainingArguments:
    fast = dict(max_steps=2, learning_rate=1e-3, gradinit_iterations=3)
    return training_args(tmp_path, **{**fast, **overrides})


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
    # lookahead's settings follow the run's)
    derived = {"eta", "inner_optimizer", "seed", "inner_betas", "inner_eps"}
    assert {f"gradinit_{n}" for n in core - derived} <= mine
    custom = GradInitTrainingArguments(
        output_dir=str(tmp_path), gradinit_min_scale=0.2, gradinit_scale_betas=[0.5, 0.6],
        gradinit_probe_steps=7, gradinit_probe_margin=0.1,
    ).to_gradinit_config()  # fmt: skip
    assert custom.min_scale == 0.2 and custom.scale_betas == (0.5, 0.6)
    assert (custom.probe_steps, custom.probe_margin) == (7, 0.1)
    assert (config.probe_steps, config.probe_margin) == (300, 0.0)  # the defaults


def test_reference_recipe_in_one_argument(tmp_path):
    from hf_gradinit.cli import _parsers, _to_dataclass

    args = GradInitTrainingArguments(
        output_dir=str(tmp_path), learning_rate=5e-4, adam_beta2=0.999, gradinit_recipe="reference"
    )
    config = args.to_gradinit_config()
    expected = GradInitConfig.reference(5e-4, seed=args.seed, inner_betas=(0.9, 0.999))
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


def test_a_plain_trainers_arguments_give_eta_and_the_inner_optimizer(tmp_path):
    """Plain TrainingArguments (no gradinit_* fields): the callback's config reads the run's
    learning rate, optim, optim_args, Adam betas/eps and seed through one path."""
    from transformers import Trainer

    from hf_gradinit import GradInitCallback

    run = Seq2SeqTrainingArguments(
        str(tmp_path), learning_rate=0.1, optim="sgd", optim_args="momentum=0.5", seed=7,
        adam_beta2=0.95, adam_epsilon=1e-6, report_to="none", use_cpu=True,
    )  # fmt: skip
    trainer = Trainer(model=tiny_marian(), args=run, train_dataset=seq2seq_examples(4))
    config = GradInitCallback(GradInitConfig(iterations=9)).config_for(trainer)
    assert (config.inner_optimizer, config.iterations) == ("sgd", 9)
    assert config.eta == pytest.approx(0.2)  # 0.1 / (1 - 0.5)
    assert (config.inner_betas, config.inner_eps) == ((0.9, 0.95), 1e-6)
    assert GradInitCallback().config_for(trainer).seed == 7


def test_a_gradinit_batch_of_one_is_refused_when_the_arguments_are_made(tmp_path):
    def train_args(**overrides):
        return _args(tmp_path, **{"per_device_train_batch_size": 1, **overrides})

    with pytest.raises(ValueError, match="--gradinit_batch_size"):
        train_args(gradient_accumulation_steps=8)
    train_args(gradinit=False)  # no GradInit: fine
    train_args(gradinit_overlap=1.0)  # no split
    train_args(gradient_accumulation_steps=8, gradinit_batch_size=4)  # its own batch size
    plain = Seq2SeqTrainingArguments(
        str(tmp_path / "plain"), per_device_train_batch_size=1, use_cpu=True, report_to="none"
    )
    with pytest.raises(ValueError, match="gradinit_batch_size"):
        check_gradinit_batch_size(plain)
