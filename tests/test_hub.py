"""Initialized checkpoints: scales file, config entry, model card, pushes (Hub HTTP layer
patched), and the `hf-gradinit init` command end to end. No network."""

from __future__ import annotations

import fnmatch
import json
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
from conftest import (
    model_folder,
    seq2seq_examples,
    snapshot,
    tiny_bart,
    tiny_bert_classifier,
    tiny_marian,
    tiny_tokenizer,
    toy_translation_records,
    write_jsonl,
)
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from transformers import AutoModelForSeq2SeqLM, default_data_collator

import hf_gradinit.trainer as trainer_module
from hf_gradinit import (
    GradInitConfig,
    GradInitTrainer,
    GradInitTrainingArguments,
    apply_gradinit,
    load_gradinit_result,
    make_model_card,
    save_gradinit_result,
    save_initialized_checkpoint,
)
from hf_gradinit.cli import main
from hf_gradinit.hub import PLOT_FILE, SCALES_FILE, is_initialized, scales_table


@pytest.fixture
def hub(monkeypatch):
    """Patches HfApi's HTTP calls; records each upload as {path in repo: bytes}."""
    record = {"repos": [], "uploads": []}

    def create_repo(self, repo_id, *args, **kwargs):
        record["repos"].append(repo_id)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        ignore = kwargs.get("ignore_patterns") or []
        files = {}
        for path in sorted(Path(folder_path).rglob("*")):
            rel = path.relative_to(folder_path).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(rel, p) for p in ignore):
                prefix = kwargs.get("path_in_repo") or ""
                files[f"{prefix}/{rel}" if prefix else rel] = path.read_bytes()
        record["uploads"].append({"repo_id": repo_id, "files": files, **kwargs})
        info = CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/0",
            commit_message=kwargs.get("commit_message") or "",
            commit_description="",
            oid="0" * 40,
        )
        if kwargs.get("run_as_future"):
            future = Future()
            future.set_result(info)
            return future
        return info

    def create_commit(self, *args, **kwargs):
        raise AssertionError("create_commit was called directly; the test expects upload_folder")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return record


def _result(model=None, iterations=3):
    model = model or tiny_marian()
    config = GradInitConfig(iterations=iterations, scale_lr=0.05, eta=1e-2)
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
    assert "trained with `hf_gradinit.GradInitTrainer`" in card.text
    assert "fine-tuned version" not in card.text and "the toy pairs dataset" in card.text
    assert "someone/tiny-marian" in hub["repos"]


# --------------------------------------------------------------------------------------
# hf-gradinit init
# --------------------------------------------------------------------------------------


def _translation_setup(tmp_path, weights=True):
    tokenizer = tiny_tokenizer()
    model = tiny_marian()
    folder = model_folder(tmp_path / "model", model, tokenizer, weights=weights)
    data = write_jsonl(tmp_path / "train.jsonl", toy_translation_records(30))
    return model, folder, data


def _never_called(*args, **kwargs):
    raise AssertionError("GradInit ran on an already initialized model")


def test_cli_init_translation_end_to_end(tmp_path, capsys, monkeypatch):
    model, folder, data = _translation_setup(tmp_path)
    original = snapshot(model)
    out = tmp_path / "initialized"
    status = main(
        [
            "init",
            "--model_path",
            folder,
            "--train_file",
            data,
            "--source_lang",
            "de",
            "--target_lang",
            "en",
            "--learning_rate",
            "5e-4",
            "--output_dir",
            str(out),
            "--gradinit_iterations",
            "3",
            "--gradinit_batch_size",
            "6",
            "--use_cpu",
        ]
    )
    assert status == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "Saved the initialized checkpoint" in printed
    # The all-shared Marian: its one embedding matrix is named, and what GradInit did with it.
    assert (
        "model.shared.weight = model.encoder.embed_tokens.weight = "
        "model.decoder.embed_tokens.weight = lm_head.weight is both an input embedding and the "
        "output projection: GradInit left it at its init" in printed
    )
    card_text = (out / "README.md").read_text()
    assert "### Tied input and output embeddings" in card_text and "`lm_head.weight`" in card_text
    result = load_gradinit_result(out)
    # eta = --learning_rate (the step training will take) and the 3 iterations asked for
    assert result.config.eta == pytest.approx(5e-4) and result.config.iterations == 3
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(out)
    for name, tensor in reloaded.state_dict().items():  # = the folder's weights x scales
        scale = next(
            (s for n, s in result.scales.items() if name in [n, *result.aliases.get(n, [])]),
            None,
        )
        expected = original[name] if scale is None else original[name] * torch.tensor(scale)
        assert torch.equal(tensor, expected), name
    card = ModelCard.load(out / "README.md")
    assert card.data.language == ["de", "en"] and card.data.pipeline_tag == "translation"
    assert (out / "tokenizer.json").is_file() and (out / PLOT_FILE).is_file()

    # Training the initialized checkpoint with GradInitTrainer does not rescale it.
    monkeypatch.setattr(trainer_module, "compute_gradinit_scales", _never_called)
    trainer = GradInitTrainer(
        model=reloaded,
        args=GradInitTrainingArguments(
            output_dir=str(tmp_path / "train"), max_steps=1, per_device_train_batch_size=6,
            use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no",
        ),
        train_dataset=seq2seq_examples(12),
    )  # fmt: skip
    trainer.train()
    assert trainer.gradinit_result.scales == result.scales  # its record, from the folder


def test_cli_init_from_config_only_and_push(tmp_path, hub):
    _, folder, data = _translation_setup(tmp_path, weights=False)
    assert not (Path(folder) / "model.safetensors").exists()
    status = main(
        [
            "init",
            "--model_path",
            folder,
            "--train_file",
            data,
            "--source_lang",
            "de",
            "--target_lang",
            "en",
            "--learning_rate",
            "5e-4",
            "--output_dir",
            str(tmp_path / "out"),
            "--gradinit_iterations",
            "2",
            "--use_cpu",
            "--push_to_hub",
            "--hub_model_id",
            "someone/marian-init",
        ]
    )
    assert status == 0
    (upload,) = hub["uploads"]
    assert {"model.safetensors", "config.json", SCALES_FILE, "README.md"} <= set(upload["files"])


def test_cli_init_text_label_classifier(tmp_path):
    tokenizer = tiny_tokenizer()
    folder = model_folder(tmp_path / "bert", tiny_bert_classifier(), tokenizer, weights=False)
    records = [
        {"text": r["translation"]["en"], "label": i % 3}
        for i, r in enumerate(toy_translation_records(24))
    ]
    data = write_jsonl(tmp_path / "cls.jsonl", records)
    status = main(
        [
            "init",
            "--model_path",
            folder,
            "--train_file",
            data,
            "--optim",
            "sgd",
            "--optim_args",
            "momentum=0.5",
            "--learning_rate",
            "0.1",
            "--output_dir",
            str(tmp_path / "out"),
            "--gradinit_iterations",
            "2",
            "--gradinit_batch_size",
            "8",
            "--use_cpu",
        ]
    )
    assert status == 0
    result = load_gradinit_result(tmp_path / "out")
    assert result.config.inner_optimizer == "sgd"
    assert result.config.eta == pytest.approx(0.2)  # momentum's steady step: 0.1 / (1 - 0.5)
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.pipeline_tag == "text-classification"


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    _, folder, data = _translation_setup(tmp_path)
    base = ["init", "--model_path", folder, "--output_dir", str(tmp_path / "o")]

    def error(*extra):
        assert main([*base, *extra]) == 2
        return capsys.readouterr().err

    missing = str(tmp_path / "missing.jsonl")
    assert "does not exist" in error("--train_file", missing, "--learning_rate", "1e-3")
    assert "--learning_rate" in error("--train_file", data)
    assert "--source_lang" in error("--train_file", data, "--learning_rate", "1e-3")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"translation": {"de": "ich", "en": "i"}}\n{oops\n')
    assert "line 2" in error(
        "--train_file",
        str(bad),
        "--learning_rate",
        "1e-3",
        "--source_lang",
        "de",
        "--target_lang",
        "en",
    )
    assert "gradinit_scale_lr" in error(
        "--train_file", data, "--learning_rate", "1e-3", "--gradinit_scale_lr", "-1",
        "--source_lang", "de", "--target_lang", "en",
    )  # fmt: skip
    assert "not a folder with a config.json" in error(
        "--train_file", data, "--learning_rate", "1e-3", "--model_path", str(tmp_path)
    )


def test_cli_help_lists_the_command_and_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "init" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["init", "--help"])
    text = capsys.readouterr().out
    assert "--gradinit_iterations" in text and "--learning_rate" in text
    assert main([]) == 2
