"""Does GradInit harm a Post-LN Transformer whose embedding is shared with its output?

A toy task that trains in seconds per run on one CPU thread, with the real
``GradInitTrainer`` / ``GradInitTrainingArguments``:

* data: ``--examples`` sequences of ``--length`` random tokens (ids 3..63 of a 64-token
  vocabulary) and an end-of-sequence token; the target is the source reversed
  (``reverse``) or copied (``copy``);
* models, built from config (Post-LN, relu, scale_embedding, dropout 0, HF's default init):
  ``marian-shared`` (HF Marian's default: ONE embedding for the encoder input, the decoder
  input and the output projection), ``marian-reference`` (the reference's fairseq layout:
  the encoder embedding separate, the decoder's input and output tied:
  ``share_encoder_decoder_embeddings=False, tie_word_embeddings=True``) and ``bart`` (its
  one shared embedding, learned positions, a LayerNorm on the embeddings);
* training: Adam (0.9, 0.98), constant lr, no warmup, no gradient clipping, batch 32.

A case is a model, a task and a learning rate; a method is GradInit on or off plus any
``gradinit_*`` settings. Every run records the final training loss (mean of the last 25
steps), the loss at steps 50/100/200 (mean of the 5 steps up to it), the number of
distinct greedy outputs for 16 held-out inputs (1 = the model says the same thing to
everyone) and its run time. The committed JSON under ``benchmarks/results/`` is the cache:
a run already there is not rerun, so the study resumes after an interruption (delete an
entry to redo it). A markdown table is written next to it.

    python benchmarks/toy_study.py                           # the default grid
    python benchmarks/toy_study.py --cases marian-shared-reverse --methods none default
    python benchmarks/toy_study.py --seeds 0 1 2 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
VOCAB, PAD, EOS, BOS, FIRST_TOKEN = 64, 0, 1, 2, 3

# Model, task and learning rate of each case (the toys).
CASES: dict[str, dict] = {
    "marian-shared-reverse": dict(model="marian-shared", task="reverse", lr=1e-3),
    "marian-reference-reverse": dict(model="marian-reference", task="reverse", lr=1e-3),
    "bart-copy": dict(model="bart", task="copy", lr=5e-4),
    "marian-shared-reverse-lr2e-3": dict(model="marian-shared", task="reverse", lr=2e-3),
    "marian-reference-reverse-lr2e-3": dict(model="marian-reference", task="reverse", lr=2e-3),
    "marian-shared-reverse-lr5e-4": dict(model="marian-shared", task="reverse", lr=5e-4),
    "marian-reference-reverse-lr5e-4": dict(model="marian-reference", task="reverse", lr=5e-4),
    # for the SGD methods (momentum 0.9): an SGD learning rate
    "marian-reference-reverse-sgd0.1": dict(model="marian-reference", task="reverse", lr=0.1),
}
# GradInitTrainingArguments of each method on top of the trainer's defaults. Every GradInit
# method names its eta multiplier, so a record keeps meaning what it measured when the
# trainer's default changes (2.0 until the lr 2e-3 toys, 1.0 now).
METHODS: dict[str, dict] = {
    "none": dict(gradinit=False),
    # GradInit before issue #13: every tensor scaled, a tied tensor with one scale
    "all_scaled": dict(gradinit=True, gradinit_eta_multiplier=2.0, gradinit_fixed_embeddings=False),
    # the tied input/output tensor unscaled, the rest learned around it
    "fixed": dict(
        gradinit=True,
        gradinit_eta_multiplier=2.0,
        gradinit_fixed_embeddings=False,
        gradinit_tied_embeddings="fixed",
    ),
    # all scaled, then a 50-step trial of the real optimizer decides (guard)
    "guard50": dict(
        gradinit=True,
        gradinit_eta_multiplier=2.0,
        gradinit_fixed_embeddings=False,
        gradinit_trial_steps=50,
    ),
    # no embedding table scaled (token, tied or not, and learned positions), eta 2x lr: the
    # trainer's default until the lr 2e-3 toys stalled with it
    "fixed_emb": dict(gradinit=True, gradinit_eta_multiplier=2.0, gradinit_fixed_embeddings=True),
    # candidate safer defaults, after the defaults stalled the lr 2e-3 toys: a higher floor
    # for the scales, a slower scale optimizer, the gradient norm bounded at the init's
    "min_scale0.1": dict(gradinit=True, gradinit_eta_multiplier=2.0, gradinit_min_scale=0.1),
    "scale_lr2.5e-3": dict(gradinit=True, gradinit_eta_multiplier=2.0, gradinit_scale_lr=2.5e-3),
    "bound_init": dict(
        gradinit=True, gradinit_eta_multiplier=2.0, gradinit_gamma=1.0, gradinit_gamma_unit="init"
    ),
    # eta = lr, the step training takes (the CIFAR code): the trainer's default now
    "eta1x": dict(gradinit=True, gradinit_eta_multiplier=1.0),
    # candidates after eta = lr still stalled the all-shared toy at lr 2e-3 (3 of 3 seeds):
    # less travel for the scales, a bound at the init's gradient norm, a smaller eta
    "eta1x_scale_lr2.5e-3": dict(
        gradinit=True, gradinit_eta_multiplier=1.0, gradinit_scale_lr=2.5e-3
    ),
    "eta1x_scale_lr5e-3": dict(gradinit=True, gradinit_eta_multiplier=1.0, gradinit_scale_lr=5e-3),
    "eta1x_it50": dict(gradinit=True, gradinit_eta_multiplier=1.0, gradinit_iterations=50),
    "eta1x_bound_init": dict(
        gradinit=True, gradinit_eta_multiplier=1.0, gradinit_gamma=1.0, gradinit_gamma_unit="init"
    ),
    "eta0.5x": dict(gradinit=True, gradinit_eta_multiplier=0.5),
    # the reference's Post-LN Transformer recipe (GradInitConfig.reference)
    "recipe": dict(gradinit=True, gradinit_recipe="reference"),
    # the defaults with a 4-step lookahead of the real optimizer
    "lookahead4": dict(gradinit=True, gradinit_eta_multiplier=2.0, gradinit_lookahead_steps=4),
    # the defaults now (eta = lr, scale lr 2.5e-3) with a 4-step lookahead
    "lookahead4_now": dict(
        gradinit=True,
        gradinit_eta_multiplier=1.0,
        gradinit_scale_lr=2.5e-3,
        gradinit_lookahead_steps=4,
    ),
    # what users pick instead: a Pre-LN model (mBART's layout), RAdam; both without GradInit.
    # Keys starting with "_" are this script's, not GradInitTrainingArguments'.
    "preln": dict(gradinit=False, _model="mbart"),
    "radam": dict(gradinit=False, _optimizer="radam"),
    # SGD with momentum 0.9 (for the sgd cases), without and with GradInit (its sgd step)
    "sgd": dict(gradinit=False, optim="sgd", optim_args="momentum=0.9"),
    "sgd_gradinit": dict(
        gradinit=True, gradinit_eta_multiplier=2.0, optim="sgd", optim_args="momentum=0.9"
    ),
}
# Methods whose settings the package no longer has (records kept; not runnable).
REMOVED = {"fixed": "gradinit_tied_embeddings", "guard50": "gradinit_trial_steps"}
# The GradInit methods' records were made before the probe; run afresh, a method gets the
# probe (the trainer's default) unless it names gradinit_probe_steps.

SIZE = dict(d_model=64, layers=6, ffn_dim=256, heads=4, steps=300, examples=2000, length=10)
BATCH = 32
FINAL_WINDOW = 25
CHECKPOINTS = (50, 100, 200)
N_OUTPUTS = 16


# --------------------------------------------------------------------------------------
# The task and the models
# --------------------------------------------------------------------------------------


def make_examples(task: str, n: int, length: int, seed: int, eos: bool = False) -> list[dict]:
    """``n`` examples of ``length`` random tokens (+ EOS); labels reversed or copied (+ EOS)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    eos = torch.tensor([EOS] if eos else [], dtype=torch.long)
    out = []
    for _ in range(n):
        src = torch.randint(FIRST_TOKEN, VOCAB, (length,), generator=g)
        tgt = torch.flip(src, [0]) if task == "reverse" else src.clone()
        out.append(
            {
                "input_ids": torch.cat([src, eos]),
                "attention_mask": torch.ones(length + len(eos), dtype=torch.long),
                "labels": torch.cat([tgt, eos]),
            }
        )
    return out


def make_model(name: str, d_model: int, layers: int, ffn_dim: int, heads: int):
    """A Post-LN encoder-decoder from config, in one of the embedding layouts."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    common = dict(
        vocab_size=VOCAB,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        activation_function="relu",
        scale_embedding=True,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        max_position_embeddings=64,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=BOS,
        forced_eos_token_id=EOS,
    )
    if name in ("marian-shared", "marian-reference"):
        config = AutoConfig.for_model(
            "marian",
            decoder_start_token_id=PAD,
            share_encoder_decoder_embeddings=name == "marian-shared",
            tie_word_embeddings=True,
            **common,
        )
    elif name == "mbart":  # Pre-LN, learned positions, one shared embedding
        config = AutoConfig.for_model("mbart", decoder_start_token_id=EOS, **common)
    elif name == "bart":  # BART's own defaults: gelu, no embedding scale
        common.update(activation_function="gelu", scale_embedding=False)
        config = AutoConfig.for_model("bart", decoder_start_token_id=EOS, **common)
    else:
        raise ValueError(f"unknown model {name!r}")
    return AutoModelForSeq2SeqLM.from_config(config)


# --------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------


def run_one(
    case: str | dict,
    method: dict,
    seed: int,
    *,
    size: dict | None = None,
    output_dir: str | None = None,
    threads: int = 1,
) -> dict:
    """Train one case with one method and seed; returns the run's record."""
    import torch
    from transformers import PrinterCallback, default_data_collator

    from hf_gradinit import GradInitTrainer, GradInitTrainingArguments

    torch.set_num_threads(threads)
    spec = CASES[case] if isinstance(case, str) else case
    method = dict(method)
    model_name = method.pop("_model", spec["model"])
    optimizer = method.pop("_optimizer", None)
    size = {**SIZE, **(size or {})}
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = make_model(model_name, size["d_model"], size["layers"], size["ffn_dim"], size["heads"])
    eos = spec.get("eos", False)
    train = make_examples(spec["task"], size["examples"], size["length"], 1000 + seed, eos)
    held_out = make_examples(spec["task"], N_OUTPUTS, size["length"], 2000 + seed, eos)
    if model_name == "mbart":
        # mBART shifts labels by wrapping the last token (its language id) to the front;
        # these tasks have none: give the decoder inputs the other models build (start
        # token, then the labels shifted right), as generation will see them.
        first = model.config.decoder_start_token_id
        for example in train:
            labels = example["labels"]
            example["decoder_input_ids"] = torch.cat([labels.new_tensor([first]), labels[:-1]])
    with tempfile.TemporaryDirectory() as tmp:
        args = GradInitTrainingArguments(
            output_dir=output_dir or tmp,
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
            save_strategy="no",
            logging_steps=1,
            per_device_train_batch_size=BATCH,
            max_steps=size["steps"],
            learning_rate=spec["lr"],
            lr_scheduler_type="constant",
            warmup_steps=0,
            adam_beta1=0.9,
            adam_beta2=0.98,
            weight_decay=0.0,
            max_grad_norm=0.0,  # no clipping
            seed=seed,
            data_seed=seed,
            dataloader_num_workers=0,
            **method,
        )
        radam = (torch.optim.RAdam, dict(lr=spec["lr"], betas=(args.adam_beta1, args.adam_beta2)))
        trainer = GradInitTrainer(
            model=model,
            args=args,
            train_dataset=train,
            data_collator=default_data_collator,
            optimizer_cls_and_kwargs=radam if optimizer == "radam" else None,
        )
        trainer.remove_callback(PrinterCallback)  # a line per step otherwise
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "step" in h]
    model.eval()
    batch = default_data_collator(held_out)
    with torch.no_grad():
        generated = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=size["length"] + 2,
            num_beams=1,
            do_sample=False,
        )
    outputs = [tuple(row.tolist()[1:]) for row in generated]  # after the decoder start
    exact = sum(list(o[: len(lab)]) == lab.tolist() for o, lab in zip(outputs, batch["labels"]))
    result = trainer.gradinit_result
    record = {
        "final_loss": statistics.fmean(losses[-FINAL_WINDOW:]),
        "first_loss": losses[0],
        "loss_at": {
            str(s): statistics.fmean(losses[s - 5 : s]) for s in CHECKPOINTS if s <= len(losses)
        },
        "distinct_outputs": len(set(outputs)),
        "exact_outputs": exact,
        "losses": [round(x, 4) for x in losses],
        "run_s": round(time.perf_counter() - start, 1),
        "gradinit_s": round(result.runtime_s, 1) if result is not None else 0.0,
    }
    if result is not None:
        record["scales"] = {k: round(v, 4) for k, v in result.scales.items()}
        for key in ("tied", "trial"):  # what GradInit did with tied tensors; the guard
            if getattr(result, key, None):
                record[key] = getattr(result, key)
    return record


# --------------------------------------------------------------------------------------
# The grid, the cache and the table
# --------------------------------------------------------------------------------------


def run_key(case: str, method: str, seed: int, size: dict) -> str:
    extra = "".join(f"-{k}{v}" for k, v in sorted(size.items()) if SIZE.get(k) != v)
    return f"{case}/{method}/s{seed}{extra}"


def _worker(job: tuple) -> tuple[str, dict]:
    key, case, method_args, seed, size = job
    return key, run_one(case, method_args, seed, size=size)


def load_cache(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save_cache(path: Path, cache: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def table(cache: dict) -> str:
    """One row per run: final loss, loss at the checkpoints, distinct outputs, seconds."""
    head = (
        "| case | method | seed | final loss | @50 | @100 | @200 | distinct outputs (of 16) "
        "| exact | run s | GradInit s |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for key in sorted(cache, key=_sort_key):
        r = cache[key]
        case, method, seed = key.split("/")[:3]
        at = [f"{r['loss_at'][str(s)]:.2f}" if str(s) in r["loss_at"] else "" for s in CHECKPOINTS]
        exact = "-" if r.get("exact_outputs") is None else r["exact_outputs"]
        rows.append(
            f"| {case} | {method} | {seed} | {r['final_loss']:.2f} | {' | '.join(at)} | "
            f"{r['distinct_outputs']} | {exact} | {r['run_s']:.0f} | {r['gradinit_s']:.0f} |"
        )
    return "\n".join(rows) + "\n"


def _sort_key(key: str):
    case, method, rest = key.split("/", 2)
    cases, methods = list(CASES), list(METHODS)
    return (
        cases.index(case) if case in cases else len(cases),
        case,
        methods.index(method) if method in methods else len(methods),
        method,
        rest,
    )


def write_table(cache: dict, path: Path) -> None:
    settings = ", ".join(f"{k} {v}" for k, v in SIZE.items())
    text = (
        "# Toy study: GradInit and tied input/output embeddings\n\n"
        f"Written by `benchmarks/toy_study.py` from `{path.with_suffix('.json').name}`. Default "
        f"size: {settings}; batch {BATCH}; Adam (0.9, 0.98), constant lr, no warmup, no "
        f"clipping. Final loss: mean training loss of the last {FINAL_WINDOW} steps; @N: mean "
        "of the 5 steps up to N; distinct outputs: distinct greedy outputs for 16 held-out "
        "inputs; exact: how many of them are right ('-': not recorded: runs made before "
        "BART's decoder-start token was skipped). Run seconds are wall time on a 2-core "
        "machine shared with other jobs (one thread per run). Methods:\n\n"
        + "".join(f"- `{name}`: `{json.dumps(args)}`\n" for name, args in METHODS.items())
        + "- `per_use` (measured, then removed from the package): the tied tensor had one "
        "scale per use during GradInit (each name its own tensor in the functional call), "
        "then kept the output projection's\n\n" + table(cache)
    )
    path.write_text(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES)[:3], choices=list(CASES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--workers", type=int, default=1, help="runs side by side (1 thread each)")
    p.add_argument("--results", type=Path, default=RESULTS / "toy_study.json")
    for k, v in SIZE.items():
        p.add_argument(f"--{k}", type=int, default=v)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    size = {k: getattr(args, k) for k in SIZE}
    cache = load_cache(args.results)
    jobs = []
    for case in args.cases:
        for method in args.methods:
            for seed in args.seeds:
                key = run_key(case, method, seed, size)
                if key not in cache:
                    if method in REMOVED:
                        raise SystemExit(
                            f"{method} needs {REMOVED[method]}, which hf_gradinit no longer "
                            "has; its committed records remain in the table."
                        )
                    jobs.append((key, case, METHODS[method], seed, size))
    print(f"{len(jobs)} run(s) to do, {len(cache)} cached", file=sys.stderr)
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = [pool.submit(_worker, job) for job in jobs]
        for future in as_completed(futures):
            key, record = future.result()
            cache[key] = record
            save_cache(args.results, cache)
            write_table(cache, args.results.with_suffix(".md"))
            print(
                f"{key}: final {record['final_loss']:.3f}, distinct {record['distinct_outputs']}, "
                f"{record['run_s']:.0f}s",
                file=sys.stderr,
            )
    write_table(cache, args.results.with_suffix(".md"))


if __name__ == "__main__":
    main()
