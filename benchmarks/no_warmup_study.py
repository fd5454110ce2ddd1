"""Does GradInit let a Post-LN Transformer train without learning-rate warmup?

Runs the translation example (``examples/translation/run.py``: its Post-LN Marian, its
tokenizer, its data pipeline, ``GradInitTrainer``) through ``translation_runner.py`` (the
example plus the model flags, batches and evaluation order the committed records were made
with) once per configuration on the shipped De-En corpus, with a fixed step budget,
comparing at each embedding layout, learning rate and Adam beta2:

* ``baseline``: no warmup;
* ``warmup-W``: linear warmup over W steps (the best of ``--warmups`` is marked);
* ``gradinit``: GradInit, then no warmup (settings: ``--gradinit_args``);
* any ``--extra_method NAME=FLAGS`` (e.g. a Pre-LN model or another optimizer).

Every run is one runner process (one thread each on a CPU, ``--workers`` side by side).
The results JSON under ``benchmarks/results/`` is the study's cache: each finished run is
written to it at once and a run it holds is never redone, so the study resumes after an
interruption, also on a fresh machine with the committed file (delete a record to redo a
run). Next to it: a markdown table, loss curves per configuration and the learned scales.

    python benchmarks/no_warmup_study.py                 # CPU preset, reference layout
    python benchmarks/no_warmup_study.py --layouts reference shared --lrs 1e-3 2e-3 \\
        --beta2s 0.98 --seeds 1 2 --second_seed_cells 1e-3:0.98 2e-3:0.98 --warmups 300
    python benchmarks/no_warmup_study.py --preset gpu --device cuda --workers 1
    python benchmarks/no_warmup_study.py --lrs 1e-3 --gradinit_args="--gradinit_gamma 1.0"
    python benchmarks/no_warmup_study.py --lrs 1e-3 -- --per_device_train_batch_size 64

The first version of this study (all-shared layout, GradInit 200 iterations of the
defaults then) is kept in ``results/no_warmup_study_v1.*``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "benchmarks" / "translation_runner.py"
DATA = ROOT / "examples" / "translation" / "data"
RESULTS = Path(__file__).resolve().parent / "results"

# Runner arguments of each preset (on top of run.py's own defaults: Adam (0.9, beta2), no
# clipping, constant lr after the warmup, dropout 0, 4k joint BPE, 32 sentences a batch).
PRESETS: dict[str, dict] = {
    # The example's "small" model made 6+6 deep (the paper's depth): d_model 128, FFN 512.
    # 700 steps; validation loss and BLEU on 200 sentences: ~6 min a run on one thread.
    "cpu": dict(
        args=["--encoder_layers", "6", "--decoder_layers", "6", "--max_eval_samples", "200"],
        steps=700,
        warmups=[100, 300],
    ),
    # The translation example exactly as a user runs it (3+3 d128, all-shared Marian, lr
    # 1e-3, 1000 steps), with test BLEU on the whole test set: the README's table (run it
    # with ``--layouts shared``). Validation on 200 sentences, as the cpu preset.
    "example": dict(
        args=["--max_eval_samples", "200"], steps=1000, warmups=[100, 300], predict=True
    ),
    # The paper's transformer_iwslt_de_en on IWSLT'14 (downloads the dataset; needs a GPU).
    "gpu": dict(
        args=[str(ROOT / "examples" / "translation" / "presets" / "iwslt14_gpu.json")]
        + ["--lr_scheduler_type", "constant", "--eval_strategy", "no", "--save_strategy", "no"]
        + ["--max_eval_samples", "1000", "--generation_num_beams", "1"],
        steps=8000,
        warmups=[1000, 4000],
    ),
}
LOG_EVERY = 10  # training-loss log interval (steps)
FINAL_WINDOW = 100  # final loss = mean training loss over the last this many steps
STALL_MARGIN = 0.5  # "stalled": final train loss less than this below the unigram loss


# --------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


LAYOUTS = {
    # The encoder embedding separate, the decoder's input and output tied (fairseq's
    # transformer_iwslt_de_en, the reference's model). The records of this session were
    # made while it was run.py's default, so their commands do not name the flag.
    "reference": ["--share_all_embeddings", "False"],
    # Hugging Face Marian's default and run.py's: one matrix for encoder input, decoder
    # input and output.
    "shared": ["--share_all_embeddings", "True"],
    # BART: Post-LN too, with learned positions, a LayerNorm on the embeddings and one
    # shared embedding (checks that the defaults transfer to another Post-LN layout).
    "bart": ["--model_type", "bart"],
}


def gradinit_defaults() -> dict:
    """The ``gradinit_*`` defaults of ``GradInitTrainingArguments``.

    A GradInit run gets them for every flag it does not pass, so they are part of its cache
    key and its record: after a default changes, the same flags are a different run.
    """
    import dataclasses

    from hf_gradinit import GradInitArguments

    out = {}
    for f in dataclasses.fields(GradInitArguments):
        value = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


# The GradInit defaults the trainer had when each earlier set of records was made (records
# without a "gradinit_defaults" field): eta 2x lr and scale lr 1e-2 until this study's v2.
_EARLIER_DEFAULTS = {"gradinit_eta_multiplier": 2.0, "gradinit_scale_lr": 1e-2}


def grid(args) -> list[dict]:
    """Every run of the study: a name (its record's key) and its runner arguments."""
    runs = []
    gradinit_args = shlex.split(args.gradinit_args)
    defaults = gradinit_defaults()
    variant = _hash([gradinit_args, defaults])
    methods: list[tuple[str, str, list[str], dict]] = [
        ("baseline", "baseline", ["--no_gradinit", "--warmup_steps", "0"], {})
    ]
    methods += [
        (f"warmup-{w}", f"warmup{w}", ["--no_gradinit", "--warmup_steps", str(w)], {})
        for w in args.warmups
    ]
    methods.append(
        (
            "gradinit",
            f"gradinit-{variant}",
            ["--gradinit", "True", "--warmup_steps", "0", *gradinit_args],
            {"gradinit_args": gradinit_args, "gradinit_defaults": defaults},
        )
    )
    for name, flags in args.extra_methods:
        methods.append((name, f"{name}-{_hash(flags)}", ["--warmup_steps", "0", *flags], {}))
    methods = [m for m in methods if args.methods is None or m[0].split("-")[0] in args.methods]
    for layout in args.layouts:
        for seed in args.seeds:
            for lr in args.lrs:
                for beta2 in args.beta2s:
                    if seed != args.seeds[0] and (lr, beta2) not in args.second_seed_cells:
                        continue
                    tag = f"{layout}-lr{lr:g}-b{beta2:g}-s{seed}"
                    common = dict(layout=layout, lr=lr, beta2=beta2, seed=seed)
                    flags = ["--learning_rate", str(lr), "--adam_beta2", str(beta2)]
                    flags += ["--seed", str(seed), *LAYOUTS[layout]]
                    for method, prefix, method_flags, extra in methods:
                        runs.append(
                            dict(
                                **common,
                                **extra,
                                method=method,
                                name=f"{prefix}-{tag}",
                                flags=[*flags, *method_flags],
                            )
                        )
    return runs


def label(run: dict) -> str:
    """The method, with GradInit's eta multiplier, scale lr and other flags (variants and
    the defaults of the time are told apart)."""
    if run["method"] != "gradinit":
        return run["method"]
    defaults = {**gradinit_defaults(), **run.get("gradinit_defaults", _EARLIER_DEFAULTS)}
    flags = run.get("gradinit_args", [])
    given = dict(zip(flags[::2], flags[1::2]))
    parts = [
        f"{name} {given.pop(f'--gradinit_{name}', defaults[f'gradinit_{name}'])}"
        for name in ("eta_multiplier", "scale_lr")
    ]
    parts += [f"{k.removeprefix('--gradinit_')} {v}" for k, v in given.items()]
    recorded = run.get("gradinit_defaults", {})  # the probe came with release 0.2
    if "--gradinit_probe_steps" not in given:
        steps = recorded.get("gradinit_probe_steps", 0)
        parts.append(f"probe {steps}" if steps else "no probe")
    return f"gradinit ({', '.join(parts)})"


# --------------------------------------------------------------------------------------
# Running the example
# --------------------------------------------------------------------------------------


def prepare_tokenizer(folder: Path, base_args: list[str], device_args: list[str]) -> Path:
    """Train the example's tokenizer once (the runner with nothing to do); every run loads it."""
    if (folder / "tokenizer.json").exists():
        return folder
    command = [sys.executable, str(RUNNER), *base_args, *device_args]
    command += ["--output_dir", str(folder), "--do_train", "False", "--do_eval", "False"]
    command += ["--do_predict", "False", "--no_gradinit"]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    (folder / "model.safetensors").unlink(missing_ok=True)
    return folder


class Records:
    """The study's committed results JSON, used as its cache: a run it holds is not rerun.

    Each finished run is written at once (atomically), so an interrupted study, on this
    machine or a fresh one with the committed file, resumes where it stopped.
    """

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.runs: dict[str, dict] = {}
        if path.exists():
            self.runs = {r["name"]: r for r in json.loads(path.read_text())}

    def get(self, name: str) -> dict | None:
        return self.runs.get(name)

    def add(self, record: dict) -> None:
        with self.lock:
            if self.path.exists():  # keep what another study process wrote meanwhile
                on_disk = {r["name"]: r for r in json.loads(self.path.read_text())}
                self.runs = {**on_disk, **self.runs}
            self.runs[record["name"]] = record
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(list(self.runs.values()), indent=1) + "\n")
            tmp.replace(self.path)


def run_one(run: dict, base_args: list[str], device_args: list[str], cache: Path, env: dict,
            records: Records, predict: bool = False):  # fmt: skip
    """Train one configuration with the runner, unless the records hold it already."""
    cached = records.get(run["name"])
    if cached is not None:
        return cached
    folder = cache / run["name"]
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(RUNNER), *base_args, *device_args, *run["flags"]]
    command += ["--output_dir", str(folder), "--tokenizer_name", str(cache / "tokenizer")]
    command += ["--logging_steps", str(LOG_EVERY), "--logging_first_step", "False"]
    command += ["--do_predict", str(predict), "--save_strategy", "no", "--report_to", "none"]
    command += ["--disable_tqdm", "True"]
    t0 = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        proc = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{run['name']} failed (exit {proc.returncode}); see {folder}/log.txt")
    metrics = json.loads((folder / "all_results.json").read_text())
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    losses = [(h["step"], round(h["loss"], 4)) for h in history if "loss" in h and "step" in h]
    scales_file = folder / "gradinit_scales.json"
    gradinit = json.loads(scales_file.read_text()) if scales_file.exists() else None
    out = {
        **{k: v for k, v in run.items() if k != "flags"},
        "command": shlex.join(["python", *command[1:]]).replace(f"{ROOT}/", ""),
        "losses": losses,
        "eval_bleu": metrics.get("eval_bleu", float("nan")),
        "eval_loss": metrics.get("eval_loss", float("nan")),
        **({"test_bleu": metrics.get("test_bleu", float("nan"))} if predict else {}),
        "train_runtime_s": metrics.get("train_runtime"),
        "gradinit_runtime_s": metrics.get("gradinit_runtime_s", 0.0),
        "wall_s": wall,
        "scales": {k: round(v, 4) for k, v in gradinit["scales"].items()} if gradinit else None,
    }
    probe = (gradinit or {}).get("probe")
    if probe:  # the probe's decision, its reason and scores (not its loss curves)
        out["probe"] = {k: v for k, v in probe.items() if not k.endswith("_losses")}
    shutil.rmtree(folder, ignore_errors=True)  # the record holds what the study needs
    records.add(out)
    return {**out, "_ran_now": True}


def unigram_loss(tokenizer_folder: Path) -> float:
    """Loss of predicting the target unigram distribution: where Post-LN training stalls."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    with gzip.open(DATA / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        targets = [json.loads(line)["translation"]["en"] for line in f]
    counts = Counter(t for ids in tokenizer(text_target=targets)["input_ids"] for t in ids)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


def final_loss(run: dict, steps: int) -> float:
    """Mean training loss of the last FINAL_WINDOW steps; NaN for a run that diverged (the
    Trainer logs 0.0 for a window of NaN losses, so a NaN validation loss decides)."""
    losses = [loss for step, loss in run["losses"] if step > steps - FINAL_WINDOW]
    diverged = not math.isfinite(run.get("eval_loss", 0.0))
    if diverged or not losses or not all(math.isfinite(x) for x in losses):
        return float("nan")
    return statistics.mean(losses)


def _stalled(final: float, stall: float) -> str:
    if not math.isfinite(final):
        return "diverged"
    return "no" if final < stall - STALL_MARGIN else "yes"


# --------------------------------------------------------------------------------------
# The table and the plots
# --------------------------------------------------------------------------------------


def _mean(xs) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return statistics.mean(xs) if xs else float("inf")


def _run_time(run: dict) -> float:
    """GradInit + training (the trainer's train_runtime starts after GradInit)."""
    return run["gradinit_runtime_s"] + run["train_runtime_s"]


def summarize(results: list[dict], steps: int, stall: float) -> str:
    cells: dict[tuple, dict[str, list[dict]]] = {}
    for r in results:
        key = (r.get("layout", "shared"), r["lr"], r["beta2"])
        cells.setdefault(key, {}).setdefault(label(r), []).append(r)
    lines = [
        "| layout | lr | beta2 | method | seeds | final train loss | val loss | val BLEU | "
        "stalled | GradInit time (% of run) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (layout, lr, beta2), methods in sorted(cells.items()):
        warm = {m: rs for m, rs in methods.items() if m.startswith("warmup")}
        best = min(warm, key=lambda m: _mean(r["eval_loss"] for r in warm[m])) if warm else None
        order = ["baseline", *sorted(warm, key=lambda m: int(m.split("-")[1]))]
        order += sorted(m for m in methods if m.startswith("gradinit"))
        order += sorted(m for m in methods if m not in order)
        for method in order:
            rs = sorted(methods.get(method, []), key=lambda r: r["seed"])
            if not rs:
                continue
            finals = [final_loss(r, steps) for r in rs]
            name = method + (" (best warmup)" if method == best and len(warm) > 1 else "")
            share = "-"
            if any(r.get("gradinit_runtime_s") for r in rs):
                share = ", ".join(
                    f"{100 * r['gradinit_runtime_s'] / _run_time(r):.0f}%" for r in rs
                )
            lines.append(
                f"| {layout} | {lr:g} | {beta2:g} | {name} | {len(rs)} | "
                + ", ".join(f"{x:.2f}" for x in finals)
                + " | "
                + ", ".join(f"{r['eval_loss']:.2f}" for r in rs)
                + " | "
                + ", ".join(f"{r['eval_bleu']:.1f}" for r in rs)
                + " | "
                + ", ".join(_stalled(x, stall) for x in finals)
                + f" | {share} |"
            )
    return "\n".join(lines)


def bleu_table(results: list[dict]) -> str:
    """Test BLEU per method (runs with a test set only): mean, range and each seed's value."""
    methods: dict[tuple, list[dict]] = {}
    for r in results:
        if math.isfinite(r.get("test_bleu", float("nan"))):
            key = (r.get("layout", "shared"), r["lr"], r["beta2"], label(r))
            methods.setdefault(key, []).append(r)
    if not methods:
        return ""
    lines = [
        "| layout | lr | beta2 | method | seeds | test BLEU mean | range | per seed | "
        "val loss mean |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (layout, lr, beta2, method), rs in sorted(methods.items(), key=lambda kv: kv[0][:3]):
        rs = sorted(rs, key=lambda r: r["seed"])
        bleu = [r["test_bleu"] for r in rs]
        lines.append(
            f"| {layout} | {lr:g} | {beta2:g} | {method} | {len(rs)} | "
            f"{statistics.mean(bleu):.1f} | {min(bleu):.1f}-{max(bleu):.1f} | "
            + ", ".join(f"{b:.1f}" for b in bleu)
            + f" | {_mean(r['eval_loss'] for r in rs):.2f} |"
        )
    return "\n".join(lines)


def plot_losses(results: list[dict], stall: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = sorted({r["lr"] for r in results})
    rows = sorted({(r.get("layout", "shared"), r["beta2"]) for r in results})
    fig, axes = plt.subplots(
        len(rows),
        len(lrs),
        figsize=(max(4.2 * len(lrs), 9.0), 3.2 * len(rows) + 0.8),
        squeeze=False,
    )
    labels = sorted({label(r) for r in results})
    palettes = {  # warmups, GradInit and its variants, the other methods
        "warmup": iter(["tab:orange", "tab:olive", "tab:brown"]),
        "gradinit": iter(["tab:blue", "tab:purple", "tab:cyan", "navy", "slateblue"]),
        "other": iter(["tab:green", "tab:pink", "tab:gray", "black", "gold", "lime"]),
    }
    colors = {"baseline": "tab:red"}
    for lab in labels:
        if lab != "baseline":
            kind = "warmup" if lab.startswith("warmup") else "other"
            if lab.startswith(("gradinit", "lookahead", "recipe")):
                kind = "gradinit"
            colors[lab] = next(palettes[kind], "black")
    seeds = sorted({r["seed"] for r in results})
    for r in sorted(results, key=label):
        ax = axes[rows.index((r.get("layout", "shared"), r["beta2"]))][lrs.index(r["lr"])]
        steps, losses = zip(*r["losses"]) if r["losses"] else ((), ())
        style = "-" if r["seed"] == seeds[0] else ":"
        ax.plot(steps, losses, style, color=colors[label(r)], lw=1.1, label=label(r))
    for i, (layout, b2) in enumerate(rows):
        for j, lr in enumerate(lrs):
            ax = axes[i][j]
            ax.set_title(f"{layout} layout, lr {lr:g}, beta2 {b2:g}", fontsize=9)
            ax.axhline(stall, color="gray", lw=0.6, ls="--")
            ax.set_ylim(2, 8.5)
            ax.set_xlabel("step", fontsize=8)
            ax.set_ylabel("train loss", fontsize=8)
            ax.tick_params(labelsize=7)
            if len(ax.lines) <= 1:
                ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", color="gray")
    handles = {}
    for ax in axes.flat:
        for handle, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=7)
    fig.suptitle(
        "Transformers on LibreOffice help De-En: no warmup, warmup, GradInit and alternatives\n"
        "(dashed: the unigram loss, where training stalls; dotted: the other seeds)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


SCALE_GROUPS = {
    "attention": re.compile(r"(self_attn|encoder_attn)\.(q|k|v|out)_proj\.weight$"),
    "FFN": re.compile(r"fc[12]\.weight$"),
    "LayerNorm": re.compile(r"layer_norm\.weight$"),
}


def plot_scales(scales: dict[str, float], title: str, path: Path) -> None:
    """The paper's figure: the learned scale per layer, encoder vs decoder, by module type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    offsets = {"attention": -0.2, "FFN": 0.0, "LayerNorm": 0.2}
    for ax, side in zip(axes, ("encoder", "decoder")):
        for group, pattern in SCALE_GROUPS.items():
            points = [
                (int(m.group(1)) + offsets[group], s)
                for name, s in scales.items()
                if (m := re.search(rf"{side}\.layers\.(\d+)\.", name)) and pattern.search(name)
            ]
            if points:
                ax.scatter(*zip(*points), s=14, label=group, alpha=0.8)
        ax.set_title(side, fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.axhline(1.0, color="gray", lw=0.6, ls="--")
        ax.set_yscale("log")
    axes[0].set_ylabel("learned scale (log)", fontsize=8)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Arguments after -- go to every run (and into the cache folder's name).",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=["reference"])
    parser.add_argument(
        "--methods",
        nargs="+",
        help="only these methods (baseline, warmup, gradinit, or an --extra_method's name)",
    )
    parser.add_argument(
        "--extra_method",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="another method: its name and its runner flags, e.g. "
        "'preln=--model_type mbart --no_gradinit' (repeatable)",
    )
    parser.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3])
    parser.add_argument("--beta2s", type=float, nargs="+", default=[0.98, 0.999])
    parser.add_argument("--warmups", type=int, nargs="+", help="default: the preset's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--second_seed_cells",
        nargs="*",
        default=["1e-3:0.98"],
        help="lr:beta2 cells that get the seeds after the first",
    )
    parser.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    parser.add_argument(
        "--gradinit_args",
        default="--gradinit_iterations 200",
        help="--gradinit_* flags of the GradInit runs",
    )
    parser.add_argument("--workers", type=int, default=2, help="runs side by side")
    parser.add_argument("--cache_dir", default=str(Path(__file__).parent / "cache" / "study"))
    parser.add_argument("--results_dir", default=str(RESULTS))
    parser.add_argument("--results_name", default="no_warmup_study")
    parser.add_argument("--only", nargs="+", help="only the runs whose name contains one of these")
    parser.add_argument(
        "--report_only", action="store_true", help="run nothing; report the records"
    )
    parser.add_argument(
        "--all_records",
        action="store_true",
        help="report every run in the results JSON (all variants), not only this grid",
    )
    argv = sys.argv[1:] if argv is None else argv
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.passthrough = passthrough
    args.second_seed_cells = {
        tuple(float(x) for x in cell.split(":")) for cell in args.second_seed_cells
    }
    args.extra_methods = []
    for spec in args.extra_method:
        name, _, flags = spec.partition("=")
        if not name.isidentifier() or not flags:
            parser.error(f"--extra_method takes NAME=FLAGS, NAME in [A-Za-z0-9_], got {spec!r}")
        args.extra_methods.append((name, shlex.split(flags)))
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    steps = args.steps or preset["steps"]
    args.warmups = args.warmups or preset["warmups"]
    base_args = [*preset["args"], "--max_steps", str(steps), *args.passthrough]
    if args.device == "cpu":
        device_args = ["--use_cpu", "True"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    else:
        device_args, env = [], dict(os.environ)
    suffix = f"-{_hash(args.passthrough)}" if args.passthrough else ""
    cache = Path(args.cache_dir) / f"{args.preset}-{steps}steps{suffix}"
    cache.mkdir(parents=True, exist_ok=True)
    name = args.results_name + ("" if args.preset == "cpu" else f"_{args.preset}") + suffix
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    records = Records(results_dir / f"{name}.json")

    runs = grid(args)
    if args.only:
        runs = [r for r in runs if any(o in r["name"] for o in args.only)]
    if args.report_only:
        runs = [r for r in runs if records.get(r["name"])]
    t0 = time.perf_counter()
    prepare_tokenizer(cache / "tokenizer", base_args, device_args)
    results = []
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        predict = preset.get("predict", False)
        jobs = [
            pool.submit(run_one, r, base_args, device_args, cache, env, records, predict)
            for r in runs
        ]
        for job in jobs:
            r = job.result()
            results.append(r)
            print(
                f"{r['name']:48s} final loss {final_loss(r, steps):.3f}  BLEU {r['eval_bleu']:5.1f}"
                f"  ({r['wall_s'] / 60:.1f} min)",
                flush=True,
            )
    wall = time.perf_counter() - t0
    if args.all_records:
        results = list(records.runs.values())
    if not results:
        raise SystemExit(f"No finished runs in {records.path}.")
    stall = unigram_loss(cache / "tokenizer")
    table = summarize(results, steps, stall)
    bleu = bleu_table(results)
    if bleu:
        table = f"Test BLEU (sacreBLEU, greedy, the whole test set):\n\n{bleu}\n\n{table}"
    plot_losses(results, stall, results_dir / f"{name}_losses.png")
    main_arm = shlex.split(args.gradinit_args)
    with_scales = [r for r in results if r.get("scales")]
    # The scales of this grid's own GradInit setting, when --all_records brings in others.
    with_scales = [r for r in with_scales if r.get("gradinit_args") == main_arm] or with_scales
    if with_scales:
        first = min(with_scales, key=lambda r: (abs(math.log(r["lr"] / 1e-3)), r["seed"]))
        plot_scales(
            first["scales"],
            f"Scales learned by GradInit ({label(first)}; {first.get('layout', 'shared')} "
            f"layout, lr {first['lr']:g}, seed {first['seed']})",
            results_dir / f"{name}_scales.png",
        )
    command = shlex.join(["python", "benchmarks/no_warmup_study.py", *args.argv])
    compute = sum(r["wall_s"] for r in results) / 60
    ran = sum(1 for r in results if r.get("_ran_now"))
    timing = (
        f"{len(results)} runs, {compute:.0f} run-minutes (one thread each): about "
        f"{compute / args.workers:.0f} min of wall time with {args.workers} runs side by side."
    )
    if ran:
        timing += f" This command ran {ran} of them in {wall / 60:.1f} min of wall time."
    report = results_dir / f"{name}.md"
    # Hand-written findings below "## Findings" survive a regenerated table.
    old = report.read_text() if report.exists() else ""
    findings = old[old.index("## Findings") :] if "## Findings" in old else ""
    report.write_text(
        f"# No-warmup study ({args.preset} preset)\n\n"
        f"Command: `{command}`\n\n"
        f"Each run: `{results[0]['command']}` (with its own layout, lr, beta2, seed, warmup and "
        f"GradInit flags; the full command of every run is in `{name}.json`, which is also "
        f"the study's cache: a run it holds is not rerun).\n\n"
        f"{steps} steps a run. Final train loss = mean over the last {FINAL_WINDOW} steps; "
        f"val loss and BLEU (greedy sacreBLEU) are the runner's on the validation sentences it "
        f"evaluates; 'stalled' = final train loss not {STALL_MARGIN} below the unigram loss "
        f"({stall:.2f}) or NaN; the best warmup has the lowest val loss; GradInit time is its "
        f"share of GradInit + training. Layouts: 'reference' = a separate encoder embedding, "
        f"the decoder's input and output tied (fairseq's transformer_iwslt_de_en); 'shared' = "
        f"one matrix for all three (Hugging Face Marian's default); 'bart' = BART (learned "
        f"positions, an embedding LayerNorm, one shared embedding). {timing}\n\n{table}\n\n"
        f"![losses]({name}_losses.png)\n\n![scales]({name}_scales.png)\n"
        + (f"\n{findings}" if findings else "")
    )
    print(table)
    print(f"wall time {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
