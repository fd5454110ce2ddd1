"""Faults found by trying real-world reports (issue #12), each as a new user would: tiny
models built from config, offline. One section per fault kind."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import (
    PAD,
    assert_same_weights,
    model_folder,
    seq2seq_examples,
    snapshot,
    tiny_bart,
    tiny_fsmt,
    tiny_marian,
    tiny_tokenizer,
    toy_translation_records,
    write_jsonl,
)
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainingArguments,
)

import hf_gradinit.gradinit as gradinit_module
import hf_gradinit.trainer as trainer_module
from hf_gradinit import (
    GradInitConfig,
    GradInitError,
    GradInitTrainer,
    GradInitTrainingArguments,
    apply_gradinit,
    load_gradinit_result,
    save_initialized_checkpoint,
)
from hf_gradinit.cli import main
from hf_gradinit.hub import SCALES_FILE, is_initialized

FAMILIES = {"marian": tiny_marian, "bart": tiny_bart, "fsmt": tiny_fsmt}

TRAIN = dict(
    use_cpu=True,
    report_to="none",
    disable_tqdm=True,
    per_device_train_batch_size=6,
    learning_rate=1e-3,
    seed=0,
    save_strategy="no",
    max_steps=1,
    gradinit_iterations=3,
)


def _train_args(tmp_path, name="run", **overrides) -> GradInitTrainingArguments:
    return GradInitTrainingArguments(output_dir=str(tmp_path / name), **{**TRAIN, **overrides})


def _never_called(*args, **kwargs):
    raise AssertionError("GradInit ran, but it must not run here")


def _record_batches(monkeypatch, module) -> list[dict]:
    """Patch ``module.compute_gradinit_scales`` to record every batch GradInit draws."""
    seen: list[dict] = []
    real = gradinit_module.compute_gradinit_scales

    def spy(model, batches, config=None, **kwargs):
        class Recorded:  # re-iterable, like a DataLoader
            def __iter__(self):
                for batch in batches:
                    seen.append(batch)
                    yield batch

        return real(model, Recorded(), config, **kwargs)

    monkeypatch.setattr(module, "compute_gradinit_scales", spy)
    return seen


def _initialized_checkpoint(tmp_path, seed: int = 0, iterations: int = 2):
    """An `hf-gradinit init`-style checkpoint: tiny Marian, GradInit applied, saved."""
    torch.manual_seed(seed)
    model = tiny_marian()
    config = GradInitConfig(iterations=iterations, scale_lr=0.05, eta=1e-2)
    result = apply_gradinit(model, seq2seq_examples(24), config, batch_size=6, show_progress=False)
    folder = save_initialized_checkpoint(model, result, tmp_path / "ckpt", tiny_tokenizer())
    return folder, model, result


def _fresh_from_config(folder) -> torch.nn.Module:
    return AutoModelForSeq2SeqLM.from_config(AutoConfig.from_pretrained(folder))


# --------------------------------------------------------------------------------------
# 1. "Initialized" follows the weights, not config.gradinit alone
# --------------------------------------------------------------------------------------


def test_a_fresh_model_from_an_initialized_config_is_not_initialized(tmp_path):
    folder, model, _ = _initialized_checkpoint(tmp_path, seed=5)
    assert is_initialized(AutoModelForSeq2SeqLM.from_pretrained(folder))
    reloaded_bf16 = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert is_initialized(reloaded_bf16)  # a half-precision reload is still the same weights
    fresh = _fresh_from_config(folder)
    assert "gradinit" in fresh.config.to_dict()  # the entry came along with the config...
    assert not is_initialized(fresh)  # ...but the weights are random
    torch.manual_seed(5)  # even the very init GradInit started from is not initialized
    assert not is_initialized(_fresh_from_config(folder))


def test_trainer_initializes_a_fresh_model_built_from_an_initialized_config(tmp_path):
    folder, _, old = _initialized_checkpoint(tmp_path, iterations=2)
    fresh = _fresh_from_config(folder)
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
    assert not is_initialized(_fresh_from_config(out))


def test_no_gradinit_does_not_save_a_stale_record(tmp_path):
    folder, _, _ = _initialized_checkpoint(tmp_path)
    trainer = GradInitTrainer(
        model=_fresh_from_config(folder),
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
    folder, _, old = _initialized_checkpoint(tmp_path)
    first = GradInitTrainer(
        model=AutoModelForSeq2SeqLM.from_pretrained(folder),
        args=_train_args(tmp_path, "first", max_steps=3, learning_rate=1e-2),
        train_dataset=seq2seq_examples(24),
    )
    first.train()
    first.save_model()
    monkeypatch.setattr(trainer_module, "compute_gradinit_scales", _never_called)
    trained = AutoModelForSeq2SeqLM.from_pretrained(first.args.output_dir)
    assert is_initialized(trained)
    second = GradInitTrainer(
        model=trained, args=_train_args(tmp_path, "second"), train_dataset=seq2seq_examples(24)
    )
    second.train()
    assert second.gradinit_result.scales == old.scales  # the record travels with the weights


def test_apply_gradinit_refuses_an_initialized_model(tmp_path, monkeypatch):
    folder, _, _ = _initialized_checkpoint(tmp_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    before = snapshot(model)
    monkeypatch.setattr(gradinit_module, "compute_gradinit_scales", _never_called)
    with pytest.raises(GradInitError, match="already GradInit-initialized.*del model.config"):
        apply_gradinit(model, seq2seq_examples(12), GradInitConfig(iterations=2), batch_size=6)
    assert_same_weights(model, before)


def test_apply_gradinit_on_a_fresh_model_from_an_initialized_config_records_it(tmp_path):
    folder, _, old = _initialized_checkpoint(tmp_path)
    fresh = _fresh_from_config(folder)
    config = GradInitConfig(iterations=3, scale_lr=0.05, eta=1e-2)
    result = apply_gradinit(fresh, seq2seq_examples(24), config, batch_size=6, show_progress=False)
    assert is_initialized(fresh)
    assert fresh.config.gradinit["summary"]["iterations"] == 3 != old.config.iterations
    assert fresh.config.gradinit["summary"]["num_scales"] == len(result.scales)


def test_save_initialized_checkpoint_refuses_weights_the_scales_were_not_applied_to(tmp_path):
    folder, _, old = _initialized_checkpoint(tmp_path)
    fresh = _fresh_from_config(folder)
    with pytest.raises(GradInitError, match="not the ones.*result.apply"):
        save_initialized_checkpoint(fresh, old, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # And a model initialized by another run is not saved with this run's record.
    other = AutoModelForSeq2SeqLM.from_pretrained(folder)
    _, _, another = _initialized_checkpoint(tmp_path / "b", iterations=3)
    with pytest.raises(GradInitError, match="another GradInit run"):
        save_initialized_checkpoint(other, another, tmp_path / "out")


def _cli_init(folder, data, out, *extra) -> list[str]:
    return [
        "init", "--model_path", str(folder), "--train_file", str(data),
        "--source_lang", "de", "--target_lang", "en", "--learning_rate", "5e-4",
        "--output_dir", str(out), "--gradinit_iterations", "2", "--gradinit_batch_size", "6",
        "--use_cpu", *extra,
    ]  # fmt: skip


def test_cli_init_decides_from_the_weights(tmp_path, capsys, monkeypatch):
    folder, _, _ = _initialized_checkpoint(tmp_path)
    data = write_jsonl(tmp_path / "train.jsonl", toy_translation_records(30))
    # A folder with the initialized weights: refused before any work, folder untouched.
    before = snapshot(AutoModelForSeq2SeqLM.from_pretrained(folder))
    real = gradinit_module.compute_gradinit_scales
    monkeypatch.setattr(gradinit_module, "compute_gradinit_scales", _never_called)
    assert main(_cli_init(folder, data, tmp_path / "again")) == 2
    assert "already GradInit-initialized" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()
    assert_same_weights(AutoModelForSeq2SeqLM.from_pretrained(folder), before)
    # Its config.json alone (no weights): a fresh random model, initialized.
    monkeypatch.setattr(gradinit_module, "compute_gradinit_scales", real)
    config_only = tmp_path / "config_only"
    AutoConfig.from_pretrained(folder).save_pretrained(config_only)
    tiny_tokenizer().save_pretrained(config_only)
    assert main(_cli_init(config_only, data, tmp_path / "out")) == 0, capsys.readouterr().err
    assert is_initialized(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out"))


# --------------------------------------------------------------------------------------
# 2. Label padding is masked (-100) in every collator path that feeds GradInit
# --------------------------------------------------------------------------------------


def _assert_label_padding_masked(batches: list[dict]) -> None:
    assert batches
    padded = 0
    for batch in batches:
        labels = batch["labels"]
        assert not (labels == PAD).any(), f"padding scored as the pad token: {labels.tolist()}"
        lengths = (labels != -100).sum(1)
        for row, n in zip(labels, lengths.tolist()):
            assert (row[:n] != -100).all() and (row[n:] == -100).all(), row.tolist()
        padded += int((lengths < labels.shape[1]).sum())
    assert padded  # there was padding to mask


def _features(n: int = 30) -> list[dict]:
    tokenizer = tiny_tokenizer()
    records = toy_translation_records(n)
    sources = [r["translation"]["de"] for r in records]
    targets = [r["translation"]["en"] for r in records]
    encoded = tokenizer(sources)
    labels = tokenizer(text_target=targets)["input_ids"]
    return [
        {"input_ids": i, "attention_mask": m, "labels": lab}
        for i, m, lab in zip(encoded["input_ids"], encoded["attention_mask"], labels)
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_init_masks_label_padding(tmp_path, monkeypatch, family):
    folder = model_folder(tmp_path / "model", FAMILIES[family](), tiny_tokenizer(), weights=False)
    data = write_jsonl(tmp_path / "train.jsonl", toy_translation_records(30))
    batches = _record_batches(monkeypatch, gradinit_module)
    assert main(_cli_init(folder, data, tmp_path / "out")) == 0
    _assert_label_padding_masked(batches)


@pytest.mark.parametrize("family", FAMILIES)
def test_trainer_with_a_seq2seq_collator_masks_label_padding(tmp_path, monkeypatch, family):
    model = FAMILIES[family]()
    batches = _record_batches(monkeypatch, trainer_module)
    trainer = GradInitTrainer(
        model=model,
        args=_train_args(tmp_path, gradinit_iterations=2),
        train_dataset=_features(),
        data_collator=DataCollatorForSeq2Seq(tiny_tokenizer(), model=model),
    )
    trainer.run_gradinit()
    _assert_label_padding_masked(batches)


@pytest.mark.parametrize("family", FAMILIES)
def test_apply_gradinit_with_a_seq2seq_collator_masks_label_padding(monkeypatch, family):
    model = FAMILIES[family]()
    batches = _record_batches(monkeypatch, gradinit_module)
    collator = DataCollatorForSeq2Seq(tiny_tokenizer(), model=model)
    config = GradInitConfig(iterations=2)
    apply_gradinit(
        model, _features(), config, data_collator=collator, batch_size=6, show_progress=False
    )
    _assert_label_padding_masked(batches)


# --------------------------------------------------------------------------------------
# 3. GradInit's batches do not depend on the dataset size modulo the batch size
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("examples,expected", [(4, 3), (7, 3), (2, 2)])
def test_trainer_gradinit_batches_are_whole(tmp_path, monkeypatch, examples, expected):
    batches = _record_batches(monkeypatch, trainer_module)
    args = _train_args(tmp_path, per_device_train_batch_size=3, gradinit_iterations=5)
    trainer = GradInitTrainer(
        model=tiny_marian(), args=args, train_dataset=seq2seq_examples(examples)
    )
    trainer.train()
    assert [b["input_ids"].shape[0] for b in batches][:5] == [expected] * 5
    assert trainer.args.dataloader_drop_last is False  # training's loader is left alone


# --------------------------------------------------------------------------------------
# 4. A GradInit batch of one example is refused when the arguments are made
# --------------------------------------------------------------------------------------


def test_a_gradinit_batch_of_one_is_refused_when_the_arguments_are_made(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--gradinit_batch_size"):
        _train_args(tmp_path, per_device_train_batch_size=1, gradient_accumulation_steps=8)
    _train_args(tmp_path, per_device_train_batch_size=1, gradinit=False)  # no GradInit: fine
    _train_args(tmp_path, per_device_train_batch_size=1, gradinit_overlap=1.0)  # no split
    plain = Seq2SeqTrainingArguments(
        str(tmp_path / "plain"), per_device_train_batch_size=1, use_cpu=True, report_to="none"
    )
    with pytest.raises(ValueError, match="gradinit_batch_size"):
        GradInitTrainer(model=tiny_marian(), args=plain, train_dataset=seq2seq_examples(8))

    batches = _record_batches(monkeypatch, trainer_module)
    args = _train_args(
        tmp_path, per_device_train_batch_size=1, gradient_accumulation_steps=8,
        gradinit_batch_size=4, gradinit_iterations=2,
    )  # fmt: skip
    GradInitTrainer(model=tiny_marian(), args=args, train_dataset=seq2seq_examples(12)).train()
    assert [b["input_ids"].shape[0] for b in batches][:2] == [4, 4]


# --------------------------------------------------------------------------------------
# 5. `hf-gradinit init --push_to_hub`: checked before any work; push failures in one line
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
    monkeypatch.setattr(gradinit_module, "compute_gradinit_scales", _never_called)
    out = tmp_path / out_name
    assert main(_cli_init(folder, data, out, "--push_to_hub", *extra)) == 2
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
    args = _cli_init(folder, data, out, "--push_to_hub", "--hub_model_id", "me/marian-init")
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
    args = _cli_init(folder, data, out, "--push_to_hub", "--hub_model_id", "me/marian-init")
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


# --------------------------------------------------------------------------------------
# 6. Floating-point inputs follow GradInit's fp32 compute
# --------------------------------------------------------------------------------------


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
    [{}, {"lookahead_steps": 2}, {"trial_steps": 2}],
    ids=["paper", "lookahead", "trial"],  # every place that draws batches
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
    config = GradInitConfig(iterations=3, **extra)
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
    apply_gradinit(model, data, GradInitConfig(iterations=2), batch_size=6, show_progress=False)
    assert seen and set(seen) == {torch.float32}
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


# --------------------------------------------------------------------------------------
# 8. A model card wherever a model is saved
# --------------------------------------------------------------------------------------


def test_trainer_writes_the_card_wherever_it_saves(tmp_path):
    args = _train_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer = GradInitTrainer(model=tiny_marian(), args=args, train_dataset=seq2seq_examples(24))
    trainer.train()
    checkpoint = Path(args.output_dir) / "checkpoint-2"
    assert "## GradInit" in (checkpoint / "README.md").read_text()
    trainer.create_model_card(language=["de", "en"], results={"test BLEU": 12.5})
    (Path(args.output_dir) / "README.md").unlink()
    trainer.save_model()  # no push: the card is written, with the metadata given before
    card = ModelCard.load(Path(args.output_dir) / "README.md")
    assert card.data.language == ["de", "en"] and "- test BLEU: 12.5" in card.text
    assert "## GradInit" in card.text
