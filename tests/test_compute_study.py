"""benchmarks/compute_study.py (its report, compute_report.py) and benchmarks/warmup_mechanism.py: the step-equivalent
arithmetic and break-even rule checked by hand, and every figure the README and
docs/results.md quote from them recomputed from the committed records."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
from testing_utils import load_script

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def study():
    """compute_report.py (which imports compute_study.py beside it)."""
    yield load_script(BENCHMARKS / "compute_report.py", "compute_report")
    sys.modules.pop("compute_report", None)
    sys.modules.pop("compute_study", None)


@pytest.fixture(scope="module")
def mechanism():
    yield load_script(BENCHMARKS / "warmup_mechanism.py", "warmup_mechanism")
    sys.modules.pop("warmup_mechanism", None)


def _line(name, **values) -> dict:
    return {"name": name, **values}


def test_step_equivalents_count_the_losing_branch_and_the_phase(study):
    """A GradInit run's evaluation at step k sits at k + probe steps + phase seconds over
    the step time of the runs beside it (their first evaluation's seconds per step)."""
    records = [
        _line("example/nowarmup/s42", step=500, elapsed_s=50.0, eval_s=0.0, eval_loss=4.0, eval_bleu=1.0),
        _line("example/nowarmup/s42", step=1000, elapsed_s=100.0, eval_s=0.0, eval_loss=3.0, eval_bleu=8.0),
        _line("example/GradInit/s42", step=1000, elapsed_s=9.0, eval_s=0.0, eval_loss=2.5, eval_bleu=12.0),
        _line("example/GradInit/s42", step=1500, elapsed_s=60.0, eval_s=0.0, eval_loss=2.2, eval_bleu=15.0),
        _line("example/GradInit/s42", final=True, elapsed_s=70.0, gradinit_runtime_s=20.0),
        _line("example/GradInit/s42", history=[], probe={"steps": 300, "decision": "learned"}),
    ]  # fmt: skip
    data = study.curves(records)
    gradinit = data["example/GradInit/s42"]
    assert gradinit["overhead"] == pytest.approx(300 + 20.0 / 0.1)  # 0.1 s a step beside it
    assert [p[0] for p in gradinit["points"]] == pytest.approx([1500, 2000])
    assert data["example/nowarmup/s42"]["overhead"] == 0
    # at 1750 step-equivalents: halfway between GradInit's two evaluations
    assert study.mean_curve([gradinit], 1, [1750])[0] == pytest.approx(2.35)
    # at equal steps (phase free) its step-1000 evaluation sits at 1000
    assert study.mean_curve([gradinit], 2, [1000], shift=False)[0] == pytest.approx(12.0)
    assert math.isnan(study.mean_curve([gradinit], 1, [1000])[0])  # no model yet


def test_break_even_is_the_first_point_ahead_from_there_on(study):
    xs = [1, 2, 3, 4]
    assert study.break_even([5, 3, 2, 1], [4, 4, 3, 2], xs, lower=True) == "2"
    assert study.break_even([1, 3, 2, 1], [4, 2, 3, 2], xs, lower=True) == "3"
    assert study.break_even([1, 1, 1, 1], [2, 2, 2, 2], xs, lower=True) == "<= 1"
    assert study.break_even([1, 1, 1, 3], [2, 2, 2, 2], xs, lower=True).startswith("never")
    assert study.break_even([1, 2, 3, 4], [2, 2, 2, 2], xs, lower=False) == "3"


def test_collapse_onset_is_where_the_last_layer_stays_collapsed(mechanism):
    cos = [0.4, 0.95, 0.5, 0.92, 0.99, 0.99]
    steps = [{"step": k, "cos": {"enc0": c, "dec0": c}} for k, c in enumerate(cos)]
    assert mechanism.onset(steps) == (3, "enc0 (step 1)")
    steps[-1]["cos"]["dec0"] = 0.3  # recovered at the end
    assert mechanism.onset(steps) == (None, None)


# --------------------------------------------------------------------------------------
# What the README and docs/results.md quote
# --------------------------------------------------------------------------------------


def _table(text: str, first_cell: str) -> list[list[str]]:
    """The rows of the markdown table whose header starts with ``first_cell``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("*") for c in line.strip("|").split("|")])
    return [[c.strip() for c in lines[start].strip("|").split("|")], *rows]


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    records = sys.modules["compute_study"].read_records(
        BENCHMARKS / "results" / "compute_study.jsonl"
    )
    return study.report(
        study.curves(records), tmp_path_factory.mktemp("report") / "compute_study.md"
    )


def _cells_by_method(table: list[list[str]]) -> dict[str, dict[str, str]]:
    """Rows by method name, without emphasis or a trailing remark in parentheses."""
    header, *rows = table
    name = lambda cell: re.sub(r" \(.*\)$", "", cell.replace("*", ""))  # noqa: E731
    return {name(row[0]): dict(zip(header, row)) for row in rows}


def test_the_committed_report_is_what_the_records_give(report):
    assert (BENCHMARKS / "results" / "compute_study.md").read_text() == report


@pytest.mark.parametrize("doc", ["README.md", "docs/results.md"])
def test_the_quoted_example_table_is_the_reports(report, doc):
    ours = _cells_by_method(_table(report, "method"))
    quoted = _cells_by_method(_table((ROOT / doc).read_text(), "method"))
    checked = 0
    for method, cells in quoted.items():
        mine = ours[method]
        for column, value in cells.items():
            if re.fullmatch(r"\d+", column):
                assert value == mine[column], (doc, method, column)
                checked += 1
        assert (
            cells[next(c for c in cells if c.startswith("test BLEU"))]
            == mine["test BLEU at the end"]
        )
    assert checked >= 12


def test_the_quoted_corpus_table_is_the_reports(report):
    section = report[report.index("## The corpus model at lr 1e-3") :]
    ours = _cells_by_method(_table(section, "method"))
    quoted = _table((ROOT / "docs" / "results.md").read_text(), "corpus model, lr 1e-3")
    header, *rows = quoted
    assert len(rows) == 4
    for row in rows:
        method = re.sub(r" \(.*\)$", "", row[0])
        cells = dict(zip(header, row))
        for column in ("1050", "1400", "1750", "2100"):
            assert cells[column] == ours[method][column], (method, column)
        assert cells["phase (step-equivalents)"] == ours[method]["phase (step-equivalents)"]


def test_the_quoted_warmup_cells_are_the_reports(report):
    """docs/results.md's lr 2e-3 rows: each method's per-seed losses and counts."""
    docs = (ROOT / "docs" / "results.md").read_text()
    for cell, group_title in (
        ("the corpus model (6+6", "### The corpus model (6+6"),
        ("the example (3+3", "### The example (3+3"),
    ):
        section = report[report.index(group_title) :]
        table = _cells_by_method(_table(section, "method"))
        row = next(line for line in docs.splitlines() if line.startswith(f"| {cell}"))
        for method, quoted in zip(
            ("no warmup", "warmup 300", "RAdam", "GradInit"), row.strip("|").split("|")[1:]
        ):
            ours = table[method]
            losses = [v for k, v in ours.items() if k.startswith("seed") and v != "-"]
            assert all(loss in quoted for loss in losses), (cell, method)
            assert ours["trained"] in quoted.replace("*", ""), (cell, method)


def test_the_mechanism_table_is_the_records(mechanism):
    records = json.loads((BENCHMARKS / "results" / "warmup_mechanism.json").read_text())
    text = mechanism.report(records)
    assert (BENCHMARKS / "results" / "warmup_mechanism.md").read_text() == text
    rows = _cells_by_method(_table(text, "method"))
    assert rows["no warmup"]["stays collapsed from step"] == "2"
    assert rows["warmup 300"]["stays collapsed from step"] == "recovered"
