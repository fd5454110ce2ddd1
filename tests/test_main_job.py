"""The README's main-job line is the record of a run of today's code with the pinned
versions (benchmarks/main_job.py): stale records and drifting figures fail here."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import main_job  # noqa: E402

RECORD = json.loads(main_job.RECORD.read_text())


def test_the_record_measures_todays_code():
    if RECORD.get("python") != main_job.python_version():
        pytest.skip(f"the fingerprint was made with Python {RECORD.get('python')}")
    assert RECORD["code_fingerprint"] == main_job.code_fingerprint(), (
        "hf_gradinit or examples/translation/run.py changed since the main job was recorded: "
        "rerun `python benchmarks/main_job.py` and update the README's line"
    )


def test_the_readme_prints_the_recorded_line_and_command():
    readme = (ROOT / "README.md").read_text()
    assert f"`{RECORD['bleu_line']}`" in readme
    assert RECORD["command"] in readme


def test_the_examples_extra_pins_the_recorded_versions():
    text = (ROOT / "pyproject.toml").read_text()
    for name in ("transformers", "accelerate", "datasets", "sacrebleu", "tokenizers"):
        pins = re.findall(rf'"{name}==([^"]+)"', text)
        assert pins == [RECORD["versions"][name]], (name, pins)


def test_the_fingerprint_ignores_docstrings_but_not_code():
    plain = "def f(x):\n    return x + 1\n"
    documented = 'def f(x):\n    """Adds one."""\n    # a comment\n    return x + 1\n'
    assert main_job._code_only(plain) == main_job._code_only(documented)
    assert main_job._code_only(plain) != main_job._code_only(plain.replace("+ 1", "+ 2"))
