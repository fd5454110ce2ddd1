"""Several processes learn one set of scales, equal to a single process on the same data."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from testing_utils import seq2seq_examples, tiny_marian
from transformers import default_data_collator

from hf_gradinit import GradInitConfig, compute_gradinit_scales

SCRIPT = Path(__file__).parent / "scripts" / "distributed_gradinit.py"
SMALL_DATA_SCRIPT = Path(__file__).parent / "scripts" / "distributed_small_data.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_with_each_other_and_with_one_process(tmp_path):
    _launch_two_processes(tmp_path)
    ranks = [json.loads((tmp_path / f"scales-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]  # really two processes
    assert [r["num_processes"] for r in ranks] == [2, 2]
    assert ranks[0]["scales"] == ranks[1]["scales"]  # bit-identical across ranks
    assert "constraint" in ranks[0]["branches"]  # the norm branch was reduced too

    # One process over the same global batches (fixed lengths: mean of means == mean).
    torch.manual_seed(0)
    model = tiny_marian()
    batches = [default_data_collator(seq2seq_examples(12, seed=i)) for i in range(3)]
    config = GradInitConfig(iterations=6, scale_lr=2e-2, overlap=1.0, gamma=0.9, probe_steps=0)
    single = compute_gradinit_scales(model, batches, config, show_progress=False)
    assert [h["branch"] for h in single.history] == ranks[0]["branches"]
    for name, value in single.scales.items():
        assert ranks[0]["scales"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


@pytest.mark.slow
def test_trainer_on_two_processes_learns_one_set_of_scales_and_writes_once(tmp_path):
    _launch_two_processes(tmp_path, "trainer")
    ranks = [json.loads((tmp_path / f"trainer-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["scales"] == ranks[1]["scales"]
    assert len(ranks[0]["writes"]) >= 1  # the main process wrote the scales file
    assert ranks[1]["writes"] == []  # the other did not
    assert (tmp_path / "run" / "gradinit_scales.json").exists()


def _launch_two_processes(out, *mode: str) -> None:
    """Run the worker script on 2 gloo processes under torchrun; fail with its stderr."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(SCRIPT),
        str(out),
        *mode,
    ]
    env = {"OMP_NUM_THREADS": "1", **_python_env()}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _python_env() -> dict[str, str]:
    import os

    keep = ("HOME", "PYTHONPATH", "VIRTUAL_ENV", "LANG", "HF_HOME", "TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PATH"] = os.path.dirname(sys.executable) + ":" + os.environ.get("PATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    return env


# ---- Several processes with little data; only the main process saves and pushes ------------


def _torchrun(*args) -> None:
    import os

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}", str(SMALL_DATA_SCRIPT), *map(str, args)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "PATH", "PYTHONPATH", "TMPDIR")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_apply_gradinit_on_two_processes_with_fewer_examples_than_two_batches(tmp_path):
    _torchrun(tmp_path, "apply")
    for n in (7, 9):
        ranks = [json.loads((tmp_path / f"apply-{n}-rank{r}.json").read_text()) for r in (0, 1)]
        assert [r["world_size"] for r in ranks] == [2, 2]
        assert ranks[0]["scales"] == ranks[1]["scales"]


@pytest.mark.slow
def test_cli_on_two_processes_saves_and_pushes_once(tmp_path):
    from testing_utils import model_folder, tiny_tokenizer, toy_translation_records, write_jsonl

    folder = model_folder(tmp_path / "model", tiny_marian(), tiny_tokenizer(), weights=False)
    data = write_jsonl(tmp_path / "train.jsonl", toy_translation_records(30))
    out = tmp_path / "logs"
    out.mkdir()
    _torchrun(
        out, "cli", "init", "--model_path", folder, "--train_file", data, "--source_lang", "de",
        "--target_lang", "en", "--learning_rate", "1e-3", "--output_dir", tmp_path / "init",
        "--gradinit_iterations", "2", "--gradinit_probe_steps", "2", "--gradinit_batch_size", "4",
        "--use_cpu", "True", "--push_to_hub", "--hub_model_id", "me/tiny-init",
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("status")) == [
        "pushed-rank0",
        "saved-rank0",
    ]
    assert [(out / f"status-rank{r}").read_text() for r in (0, 1)] == ["0", "0"]
    assert (tmp_path / "init" / "gradinit_scales.json").exists()


# ---- FSDP2 on CPU: GradInit before sharding, refused after -----------------------------------


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes(tmp_path):
    """apply_gradinit before fully_shard gives every rank the same scales and sharded training
    runs from the result; on the already sharded model it is refused before any work, the
    local shards intact (docs/distributed.md)."""
    import os

    script = Path(__file__).parent / "scripts" / "distributed_fsdp.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), str(tmp_path)]  # fmt: skip
    env = {"OMP_NUM_THREADS": "1", **_python_env()}
    env.update({k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ})
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"fsdp-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]  # really two processes
    assert ranks[0]["scales"] == ranks[1]["scales"]
    assert set(ranks[0]["scales"].values()) != {1.0}  # learned, not left at 1
    for r in ranks:
        assert r["sharded"] == "DTensor"
        assert all(map(math.isfinite, r["losses"])) and len(r["losses"]) == 4
        assert "FSDP" in r["refused"] and "before sharding" in r["refused"]
        assert r["intact"]
