"""Quality against compute, GradInit's phase counted: does GradInit earn its cost?

Each run is the translation example (``translation_runner.py``: ``examples/translation/
run.py`` plus the study's flags) evaluated every ``eval_steps`` steps on the validation set
(loss and greedy sacreBLEU). A GradInit run's model at step k cost k steps, plus the probe's
losing branch (``probe_steps`` steps), plus the scales phase (its seconds over the run's own
seconds per training step): that sum is its *step-equivalents*, and every method is compared
at equal step-equivalents (and equal wall time, the same thing per run).

Groups (in the order they run):

* ``example``: the example exactly as the README runs it (3+3 Post-LN Marian, lr 1e-3,
  random batches), to 3000 steps (3x its length): no warmup, warmup 100/300, RAdam,
  GradInit; seeds 42, 1, 2; validation on all 1032 sentences, test BLEU at the end.
* ``corpus-2e-3`` and ``example-2e-3``: where warmup is needed (the example made 6+6 deep,
  fairseq's embedding layout, length-bucketed batches, validation on 200 sentences).
* ``iterations`` and ``probe``: GradInit's iterations (25, 50, 100; 200 is ``example``'s)
  and probe length (100, 200; 300 is the default) on the example, 1000 steps.
* ``corpus``: the 6+6 model at 1e-3 to 2100 steps (3x the corpus study's 700).
* ``candidates``: GradInit variants on the corpus at 2e-3.

Every evaluation is appended to the records file (JSON lines) as it happens and a run whose
final line is there is not run again: the committed file is the study's cache, and a study
cut short (a device lease running out) keeps what it measured.

    python benchmarks/compute_study.py --workers 2                  # CPU: days
    python benchmarks/compute_study.py --workers 15 --groups example  # one GPU: minutes
    python benchmarks/compute_study.py --report                     # table + figure only
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "benchmarks" / "translation_runner.py"
RESULTS = ROOT / "benchmarks" / "results"
RECORDS = RESULTS / "compute_study.jsonl"

METHODS: dict[str, list[str]] = {
    "no warmup": ["--no_gradinit"],
    "warmup 100": ["--no_gradinit", "--warmup_steps", "100"],
    "warmup 300": ["--no_gradinit", "--warmup_steps", "300"],
    "RAdam": ["--no_gradinit", "--torch_optimizer", "radam"],
    "GradInit": [],  # run.py's defaults: GradInit on, 200 iterations, a 300-step probe
}
# The example as the README runs it, with evaluations along the way.
EXAMPLE = ["--train_sampling_strategy", "random", "--per_device_eval_batch_size", "256"]
# The corpus study's model (benchmarks/no_warmup_study.py --preset cpu, reference layout).
CORPUS = ["--encoder_layers", "6", "--decoder_layers", "6", "--share_all_embeddings", "False"]
CORPUS += ["--max_eval_samples", "200", "--per_device_eval_batch_size", "256"]
PROBE_STEPS = 300  # GradInitConfig.probe_steps


def _runs(group: str, base: list[str], steps: int, every: int, seeds, methods, lr=1e-3,
          predict=False) -> list[dict]:  # fmt: skip
    out = []
    for seed in seeds:
        for method, flags in methods.items():
            name = f"{group}/{method.replace(' ', '')}/s{seed}"
            args = [*base, "--learning_rate", str(lr), "--seed", str(seed), *flags]
            args += ["--max_steps", str(steps), "--eval_strategy", "steps"]
            args += ["--eval_steps", str(every), "--do_predict", str(predict)]
            out.append(dict(name=name, group=group, method=method, seed=seed, args=args))
    return out


def grid() -> list[dict]:
    """Every run, in the order they are run (the most needed first)."""
    main_seeds, corpus_seeds = (42, 1, 2), (1, 2, 3)
    hard = {m: METHODS[m] for m in ("no warmup", "warmup 300", "RAdam", "GradInit")}
    runs = _runs("example", EXAMPLE, 3000, 500, main_seeds, METHODS, predict=True)
    runs += _runs("corpus-2e-3", CORPUS, 700, 350, corpus_seeds, hard, lr=2e-3)
    runs += _runs("example-2e-3", EXAMPLE, 1000, 500, main_seeds, hard, lr=2e-3)
    ablation = {f"GradInit it{n}": ["--gradinit_iterations", str(n)] for n in (25, 50, 100)}
    runs += _runs("iterations", EXAMPLE, 1000, 500, main_seeds, ablation, predict=True)
    probe = {f"GradInit probe{n}": ["--gradinit_probe_steps", str(n)] for n in (100, 200)}
    runs += _runs("probe", EXAMPLE, 1000, 500, main_seeds, probe, predict=True)
    runs += _runs("corpus", CORPUS, 2100, 350, corpus_seeds, METHODS)
    candidates = {
        "GradInit eta8 it400 slr1e-2": ["--gradinit_eta_multiplier", "8"]
        + ["--gradinit_iterations", "400", "--gradinit_scale_lr", "1e-2"],
        "GradInit lookahead8": ["--gradinit_lookahead_steps", "8"],
    }
    runs += _runs("candidates", CORPUS, 700, 350, (1,), candidates, lr=2e-3)
    return runs


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_one(run: dict, records: Path, cache: Path, tokenizer: Path, extra: list[str]) -> str:
    folder = cache / run["name"].replace("/", "_")
    command = [sys.executable, str(RUNNER), *run["args"], *extra]
    command += ["--output_dir", str(folder), "--tokenizer_name", str(tokenizer)]
    command += ["--record_file", str(records), "--record_name", run["name"]]
    command += ["--logging_steps", "50", "--save_strategy", "no", "--report_to", "none"]
    command += ["--disable_tqdm", "True"]
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        proc = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = (folder / "log.txt").read_text()[-2000:]
        return f"{run['name']} failed (exit {proc.returncode}):\n{tail}"
    state = folder / "trainer_state.json"
    history = json.loads(state.read_text())["log_history"] if state.exists() else []
    scales = folder / "gradinit_scales.json"
    probe = json.loads(scales.read_text()).get("probe") if scales.exists() else None
    line = dict(
        name=run["name"],
        history=[{k: v for k, v in h.items() if isinstance(v, int | float)} for h in history],
        probe={k: v for k, v in (probe or {}).items() if not k.endswith("_losses")},
        command=" ".join(["python", str(RUNNER.relative_to(ROOT)), *command[2:]]),
        wall_s=time.perf_counter() - t0,
    )
    with open(records, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    return f"{run['name']} done in {line['wall_s']:.0f} s"


def prepare_tokenizer(folder: Path) -> Path:
    """The example's tokenizer, trained once (the runner with nothing to train)."""
    if not (folder / "tokenizer.json").exists():
        command = [sys.executable, str(RUNNER), "--output_dir", str(folder), "--no_gradinit"]
        command += ["--do_train", "False", "--do_eval", "False", "--do_predict", "False"]
        subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    return folder


def run_study(args) -> None:
    done = {r["name"] for r in read_records(args.records) if "history" in r}
    todo = [r for r in grid() if r["group"] in args.groups and r["name"] not in done]
    todo = [r for r in todo if not args.seeds or r["seed"] in args.seeds]
    todo = [r for r in todo if not args.methods or r["method"] in args.methods]
    print(f"{len(todo)} runs to do ({len(done)} recorded)", flush=True)
    start = time.perf_counter()
    cache = Path(args.cache_dir)
    tokenizer = prepare_tokenizer(cache / "tokenizer")
    with ThreadPoolExecutor(args.workers) as pool:
        jobs = [pool.submit(run_one, r, args.records, cache, tokenizer, args.extra) for r in todo]
        for job in jobs:
            print(f"[{time.perf_counter() - start:.0f} s] {job.result()}", flush=True)


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


def curves(records: list[dict]) -> dict[str, dict]:
    """Per run: its evaluations as (step-equivalents, seconds, loss, BLEU), the seconds per
    step and the phase's cost, from its evaluation lines (and its history, when finished)."""
    by_run: dict[str, dict] = {}
    specs = {r["name"]: r for r in grid()}
    for line in records:
        name = line["name"]
        if name not in specs:
            continue
        run = by_run.setdefault(name, {**specs[name], "evals": {}, "final": None, "history": None})
        if "history" in line:
            run["history"] = line["history"]
            run["probe"] = line.get("probe") or {}
        elif line.get("final"):
            run["final"] = line
        elif "eval_loss" in line:
            run["evals"][line["step"]] = line
    out = {}
    for name, run in by_run.items():
        seen = sorted(run["evals"].values(), key=lambda e: e["step"])
        if len(seen) < 2:
            continue
        first, last = seen[0], seen[-1]
        train_s = (last["elapsed_s"] - last["eval_s"]) - (first["elapsed_s"] - first["eval_s"])
        step_s = train_s / (last["step"] - first["step"])
        evals = dict(run["evals"])
        for h in run["history"] or []:  # evaluations inside the probe reach the history only
            if "eval_loss" in h and h["step"] not in evals:
                evals[h["step"]] = h
        gradinit = run["method"].startswith("GradInit")
        phase_s = 0.0
        for h in run["history"] or []:
            phase_s = max(phase_s, h.get("gradinit/runtime_s", 0.0))
        if run["final"] is not None:
            phase_s = max(phase_s, run["final"].get("gradinit_runtime_s", 0.0))
        probe = (run.get("probe") or {}).get("steps", _probe_steps(run["args"])) if gradinit else 0
        overhead = probe + phase_s / step_s if gradinit else 0.0
        points = [
            (step + overhead, (step + overhead) * step_s, e["eval_loss"], e.get("eval_bleu"))
            for step, e in sorted(evals.items())
        ]
        final = run["final"] or {}
        out[name] = dict(
            run,
            points=points,
            step_s=step_s,
            phase_s=phase_s,
            overhead=overhead,
            test_bleu=final.get("test_bleu"),
            finished=run["history"] is not None,
        )
    return out


def _probe_steps(args: list[str]) -> int:
    if "--gradinit_probe_steps" in args:
        return int(args[args.index("--gradinit_probe_steps") + 1])
    return PROBE_STEPS


def _interp(points: list[tuple], x: float, col: int) -> float:
    """Linear interpolation of column ``col`` at step-equivalents ``x`` (NaN outside)."""
    for (x0, *a), (x1, *b) in zip(points, points[1:]):
        if x0 <= x <= x1:
            v0, v1 = a[col - 1], b[col - 1]
            return v0 + (v1 - v0) * (x - x0) / (x1 - x0)
    return math.nan


def mean_curve(runs: list[dict], col: int, xs: list[float]) -> list[float]:
    out = []
    for x in xs:
        vals = [_interp(r["points"], x, col) for r in runs]
        out.append(statistics.fmean(vals) if vals and not any(map(math.isnan, vals)) else math.nan)
    return out


def break_even(ours: list[float], theirs: list[float], xs: list[float], lower: bool) -> str:
    """The first step-equivalents from which ours is ahead at every later point measured."""
    pairs = [(x, a, b) for x, a, b in zip(xs, ours, theirs) if not (math.isnan(a) or math.isnan(b))]
    if not pairs:
        return "-"
    ahead = [(a < b) if lower else (a > b) for _, a, b in pairs]
    if not ahead[-1]:
        return f"never, here (to {pairs[-1][0]:.0f})"
    k = len(ahead)
    while k > 0 and ahead[k - 1]:
        k -= 1
    return f"{pairs[k][0]:.0f}" if k < len(ahead) else f"<= {pairs[0][0]:.0f}"


def report(records: list[dict], path: Path) -> str:
    data = curves(records)
    lines = ["# Quality against compute, GradInit's phase counted", ""]
    lines += [
        "`python benchmarks/compute_study.py --report` (records: "
        "`benchmarks/results/compute_study.jsonl`). x = step-equivalents: training steps, "
        "plus for GradInit the probe's losing branch and the scales phase in the run's own "
        "seconds per step. Means over the seeds recorded; n = seeds.",
        "",
    ]
    groups: dict[str, list[dict]] = {}
    for run in data.values():
        groups.setdefault(run["group"], []).append(run)
    for group, runs in groups.items():
        methods: dict[str, list[dict]] = {}
        for r in runs:
            methods.setdefault(r["method"], []).append(r)
        top = min(max(p[0] for p in r["points"]) for r in runs)
        xs = sorted(
            {p[0] for r in runs if not r["method"].startswith("GradInit") for p in r["points"]}
        )
        xs = [x for x in xs if x <= top] or xs
        lines += [f"## {group}", ""]
        header = "| method | n | phase (step-eq.) | s/step | " + " | ".join(
            f"loss / BLEU @ {x:.0f}" for x in xs
        )
        lines += [header + " | test BLEU |", "|" + "---|" * (len(xs) + 5)]
        for method, rs in methods.items():
            loss = mean_curve(rs, 2, xs)
            bleu = mean_curve(rs, 3, xs)
            cells = " | ".join(f"{a:.3f} / {b:.2f}" for a, b in zip(loss, bleu))
            tests = [r["test_bleu"] for r in rs if r["test_bleu"] is not None]
            test = f"{statistics.fmean(tests):.2f}" if tests else "-"
            over = statistics.fmean(r["overhead"] for r in rs)
            step_s = statistics.fmean(r["step_s"] for r in rs)
            lines.append(f"| {method} | {len(rs)} | {over:.0f} | {step_s:.3f} | {cells} | {test} |")
        ours = [m for m in methods if m == "GradInit"]
        if ours:
            lines += [
                "",
                "Break-even (step-equivalents from which GradInit is ahead on the mean):",
                "",
            ]
            lines += ["| against | validation loss | validation BLEU |", "|---|---|---|"]
            g_loss, g_bleu = (
                mean_curve(methods["GradInit"], 2, xs),
                mean_curve(methods["GradInit"], 3, xs),
            )
            for method, rs in methods.items():
                if method == "GradInit":
                    continue
                lo = break_even(g_loss, mean_curve(rs, 2, xs), xs, lower=True)
                bl = break_even(g_bleu, mean_curve(rs, 3, xs), xs, lower=False)
                lines.append(f"| {method} | {lo} | {bl} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(records: list[dict], path: Path, groups=("example",)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(records)
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 4 * len(groups)), squeeze=False)
    for row, group in zip(axes, groups):
        methods: dict[str, list[dict]] = {}
        for r in data.values():
            if r["group"] == group:
                methods.setdefault(r["method"], []).append(r)
        for ax, col, what in ((row[0], 2, "validation loss"), (row[1], 3, "validation BLEU")):
            for method, rs in methods.items():
                xs = sorted({p[0] for r in rs for p in r["points"]})
                ys = mean_curve(rs, col, xs)
                ax.plot(xs, ys, marker="o", ms=3, label=f"{method} (n={len(rs)})")
            ax.set_xlabel("step-equivalents (GradInit's phase counted)")
            ax.set_ylabel(what)
            ax.set_title(f"{group}: {what}")
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    groups = sorted({r["group"] for r in grid()})
    parser.add_argument("--groups", nargs="+", choices=groups, default=groups)
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds")
    parser.add_argument("--methods", nargs="+", help="only these methods")
    parser.add_argument("--workers", type=int, default=2, help="runs side by side")
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--cache_dir", default=str(ROOT / "benchmarks" / "cache" / "compute"))
    parser.add_argument("--report", action="store_true", help="only write the table and figure")
    parser.add_argument("extra", nargs="*", help="runner flags for every run (after --)")
    args = parser.parse_args(argv)
    if not args.report:
        run_study(args)
    records = read_records(args.records)
    print(report(records, RESULTS / "compute_study.md"))
    plot(records, RESULTS / "compute_study.png")


if __name__ == "__main__":
    main()
