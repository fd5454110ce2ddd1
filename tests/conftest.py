"""Tiny models built from config and synthetic data: no network, seconds per test."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
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


def tiny_marian(**overrides) -> MarianMTModel:
    kwargs = dict(
        vocab_size=VOCAB,
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
        decoder_start_token_id=PAD,
        activation_function="relu",
        scale_embedding=True,
    )
    kwargs.update(overrides)
    return MarianMTModel(MarianConfig(**kwargs))


def tiny_bart(**overrides) -> BartForConditionalGeneration:
    kwargs = dict(
        vocab_size=VOCAB,
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
        bos_token_id=BOS,
        decoder_start_token_id=EOS,
        forced_eos_token_id=None,
    )
    kwargs.update(overrides)
    return BartForConditionalGeneration(BartConfig(**kwargs))


def tiny_fsmt(**overrides) -> FSMTForConditionalGeneration:
    kwargs = dict(
        langs=["de", "en"],
        src_vocab_size=VOCAB,
        tgt_vocab_size=VOCAB,
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


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run many times faster with one thread than with oversubscribed cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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
