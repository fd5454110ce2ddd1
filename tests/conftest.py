"""Fixtures and hooks only; the helpers are in testing_utils.py."""

from __future__ import annotations

import fnmatch
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run many times faster with one thread than with oversubscribed cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def hub(monkeypatch):
    """Patches HfApi's HTTP calls (no network); records each upload as {path in repo: bytes}."""
    from huggingface_hub import CommitInfo, HfApi, RepoUrl

    record = {"repos": [], "uploads": []}

    def create_repo(self, repo_id, *args, **kwargs):
        record["repos"].append(repo_id)
        full = repo_id if "/" in repo_id else f"user/{repo_id}"  # the Hub adds the namespace
        return RepoUrl(f"https://huggingface.co/{full}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        ignore = kwargs.get("ignore_patterns") or []
        files = {}
        for path in sorted(Path(folder_path).rglob("*")):
            rel = path.relative_to(folder_path).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(rel, p) for p in ignore):
                prefix = kwargs.get("path_in_repo") or ""
                files[f"{prefix}/{rel}" if prefix else rel] = path.read_bytes()
        record["uploads"].append({"repo_id": repo_id, "files": files, **kwargs})
        info = CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/0",
            commit_message=kwargs.get("commit_message") or "",
            commit_description="",
            oid="0" * 40,
        )
        if kwargs.get("run_as_future"):
            future = Future()
            future.set_result(info)
            return future
        return info

    def create_commit(self, *args, **kwargs):
        raise AssertionError("create_commit was called directly; the test expects upload_folder")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return record


@pytest.fixture
def forward_dtypes(monkeypatch):
    """Records (inside GradInit?, output dtype of the first FFN layer) for each forward.

    GradInit runs the model through ``functional_call`` (hf_gradinit.core.problem); an inner
    Linear shows what autocast does (Marian's logits are upcast by an fp32 bias). Returns
    (the records, ``watch(model)`` that installs the hook on a Marian model).
    """
    import hf_gradinit.core.problem as problem_module

    seen: list[tuple[bool, torch.dtype]] = []
    inside = {"gradinit": False}
    real = problem_module.functional_call

    def spy(*args, **kwargs):
        inside["gradinit"] = True
        try:
            return real(*args, **kwargs)
        finally:
            inside["gradinit"] = False

    monkeypatch.setattr(problem_module, "functional_call", spy)

    def watch(model):
        fc1 = model.model.encoder.layers[0].fc1
        fc1.register_forward_hook(lambda m, i, out: seen.append((inside["gradinit"], out.dtype)))
        return model

    return seen, watch


@pytest.fixture
def probe_keeps_original(monkeypatch):
    """The probe runs as usual, but its decision is "original" (whatever the losses), with
    the reason "forced by the test"; for tests of what follows that decision."""
    import hf_gradinit.core.probe as probe_module

    real = probe_module.decide

    def decide(*args, **kwargs):
        record = real(*args, **kwargs)
        record.update(decision="original", reason="forced by the test")
        return record

    monkeypatch.setattr(probe_module, "decide", decide)
