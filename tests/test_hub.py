"""hf_gradinit.hub: initialized checkpoints: scales file, config entry, model card, pushes
(Hub HTTP layer patched by the ``hub`` fixture). No network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from testing_utils import (
    fresh_from_config,
    initialized_checkpoint,
    seq2seq_examples,
    tiny_bart,
    tiny_marian,
    tiny_tokenizer,
)
from transformers import AutoModelForSeq2SeqLM, default_data_collator

from hf_gradinit import (
    GradInitConfig,
    GradInitError,
    GradInitTrainer,
    GradInitTrainingArguments,
    apply_gradinit,
    load_gradinit_result,
    make_model_card,
    save_gradinit_result,
    save_initialized_checkpoint,
)
from hf_gradinit.card import trainer_model_card
from hf_gradinit.hub import PLOT_FILE, SCALES_FILE, scales_table
from hf_gradinit.record import is_initialized


def _result(model=None, iterations=3):
    model = model or tiny_marian()
    config = GradInitConfig(iterations=iterations, scale_lr=0.05, eta=1e-2, probe_steps=0)
    result = apply_gradinit(model, seq2seq_examples(24), config, batch_size=6, show_progress=False)
    return model, result


def _card_checks(card_text: str, result) -> ModelCard:
    card = ModelCard(card_text)
    assert card.data.library_name == "transformers"
    assert "gradinit" in card.data.tags
    assert "[]()" not in card.text
    assert "| Layer | Tensor | Kind | Scale |" in card.text
    for name, scale in result.scales.items():
        assert f"| {name.rsplit('.', 1)[-1]} |" in card.text or name in card.text
        assert f"{scale:.4g}" in card.text
    return card


# --------------------------------------------------------------------------------------
# Files and card
# --------------------------------------------------------------------------------------


def test_scales_file_round_trips_and_card_renders_the_scales(tmp_path):
    model, result = _result()
    path = save_gradinit_result(result, tmp_path)
    assert path.name == SCALES_FILE
    loaded = load_gradinit_result(tmp_path)
    assert loaded.to_dict() == json.loads(json.dumps(result.to_dict()))
    with pytest.raises(FileNotFoundError):
        load_gradinit_result(tmp_path / "nowhere")

    table = scales_table(result)
    assert table.count("\n") == len(result.scales) + 2  # header, rule, one row per tensor
    assert "model.encoder.layers.0" in table and "self_attn.q_proj.weight" in table
    card = make_model_card(
        result, model_name="tiny", model_class="MarianMTModel", language=["de", "en"]
    )
    card = _card_checks(str(card), result)
    assert card.data.language == ["de", "en"]
    assert f"![GradInit scales and losses]({PLOT_FILE})" in card.text
    assert "**not trained**" in card.text


def test_card_notes_a_missing_matplotlib(tmp_path, monkeypatch):
    model, result = _result(iterations=1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    save_initialized_checkpoint(model, result, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / PLOT_FILE).exists()
    text = (tmp_path / "ckpt" / "README.md").read_text()
    assert "Plot skipped: matplotlib is not installed" in text and PLOT_FILE not in text


def test_initialized_checkpoint_reloads_exactly_and_pushes_everything(tmp_path, hub):
    model, result = _result(tiny_bart())
    tokenizer = tiny_tokenizer()
    out = save_initialized_checkpoint(
        model,
        result,
        tmp_path / "ckpt",
        tokenizer,
        push_to_hub=True,
        hub_model_id="someone/tiny-bart-gradinit",
        language=["de", "en"],
        datasets="someone/toy",
    )
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert is_initialized(reloaded)
    assert reloaded.config.gradinit["summary"] == json.loads(json.dumps(result.summary()))
    weights = model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, weights[name]), name

    assert hub["repos"] == ["someone/tiny-bart-gradinit"]
    (upload,) = hub["uploads"]
    assert upload["repo_id"] == "someone/tiny-bart-gradinit"
    files = upload["files"]
    for name in ["config.json", "model.safetensors", "tokenizer.json", SCALES_FILE, PLOT_FILE]:
        assert name in files, name
    card = _card_checks(files["README.md"].decode(), result)
    assert card.data.datasets == ["someone/toy"] and "bart" in card.data.tags
    assert "someone/tiny-bart-gradinit" in card.text  # the how-to loads the pushed repo
    assert json.loads(files["config.json"])["gradinit"]["scales_file"] == SCALES_FILE


def test_trainer_push_to_hub_sends_card_config_weights_and_scales(tmp_path, hub):
    args = GradInitTrainingArguments(
        output_dir=str(tmp_path / "run"),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        per_device_train_batch_size=6,
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
        learning_rate=1e-3,
        gradinit_iterations=3,
        gradinit_probe_steps=0,
        push_to_hub=True,
        hub_model_id="someone/tiny-marian",
    )
    trainer = GradInitTrainer(
        model=tiny_marian(),
        args=args,
        train_dataset=seq2seq_examples(24),
        data_collator=default_data_collator,
        processing_class=tiny_tokenizer(),
    )
    trainer.train()
    # The checkpoint push (hub_strategy every_save) already carries the GradInit files.
    checkpoint_push = hub["uploads"][0]["files"]
    assert {SCALES_FILE, PLOT_FILE, "README.md", "config.json"} <= set(checkpoint_push)
    assert "gradinit" in json.loads(checkpoint_push["config.json"])

    trainer.push_to_hub(language=["de", "en"], dataset="toy pairs", tasks="translation")
    files = hub["uploads"][-1]["files"]
    for name in ["config.json", "model.safetensors", "tokenizer.json", SCALES_FILE, PLOT_FILE]:
        assert name in files, name
    assert not any(name.startswith("checkpoint-") for name in files)
    result = trainer.gradinit_result
    assert json.loads(files[SCALES_FILE])["scales"] == result.scales
    assert json.loads(files["config.json"])["gradinit"]["settings"] == result.config.to_dict()
    card = _card_checks(files["README.md"].decode(), result)
    assert card.data.language == ["de", "en"] and card.data.pipeline_tag == "translation"
    assert "This model was trained with `hf_gradinit`" in card.text
    assert "fine-tuned version" not in card.text and "the toy pairs dataset" in card.text
    assert "someone/tiny-marian" in hub["repos"]


def _usage_line(folder) -> str:
    lines = (Path(folder) / "README.md").read_text().splitlines()
    return next(line for line in lines if ".from_pretrained(" in line)


def test_card_loads_from_the_folder_the_weights_are_in(tmp_path, monkeypatch, hub):
    """The card's usage line names the folder as given (or the repo pushed to), not only its
    last component: 'outputs/translation', 'runs/marian/checkpoint-2'."""
    monkeypatch.chdir(tmp_path)
    model, result = _result(iterations=1)
    save_initialized_checkpoint(model, result, "outputs/translation", plot=False)
    assert 'from_pretrained("outputs/translation")' in _usage_line("outputs/translation")
    save_initialized_checkpoint(
        model, result, "pushed", plot=False, push_to_hub=True, hub_model_id="someone/tiny"
    )
    assert 'from_pretrained("someone/tiny")' in _usage_line("pushed")

    args = GradInitTrainingArguments(
        output_dir="runs/marian",
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        per_device_train_batch_size=6,
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
        gradinit_iterations=1,
        gradinit_probe_steps=0,
    )
    trainer = GradInitTrainer(
        model=tiny_marian(),
        args=args,
        train_dataset=seq2seq_examples(24),
        data_collator=default_data_collator,
    )
    trainer.train()
    trainer.create_model_card()
    assert 'from_pretrained("runs/marian")' in _usage_line("runs/marian")
    folder = "runs/marian/checkpoint-2"
    card = trainer_model_card(trainer, trainer.gradinit_result, has_plot=False, folder=folder)
    assert f'from_pretrained("{folder}")' in card.text


def test_card_says_when_the_probe_kept_the_original_init(probe_keeps_original):
    model = tiny_marian()
    config = GradInitConfig(iterations=2, probe_steps=2)
    result = apply_gradinit(model, seq2seq_examples(24), config, batch_size=6, show_progress=False)
    assert not result.kept
    text = make_model_card(result, model_name="tiny").text
    assert "the original initialization was kept** (every scale is 1): forced by the test" in text
    assert "The learned scales were applied" not in text
    kept = make_model_card(_result()[1], model_name="tiny").text
    assert "**The learned scales were applied**" in kept


def test_save_initialized_checkpoint_refuses_weights_the_scales_were_not_applied_to(tmp_path):
    folder, _, old = initialized_checkpoint(tmp_path)
    fresh = fresh_from_config(folder)
    with pytest.raises(GradInitError, match="not the ones.*result.apply"):
        save_initialized_checkpoint(fresh, old, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # And a model initialized by another run is not saved with this run's record.
    other = AutoModelForSeq2SeqLM.from_pretrained(folder)
    _, _, another = initialized_checkpoint(tmp_path / "b", iterations=3)
    with pytest.raises(GradInitError, match="another GradInit run"):
        save_initialized_checkpoint(other, another, tmp_path / "out")


def test_trainer_push_to_hub_failure_is_one_error_and_keeps_the_folder(tmp_path, monkeypatch):
    """Offline or with a bad token: one PushError that names the folder, which is complete
    (weights, GradInit files, card), not a raw connection error with nothing written."""
    from huggingface_hub import HfApi
    from testing_utils import seq2seq_examples, tiny_marian, training_args

    from hf_gradinit import GradInitTrainer
    from hf_gradinit.hub import PushError

    def offline(self, *args, **kwargs):
        raise ConnectionError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    monkeypatch.setattr(HfApi, "upload_folder", offline)
    args = training_args(
        tmp_path, max_steps=2, learning_rate=1e-2, gradinit_iterations=2, gradinit_probe_steps=0
    )
    trainer = GradInitTrainer(model=tiny_marian(), args=args, train_dataset=seq2seq_examples(12))
    trainer.train()
    with pytest.raises(PushError, match=r"saved in .*out.*ConnectionError") as info:
        trainer.push_to_hub()
    assert "\n" not in str(info.value)
    out = tmp_path / "out"
    for name in ("model.safetensors", "config.json", "gradinit_scales.json", "README.md"):
        assert (out / name).is_file(), name
