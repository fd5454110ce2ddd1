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
    from compute_report import write_report  # beside this script

    print(write_report(read_records(args.records)))


if __name__ == "__main__":
    main()
