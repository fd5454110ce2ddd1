"""benchmarks/no_warmup_study.py: the grid it runs and how it scores runs (no training)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from conftest import load_script

STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "no_warmup_study.py"


@pytest.fixture(scope="module")
def study():
    yield load_script(STUDY, "no_warmup_study")
    sys.modules.pop("no_warmup_study", None)


def test_grid_flags_each_method_and_the_second_seed_only_where_asked(study):
    args = study.parse_args(["--lrs", "1e-3", "2e-3", "--beta2s", "0.98", "--seeds", "1", "2"])
    args.warmups = [100]
    runs = {r["name"]: r for r in study.grid(args)}
    # 2 lrs x (baseline, warmup, gradinit) for seed 1; the second seed only at 1e-3 / 0.98
    assert len(runs) == 9
    assert not any(name.endswith("lr0.002-b0.98-s2") for name in runs)
    assert all(r["layout"] == "reference" for r in runs.values())
    for r in runs.values():  # run.py's default is all-shared: the reference's is asked for
        f = r["flags"]
        assert f[f.index("--share_all_embeddings") + 1] == "False"
    warm = runs["warmup100-reference-lr0.001-b0.98-s1"]["flags"]
    assert warm[warm.index("--warmup_steps") + 1] == "100" and "--no_gradinit" in warm
    gradinit = next(r for n, r in runs.items() if n.startswith("gradinit") and "0.002" in n)
    flags = gradinit["flags"]
    assert flags[flags.index("--learning_rate") + 1] == "0.002"
    assert flags[flags.index("--gradinit_iterations") + 1] == "200"  # the study's default
    assert flags[flags.index("--warmup_steps") + 1] == "0"


def test_layouts_methods_and_extra_methods(study):
    args = study.parse_args(
        ["--lrs", "1e-3", "--beta2s", "0.98", "--layouts", "reference", "shared"]
        + ["--methods", "baseline", "preln", "--extra_method", "preln=--model_type mbart"]
    )
    args.warmups = [100]
    runs = {r["name"]: r for r in study.grid(args)}
    assert sorted(r["method"] for r in runs.values()) == ["baseline", "baseline", "preln", "preln"]
    shared = [r for r in runs.values() if r["layout"] == "shared"]
    assert all("True" in r["flags"] for r in shared) and len(shared) == 2
    preln = next(r for r in runs.values() if r["method"] == "preln")
    assert preln["flags"][-2:] == ["--model_type", "mbart"]
    with pytest.raises(SystemExit):
        study.parse_args(["--extra_method", "no flags"])


def test_records_are_the_cache_and_survive_a_restart(study, tmp_path):
    records = study.Records(tmp_path / "r.json")
    records.add({"name": "a", "eval_loss": 4.0})
    again = study.Records(tmp_path / "r.json")
    assert again.get("a") == {"name": "a", "eval_loss": 4.0}
    run = {"name": "a", "flags": ["--nonsense"]}
    # A recorded run is returned without running anything (run.py would fail on --nonsense).
    assert study.run_one(run, [], [], tmp_path, {}, again)["eval_loss"] == 4.0


def test_two_study_processes_writing_one_file_keep_both_records(study, tmp_path):
    first, second = study.Records(tmp_path / "r.json"), study.Records(tmp_path / "r.json")
    first.add({"name": "a", "eval_loss": 4.0})
    second.add({"name": "b", "eval_loss": 5.0})  # loaded before "a" was written
    assert set(study.Records(tmp_path / "r.json").runs) == {"a", "b"}


def test_passthrough_arguments_go_to_every_run(study):
    args = study.parse_args(["--lrs", "1e-3", "--warmups", "100", "--", "--d_model", "64"])
    assert args.passthrough == ["--d_model", "64"]
    assert "--d_model" not in sum((r["flags"] for r in study.grid(args)), [])  # added later


def _run(method, final, val, lr=1e-3, seed=1, gradinit_s=0.0):
    losses = [(step, 9.0) for step in range(10, 600, 10)]
    losses += [(step, final) for step in range(610, 701, 10)]
    return dict(
        layout="reference", lr=lr, beta2=0.98, seed=seed, method=method, losses=losses, eval_loss=val,
        eval_bleu=0.0, gradinit_runtime_s=gradinit_s, train_runtime_s=300.0,
        gradinit_args=["--gradinit_iterations", "200"] if method == "gradinit" else [],
    )  # fmt: skip


def test_table_scores_the_last_steps_marks_stalls_and_the_best_warmup(study):
    results = [
        _run("baseline", 6.1, 6.0),
        _run("warmup-100", 4.5, 4.4),
        _run("warmup-300", 4.2, 4.1),
        _run("gradinit", 4.3, 4.2, gradinit_s=100.0),
    ]
    assert study.final_loss(results[0], 700) == pytest.approx(6.1)  # only the last 100 steps
    rows = study.summarize(results, steps=700, stall=6.45).splitlines()[2:]
    assert rows[0].startswith("| reference | 0.001 | 0.98 | baseline | 1 | 6.10 | 6.00 |")
    assert rows[0].split("|")[9].strip() == "yes"  # 6.1 is not 0.5 below 6.45: stalled
    assert "warmup-300 (best warmup)" in rows[2] and "best" not in rows[1]
    assert rows[3].split("|")[9].strip() == "no"
    assert rows[3].split("|")[10].strip() == "25%"  # 100 s of GradInit in 400 s


def test_bleu_table_gives_mean_range_and_seeds_of_runs_with_a_test_set(study):
    results = [_run("gradinit", 4.0, 4.1 + seed, seed=seed) for seed in (3, 1, 2)]
    for r, bleu in zip(results, (12.0, 9.0, 10.5)):
        r["test_bleu"] = bleu
    results.append(_run("baseline", 6.0, 6.0))  # no test set: not in the table
    rows = study.bleu_table(results).splitlines()[2:]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[3:] == [
        # records made before the study kept the trainer's defaults: eta 2x lr, scale lr 1e-2
        "gradinit (eta_multiplier 2.0, scale_lr 0.01, iterations 200)",
        "3",
        "10.5",
        "9.0-12.0",
        "9.0, 10.5, 12.0",
        "6.10",
    ]
    assert study.bleu_table(results[3:]) == ""


def test_a_gradinit_run_is_keyed_and_labelled_by_the_trainers_defaults(study, monkeypatch):
    """Its flags do not name every setting, so the trainer's defaults are part of its
    cache key: after a default changes, the same flags are a new run, not a cached one."""
    args = study.parse_args(["--lrs", "1e-3", "--beta2s", "0.98", "--methods", "gradinit"])
    args.warmups = []
    (before,) = study.grid(args)
    defaults = study.gradinit_defaults()
    assert before["gradinit_defaults"] == defaults
    assert study.label(before) == (
        f"gradinit (eta_multiplier {defaults['gradinit_eta_multiplier']}, scale_lr "
        f"{defaults['gradinit_scale_lr']}, iterations 200)"
    )
    changed = {**defaults, "gradinit_scale_lr": 0.5}
    monkeypatch.setattr(study, "gradinit_defaults", lambda: changed)
    (after,) = study.grid(args)
    assert after["name"] != before["name"] and after["flags"] == before["flags"]
    assert "scale_lr 0.5" in study.label(after)
    flagged = {**after, "gradinit_args": ["--gradinit_scale_lr", "0.1"]}
    assert "scale_lr 0.1" in study.label(flagged)  # a flag wins over the default


def test_a_diverged_run_is_marked_diverged_not_stalled(study):
    """The Trainer logs 0.0 for a window of NaN losses; the NaN validation loss tells."""
    diverged = _run("baseline", 0.0, float("nan"))
    assert math.isnan(study.final_loss(diverged, 700))
    (row,) = study.summarize([diverged], steps=700, stall=6.45).splitlines()[2:]
    assert row.split("|")[9].strip() == "diverged"
