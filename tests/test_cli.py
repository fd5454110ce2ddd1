"""hf_gradinit.cli: `hf-gradinit init` end to end (tiny models built from config, offline),
its errors, what it decides from the weights, and pushes (Hub HTTP layer patched)."""

from __future__ import annotations

import fnmatch
import re
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from testing_utils import (
    assert_label_padding_masked,
    assert_same_weights,
    cli_init_args,
    initialized_checkpoint,
    load_script,
    model_folder,
    never_called,
    record_batches,
    seq2seq_examples,
    snapshot,
    tiny_bart,
    tiny_bert_classifier,
    tiny_fsmt,
    tiny_marian,
    tiny_tokenizer,
    toy_translation_records,
    write_jsonl,
)
from transformers import AutoConfig, AutoModelForSeq2SeqLM

import hf_gradinit.api as api_module
import hf_gradinit.callbacks as callbacks_module
from hf_gradinit import GradInitTrainer, GradInitTrainingArguments, load_gradinit_result
from hf_gradinit.cli import main
from hf_gradinit.hub import PLOT_FILE, SCALES_FILE
from hf_gradinit.record import is_initialized

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"marian": tiny_marian, "bart": tiny_bart, "fsmt": tiny_fsmt}


def _translation_setup(tmp_path, weights=True):
    tokenizer = tiny_tokenizer()
    model = tiny_marian()
    folder = model_folder(tmp_path / "model", model, tokenizer, weights=weights)
    data = write_jsonl(tmp_path / "train.jsonl", toy_translation_records(30))
    return model, folder, data


def test_cli_init_translation_end_to_end(tmp_path, capsys, monkeypatch):
    model, folder, data = _translation_setup(tmp_path)
    original = snapshot(model)
    out = tmp_path / "initialized"
    status = main(cli_init_args(folder, data, out, iterations=3))
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
    monkeypatch.setattr(callbacks_module, "compute_gradinit_scales", never_called)
    trainer = GradInitTrainer(
        model=reloaded,
        args=GradInitTrainingArguments(
            output_dir=str(tmp_path / "train"), max_steps=1, per_device_train_batch_size=6,
            use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no",
            gradinit_probe_steps=0,
        ),
        train_dataset=seq2seq_examples(12),
    )  # fmt: skip
    trainer.train()
    assert trainer.gradinit_result.scales == result.scales  # its record, from the folder


def test_cli_init_from_config_only_and_push(tmp_path, hub):
    _, folder, data = _translation_setup(tmp_path, weights=False)
    assert not (Path(folder) / "model.safetensors").exists()
    out = tmp_path / "out"
    push = ["--push_to_hub", "--hub_model_id", "someone/marian-init"]
    status = main(cli_init_args(folder, data, out, *push))
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
            "--gradinit_probe_steps",
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


def _help_by_option(text: str) -> dict[str, str]:
    """argparse's help, {first option string: its help text, whitespace collapsed}."""
    sections: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = re.match(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if match:
            current = sections.setdefault(match.group(1).split()[0].rstrip(","), [])
            current.append(match.group(2) or "")
        elif line.startswith("    ") and sections:
            current.append(line)
    return {option: " ".join(" ".join(words).split()) for option, words in sections.items()}


def _assert_negated_flags_explained(options: dict[str, str]) -> None:
    negated = [o for o in options if o.startswith("--no_")]
    assert negated
    for option in negated:
        positive = "--" + option.removeprefix("--no_")
        assert options[option] != options[positive], option
        assert f"Set {positive[2:]} to False" in options[option], options[option]


def test_cli_help_shows_defaults_version_and_what_each_flag_does(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hf-gradinit {version('hf-gradinit')}"
    with pytest.raises(SystemExit):
        main(["init", "--help"])
    options = _help_by_option(capsys.readouterr().out)
    assert options["--optim"].endswith("(default: adamw_torch)")
    assert options["--seed"].endswith("(default: 42)")
    assert "(default: " in options["--gradinit_iterations"]
    assert "(default" not in options["--model_path"]  # required: no default to show
    assert "tokenizer" in options["--model_path"] and "save_pretrained" in options["--model_path"]
    assert "repo named after --output_dir's last folder" in options["--push_to_hub"]
    assert "Learn a scale for nn.Embedding weights too" in options["--no_gradinit_fixed_embeddings"]
    _assert_negated_flags_explained(options)


def test_translation_example_help_says_what_each_flag_does(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    run = load_script(ROOT / "examples" / "translation" / "run.py", "translation_run_help")
    try:
        with pytest.raises(SystemExit):
            run.parse_args(["--help"])
    finally:
        sys.modules.pop("translation_run_help", None)
    options = _help_by_option(capsys.readouterr().out)
    assert "Train without GradInit" in options["--no_gradinit"]
    assert options["--learning_rate"].endswith(")") and "(default:" in options["--learning_rate"]
    _assert_negated_flags_explained(options)


# --------------------------------------------------------------------------------------
# What it decides from the weights; label padding
# --------------------------------------------------------------------------------------


def test_cli_init_decides_from_the_weights(tmp_path, capsys, monkeypatch):
    folder, _, _ = initialized_checkpoint(tmp_path)
    data = write_jsonl(tmp_path / "train.jsonl", toy_translation_records(30))
    # A folder with the initialized weights: refused before any work, folder untouched.
    before = snapshot(AutoModelForSeq2SeqLM.from_pretrained(folder))
    real = api_module.compute_gradinit_scales
    monkeypatch.setattr(api_module, "compute_gradinit_scales", never_called)
    assert main(cli_init_args(folder, data, tmp_path / "again")) == 2
    assert "already GradInit-initialized" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()
    assert_same_weights(AutoModelForSeq2SeqLM.from_pretrained(folder), before)
    # Its config.json alone (no weights): a fresh random model, initialized.
    monkeypatch.setattr(api_module, "compute_gradinit_scales", real)
    config_only = tmp_path / "config_only"
    AutoConfig.from_pretrained(folder).save_pretrained(config_only)
    tiny_tokenizer().save_pretrained(config_only)
    assert main(cli_init_args(config_only, data, tmp_path / "out")) == 0, capsys.readouterr().err
    assert is_initialized(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out"))


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_init_masks_label_padding(tmp_path, monkeypatch, family):
    folder = model_folder(tmp_path / "model", FAMILIES[family](), tiny_tokenizer(), weights=False)
    data = write_jsonl(tmp_path / "train.jsonl", toy_translation_records(30))
    batches = record_batches(monkeypatch, api_module)
    assert main(cli_init_args(folder, data, tmp_path / "out")) == 0
    assert_label_padding_masked(batches)


# --------------------------------------------------------------------------------------
# --push_to_hub: checked before any work; push failures in one line
# --------------------------------------------------------------------------------------


@pytest.fixture
def uploads(monkeypatch):
    """HfApi's HTTP calls patched (no network); the uploaded file names per call."""
    record: list[list[str]] = []

    def create_repo(self, repo_id, *args, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        ignore = kwargs.get("ignore_patterns") or []
        names = [
            p.name
            for p in Path(folder_path).iterdir()
            if not any(fnmatch.fnmatch(p.name, i) for i in ignore)
        ]
        record.append(sorted(names))
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/0",
            commit_message="",
            commit_description="",
            oid="0" * 40,
        )

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return record


def _push_setup(tmp_path):
    folder = model_folder(tmp_path / "model", tiny_marian(), tiny_tokenizer(), weights=False)
    data = write_jsonl(tmp_path / "train.jsonl", toy_translation_records(30))
    return folder, data


@pytest.mark.parametrize(
    "out_name,extra,match",
    [
        ("marian+gradinit", [], r"'marian\+gradinit'.*--hub_model_id"),
        ("ok", ["--hub_model_id", "me/marian gradinit"], "'me/marian gradinit'"),
    ],
    ids=["default-id-from-folder", "given-id"],
)
def test_cli_push_checks_the_repo_id_before_any_work(
    tmp_path, capsys, monkeypatch, uploads, out_name, extra, match
):
    folder, data = _push_setup(tmp_path)
    monkeypatch.setattr(api_module, "compute_gradinit_scales", never_called)
    out = tmp_path / out_name
    assert main(cli_init_args(folder, data, out, "--push_to_hub", *extra)) == 2
    err = capsys.readouterr().err
    assert "repo id" in err and len(err.strip().splitlines()) == 1
    assert re.search(match, err), err
    assert not out.exists() and uploads == []


def test_cli_push_offline_is_one_line_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    """Offline (HF_HUB_OFFLINE, as CI sets it), the real HTTP layer refuses; the saved
    checkpoint stays and the error is one line, not huggingface_hub's traceback."""
    from huggingface_hub import constants

    folder, data = _push_setup(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "out"
    args = cli_init_args(folder, data, out, "--push_to_hub", "--hub_model_id", "me/marian-init")
    assert main(args) == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in lines)
    assert lines[-1].startswith("hf-gradinit: push failed:") and "offline" in lines[-1]
    assert (out / "model.safetensors").is_file() and (out / SCALES_FILE).is_file()


def test_cli_push_network_failure_is_one_line_and_keeps_the_checkpoint(
    tmp_path, capsys, monkeypatch, uploads
):
    def unreachable(self, *args, **kwargs):
        raise ConnectionError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    folder, data = _push_setup(tmp_path)
    out = tmp_path / "out"
    args = cli_init_args(folder, data, out, "--push_to_hub", "--hub_model_id", "me/marian-init")
    assert main(args) == 3
    lines = capsys.readouterr().err.strip().splitlines()  # GradInit's progress bar, then
    assert not any("Traceback" in line for line in lines)
    assert [line for line in lines if line.startswith("hf-gradinit")] == lines[-1:]
    err = lines[-1]  # one line
    assert err.startswith("hf-gradinit: push failed:")
    assert "me/marian-init" in err and "Network is unreachable" in err and str(out) in err
    for name in ("config.json", "model.safetensors", SCALES_FILE, "README.md"):
        assert (out / name).is_file(), name
    assert is_initialized(AutoModelForSeq2SeqLM.from_pretrained(out))
