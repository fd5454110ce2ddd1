"""Never worse than no GradInit: the trainer's default settings (the probe included) on one
small workload per model family, each trained with and without GradInit from the same seed
(same init, same batches). Where the defaults of release 0.1 (no probe) harmed at this size,
the case says so; those cases fail on them. Workloads: benchmarks/family_study.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from testing_utils import load_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TOLERANCE = 0.03  # relative: one seed, so a little noise is allowed where GradInit is kept


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(BENCHMARKS))  # family_study imports toy_study's models
    yield load_script(BENCHMARKS / "family_study.py", "family_study")
    sys.modules.pop("family_study", None)
    sys.path.remove(str(BENCHMARKS))


CASES = {
    # Post-LN decoder-only. Release 0.1: 3.14 against 2.77 without GradInit (shrunken
    # LayerNorm gains delay the escape from the initial plateau).
    "openai-gpt": ("gpt-reverse", dict(d_model=32, layers=4, steps=200, length=6), 2e-3),
    # Post-LN encoder-decoder (BART's shared embedding and learned positions). Release 0.1:
    # 2.92 against 2.75.
    "bart": ("bart-copy", dict(d_model=32, layers=3, steps=300, length=6), None),
    # Post-LN encoder-decoder, Marian with one embedding for everything.
    "marian": ("marian-shared-reverse-2e-3", dict(d_model=32, layers=2, steps=200, length=6), None),
    # Post-LN encoder-only classifier.
    "bert": ("bert-majority", dict(d_model=32, layers=4, steps=200), None),
    # Pre-LN control.
    "gpt2": ("gpt2-reverse", dict(d_model=32, layers=4, steps=200, length=6), 2e-3),
    # A CNN without normalization on scikit-learn's digits, SGD with momentum.
    "cnn": ("cnn-digits-sgd", dict(steps=300), None),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(CASES))
def test_default_gradinit_is_not_worse_than_none(study, family, monkeypatch):
    pytest.importorskip("sklearn")  # the digits
    name, size, lr = CASES[family]
    if lr is not None:
        monkeypatch.setitem(study.WORKLOADS, name, {**study.WORKLOADS[name], "lr": lr})
    without = study.run_one(name, dict(gradinit=False), 0, size={**size, "examples": 1000})
    with_gradinit = study.run_one(name, dict(gradinit=True), 0, size={**size, "examples": 1000})
    worse, base = study.score(name, with_gradinit), study.score(name, without)
    assert worse <= base * (1 + TOLERANCE) + 1e-3, (
        f"{family}: {worse:.3f} with GradInit's defaults against {base:.3f} without "
        f"(probe: {with_gradinit.get('probe', {}).get('reason')})"
    )
