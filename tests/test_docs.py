"""Every Python code block of the README and the docs runs as written, on tiny models built
from configs: the names a snippet assumes (``model``, ``train``, ``tokenizer``...) are given
here, the Hub's HTTP layer is patched (``hub`` fixture), nothing is downloaded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from testing_utils import seq2seq_examples, tiny_marian, tiny_tokenizer, training_args
from transformers import TrainingArguments, default_data_collator

ROOT = Path(__file__).resolve().parents[1]
FILES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))]
FILES.append("examples/translation/README.md")


def python_blocks() -> list[tuple[str, int, str]]:
    blocks = []
    for name in FILES:
        text = (ROOT / name).read_text()
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.S)):
            blocks.append((name, i, code))
    return blocks


def _names(tmp_path) -> dict:
    """What the snippets assume exists: a model from a config, its data and collator,
    training arguments, a causal LM with a tokenizer and texts (trl)."""
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    texts = ["ich sieht hund", "du liest buch", "er hat katze", "wir kauft haus rot"] * 6
    return {
        "model": tiny_marian(),
        "tokenized_train_dataset": seq2seq_examples(24),
        "train": seq2seq_examples(24),
        "collator": default_data_collator,
        "args": training_args(tmp_path, TrainingArguments, max_steps=6),
        "lm": GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2)),
        "tokenizer": tiny_tokenizer(),
        "texts": Dataset.from_dict({"text": texts}),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, index, code", python_blocks(), ids=[f"{n}#{i}" for n, i, _ in python_blocks()]
)
def test_code_block_runs_as_written(tmp_path, monkeypatch, hub, name, index, code):
    monkeypatch.chdir(tmp_path)
    namespace = _names(tmp_path)
    if "outputs/translation" in code:  # the main job's output folder, as a tiny stand-in
        folder = tmp_path / "outputs" / "translation"
        namespace["model"].save_pretrained(folder)
        namespace["tokenizer"].save_pretrained(folder)
    exec(compile(code, f"{name} block {index}", "exec"), namespace)  # noqa: S102
    if "push_to_hub()" in code:
        assert hub["uploads"], "push_to_hub uploaded nothing"
