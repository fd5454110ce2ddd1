#!/usr/bin/env python
"""Train a Post-LN Transformer translation model from scratch, without learning-rate warmup.

A joint BPE tokenizer trained on the data, a Marian (or BART, FSMT, mBART) model built from a
config, GradInit and training with ``hf_gradinit.GradInitTrainer``, sacreBLEU on the validation
and test sets. Without data options: the German-English corpus shipped in ``data/``.

    python examples/translation/run.py
    accelerate launch examples/translation/run.py --output_dir runs/deen
    python examples/translation/run.py examples/translation/presets/iwslt14_gpu.json
"""

from __future__ import annotations

import os

# OpenMP threads busy-wait by default, which makes training several times slower on a CPU that
# runs other work too. Set OMP_WAIT_POLICY yourself to override (before torch is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import dataclasses
import functools
import json
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import yaml
from sacrebleu.metrics import BLEU
from torch.utils.data import SequentialSampler
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    SchedulerType,
    set_seed,
)

from hf_gradinit import GradInitTrainer, GradInitTrainingArguments
from hf_gradinit.cli import argument_parser

logger = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent / "data"
MODEL_TYPES = ("marian", "bart", "fsmt", "mbart")
DATA_EXTENSIONS = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
SPECIAL_TOKENS = dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>")

# fmt: off
# The model trained from scratch, before --config_overrides: 3+3 Post-LN layers, d_model 128.
MODEL_DEFAULTS: dict[str, Any] = dict(
    d_model=128, encoder_layers=3, decoder_layers=3, encoder_ffn_dim=512, decoder_ffn_dim=512,
    encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=256,
    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    activation_function="relu", scale_embedding=True,
)
TRAINING_DEFAULTS: dict[str, Any] = dict(  # TrainingArguments' in this script: minutes on CPU
    output_dir="outputs/translation", do_train=True, do_eval=True, do_predict=True, seed=42,
    # Adam (0.9, 0.98) at a constant learning rate, no warmup, no gradient clipping.
    learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0, adam_beta1=0.9,
    adam_beta2=0.98, weight_decay=0.0, max_grad_norm=0.0, max_steps=1000,
    # Random batches: transformers' group_by_length (the longest first in every 50 batches)
    # stalled this model (examples/translation/README.md).
    train_sampling_strategy="random", per_device_train_batch_size=32,
    gradinit_iterations=200, gradinit_logging_steps=25, per_device_eval_batch_size=64,
    predict_with_generate=True, generation_max_length=64, generation_num_beams=1,
    logging_steps=50, logging_first_step=True, save_strategy="no", report_to="none",
)
CARD_RESULTS = dict(  # the scores on the model card, by their name in all_results.json
    eval_bleu="validation BLEU", test_bleu="test BLEU", eval_bleu_signature="BLEU signature",
    eval_loss="validation loss", test_loss="test loss",
)
# fmt: on


class UsageError(ValueError):
    """A problem with the arguments or data that the user has to fix (no traceback)."""


@dataclass
class ModelArguments:
    """Which model to build from scratch (random weights) and which tokenizer to use."""

    model_type: str = field(default="marian", metadata={"help": "marian, bart, fsmt or mbart."})
    config_name: str | None = field(default=None, metadata={"help": "A local config.json."})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config settings to change, e.g. 'd_model=256,encoder_layers=6'."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "A local tokenizer."})
    vocab_size: int = field(default=4000, metadata={"help": "Size of the trained vocabulary."})
    cache_dir: str | None = field(default=None, metadata={"help": "The `datasets` cache."})
    cpu_threads: int = field(
        default=0,
        metadata={
            "help": "PyTorch threads of a one-process CPU run (0: every core this process may "
            "use; `accelerate launch` would give it one)."
        },
    )

    def __post_init__(self) -> None:
        if self.config_name is None and self.model_type not in MODEL_TYPES:
            raise UsageError(
                f"Unknown --model_type {self.model_type!r}. Choose one of "
                f"{', '.join(MODEL_TYPES)}, or give --config_name."
            )
        if self.vocab_size < 100:
            raise UsageError(f"--vocab_size {self.vocab_size} is too small; use at least 100.")


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on, and how to cut it."""

    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Its branch or commit."})
    train_file: str | None = field(
        default=None,
        metadata={"help": 'JSON lines, one {"translation": {"de": "...", "en": "..."}} a line.'},
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Without it, 5%% of train (at most 1000) is held out."}
    )
    test_file: str | None = field(default=None, metadata={"help": "Like --train_file."})
    source_lang: str = field(default="de", metadata={"help": "Source language key."})
    target_lang: str = field(default="en", metadata={"help": "Target language key."})
    max_source_length: int = field(default=64, metadata={"help": "Source tokens kept."})
    max_target_length: int = field(default=64, metadata={"help": "Target tokens kept."})
    max_train_samples: int | None = field(default=None, metadata={"help": "First N train pairs."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "First N dev pairs."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "First N test pairs."})
    bleu_tokenize: str | None = field(default=None, metadata={"help": "sacreBLEU's tokenize."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenize the data."})

    def __post_init__(self) -> None:
        files = (self.train_file, self.validation_file, self.test_file)
        if self.dataset_name is None and all(f is None for f in files):  # the shipped corpus
            self.train_file, self.validation_file, self.test_file = (
                str(DATA / f"{split}.jsonl.gz") for split in ("train", "validation", "test")
            )
        for split, path in self.data_files().items():
            if not Path(path).is_file():
                raise UsageError(f"The {split} file {path} does not exist.")
            if not path.lower().endswith(DATA_EXTENSIONS):
                raise UsageError(f"The {split} file {path} is not JSON lines {DATA_EXTENSIONS}.")
            if Path(path).stat().st_size == 0:
                raise UsageError(f"The {split} file {path} is empty.")
        if self.source_lang == self.target_lang:
            raise UsageError(f"--source_lang and --target_lang are both {self.source_lang!r}.")
        for name in ("max_source_length", "max_target_length"):
            if getattr(self, name) < 2:
                raise UsageError(f"--{name} must be at least 2, got {getattr(self, name)}.")
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
            if (getattr(self, name) or 1) < 1:
                raise UsageError(f"--{name} must be >= 1 (or unset), got {getattr(self, name)}.")

    def data_files(self) -> dict[str, str]:
        files = dict(train=self.train_file, validation=self.validation_file, test=self.test_file)
        return {split: path for split, path in files.items() if path is not None}


def parse_args(argv: list[str] | None = None) -> tuple[Any, ...]:
    """The command line, or a JSON/YAML file as the first argument (later flags override it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argument_parser((ModelArguments, DataTrainingArguments, GradInitTrainingArguments))
    defaults = dict(TRAINING_DEFAULTS)
    if argv and argv[0].lower().endswith((".json", ".yaml", ".yml")):
        path = Path(argv.pop(0))
        if not path.is_file():
            raise UsageError(f"Arguments file {path} does not exist.")
        load = json.loads if path.suffix.lower() == ".json" else yaml.safe_load
        values = load(path.read_text(encoding="utf-8"))
        known = {f.name for kind in parser.dataclass_types for f in dataclasses.fields(kind)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"Unknown arguments in {path}: {', '.join(unknown)}.")
        defaults.update(values)
    parser.set_defaults(**defaults)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    warmup = training_args.warmup_steps or getattr(training_args, "warmup_ratio", 0)
    if training_args.lr_scheduler_type == "constant" and warmup:
        # transformers' "constant" ignores warmup: warmup asked for means warmup, then constant.
        training_args.lr_scheduler_type = SchedulerType.CONSTANT_WITH_WARMUP
    return model_args, data_args, training_args


def as_translation(dataset: datasets.Dataset, origin: str, source: str, target: str):
    """The rows as {"translation": {source: ..., target: ...}}; flat {source, target} rows too."""
    columns = dataset.column_names
    if "translation" not in columns and {source, target} <= set(columns):
        rows = [{source: s, target: t} for s, t in zip(dataset[source], dataset[target])]
        dataset = datasets.Dataset.from_dict({"translation": rows})
    if "translation" not in dataset.column_names or len(dataset) == 0:
        raise UsageError(
            f"The data from {origin} has no translation pairs (columns {columns}). Each line must "
            f'look like {{"translation": {{"{source}": "...", "{target}": "..."}}}}.'
        )
    feature = dataset.features["translation"]
    languages = getattr(feature, "languages", None) or list(dataset[0]["translation"] or {})
    missing = " or ".join(repr(lang) for lang in (source, target) if lang not in languages)
    if missing:
        raise UsageError(
            f"The data from {origin} has no {missing} translations: its languages are "
            f"{sorted(languages)}. Set --source_lang/--target_lang."
        )
    return dataset


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A joint BPE tokenizer trained in memory, SentencePiece-style ("▁" marks word starts,
    so decoding gives detokenized text; digits split; </s> appended).
    Ids: <pad> 0, </s> 1, <unk> 2, <s> 3."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.decoder = decoders.Metaspace()
    specials = list(SPECIAL_TOKENS.values())
    trainer = BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=specials, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos = [("</s>", tokenizer.token_to_id("</s>"))]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A $B </s>", special_tokens=eos
    )
    max_length = MODEL_DEFAULTS["max_position_embeddings"]
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_length, **SPECIAL_TOKENS
    )


def build_config(
    model_args: ModelArguments, data_args: DataTrainingArguments, tokenizer: Any
) -> PretrainedConfig:
    """--config_name's config, or --model_type's with MODEL_DEFAULTS; then --config_overrides;
    the vocabulary size and special tokens from the tokenizer."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if model_args.config_name is not None:
        config = AutoConfig.from_pretrained(model_args.config_name)
        if not getattr(config, "is_encoder_decoder", False):
            raise UsageError(f"--config_name: a {config.model_type} is not an encoder-decoder.")
        if getattr(config, "decoder_start_token_id", None) is None:
            config.decoder_start_token_id = pad
    else:
        kwargs = dict(MODEL_DEFAULTS, bos_token_id=tokenizer.bos_token_id, forced_eos_token_id=eos)
        kwargs["decoder_start_token_id"] = pad if model_args.model_type == "marian" else eos
        if model_args.model_type == "fsmt":  # tie_word_embeddings: one matrix, as in Marian
            kwargs.update(langs=[data_args.source_lang, data_args.target_lang])
            kwargs.update(tie_word_embeddings=True)
        config = AutoConfig.for_model(model_args.model_type, **kwargs)
    if model_args.config_overrides:
        try:
            config.update_from_string(model_args.config_overrides)
        except (ValueError, TypeError) as err:
            raise UsageError(f"--config_overrides {model_args.config_overrides!r}: {err}") from None
    for key in ("vocab_size", "src_vocab_size", "tgt_vocab_size", "decoder_vocab_size"):
        if hasattr(config, key):
            setattr(config, key, len(tokenizer))
    config.pad_token_id, config.eos_token_id = pad, eos
    return config


def make_bleu(target_lang: str, tokenize: str | None) -> BLEU:
    """sacreBLEU for the target language, or a one-line UsageError if it cannot run here."""
    try:
        return BLEU(tokenize=tokenize, trg_lang=target_lang)
    except (KeyError, ImportError, RuntimeError, OSError) as err:
        extra = re.search(r"pip install (\S+)", str(err))
        fix = f'pip install "{extra.group(1)}"' if extra else " ".join(str(err).split())
        name = f"{tokenize!r} tokenizer" if tokenize else f"default tokenizer for {target_lang!r}"
        raise UsageError(
            f"sacreBLEU's {name} cannot run here ({type(err).__name__}: {fix}). "
            "Choose another with --bleu_tokenize, e.g. 13a or char."
        ) from None


class TranslationTrainer(GradInitTrainer):
    """Evaluates in dataset order: with "group_by_length", transformers would group evaluation
    batches by length too, and predictions would not line up with sources and references."""

    def _get_eval_sampler(self, eval_dataset):
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None


def main(
    argv: list[str] | None = None,
    *,
    make_config: Callable[..., PretrainedConfig] = build_config,
    make_trainer: Callable[..., GradInitTrainer] = TranslationTrainer,
) -> dict[str, Any]:
    """Run everything; returns the metrics of all_results.json. Another script may build
    the model's config (``make_config``) or the trainer (``make_trainer``) its own way."""
    model_args, data_args, training_args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator is found.*")
    log_format = "%(asctime)s - %(levelname)s - %(name)s - %(message)s"
    logging.basicConfig(format=log_format, datefmt="%H:%M:%S", handlers=[logging.StreamHandler()])
    for name in (__name__, "hf_gradinit"):
        logging.getLogger(name).setLevel(logging.INFO if training_args.should_log else logging.WARN)
    output_dir = Path(training_args.output_dir)
    if training_args.should_save:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "all_results.json").unlink(missing_ok=True)  # no stale results
    if training_args.device.type == "cpu" and training_args.world_size == 1:
        torch.set_num_threads(model_args.cpu_threads or len(os.sched_getaffinity(0)))
    set_seed(training_args.seed)
    src, tgt = data_args.source_lang, data_args.target_lang
    bleu = make_bleu(tgt, data_args.bleu_tokenize)  # before any work: it may need an extra

    # Data: JSON lines files, or a dataset on the Hub.
    cache_dir = model_args.cache_dir
    with training_args.main_process_first(desc="loading the data"):
        if data_args.dataset_name is not None:
            name, revision = data_args.dataset_name, data_args.dataset_revision
            raw = datasets.load_dataset(
                name, data_args.dataset_config_name, revision=revision, cache_dir=cache_dir
            )
            origin = {split: f"{name} [{split}]" for split in raw}
        else:
            raw, origin = datasets.DatasetDict(), data_args.data_files()
            for split, path in origin.items():
                try:
                    raw[split] = datasets.load_dataset(
                        "json", data_files={split: path}, split=split, cache_dir=cache_dir
                    )
                except Exception as err:  # noqa: BLE001 - pyarrow's errors do not name the file
                    raise UsageError(
                        f"Could not read the {split} file {path} as JSON lines "
                        f"({type(err).__name__}): one JSON object per line, please."
                    ) from None
    if "train" not in raw:
        raise UsageError("No training data: give --train_file, or a --dataset_name with 'train'.")
    if "validation" not in raw:
        held_out = min(1000, max(1, len(raw["train"]) // 20))
        split = raw["train"].train_test_split(test_size=held_out, seed=training_args.seed)
        raw["train"], raw["validation"] = split["train"], split["test"]
        origin["validation"] = f"{origin['train']} (held out)"
    limits = dict(train=data_args.max_train_samples, validation=data_args.max_eval_samples)
    limits["test"] = data_args.max_predict_samples
    raw = datasets.DatasetDict(
        {s: as_translation(raw[s], origin[s], src, tgt) for s in limits if s in raw}
    )
    for split, limit in limits.items():
        if split in raw and limit is not None:
            raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
    logger.info("Data: %s", ", ".join(f"{split} {len(d)} pairs" for split, d in raw.items()))

    def pairs(batch: dict[str, list]) -> tuple[list[str], list[str]]:
        rows = batch["translation"]
        for row in rows:
            if not all(isinstance(row, dict) and isinstance(row.get(k), str) for k in (src, tgt)):
                raise UsageError(f"A pair has no {src!r} or {tgt!r} text: {row!r}.")
        return [row[src] for row in rows], [row[tgt] for row in rows]

    # Tokenizer: a local one, or a joint BPE trained on both sides of the training data.
    tokenizer_name, checkpoint = model_args.tokenizer_name, training_args.resume_from_checkpoint
    if tokenizer_name is None and checkpoint and (Path(checkpoint) / "tokenizer.json").is_file():
        tokenizer_name = checkpoint
    if tokenizer_name is not None:
        if not Path(tokenizer_name).is_dir():
            raise UsageError(f"--tokenizer_name {tokenizer_name!r} is not a local folder.")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    else:
        with training_args.main_process_first(desc="training the tokenizer"):
            if training_args.local_process_index == 0:
                batches = (pairs(batch) for batch in raw["train"].iter(1000))
                texts = (text for sides in batches for side in sides for text in side)
                tokenizer = train_tokenizer(texts, model_args.vocab_size)
                tokenizer.save_pretrained(output_dir)
            else:  # the other processes load the main process's copy
                tokenizer = AutoTokenizer.from_pretrained(output_dir)
    if tokenizer.pad_token is None or tokenizer.eos_token is None:
        raise UsageError(f"The tokenizer {tokenizer_name} needs a pad and an eos token.")
    logger.info("Tokenizer: %d tokens", len(tokenizer))

    def preprocess(batch: dict[str, list]) -> dict[str, list]:
        sources, targets = pairs(batch)
        lengths = dict(max_length=data_args.max_target_length, truncation=True)
        inputs = tokenizer(sources, max_length=data_args.max_source_length, truncation=True)
        inputs["labels"] = tokenizer(text_target=targets, **lengths)["input_ids"]
        return inputs

    with training_args.main_process_first(desc="tokenizing the data"):
        tokenized = raw.map(
            preprocess,
            batched=True,
            remove_columns=["translation"],
            num_proc=data_args.preprocessing_num_workers,
            load_from_cache_file=not data_args.overwrite_cache,
            desc="Tokenizing",
        )
    references = {s: [pair[tgt] for pair in raw[s]["translation"]] for s in raw if s != "train"}

    # Model: random weights from a config.
    config = make_config(model_args, data_args, tokenizer)
    model = AutoModelForSeq2SeqLM.from_config(config)
    generation = model.generation_config
    generation.max_length = training_args.generation_max_length or data_args.max_target_length
    generation.num_beams = training_args.generation_num_beams or 1
    logger.info("Model: %s, %.1fM parameters", type(model).__name__, model.num_parameters() / 1e6)

    def decode(ids: np.ndarray) -> list[str]:
        ids = np.where(ids < 0, tokenizer.pad_token_id, ids)
        return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def compute_metrics(eval_preds, split: str = "validation") -> dict[str, float]:
        preds = eval_preds.predictions
        preds = preds[0] if isinstance(preds, tuple) else preds
        score = bleu.corpus_score(decode(preds), [references[split]])  # the raw target texts
        lengths = ((preds != tokenizer.pad_token_id) & (preds >= 0)).sum(1)
        return {"bleu": round(score.score, 4), "gen_len": round(float(lengths.mean()), 4)}

    multiple = 8 if training_args.fp16 or training_args.bf16 else None
    collator = DataCollatorForSeq2Seq(tokenizer, model, pad_to_multiple_of=multiple)
    trainer = make_trainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics if training_args.predict_with_generate else None,
    )

    # GradInit, then training; without training, GradInit only (the initialized model).
    results: dict[str, Any] = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        metrics = {**train_result.metrics, "train_samples": len(tokenized["train"])}
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        results.update(metrics)
    elif training_args.gradinit:
        trainer.run_gradinit()
    if (training_args.do_train or training_args.gradinit) and not training_args.push_to_hub:
        trainer.save_model()  # with --push_to_hub, the upload at the end saves it (one upload)
    if trainer.gradinit_result is not None:
        summary = trainer.gradinit_result.summary()
        metrics = {f"gradinit_{k}": v for k, v in summary.items() if v is not None}
        trainer.save_metrics("gradinit", metrics)
        results.update(metrics)

    # Translate the validation and test sets, score them, write the translations.
    todo = dict(eval=("validation", training_args.do_eval), test=("test", training_args.do_predict))
    for prefix, split in [(p, s) for p, (s, wanted) in todo.items() if wanted and s in tokenized]:
        if training_args.predict_with_generate:
            trainer.compute_metrics = functools.partial(compute_metrics, split=split)
        output = trainer.predict(tokenized[split], metric_key_prefix=prefix)
        metrics = {**output.metrics, f"{prefix}_samples": len(tokenized[split])}
        if training_args.predict_with_generate:
            metrics[f"{prefix}_bleu_signature"] = str(bleu.get_signature())
            if trainer.is_world_process_zero():
                lines = [text.replace("\n", " ") + "\n" for text in decode(output.predictions)]
                (output_dir / f"{split}_predictions.txt").write_text("".join(lines), "utf-8")
        trainer.log_metrics(prefix, metrics)
        trainer.save_metrics(prefix, metrics)
        trainer.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        results.update(metrics)

    shipped = data_args.train_file and Path(data_args.train_file) == DATA / "train.jsonl.gz"
    card = dict(
        language=[src, tgt],
        tags=["translation", "post-ln", *(["gradinit"] if training_args.gradinit else [])],
        tasks="translation",
        dataset=data_args.dataset_name
        or ("LibreOffice help German-English" if shipped else Path(data_args.train_file).name),
        dataset_tags=data_args.dataset_name,
        results={label: results[k] for k, label in CARD_RESULTS.items() if k in results} or None,
    )
    if training_args.should_save:
        trainer.save_state()
        trainer.create_model_card(**card)
    logger.info("BLEU: validation %s, test %s", results.get("eval_bleu"), results.get("test_bleu"))
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    return results


if __name__ == "__main__":
    try:
        main()
    except UsageError as err:
        raise SystemExit(f"run.py: error: {err}") from None
