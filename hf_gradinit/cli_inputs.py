"""What ``hf-gradinit init`` reads: the JSON-lines data, as features for the model, and the
model folder's model and tokenizer. Every problem is a :class:`CliError` naming the file,
line or example (exit status 2)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cli import InitArguments

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class CliError(Exception):
    """A problem with the command line or the input files (exit status 2)."""


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def read_jsonl(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (gzip if it ends in .gz); errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise CliError(f"--train_file {path} does not exist.")
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CliError(f"{path}, line {number}: not valid JSON ({err.msg}).") from None
            if not isinstance(record, dict):
                raise CliError(f"{path}, line {number}: expected a JSON object per line.")
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise CliError(f"{path} holds no examples.")
    return records


def seq2seq_features(records: list[dict], tokenizer: Any, a: InitArguments) -> list[dict]:
    if not a.source_lang or not a.target_lang:
        raise CliError("Translation data needs --source_lang and --target_lang.")
    sources, targets = [], []
    for i, record in enumerate(records, 1):
        pair = record.get("translation")
        if not isinstance(pair, dict) or a.source_lang not in pair or a.target_lang not in pair:
            keys = sorted(pair) if isinstance(pair, dict) else None
            raise CliError(
                f"Example {i}: expected {{'translation': {{{a.source_lang!r}: ..., "
                f"{a.target_lang!r}: ...}}}}, got translation keys {keys}."
            )
        sources.append(a.source_prefix + str(pair[a.source_lang]))
        targets.append(str(pair[a.target_lang]))
    encoded = tokenizer(sources, max_length=a.max_source_length, truncation=True)
    labels = tokenizer(text_target=targets, max_length=a.max_target_length, truncation=True)[
        "input_ids"
    ]
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": lab}
        for ids, mask, lab in zip(encoded["input_ids"], encoded["attention_mask"], labels)
    ]


def classification_features(
    records: list[dict], tokenizer: Any, config: Any, a: InitArguments
) -> list[dict]:
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    num_labels = getattr(config, "num_labels", None)
    texts, labels = [], []
    for i, record in enumerate(records, 1):
        if a.text_column not in record or a.label_column not in record:
            raise CliError(
                f"Example {i}: expected fields {a.text_column!r} and {a.label_column!r}, got "
                f"{sorted(record)}."
            )
        label = record[a.label_column]
        if isinstance(label, str) and label in label2id:
            label = label2id[label]
        if isinstance(label, bool) or not isinstance(label, int):
            raise CliError(
                f"Example {i}: label {label!r} is neither an integer nor a name in the "
                f"config's label2id {sorted(label2id)}."
            )
        if num_labels is not None and not 0 <= label < num_labels:
            raise CliError(f"Example {i}: label {label} is outside 0..{num_labels - 1}.")
        texts.append(str(record[a.text_column]))
        labels.append(label)
    encoded = tokenizer(texts, max_length=a.max_source_length, truncation=True)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": lab}
        for ids, mask, lab in zip(encoded["input_ids"], encoded["attention_mask"], labels)
    ]


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def load_model(path: str, task: str, seed: int) -> Any:
    """The model of ``path``: its weights if the folder has them, else built from config."""
    import transformers
    from transformers import AutoConfig, set_seed

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise CliError(f"--model_path {path} is not a folder with a config.json.")
    config = AutoConfig.from_pretrained(folder)
    cls = None
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            break
    if cls is None:
        auto = (
            "AutoModelForSeq2SeqLM" if task == "seq2seq" else "AutoModelForSequenceClassification"
        )
        cls = getattr(transformers, auto)
    has_weights = any((folder / name).is_file() for name in _WEIGHT_FILES)
    set_seed(seed)
    try:
        if has_weights:
            return cls.from_pretrained(folder)
        return cls.from_config(config) if cls.__name__.startswith("Auto") else cls(config)
    except ValueError as err:
        raise CliError(f"Cannot build a {task} model from {path}: {err}") from err


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise CliError(
            f"No usable tokenizer in {path} ({err}). Save one there with "
            "tokenizer.save_pretrained(folder)."
        ) from None
