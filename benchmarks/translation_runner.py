"""The translation example as the no-warmup study runs it.

``benchmarks/no_warmup_study.py`` runs this script once per record. It is
``examples/translation/run.py`` (imported, not copied: its data, tokenizer, model, GradInit,
training and BLEU) plus what the study's committed records were made with, when those were
part of run.py, so that new records train and evaluate exactly as the committed ones:

* model flags on top of run.py's model (the ``small`` size, or run.py's
  ``--config_overrides``): ``--model_size`` (``MODEL_SIZES``), ``--d_model``, ``--encoder_layers``, ``--decoder_layers``, ``--ffn_dim``,
  ``--attention_heads``, ``--share_all_embeddings`` (Marian: one matrix for the encoder input,
  the decoder input and the output; False: fairseq's layout, the encoder's own) and
  ``--init_std``;
* ``--torch_optimizer radam``: ``torch.optim.RAdam`` (with ``--no_gradinit``);
* training batches from :class:`LengthBucketSampler` (``--train_sampling_strategy
  group_by_length``, the default here);
* evaluation sorted by source length, longest first (predictions come back in file order).

Every other flag is run.py's::

    python benchmarks/translation_runner.py --encoder_layers 6 --decoder_layers 6 \\
        --share_all_embeddings False --no_gradinit --max_steps 700 --output_dir /tmp/run
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as run.py: before torch is imported

import contextlib
import fcntl
import functools
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import Sampler
from transformers import EvalPrediction, HfArgumentParser, PretrainedConfig, TrainerCallback
from transformers.trainer_utils import PredictionOutput

RUN_PY = Path(__file__).resolve().parent.parent / "examples" / "translation" / "run.py"


def load_example(name: str = "translation_example") -> ModuleType:
    """``examples/translation/run.py`` as a module (it is a script, not a package module)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


run = load_example()
UsageError = run.UsageError

# Encoder-decoder sizes: d_model, layers (each side), FFN width, attention heads. "small" is
# run.py's model; "iwslt" is fairseq's transformer_iwslt_de_en, the paper's IWSLT'14 model.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=32, layers=1, ffn_dim=64, attention_heads=2),
    "small": dict(d_model=128, layers=3, ffn_dim=512, attention_heads=4),
    "base": dict(d_model=256, layers=6, ffn_dim=1024, attention_heads=4),
    "iwslt": dict(d_model=512, layers=6, ffn_dim=1024, attention_heads=4),
}
SIZE_FLAGS = ("d_model", "encoder_layers", "decoder_layers", "ffn_dim", "attention_heads")


@dataclass
class StudyArguments:
    """The study's flags on top of run.py's."""

    model_size: str | None = field(
        default=None, metadata={"help": f"One of {', '.join(MODEL_SIZES)} (default: run.py's)."}
    )
    d_model: int | None = field(default=None, metadata={"help": "Overrides the size's."})
    encoder_layers: int | None = field(default=None, metadata={"help": "Overrides the size's."})
    decoder_layers: int | None = field(default=None, metadata={"help": "Overrides the size's."})
    ffn_dim: int | None = field(default=None, metadata={"help": "FFN width, both sides."})
    attention_heads: int | None = field(default=None, metadata={"help": "Heads, both sides."})
    share_all_embeddings: bool = field(
        default=True,
        metadata={"help": "Marian: one embedding matrix for all three (False: fairseq's layout)."},
    )
    init_std: float | None = field(default=None, metadata={"help": "Std of the random init."})
    torch_optimizer: str | None = field(
        default=None, metadata={"help": "'radam': torch.optim.RAdam instead of --optim."}
    )
    record_file: str | None = field(
        default=None,
        metadata={"help": "A JSON-lines file: one line per evaluation, as it happens (appended)."},
    )
    record_name: str | None = field(default=None, metadata={"help": "The run's name there."})

    def __post_init__(self) -> None:
        if self.model_size is not None and self.model_size not in MODEL_SIZES:
            raise UsageError(
                f"Unknown --model_size {self.model_size!r}: one of {', '.join(MODEL_SIZES)}."
            )
        if self.torch_optimizer not in (None, "radam"):
            raise UsageError(f"Unknown --torch_optimizer {self.torch_optimizer!r}: use 'radam'.")

    def config_values(self, model_type: str | None) -> dict[str, Any]:
        """The config attributes these flags set: for a model built from ``model_type``, the
        size (if given) and the size flags on top; on a --config_name (``model_type`` None),
        the size flags only."""
        size: dict[str, Any] = {}
        if model_type is not None and self.model_size is not None:
            size = dict(MODEL_SIZES[self.model_size])
            size["encoder_layers"] = size["decoder_layers"] = size.pop("layers")
        size.update({k: getattr(self, k) for k in SIZE_FLAGS if getattr(self, k) is not None})
        values: dict[str, Any] = {}
        for key, value in size.items():
            if key == "ffn_dim":
                values["encoder_ffn_dim"] = values["decoder_ffn_dim"] = value
            elif key == "attention_heads":
                values["encoder_attention_heads"] = values["decoder_attention_heads"] = value
            else:
                values[key] = value
        if model_type == "marian":
            values["share_encoder_decoder_embeddings"] = self.share_all_embeddings
        if model_type is not None and self.init_std is not None:
            values["init_std"] = self.init_std
        return values


def study_config(
    model_args: Any, data_args: Any, tokenizer: Any, study: StudyArguments
) -> PretrainedConfig:
    """run.py's config with the study's flags applied."""
    config = run.build_config(model_args, data_args, tokenizer)
    model_type = model_args.model_type if model_args.config_name is None else None
    for key, value in study.config_values(model_type).items():
        if not hasattr(config, key):
            raise UsageError(f"A {config.model_type} config has no {key!r}: set it in the file.")
        setattr(config, key, value)
    return config


class LengthBucketSampler(Sampler[int]):
    """Batches of similar lengths (little padding) in random order, as fairseq batches.

    Each epoch: shuffle, cut into chunks of ``bucket_batches`` batches, sort each chunk by
    length, cut it into batches, shuffle the batches (a short last batch goes last, so every
    other batch stays whole). transformers' ``LengthGroupedSampler`` instead runs through each
    chunk from its longest to its shortest batch. Randomness comes from torch's global
    generator, seeded by the trainer (the same on every process, as sharding needs).
    """

    def __init__(self, lengths: list[int], batch_size: int, bucket_batches: int = 50):
        self.lengths = lengths
        self.batch_size = batch_size
        self.bucket_batches = bucket_batches

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        n, size = len(self.lengths), self.batch_size
        permutation = torch.randperm(n).tolist()
        chunk = size * self.bucket_batches
        batches = []
        for start in range(0, n, chunk):
            bucket = sorted(permutation[start : start + chunk], key=self.lengths.__getitem__)
            batches += [bucket[i : i + size] for i in range(0, len(bucket), size)]
        short = [b for b in batches if len(b) < size]
        whole = [b for b in batches if len(b) == size]
        for k in torch.randperm(len(whole)).tolist():
            yield from whole[k]
        for batch in short:
            yield from batch


def _reorder(values: Any, order: np.ndarray) -> Any:
    """Rows of ``values`` (an array, a tuple of arrays or None) put back: row k to order[k]."""
    if values is None:
        return None
    if isinstance(values, tuple):
        return tuple(_reorder(v, order) for v in values)
    out = np.empty_like(values)
    out[order] = values
    return out


class EvalRecorder(TrainerCallback):
    """Appends one JSON line per evaluation to ``path`` as it happens (a study cut short
    keeps what it measured): the step, the metrics, the seconds since training began and the
    seconds spent evaluating so far (evaluations inside GradInit's probe branches are not
    seen: callbacks are muted there)."""

    def __init__(self, path: str, name: str) -> None:
        self.path, self.name = path, name
        self.start = time.perf_counter()
        self.eval_s = 0.0

    def write(self, **values: Any) -> None:
        line = json.dumps({"name": self.name, **values}) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # runs side by side append to one file
            f.write(line)

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.eval_s += (metrics or {}).get("eval_runtime", 0.0)
        elapsed = time.perf_counter() - self.start
        self.write(step=state.global_step, elapsed_s=elapsed, eval_s=self.eval_s, **metrics)


class StudyTrainer(run.TranslationTrainer):
    """run.py's trainer with the study's training batches, evaluation order and optimizer."""

    def __init__(
        self,
        *args: Any,
        torch_optimizer: str | None = None,
        extra_callbacks: list[TrainerCallback] = (),
        **kwargs: Any,
    ) -> None:
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), *extra_callbacks]
        if torch_optimizer == "radam":
            a = kwargs["args"]
            if a.gradinit:
                raise UsageError(
                    "--torch_optimizer radam with GradInit: GradInit would simulate an Adam "
                    "first step that RAdam does not take. Add --no_gradinit."
                )
            # The Trainer sets the weight decay per parameter group (none on biases, norms).
            betas = (a.adam_beta1, a.adam_beta2)
            rate = dict(lr=a.learning_rate, betas=betas, eps=a.adam_epsilon)
            kwargs["optimizer_cls_and_kwargs"] = (torch.optim.RAdam, rate)
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or not isinstance(
            dataset, datasets.Dataset
        ):
            return super()._get_train_sampler(train_dataset)
        sources, targets = dataset["input_ids"], dataset["labels"]
        lengths = [max(len(s), len(t)) for s, t in zip(sources, targets)]
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return LengthBucketSampler(lengths, batch)

    @contextlib.contextmanager
    def _longest_first(self, dataset: datasets.Dataset) -> Iterator[tuple[Any, Callable]]:
        """The dataset sorted by source length, longest first (fast batched generation);
        ``compute_metrics`` meanwhile sees the rows in dataset order again."""
        lengths = np.array([len(ids) for ids in dataset["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        compute = self.compute_metrics
        if compute is not None:
            self.compute_metrics = lambda p: compute(
                EvalPrediction(_reorder(p.predictions, order), _reorder(p.label_ids, order))
            )
        try:
            yield dataset.select(order.tolist()), functools.partial(_reorder, order=order)
        finally:
            self.compute_metrics = compute

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **gen_kwargs):
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if not isinstance(dataset, datasets.Dataset):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **gen_kwargs)
        with self._longest_first(dataset) as (ordered, _):
            return super().evaluate(ordered, ignore_keys, metric_key_prefix, **gen_kwargs)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix="test", **gen_kwargs):
        if not isinstance(test_dataset, datasets.Dataset):
            return super().predict(test_dataset, ignore_keys, metric_key_prefix, **gen_kwargs)
        with self._longest_first(test_dataset) as (ordered, back):
            out = super().predict(ordered, ignore_keys, metric_key_prefix, **gen_kwargs)
        return PredictionOutput(back(out.predictions), back(out.label_ids), out.metrics)


def run_argv(rest: list[str]) -> list[str]:
    """run.py's arguments: ``rest`` (an arguments file first), with the records' batches
    (``group_by_length``, here :class:`LengthBucketSampler`) unless it names a strategy, and
    one CPU thread (the study runs side by side) unless it names a number."""
    files = rest[:1] if rest and rest[0].lower().endswith((".json", ".yaml", ".yml")) else []
    threads = [] if "--cpu_threads" in rest else ["--cpu_threads", "1"]  # runs side by side
    return [*files, "--train_sampling_strategy", "group_by_length", *threads, *rest[len(files) :]]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """run.py's ``main`` with the study's flags; returns its metrics."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(StudyArguments, add_help=False, allow_abbrev=False)
    if "-h" in argv or "--help" in argv:
        parser.print_help()
    study, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    recorder = None
    if study.record_file is not None:
        recorder = EvalRecorder(study.record_file, study.record_name or "run")
    metrics = run.main(
        run_argv(rest),
        make_config=functools.partial(study_config, study=study),
        make_trainer=functools.partial(
            StudyTrainer,
            torch_optimizer=study.torch_optimizer,
            extra_callbacks=[recorder] if recorder is not None else [],
        ),
    )
    if recorder is not None:
        recorder.write(final=True, elapsed_s=time.perf_counter() - recorder.start, **metrics)
    return metrics


if __name__ == "__main__":
    try:
        main()
    except UsageError as err:
        raise SystemExit(f"translation_runner.py: error: {err}") from None
