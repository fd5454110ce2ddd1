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
* ``candidates``: variants chosen from ``warmup_mechanism.py``, on the corpus at 2e-3.

``example-2e-3`` seeds 3 and 4 and the ``corpus`` group ran on the 2-core CPU (step
equivalents are converted within a group, so each group's runs share one machine).

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
import re
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
    runs += _runs("example-2e-3", EXAMPLE, 1000, 500, (*main_seeds, 3, 4), hard, lr=2e-3)
    ablation = {f"GradInit it{n}": ["--gradinit_iterations", str(n)] for n in (25, 50, 100)}
    runs += _runs("iterations", EXAMPLE, 1000, 500, main_seeds, ablation, predict=True)
    probe = {f"GradInit probe{n}": ["--gradinit_probe_steps", str(n)] for n in (100, 200)}
    runs += _runs("probe", EXAMPLE, 1000, 500, main_seeds, probe, predict=True)
    runs += _runs("corpus", CORPUS, 2100, 350, corpus_seeds, METHODS)
    # Chosen from benchmarks/warmup_mechanism.py: without warmup, Adam's first steps move
    # every weight by lr, 10% of HF's init std 0.02, and the positions' representations
    # collapse within 2-10 steps. Larger weights (init std, or GradInit scales >= 2.5) make
    # that step relatively smaller; a lookahead as long as the collapse onset lets the
    # objective see it.
    candidates = {
        "no warmup, init std 0.08": ["--no_gradinit", "--init_std", "0.08"],
        "GradInit min_scale 2.5": ["--gradinit_min_scale", "2.5"],
        "GradInit lookahead 5": ["--gradinit_lookahead_steps", "5"]
        + ["--gradinit_iterations", "100"],
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
            outcome = job.result()  # before reading the clock
            print(f"[{time.perf_counter() - start:.0f} s] {outcome}", flush=True)


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


def curves(records: list[dict]) -> dict[str, dict]:
    """Per run: its evaluations as (step-equivalents, loss, BLEU), its seconds per training
    step and, for GradInit, the phase's cost in step-equivalents.

    The scales phase ran while the study's other runs trained beside it on the same device,
    so its seconds are converted with the step time of the group's runs without GradInit
    over the same stretch (the start: their first evaluation's seconds over its step)."""
    by_run: dict[str, dict] = {}
    specs = {r["name"]: r for r in grid()}
    for line in records:
        if line["name"] not in specs:
            continue
        run = by_run.setdefault(
            line["name"], {**specs[line["name"]], "evals": {}, "final": None, "history": None}
        )
        if "history" in line:
            run["history"], run["probe"] = line["history"], line.get("probe") or {}
        elif line.get("final"):
            run["final"] = line
        elif "eval_loss" in line:
            run["evals"][line["step"]] = line
    start_step_s: dict[str, list[float]] = {}
    for run in by_run.values():
        seen = sorted(run["evals"].values(), key=lambda e: e["step"])
        if seen and not run["method"].startswith("GradInit"):
            start_step_s.setdefault(run["group"], []).append(seen[0]["elapsed_s"] / seen[0]["step"])
    fallback = statistics.median(start_step_s.get("example", [math.nan]))
    out = {}
    for name, run in by_run.items():
        evals = dict(run["evals"])
        for h in run["history"] or []:  # evaluations inside the probe reach the history only
            if "eval_loss" in h and h["step"] not in evals:
                evals[h["step"]] = h
        if not evals:
            continue
        overhead, phase_s = 0.0, 0.0
        if run["method"].startswith("GradInit"):
            for h in [*(run["history"] or []), run["final"] or {}]:
                phase_s = max(phase_s, h.get("gradinit/runtime_s", h.get("gradinit_runtime_s", 0)))
            group = start_step_s.get(run["group"])
            step_s = statistics.median(group) if group else fallback
            probe = (run.get("probe") or {}).get("steps", _probe_steps(run["args"]))
            overhead = probe + phase_s / step_s
        points = [
            (step + overhead, e["eval_loss"], e.get("eval_bleu", math.nan))
            for step, e in sorted(evals.items())
        ]
        out[name] = dict(
            run,
            points=points,
            steps=sorted(evals),
            phase_s=phase_s,
            overhead=overhead,
            test_bleu=(run["final"] or {}).get("test_bleu"),
            finished=run["history"] is not None,
        )
    return out


def _probe_steps(args: list[str]) -> int:
    if "--gradinit_probe_steps" in args:
        return int(args[args.index("--gradinit_probe_steps") + 1])
    return PROBE_STEPS


def _interp(points: list[tuple], x: float, col: int) -> float:
    """Column ``col`` (1: loss, 2: BLEU) at step-equivalents ``x``, linearly between the
    evaluations (NaN outside them)."""
    for p0, p1 in zip(points, points[1:]):
        if p0[0] <= x <= p1[0]:
            return p0[col] + (p1[col] - p0[col]) * (x - p0[0]) / (p1[0] - p0[0])
    if points and math.isclose(points[-1][0], x):
        return points[-1][col]
    return math.nan


def mean_curve(runs: list[dict], col: int, xs: list[float], shift: bool = True) -> list[float]:
    """The mean over ``runs`` at each x (NaN where one of them has no value); ``shift``
    False: at equal training steps (the phase not counted)."""
    out = []
    for x in xs:
        vals = []
        for r in runs:
            points = r["points"] if shift else [(p[0] - r["overhead"], *p[1:]) for p in r["points"]]
            vals.append(_interp(points, x, col))
        ok = vals and not any(map(math.isnan, vals))
        out.append(statistics.fmean(vals) if ok else math.nan)
    return out


def break_even(ours: list[float], theirs: list[float], xs: list[float], lower: bool) -> str:
    """The first x from which ours is ahead at every later x measured."""
    pairs = [(x, a, b) for x, a, b in zip(xs, ours, theirs) if not (math.isnan(a) or math.isnan(b))]
    if not pairs:
        return "-"
    ahead = [(a < b) if lower else (a > b) for _, a, b in pairs]
    if not ahead[-1]:
        return f"never, here (to {pairs[-1][0]:.0f})"
    k = len(ahead)
    while k > 0 and ahead[k - 1]:
        k -= 1
    return f"{pairs[k][0]:.0f}" if k else f"<= {pairs[0][0]:.0f}"


def _by_method(data: dict[str, dict], group: str) -> dict[str, list[dict]]:
    order = {m: i for i, m in enumerate(METHODS)}
    out: dict[str, list[dict]] = {}

    def key(r: dict) -> tuple:  # the methods' order, then numbers as numbers (it25 < it100)
        words = re.split(r"(\d+)", r["method"])
        return (order.get(r["method"], 9), [int(w) if w.isdigit() else w for w in words], r["seed"])

    for r in sorted(data.values(), key=key):
        if r["group"] == group:
            out.setdefault(r["method"], []).append(r)
    return out


def _fmt(loss: float, bleu: float) -> str:
    return "-" if math.isnan(loss) else f"{loss:.3f} / {bleu:.2f}"


def compute_table(data: dict[str, dict], group: str) -> list[str]:
    """Validation loss / BLEU against step-equivalents, and the break-even lengths."""
    methods = _by_method(data, group)
    if "GradInit" not in methods:
        return []
    xs = sorted({s for r in data.values() if r["group"] == group for s in r["steps"]})
    lines = ["| method | seeds | phase (step-equivalents) | " + " | ".join(f"{x:.0f}" for x in xs)]
    lines[0] += " | test BLEU at the end |"
    lines.append("|" + "---|" * (len(xs) + 4))
    rows = [(m, rs, True) for m, rs in methods.items()]
    rows.append(("GradInit at equal *steps* (phase free)", methods["GradInit"], False))
    for method, rs, shift in rows:
        cells = [
            _fmt(a, b) for a, b in zip(mean_curve(rs, 1, xs, shift), mean_curve(rs, 2, xs, shift))
        ]
        tests = [r["test_bleu"] for r in rs if r["test_bleu"] is not None]
        test = f"{statistics.fmean(tests):.2f}" if len(tests) == len(rs) else "-"
        over = f"{statistics.fmean(r['overhead'] for r in rs):.0f}" if shift else "0"
        lines.append(f"| {method} | {len(rs)} | {over} | {' | '.join(cells)} | {test} |")
    lines += ["", "Break-even: the step-equivalents from which GradInit (mean of its seeds) is "
              "ahead of the method at every later evaluation, with its phase counted / free:", ""]  # fmt: skip
    lines += ["| against | validation loss | validation BLEU |", "|---|---|---|"]
    ours = methods["GradInit"]
    for method, rs in methods.items():
        if method == "GradInit":
            continue
        cells = []
        for col, lower in ((1, True), (2, False)):
            theirs = mean_curve(rs, col, xs)
            cells.append(
                f"{break_even(mean_curve(ours, col, xs), theirs, xs, lower)} / "
                f"{break_even(mean_curve(ours, col, xs, False), theirs, xs, lower)}"
            )
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return lines


TRAINED_BELOW = 5.5  # validation loss: clearly off the unigram plateau (about 6.3-6.5 here)


def warmup_table(data: dict[str, dict], group: str) -> list[str]:
    """Per seed: the last validation loss; how many seeds trained; against warmup 300."""
    methods = _by_method(data, group)
    if not methods:
        return []
    seeds = sorted({r["seed"] for rs in methods.values() for r in rs})
    warm = {r["seed"]: r["points"][-1][1] for r in methods.get("warmup 300", [])}
    head = "| method | " + " | ".join(f"seed {s}" for s in seeds)
    lines = [head + " | trained | mean | within 10% of warmup 300 |"]
    lines.append("|" + "---|" * (len(seeds) + 4))
    for method, rs in methods.items():
        last = {r["seed"]: r["points"][-1][1] for r in rs}
        step = {r["seed"]: r["steps"][-1] for r in rs}
        cells = [f"{last[s]:.3f}" + ("" if step[s] == max(step.values()) else f" (step {step[s]})")
                 if s in last else "-" for s in seeds]  # fmt: skip
        trained = sum(v < TRAINED_BELOW for v in last.values())
        close = sum(s in warm and last[s] <= 1.1 * warm[s] for s in last)
        mean = statistics.fmean(last.values())
        lines.append(
            f"| {method} | {' | '.join(cells)} | {trained} of {len(last)} | {mean:.3f} | "
            f"{close} of {len(last)} |"
        )
    return lines


def ablation_table(data: dict[str, dict]) -> list[str]:
    """GradInit's iterations and probe length on the example, at 1000 steps, against no
    warmup at 1000 steps and at 1000 + the phase (the same seeds, from the example group)."""
    none = _by_method(data, "example").get("no warmup", [])
    runs = {**_by_method(data, "iterations"), **_by_method(data, "probe")}
    full = _by_method(data, "example").get("GradInit", [])
    if full:
        runs = {"GradInit (it200, probe300: the defaults)": full, **runs}
    lines = ["| GradInit | seeds | phase (step-equivalents) | at 1000 steps: val loss / BLEU | "
             "no warmup at 1000 + phase | learned init kept |", "|---|---|---|---|---|---|"]  # fmt: skip
    for method, rs in runs.items():
        mine = [r for r in rs if 1000 in r["steps"]]
        if not mine:
            continue
        seeds = {r["seed"] for r in mine}
        at = [_interp([(p[0] - r["overhead"], *p[1:]) for p in r["points"]], 1000, c)
              for r in mine for c in (1, 2)]  # fmt: skip
        loss, bleu = statistics.fmean(at[0::2]), statistics.fmean(at[1::2])
        over = statistics.fmean(r["overhead"] for r in mine)
        base = [r for r in none if r["seed"] in seeds]
        equal = [_interp(r["points"], 1000 + over, c) for r in base for c in (1, 2)]
        kept = sum((r.get("probe") or {}).get("decision") == "learned" for r in mine)
        lines.append(
            f"| {method.removeprefix('GradInit ')} | {len(mine)} | {over:.0f} | "
            f"{loss:.3f} / {bleu:.2f} | {_fmt(statistics.fmean(equal[0::2]), statistics.fmean(equal[1::2]))} | "
            f"{kept} of {len(mine)} |"
        )
    return lines


def report(records: list[dict], path: Path) -> str:
    data = curves(records)
    lines = ["# Quality against compute, GradInit's phase counted", ""]
    lines += [
        "`python benchmarks/compute_study.py --report` (records: "
        "`benchmarks/results/compute_study.jsonl`; runs: one H200, 15-16 runs side by side, "
        "one process each, except the corpus at 1e-3, the candidates and the example at 2e-3 "
        "seeds 3 and 4: a 2-core CPU, two side by side). Step-equivalents: training steps, plus for GradInit the probe's "
        "losing branch (300 steps) and the scales phase (its seconds over the step time of "
        "the runs beside it). Cells: validation loss / BLEU, mean over the seeds.",
        "",
    ]
    titles = {
        "example": "The example (3+3 Post-LN Marian, all-shared embeddings, lr 1e-3, "
        "random batches; validation: all 1032 sentences)",
        "corpus": "The corpus model at lr 1e-3 (6+6, fairseq's layout; validation: 200)",
    }
    for group, title in titles.items():
        table = compute_table(data, group)
        lines += [f"## {title}", "", *(table or ["Not run yet."]), ""]
    lines += ["## Where warmup is needed: lr 2e-3 (last validation loss per seed)", ""]
    for group, title in (
        ("corpus-2e-3", "The corpus model (6+6, fairseq's layout), 700 steps, validation 200"),
        ("example-2e-3", "The example (3+3, all-shared), 1000 steps, validation 1032"),
        ("candidates", "GradInit candidates on the corpus model, seed 1"),
    ):
        table = warmup_table(data, group)
        lines += [f"### {title}", "", *(table or ["Not run yet."]), ""]
    lines += [f"\"Trained\": validation loss below {TRAINED_BELOW} (the unigram plateau is "
              "about 6.3-6.5).", ""]  # fmt: skip
    lines += ["## What the phase's parts buy (the example, 1000 steps)", "", *ablation_table(data)]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


PLOT_TITLES = {
    "example": "The translation example at lr 1e-3 (GPU)",
    "corpus": "The corpus model (6+6) at lr 1e-3 (CPU)",
}


def plot(records: list[dict], path: Path, group: str = "example") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(records)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, rs in _by_method(data, group).items():
        for shift in (True, False) if method == "GradInit" else (True,):
            xs = sorted({p[0] - (0 if shift else r["overhead"]) for r in rs for p in r["points"]})
            style = dict(marker="o", ms=3) if shift else dict(ls=":", color="grey")
            label = f"{method} (n={len(rs)})" if shift else "GradInit, phase not counted"
            for ax, col in zip(axes, (1, 2)):
                ax.plot(xs, mean_curve(rs, col, xs, shift), label=label, **style)
    for ax, what in zip(axes, ("validation loss", "validation BLEU")):
        ax.set_xlabel("step-equivalents (GradInit's phase counted)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    seeds = len({r["seed"] for r in data.values() if r["group"] == group})
    fig.suptitle(f"{PLOT_TITLES[group]}: quality against compute, {seeds} seeds")
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
    if any(r["name"].startswith("corpus/") for r in records):
        plot(records, RESULTS / "compute_study_corpus.png", group="corpus")


if __name__ == "__main__":
    main()
