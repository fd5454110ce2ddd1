"""Which decision rule and probe length, now that the probe is the run itself?

Since release 0.3 the probe's two branches are the Trainer's own run from each init (the
exactness tests in tests/test_probe_training.py check this against plain Trainer runs), and
the run continues from the winner. So a run under any rule and probe length N can be read off
two recorded plain runs of the family study (``benchmarks/family_study.py``) on the same
seed: ``none`` (the original init) and ``gradinit_v01`` (the learned init, the same GradInit
settings as today's defaults, no probe). The rule decides on the first N steps of both
curves; the run then ends where the chosen run ends. No new training is needed, and the
verdict ("worse": the mean paired difference from ``none`` beyond the seed noise) is the
family study's.

Rules (a, b: mean loss of the learned and the original branch over the probe's last quarter;
noise: 1% of the original branch's first loss):

* ``learned-unless-behind`` (release 0.2's): keep the learned init unless a > b + noise.
* ``lower-wins``: keep the learned init if a < b.
* ``original-unless-ahead``: keep the learned init only if a < b - noise.

    python benchmarks/probe_rule_study.py   # writes results/probe_rule_study.md
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from family_study import RESULTS, WORKLOADS, load_cache, run_key, score  # noqa: E402

from hf_gradinit.core.probe import NOISE_FLOOR, tail_mean  # noqa: E402

RULES = {
    "learned-unless-behind": lambda a, b, noise: a <= b + noise,
    "lower-wins": lambda a, b, noise: a < b,
    "original-unless-ahead": lambda a, b, noise: a < b - noise,
}
PROBE_STEPS = (100, 200, 300)
LEARNED, ORIGINAL = "gradinit_v01", "none"


def seeds_of(cache: dict, name: str) -> list[int]:
    return sorted(
        int(k.rsplit("/s", 1)[1])
        for k in cache
        if k.startswith(f"{name}/{ORIGINAL}/s")
        and run_key(name, LEARNED, int(k.rsplit("/s", 1)[1])) in cache
    )


def simulate(cache: dict, name: str, steps: int, rule: str) -> dict[int, tuple[bool, float]]:
    """Per seed: whether the rule keeps the learned init after ``steps`` probe steps, and
    the score the run then ends with (the chosen plain run's)."""
    out = {}
    for seed in seeds_of(cache, name):
        learned = cache[run_key(name, LEARNED, seed)]
        original = cache[run_key(name, ORIGINAL, seed)]
        n = min(steps, len(original["losses"]))
        a = tail_mean(learned["losses"][:n], n)
        b = tail_mean(original["losses"][:n], n)
        keep = RULES[rule](a, b, NOISE_FLOOR * original["losses"][0])
        out[seed] = (keep, score(name, learned if keep else original))
    return out


def verdict(cache: dict, name: str, scores: dict[int, float]) -> tuple[float, float, bool]:
    """Mean score, mean paired difference from no GradInit, worse beyond seed noise."""
    base = {s: score(name, cache[run_key(name, ORIGINAL, s)]) for s in scores}
    diff = statistics.fmean(scores[s] - base[s] for s in scores)
    noise = statistics.pstdev(base.values()) if len(base) > 1 else 0.0
    limit = max(noise, 0.02 * max(statistics.fmean(base.values()), 0.05))
    return statistics.fmean(scores.values()), diff, diff > limit


def report(cache: dict) -> str:
    lines = [
        "# Probe rule study: the decision rule and probe length on exact branches\n",
        "Written by `python benchmarks/probe_rule_study.py` from `family_study.json` (the "
        "recorded `none` and `gradinit_v01` runs: 300 steps, the CNN 30 epochs). Each cell: "
        "the mean score of the run that continues from the rule's choice after N probe steps "
        "(lower is better), **worse** beyond seed noise, and how many seeds kept the learned "
        "init. The probe costs N extra training steps.\n",
    ]
    header = "| split | workload | no GradInit | learned, no probe |"
    cols = [(n, r) for n in PROBE_STEPS for r in RULES]
    header += "".join(f" N={n} {r} |" for n, r in cols)
    lines += [header, "|" + "---|" * (4 + len(cols))]
    totals = {c: [0, 0] for c in cols}
    for name, spec in WORKLOADS.items():
        seeds = seeds_of(cache, name)
        if not seeds:
            continue
        none = statistics.fmean(score(name, cache[run_key(name, ORIGINAL, s)]) for s in seeds)
        learned_scores = {s: score(name, cache[run_key(name, LEARNED, s)]) for s in seeds}
        mean, _, worse = verdict(cache, name, learned_scores)
        row = f"| {spec['split']} | {name} ({len(seeds)} seeds) | {none:.3f} | {mean:.3f}{' **worse**' if worse else ''} |"
        for col in cols:
            sim = simulate(cache, name, *col)
            mean, _, worse = verdict(cache, name, {s: v for s, (_, v) in sim.items()})
            kept = sum(k for k, _ in sim.values())
            totals[col][0] += worse
            totals[col][1] += kept
            row += f" {mean:.3f}{' **worse**' if worse else ''} ({kept}/{len(sim)}) |"
        lines.append(row)
    lines.append(
        "| all | workloads worse (learned inits kept) | | |"
        + "".join(f" {w} ({k}) |" for w, k in totals.values())
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    text = report(load_cache(RESULTS / "family_study.json"))
    (RESULTS / "probe_rule_study.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
