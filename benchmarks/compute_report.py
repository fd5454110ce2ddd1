"""The report of ``compute_study.py``: each run's evaluations at step-equivalents, the
tables (quality against compute, break-even lengths, the 2e-3 cells, the phase's parts) and
the figures, from the study's records. ``python benchmarks/compute_study.py --report``."""

from __future__ import annotations

import math
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the study, beside this script
from compute_study import METHODS, PROBE_STEPS, RESULTS, grid  # noqa: E402


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


def report(data: dict[str, dict], path: Path) -> str:
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


def plot(data: dict[str, dict], path: Path, group: str = "example") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def write_report(records: list[dict]) -> str:
    """compute_study.md and the figures under benchmarks/results/; returns the markdown."""
    data = curves(records)
    text = report(data, RESULTS / "compute_study.md")
    plot(data, RESULTS / "compute_study.png")
    if any(r["group"] == "corpus" for r in data.values()):
        plot(data, RESULTS / "compute_study_corpus.png", group="corpus")
    return text
