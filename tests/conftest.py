"""Tiny models built from config and synthetic data: no network, seconds per test."""

from __future__ import annotations

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
    for n, t in saved.items():
        assert torch.equal(now[n], t), f"{n} changed"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
