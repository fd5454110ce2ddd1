"""The README's main job, recorded: run it as the README says and write what it printed.

    python benchmarks/main_job.py             # runs it (minutes), writes results/main_job.json
    python benchmarks/main_job.py --check     # is the record older than the code it measures?

The record holds the command, the BLEU line, the wall time, the package versions and a
fingerprint of the code that decides the result (the package and examples/translation/run.py,
docstrings and comments left out). ``tests/test_main_job.py`` fails when the fingerprint no
longer matches the code or the README's line no longer matches the record: rerun this script
after changing that code.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "benchmarks" / "results" / "main_job.json"
COMMAND = ["accelerate", "launch", "examples/translation/run.py"]
PACKAGES = ("torch", "transformers", "accelerate", "sacrebleu", "tokenizers", "datasets")
BLEU_LINE = re.compile(r"BLEU: validation ([0-9.]+), test ([0-9.]+)")


def python_version() -> str:
    """The fingerprint reads the code through ``ast.unparse``, whose output may change
    between Python versions: it is compared on the version it was made with."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def measured_files() -> list[Path]:
    return sorted((ROOT / "hf_gradinit").rglob("*.py")) + [ROOT / "examples/translation/run.py"]


def _code_only(source: str) -> str:
    """The module without docstrings and comments (ast round trip): what runs."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(getattr(body[0], "value", None), ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def code_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in measured_files():
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(_code_only(path.read_text()).encode())
    return digest.hexdigest()[:16]


def run() -> dict:
    start = time.perf_counter()
    out = subprocess.run(COMMAND, cwd=ROOT, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    found = BLEU_LINE.findall(out.stdout + out.stderr)
    if not found:
        raise SystemExit("the main job printed no BLEU line")
    validation, test = found[-1]
    return {
        "command": " ".join(COMMAND),
        "bleu_line": f"BLEU: validation {validation}, test {test}",
        "validation_bleu": float(validation),
        "test_bleu": float(test),
        "wall_s": round(wall),
        "versions": {name: version(name) for name in PACKAGES},
        "python": python_version(),
        "code_fingerprint": code_fingerprint(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare the record with the code")
    args = p.parse_args(argv)
    if args.check:
        record = json.loads(RECORD.read_text())
        now = code_fingerprint()
        ok = record["code_fingerprint"] == now
        print(f"record {record['code_fingerprint']}, code {now}: {'current' if ok else 'STALE'}")
        sys.exit(0 if ok else 1)
    record = run()
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
