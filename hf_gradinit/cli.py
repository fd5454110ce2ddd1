"""``hf-gradinit``: make a GradInit-initialized checkpoint without training it.

    hf-gradinit init --model_path ./tiny-marian --train_file train.jsonl \\
        --source_lang de --target_lang en --learning_rate 5e-4 --output_dir ./tiny-marian-gradinit

The model folder holds a ``config.json``, a tokenizer (``tokenizer.save_pretrained(folder)``)
and, optionally, weights (without them the model is built from the config with random
weights: the usual case). The data is JSON lines, either ``{"translation": {"de": ...,
"en": ...}}`` (seq2seq, with ``--source_lang/--target_lang``) or ``{"text": ..., "label":
...}`` (sequence classification). GradInit's settings are the ``--gradinit_*`` options,
shared with ``GradInitTrainingArguments``; ``--learning_rate`` and ``--optim`` are the ones
you will train with, since GradInit tunes the init for that optimizer's first step. The
result is saved with ``save_initialized_checkpoint`` (model, tokenizer, scales file, plot,
model card) and, with ``--push_to_hub``, uploaded (without ``--hub_model_id``, to a repo
named after the output folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arguments import GradInitArguments
from .cli_inputs import (
    CliError,
    classification_features,
    load_model,
    load_tokenizer,
    read_jsonl,
    seq2seq_features,
)
from .config import GradInitError
from .hub import PushError
from .version import __version__

DEFAULT_BATCH_SIZE = 24


@dataclass
class InitArguments:
    """What to initialize, on which data, and where the checkpoint goes."""

    model_path: str = field(
        metadata={
            "help": "Local folder with config.json and a tokenizer (saved there with "
            "tokenizer.save_pretrained(folder): the translation or text data is tokenized with "
            "it), and optionally weights: without them the model is built from the config."
        }
    )
    train_file: str = field(
        metadata={"help": "JSON-lines data (.jsonl or .jsonl.gz): translation or text/label."}
    )
    output_dir: str = field(metadata={"help": "Where to write the initialized checkpoint."})
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "The learning rate you will train with (eta = gradinit_eta_multiplier x "
            "learning_rate). Required unless --gradinit_eta is given."
        },
    )
    optim: str = field(
        default="adamw_torch",
        metadata={"help": "The optimizer you will train with (a TrainingArguments `optim`)."},
    )
    optim_args: str | None = field(
        default=None,
        metadata={
            "help": "The `optim_args` you will train with (e.g. 'momentum=0.9' for SGD: eta is "
            "then lr / (1 - momentum), the size of momentum's steady steps)."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of the random init and of GradInit."})
    source_lang: str | None = field(
        default=None, metadata={"help": "Source language key of `translation` records."}
    )
    target_lang: str | None = field(
        default=None, metadata={"help": "Target language key of `translation` records."}
    )
    source_prefix: str = field(
        default="", metadata={"help": "Text put before every source (e.g. for T5)."}
    )
    text_column: str = field(default="text", metadata={"help": "Text field of text/label data."})
    label_column: str = field(
        default="label", metadata={"help": "Label field (int or a name in config.label2id)."}
    )
    max_source_length: int = field(default=128, metadata={"help": "Truncate sources/texts."})
    max_target_length: int = field(default=128, metadata={"help": "Truncate targets."})
    max_examples: int | None = field(
        default=None, metadata={"help": "Read at most this many examples from the file."}
    )
    use_cpu: bool = field(default=False, metadata={"help": "Run on CPU even if a GPU is present."})
    push_to_hub: bool = field(
        default=False,
        metadata={
            "help": "Upload the checkpoint once it is saved in --output_dir (kept there if the "
            "push fails). Without --hub_model_id it goes to a repo named after --output_dir's "
            "last folder (./runs/marian-init -> marian-init) in the token's account."
        },
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Repository to push to, e.g. you/marian-gradinit-init."}
    )
    hub_token: str | None = field(default=None, metadata={"help": "Token with write access."})
    hub_private_repo: bool | None = field(
        default=None, metadata={"help": "Create the repository as private."}
    )
    license: str | None = field(default=None, metadata={"help": "License for the model card."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id for the card's metadata (if any)."}
    )


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help, as HfArgumentParser shows it, but none for
    required options or ``--no_X`` flags; the description as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or _negates(action):
            return action.help or ""
        return super()._get_help_string(action)


def _negates(action: argparse.Action) -> bool:
    return isinstance(action, argparse._StoreFalseAction) and (
        f"--no_{action.dest}" in action.option_strings
    )


# What --no_X does, for this package's flags; others get "Set X to False".
_NEGATED_HELP = {
    "gradinit": "Train without GradInit, exactly like the trainer without it.",
    "gradinit_fixed_embeddings": "Learn a scale for nn.Embedding weights too.",
}


def argument_parser(dataclass_types: Any, **kwargs: Any) -> Any:
    """An ``HfArgumentParser`` whose help shows every default and says what each ``--no_X``
    flag does: HfArgumentParser gives it ``--X``'s help, which says the opposite."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types, formatter_class=HelpFormatter, **kwargs)
    for action in parser._actions:
        if _negates(action):
            plain = f"Set {action.dest} to False"
            what = _NEGATED_HELP.get(action.dest)
            action.help = (
                f"{what} ({plain}.)" if what else f"{plain}: the opposite of --{action.dest}."
            )
    return parser


def _parsers() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-gradinit",
        description="GradInit (learned initialization) for Hugging Face Transformers models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    options = argument_parser((InitArguments, GradInitArguments), add_help=False)
    commands.add_parser(
        "init",
        parents=[options],
        help="run GradInit on a model folder and save (or push) the initialized checkpoint",
        description="Run GradInit on a model folder and save (or push) the initialized "
        "checkpoint, untrained." + _INIT_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    return parser


_INIT_DESCRIPTION = """
Model: a folder with config.json and a saved tokenizer (weights optional).
Data: JSON lines, {"translation": {SRC: ..., TGT: ...}} with --source_lang/--target_lang,
or {"text": ..., "label": ...}. Set --learning_rate (and --optim) to the training run's.
"""


def _to_dataclass(cls: type, namespace: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in vars(namespace).items() if k in names})


# --------------------------------------------------------------------------------------
# The init command
# --------------------------------------------------------------------------------------


def run_init(a: InitArguments, g: GradInitArguments) -> Path:
    """Load, run GradInit, apply, save (and push); returns the output folder."""
    from accelerate import PartialState
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    from .api import apply_gradinit
    from .hub import check_push_target, default_repo_id
    from .record import already_initialized_message, is_initialized

    if a.learning_rate is None and g.gradinit_eta is None:
        raise CliError("Give --learning_rate (the one you will train with) or --gradinit_eta.")
    if not (Path(a.model_path) / "config.json").is_file():
        raise CliError(f"--model_path {a.model_path} is not a folder with a config.json.")
    if a.push_to_hub:  # before any work, not after GradInit
        try:
            check_push_target(a.hub_model_id or default_repo_id(a.output_dir))
        except ValueError as err:
            hint = (
                ""
                if a.hub_model_id
                else " The repo id defaults to --output_dir's name: give --hub_model_id "
                "(e.g. you/marian-gradinit-init)."
            )
            raise CliError(f"--push_to_hub: {err}{hint}") from None
    records = read_jsonl(a.train_file, a.max_examples)
    task = "seq2seq" if "translation" in records[0] else "classification"
    if task == "classification" and a.text_column not in records[0]:
        raise CliError(
            f"Cannot tell the data format from the first record (fields {sorted(records[0])}): "
            f"expected 'translation' or {a.text_column!r}/{a.label_column!r}."
        )
    tokenizer = load_tokenizer(a.model_path)
    model = load_model(a.model_path, task, a.seed)
    if is_initialized(model):  # decided from the weights, as everywhere (hf_gradinit.record)
        raise CliError(already_initialized_message(f"The model in --model_path {a.model_path}"))
    if task == "seq2seq":
        if not getattr(model.config, "is_encoder_decoder", False):
            raise CliError(
                f"Translation data needs an encoder-decoder model; {type(model).__name__} is not."
            )
        features = seq2seq_features(records, tokenizer, a)
        collator = DataCollatorForSeq2Seq(tokenizer, model=model)
        language = [a.source_lang, a.target_lang]
    else:
        features = classification_features(records, tokenizer, model.config, a)
        collator = DataCollatorWithPadding(tokenizer)
        language = None
    config = g.to_gradinit_config(
        learning_rate=a.learning_rate, optim=a.optim, seed=a.seed, optim_args=a.optim_args
    )
    state = PartialState(cpu=a.use_cpu)
    result = apply_gradinit(
        model,
        features,
        config,
        data_collator=collator,
        batch_size=g.gradinit_batch_size or DEFAULT_BATCH_SIZE,
        accelerator=state,
    )
    model.to("cpu")
    out = Path(a.output_dir)
    try:  # every process learned the same scales; the main one writes (and pushes) them
        if state.is_main_process:
            _report(result)
            _save(model, result, tokenizer, a, task, language, len(features))
    finally:
        state.wait_for_everyone()
    return out


def _report(result: Any) -> None:
    summary = result.summary()
    print(
        f"GradInit: {summary['num_scales']} scales in [{summary['scale_min']:.4g}, "
        f"{summary['scale_max']:.4g}] after {summary['iterations']} iterations "
        f"({summary['runtime_s']:.1f}s)."
    )
    if not result.kept:
        print(f"GradInit kept the original init: {summary['decision_reason']}.")
    for note in result.tied_notes():
        print("GradInit: " + note.replace("`", ""))


def _save(model, result, tokenizer, a: InitArguments, task: str, language, examples: int) -> None:
    from .hub import save_initialized_checkpoint

    out = save_initialized_checkpoint(
        model,
        result,
        a.output_dir,
        tokenizer,
        push_to_hub=a.push_to_hub,
        hub_model_id=a.hub_model_id,
        hub_token=a.hub_token,
        private=a.hub_private_repo,
        language=language,
        license=a.license,
        datasets=a.dataset_name,
        pipeline_tag="translation" if task == "seq2seq" else "text-classification",
        optim=a.optim,
        learning_rate=a.learning_rate,
        data_description=f"GradInit batches from `{Path(a.train_file).name}` "
        f"({examples} {task} examples)",
    )
    print(
        f"Saved the initialized checkpoint to {out}" + (" and pushed it." if a.push_to_hub else ".")
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-gradinit``; returns the exit status (0 ok, 1 GradInit failed,
    2 bad command line or input, 3 saved locally but the push failed)."""
    parser = _parsers()
    namespace = parser.parse_args(argv)
    if namespace.command is None:
        parser.print_help()
        return 2
    try:
        init_args = _to_dataclass(InitArguments, namespace)
        gradinit_args = _to_dataclass(GradInitArguments, namespace)
        run_init(init_args, gradinit_args)
    except (CliError, ValueError) as err:
        print(f"hf-gradinit: error: {err}", file=sys.stderr)
        return 2
    except GradInitError as err:
        print(f"hf-gradinit: GradInit failed: {err}", file=sys.stderr)
        return 1
    except PushError as err:
        print(f"hf-gradinit: push failed: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
