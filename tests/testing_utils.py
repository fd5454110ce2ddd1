"""Helpers of the test suite: tiny models built from config, synthetic data and tokenizers,
weight snapshots, and the pieces several test modules share. No network, seconds per test.

Imported as ``from testing_utils import ...`` (pytest puts tests/ on the path);
``conftest.py`` holds only fixtures and hooks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    FSMTConfig,
    FSMTForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
)

VOCAB = 64
PAD, EOS, BOS = 0, 1, 2


# What the tiny encoder-decoders share: 2 + 2 layers, d_model 16, 2 heads, FFN 32.
_ENCODER_DECODER = dict(
    d_model=16,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    max_position_embeddings=64,
    pad_token_id=PAD,
    eos_token_id=EOS,
)


def tiny_marian(**overrides) -> MarianMTModel:
    kwargs = dict(
        _ENCODER_DECODER,
        vocab_size=VOCAB,
        decoder_start_token_id=PAD,
        activation_function="relu",
        scale_embedding=True,
    )
    kwargs.update(overrides)
    return MarianMTModel(MarianConfig(**kwargs))


def tiny_bart(**overrides) -> BartForConditionalGeneration:
    kwargs = dict(
        _ENCODER_DECODER,
        vocab_size=VOCAB,
        bos_token_id=BOS,
        decoder_start_token_id=EOS,
        forced_eos_token_id=None,
    )
    kwargs.update(overrides)
    return BartForConditionalGeneration(BartConfig(**kwargs))


def tiny_fsmt(**overrides) -> FSMTForConditionalGeneration:
    kwargs = dict(
        _ENCODER_DECODER,
        langs=["de", "en"],
        src_vocab_size=VOCAB,
        tgt_vocab_size=VOCAB,
        bos_token_id=BOS,
        decoder_start_token_id=EOS,
        tie_word_embeddings=True,
    )
    kwargs.update(overrides)
    return FSMTForConditionalGeneration(FSMTConfig(**kwargs))


def tiny_bert_classifier(**overrides) -> BertForSequenceClassification:
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
        pad_token_id=PAD,
    )
    kwargs.update(overrides)
    return BertForSequenceClassification(BertConfig(**kwargs))


def seq2seq_examples(n: int = 24, src_len: int = 8, tgt_len: int = 7, seed: int = 0):
    """A learnable toy task (reverse the source), fixed lengths: no padding."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        src = torch.randint(3, VOCAB, (src_len,), generator=g)
        out.append(
            {
                "input_ids": src,
                "attention_mask": torch.ones(src_len, dtype=torch.long),
                "labels": torch.flip(src[:tgt_len], [0]),
            }
        )
    return out


def fsmt_examples(n: int = 24, seed: int = 0):
    """FSMT builds decoder inputs from input_ids unless given: give them, shifted labels."""
    out = seq2seq_examples(n, seed=seed)
    for ex in out:
        ex["decoder_input_ids"] = torch.cat([torch.tensor([EOS]), ex["labels"][:-1]])
    return out


def classification_examples(n: int = 24, length: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (length,), generator=g)
        out.append(
            {
                "input_ids": ids,
                "attention_mask": torch.ones(length, dtype=torch.long),
                "labels": torch.tensor(int(ids[0]) % 3),
            }
        )
    return out


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def assert_same_weights(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert set(now) == set(saved)
    for n, t in saved.items():  # exact, NaN == NaN
        torch.testing.assert_close(now[n], t, rtol=0, atol=0, equal_nan=True, msg=f"{n} changed")


# --------------------------------------------------------------------------------------
# Tokenizers, text data and model folders (tests/test_trainer.py, tests/test_hub.py)
# --------------------------------------------------------------------------------------

_DE = "ich du er wir sie haus baum hund katze buch sieht liest hat mag kauft rot gross klein alt neu".split()  # noqa: SIM905
_EN = "i you he we they house tree dog cat book sees reads has likes buys red big small old new".split()  # noqa: SIM905


def toy_translation_records(n: int = 24, seed: int = 0) -> list[dict]:
    """{"translation": {"de": ..., "en": ...}} pairs, word-for-word: a learnable toy task."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        idx = torch.randint(
            0, len(_DE), (int(torch.randint(3, 7, (1,), generator=g)),), generator=g
        )
        out.append(
            {
                "translation": {
                    "de": " ".join(_DE[i] for i in idx.tolist()),
                    "en": " ".join(_EN[i] for i in idx.tolist()),
                }
            }
        )
    return out


def tiny_tokenizer():
    """A WordLevel tokenizer trained in memory on the toy vocabulary (ids: <pad> 0, </s> 1,
    <s> 2, <unk> 3, as the tiny models expect); appends </s> like Marian/BART tokenizers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=VOCAB, special_tokens=["<pad>", "</s>", "<s>", "<unk>"]
    )
    tok.train_from_iterator([" ".join(_DE), " ".join(_EN)], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", EOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>",
        unk_token="<unk>",
    )


def write_jsonl(path, records) -> str:
    import json

    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def model_folder(path, model, tokenizer=None, weights: bool = True) -> str:
    """A local model folder: config (+ weights) (+ tokenizer), as `hf-gradinit init` reads."""
    if weights:
        model.save_pretrained(path)
    else:
        model.config.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return str(path)


def load_script(path: Path, name: str):
    """Import a script that is not a package module (the example, a benchmark) by path."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------
# Pieces several test modules share
# --------------------------------------------------------------------------------------


def seq2seq_batch(n: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """One collated batch of ``seq2seq_examples``."""
    from transformers import default_data_collator

    return default_data_collator(seq2seq_examples(n, seed=seed))


def never_called(*args, **kwargs):
    raise AssertionError("GradInit ran, but it must not run here")


def record_batches(monkeypatch, module) -> list[dict]:
    """Patch ``module.compute_gradinit_scales`` (``hf_gradinit.api`` for ``apply_gradinit``
    and the CLI, ``hf_gradinit.callbacks`` for the trainer) to record every batch GradInit
    draws, in order."""
    from hf_gradinit import api

    seen: list[dict] = []
    real = api.compute_gradinit_scales

    def spy(model, batches, config=None, **kwargs):
        class Recorded:  # re-iterable, like a DataLoader
            def __iter__(self):
                for batch in batches:
                    seen.append(batch)
                    yield batch

        return real(model, Recorded(), config, **kwargs)

    monkeypatch.setattr(module, "compute_gradinit_scales", spy)
    return seen


def gradinit_entries(log_history: list[dict]) -> list[dict]:
    """The GradInit entries of a trainer's log history."""
    return [e for e in log_history if any(k.startswith("gradinit/") for k in e)]


def initialized_checkpoint(tmp_path, seed: int = 0, iterations: int = 2):
    """An `hf-gradinit init`-style checkpoint: tiny Marian, GradInit applied (no probe),
    saved with a tokenizer into ``tmp_path / "ckpt"``. Returns (folder, model, result)."""
    from hf_gradinit import GradInitConfig, apply_gradinit, save_initialized_checkpoint

    torch.manual_seed(seed)
    model = tiny_marian()
    config = GradInitConfig(iterations=iterations, scale_lr=0.05, eta=1e-2, probe_steps=0)
    result = apply_gradinit(model, seq2seq_examples(24), config, batch_size=6, show_progress=False)
    folder = save_initialized_checkpoint(model, result, tmp_path / "ckpt", tiny_tokenizer())
    return folder, model, result


def fresh_from_config(folder) -> torch.nn.Module:
    """A model with fresh random weights from a checkpoint's config (``from_config``)."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_config(AutoConfig.from_pretrained(folder))


def translation_features(n: int = 30) -> list[dict]:
    """Tokenized toy translation pairs of different lengths (not padded)."""
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


def assert_label_padding_masked(batches: list[dict]) -> None:
    """Label padding is -100 (ignored by the loss), never the pad token, in every batch."""
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


def cli_init_args(folder, data, out, *extra, iterations: int = 2, probe_steps: int = 0):
    """`hf-gradinit init` on a translation folder and data, batches of 6, on CPU."""
    return [
        "init", "--model_path", str(folder), "--train_file", str(data),
        "--source_lang", "de", "--target_lang", "en", "--learning_rate", "5e-4",
        "--output_dir", str(out), "--gradinit_iterations", str(iterations),
        "--gradinit_probe_steps", str(probe_steps), "--gradinit_batch_size", "6",
        "--use_cpu", *extra,
    ]  # fmt: skip


# --------------------------------------------------------------------------------------
# The algorithm's checks against independent paths (tests/test_core_*.py)
# --------------------------------------------------------------------------------------


def float64_model(factory=tiny_marian, **overrides) -> torch.nn.Module:
    """A tiny model (``factory``: Marian) in float64, eval mode, eager attention, biases made
    non-zero (so they get scales too): for comparisons with finite differences."""
    model = factory(attn_implementation="eager", **overrides).double().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.05)
    return model


def perturbed_alpha(problem, seed: int = 1) -> torch.Tensor:
    """Scales around 1 (+-15%), one per scaled tensor of a ``ScaledModel``."""
    g = torch.Generator().manual_seed(seed)
    return 1 + 0.3 * (torch.rand(len(problem.names), generator=g, dtype=problem.dtype) - 0.5)


def model_at(model: torch.nn.Module, theta: dict[str, torch.Tensor]) -> torch.nn.Module:
    """An independent path: a copy of the model whose parameters are set to ``theta``."""
    import copy

    clone = copy.deepcopy(model)
    params = dict(clone.named_parameters())
    with torch.no_grad():
        for n, t in theta.items():
            params[n].copy_(t)
    return clone


# Training arguments for tests: CPU, quiet, nothing saved, batches of 6, a log every step.
TRAINING_DEFAULTS = dict(
    use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no",
    per_device_train_batch_size=6, logging_steps=1, seed=0,
)  # fmt: skip


def training_args(tmp_path, cls=None, **overrides):
    """``cls`` (GradInitTrainingArguments by default) with ``TRAINING_DEFAULTS``, writing
    under ``tmp_path / "out"``."""
    if cls is None:
        from hf_gradinit import GradInitTrainingArguments as cls
    return cls(**{**TRAINING_DEFAULTS, "output_dir": str(tmp_path / "out"), **overrides})


def gradinit_args(tmp_path, **overrides):
    """Fast GradInitTrainingArguments on CPU: 3 steps, 3 GradInit iterations, no probe."""
    fast = dict(max_steps=3, learning_rate=5e-3, gradinit_iterations=3, gradinit_probe_steps=0)
    return training_args(tmp_path, **{**fast, **overrides})
