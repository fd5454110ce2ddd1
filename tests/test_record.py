"""hf_gradinit.record: "initialized" follows the weights, not config.gradinit alone."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from testing_utils import (
    fresh_from_config,
    gradinit_args,
    initialized_checkpoint,
    seq2seq_batch,
    seq2seq_examples,
    tiny_marian,
)
from transformers import AutoModelForSeq2SeqLM, MarianMTModel, default_data_collator

from hf_gradinit import (
    GradInitConfig,
    GradInitError,
    GradInitTrainer,
    compute_gradinit_scales,
    record,
)
from hf_gradinit.record import initialization_state


def _applied():
    """A tiny Marian with GradInit's scales applied (and so recorded), and the result."""
    model = tiny_marian()
    config = GradInitConfig(iterations=2, scale_lr=0.1, probe_steps=0)
    result = compute_gradinit_scales(model, [seq2seq_batch(12)], config, show_progress=False)
    result.apply(model)
    return model, result


def test_a_fresh_model_from_an_initialized_config_is_not_initialized(tmp_path):
    folder, model, _ = initialized_checkpoint(tmp_path, seed=5)
    assert record.is_initialized(AutoModelForSeq2SeqLM.from_pretrained(folder))
    reloaded_bf16 = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert record.is_initialized(reloaded_bf16)  # a half-precision reload: the same weights
    fresh = fresh_from_config(folder)
    assert "gradinit" in fresh.config.to_dict()  # the entry came along with the config...
    assert not record.is_initialized(fresh)  # ...but the weights are random
    torch.manual_seed(5)  # even the very init GradInit started from is not initialized
    assert not record.is_initialized(fresh_from_config(folder))


def test_the_states_and_dropping_a_stale_record():
    model, result = _applied()
    assert record.initialization_state(model) == "initialized"
    assert record.initialization_state(tiny_marian()) == "absent"
    other = tiny_marian()
    other.config.gradinit = copy.deepcopy(model.config.gradinit)  # a plain dict: checked
    assert type(other.config.gradinit) is dict
    assert record.initialization_state(other) == "stale"
    with pytest.raises(GradInitError, match="already GradInit-initialized"):
        record.check_not_initialized(model)
    record.check_not_initialized(other)  # stale is not initialized: scales may be applied
    assert record.drop_stale_record(other) == "stale"
    assert not hasattr(other.config, "gradinit")
    unverified = tiny_marian()
    unverified.config.gradinit = result.config_entry()
    assert record.initialization_state(unverified) == "unverified"  # no fingerprint: trusted
    assert record.is_initialized(unverified)
    assert record.drop_stale_record(unverified) == "unverified"
    assert hasattr(unverified.config, "gradinit")


def test_the_record_follows_the_weights_whenever_it_is_copied_or_saved(tmp_path):
    model, result = _applied()
    entry = model.config.gradinit
    assert isinstance(entry, record.LiveRecord) and entry.describes(model)
    written = json.loads(json.dumps(copy.deepcopy(entry)))
    with torch.no_grad():  # training moves the weights
        for p in model.parameters():
            p.mul_(1.5)
    assert record.initialization_state(model) == "initialized"  # the model it describes
    moved = copy.deepcopy(model.config.to_dict()["gradinit"])
    assert moved["fingerprint"] != written["fingerprint"]
    assert {k: v for k, v in moved.items() if k != "fingerprint"} == {
        k: v for k, v in written.items() if k != "fingerprint"
    }
    model.save_pretrained(tmp_path)
    assert record.initialization_state(type(model).from_pretrained(tmp_path)) == "initialized"
    # the entry written before training describes other weights now
    model.config.gradinit = written
    assert record.initialization_state(model) == "stale"
    record.keep_current(model)
    assert isinstance(model.config.gradinit, record.LiveRecord)
    assert record.initialization_state(model) == "initialized"


def test_record_in_config_from_a_state_dict_and_same_run():
    model, result = _applied()
    entry = result.config_entry()
    assert entry["scales_file"] == record.SCALES_FILE and "scales" not in entry
    copy_ = tiny_marian()
    state = {n: t.clone() for n, t in model.state_dict().items()}
    record.record_in_config(copy_, entry, result.scales, state)
    assert type(copy_.config.gradinit) is dict  # the weights of `state`, checked when read
    assert record.initialization_state(copy_) == "stale"  # not this model's weights
    copy_.load_state_dict(state)
    assert record.initialization_state(copy_) == "initialized"
    assert record.same_run(model.config.gradinit, entry)
    assert record.same_run(json.loads(json.dumps(entry)), entry)
    other = compute_gradinit_scales(
        tiny_marian(), [seq2seq_batch(12)], GradInitConfig(iterations=3, probe_steps=0),
        show_progress=False,
    )  # fmt: skip
    assert not record.same_run(other.config_entry(), entry)


# ---- The record follows the weights however they are saved after training (issue #19, kind 1) ----


@pytest.mark.parametrize("how", ["save_pretrained", "deepcopy_then_save", "save_model"])
def test_a_model_saved_after_training_is_initialized_when_reloaded(tmp_path, how):
    trainer = GradInitTrainer(
        model=tiny_marian(),
        args=gradinit_args(tmp_path, max_steps=20, learning_rate=2e-2),
        train_dataset=seq2seq_examples(48),
        data_collator=default_data_collator,
    )
    trainer.train()
    folder = tmp_path / "saved"
    if how == "save_pretrained":
        trainer.model.save_pretrained(folder)
    elif how == "deepcopy_then_save":
        copy.deepcopy(trainer.model).save_pretrained(folder)
    else:
        trainer.save_model(str(folder))
    reloaded = MarianMTModel.from_pretrained(folder)
    assert initialization_state(reloaded) == "initialized"
    # and a GradInitTrainer continuing from it does not rescale the trained weights
    calls = []
    import hf_gradinit.api as api

    real = api.compute_gradinit_scales
    try:
        api.compute_gradinit_scales = lambda *a, **k: calls.append(1) or real(*a, **k)
        follow = GradInitTrainer(
            model=reloaded,
            args=gradinit_args(tmp_path / "2", max_steps=1),
            train_dataset=seq2seq_examples(48),
            data_collator=default_data_collator,
        )
        follow.train()
    finally:
        api.compute_gradinit_scales = real
    assert calls == []
