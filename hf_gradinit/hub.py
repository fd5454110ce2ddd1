"""Initialized checkpoints: the learned scales and settings travel with the model.

A checkpoint made with GradInit carries, next to the usual model files:

* ``gradinit_scales.json``: the whole :class:`~hf_gradinit.GradInitResult` (scales, settings,
  per-iteration history), reloadable with :func:`load_gradinit_result`;
* ``config.gradinit`` in ``config.json``: a small summary (settings and outcome) and a
  fingerprint of the weights, so a model loaded with ``from_pretrained`` still says how it was
  initialized, and ``GradInitTrainer`` knows not to scale it a second time (see
  :mod:`hf_gradinit.record` for how "initialized" is decided from the weights);
* ``README.md``: a model card with Hub metadata, the settings, the scales by layer as a
  table, and ``gradinit_scales.png`` (a plot; skipped with a note when matplotlib is missing).

:func:`save_initialized_checkpoint` writes (and optionally pushes) a checkpoint that has only
been initialized, not trained; ``GradInitTrainer`` writes the same files when it saves.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .card import (  # noqa: F401 - re-exported: hub is where users look for them
    CARD_FILE,
    PLOT_FILE,
    _as_list,
    make_model_card,
    markdown_table,
    render_scales_plot,
    scales_table,
    settings_table,
    trainer_model_card,
)
from .config import GradInitError
from .record import (  # noqa: F401 - re-exported: hub is where users look for them
    CONFIG_KEY,
    SCALES_FILE,
    initialization_state,
    is_initialized,
    record_in_config,
    same_run,
    stale_message,
)
from .result import GradInitResult

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# Scales file and config entry
# --------------------------------------------------------------------------------------


def save_gradinit_result(result: GradInitResult, folder: str | os.PathLike) -> Path:
    """Write ``gradinit_scales.json`` (``result.to_dict()``) into ``folder``; returns its path."""
    path = Path(folder) / SCALES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")  # never leave a half-written file behind
    tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_gradinit_result(path: str | os.PathLike) -> GradInitResult:
    """Read a :class:`GradInitResult` from ``gradinit_scales.json`` or a folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / SCALES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No GradInit record at {path} (expected a {SCALES_FILE}).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return GradInitResult.from_dict(data)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a valid {SCALES_FILE}: {err}") from err


def write_gradinit_files(
    folder: str | os.PathLike, result: GradInitResult, *, plot: bool | bytes = True
) -> bool:
    """Write ``gradinit_scales.json`` and the plot (``gradinit_scales.png``) into ``folder``.

    ``plot``: True renders it, bytes are an already rendered PNG (the trainer renders once and
    writes it into every checkpoint), False skips it. Returns whether a plot was written
    (False also when matplotlib is missing).
    """
    save_gradinit_result(result, folder)
    png = render_scales_plot(result) if plot is True else (plot or None)
    if png is None:
        return False
    (Path(folder) / PLOT_FILE).write_bytes(png)
    return True


# --------------------------------------------------------------------------------------
# Initialized checkpoint (no training) and pushing
# --------------------------------------------------------------------------------------


class PushError(RuntimeError):
    """The checkpoint was saved locally, but uploading it failed (network, token, Hub)."""


def default_repo_id(output_dir: str | os.PathLike) -> str:
    """The repository a checkpoint is pushed to without ``hub_model_id``: the folder's name."""
    return Path(output_dir).resolve().name


def check_push_target(repo_id: str) -> None:
    """Raise ``ValueError`` before any work if ``repo_id`` is not a valid Hub repo id.

    Whether the Hub can be reached (network, token, ``HF_HUB_OFFLINE``) is only known when
    pushing; a failure there is a :class:`PushError` and the local checkpoint is kept.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"{repo_id!r} is not a valid Hub repo id: {err}") from None


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and its message with the whitespace folded."""
    return f"{type(err).__name__}: " + " ".join(str(err).split())


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload GradInit-initialized checkpoint",
    revision: str | None = None,
) -> Any:
    """Create ``repo_id`` if needed and upload every file of ``folder``; returns the CommitInfo."""
    from huggingface_hub import HfApi

    api = HfApi(library_name="hf_gradinit")
    repo = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=getattr(repo, "repo_id", repo_id),
        folder_path=str(folder),
        commit_message=commit_message,
        token=token,
        revision=revision,
        ignore_patterns=["*.tmp", ".git*"],
    )


def save_initialized_checkpoint(
    model: Any,
    result: GradInitResult,
    output_dir: str | os.PathLike,
    tokenizer: Any = None,
    *,
    push_to_hub: bool = False,
    hub_model_id: str | None = None,
    hub_token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload GradInit-initialized checkpoint",
    model_name: str | None = None,
    language: str | Sequence[str] | None = None,
    license: str | None = None,
    datasets: str | Sequence[str] | None = None,
    tags: str | Sequence[str] | None = None,
    pipeline_tag: str | None = None,
    plot: bool = True,
    optim: str | None = None,
    learning_rate: float | None = None,
    data_description: str | None = None,
) -> Path:
    """Save a model whose GradInit scales are already applied, ready to start training from.

    ``model`` must already carry the scales (``apply_gradinit`` or ``result.apply(model)``);
    this function does not apply them, so it can never scale twice. It refuses a model whose
    ``config.gradinit`` describes other weights (a fresh model built from an initialized
    config) or another GradInit run, since the checkpoint would claim an init its weights do
    not have. It writes the model (with ``config.gradinit``), the tokenizer,
    ``gradinit_scales.json``, the plot and a model card into ``output_dir``, and with
    ``push_to_hub`` uploads all of it to ``hub_model_id`` (default: the folder's name).
    Returns ``output_dir``.
    """
    if not hasattr(model, "save_pretrained"):
        raise TypeError(
            f"save_initialized_checkpoint needs a transformers PreTrainedModel, got "
            f"{type(model).__name__}; for other modules save result.to_dict() yourself."
        )
    repo_id = hub_model_id or default_repo_id(output_dir)
    if push_to_hub:
        check_push_target(repo_id)  # before anything is written
    state = initialization_state(model)
    if state == "stale":
        raise GradInitError(
            f"{stale_message()}: these weights are not the ones GradInit initialized, so "
            "nothing was saved. Apply the scales to them first (`result.apply(model)`, or "
            "`apply_gradinit`), then save."
        )
    if state != "absent" and not same_run(getattr(model.config, CONFIG_KEY), result.config_entry()):
        raise GradInitError(
            "The model was initialized by another GradInit run than `result` (its "
            "model.config.gradinit has other settings or outcome), so nothing was saved. Pass "
            "the result that was applied to this model."
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if state == "absent":
        record_in_config(model, result.config_entry(), result.scales)
    model.save_pretrained(output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    has_plot = write_gradinit_files(output_dir, result, plot=plot)
    card = make_model_card(
        result,
        model_name=model_name or repo_id.split("/")[-1],
        model_class=type(model).__name__,
        repo_id=repo_id if push_to_hub else None,
        folder=output_dir,
        trained=False,
        language=language,
        license=license,
        datasets=datasets,
        tags=[*_as_list(tags), *_as_list(getattr(model.config, "model_type", None))],
        pipeline_tag=pipeline_tag,
        plot_file=PLOT_FILE if has_plot else None,
        optim=optim,
        learning_rate=learning_rate,
        data_description=data_description,
        **({} if plot else {"plot_note": "not requested"}),
    )
    card.save(str(output_dir / CARD_FILE))
    if push_to_hub:
        try:
            commit = push_folder_to_hub(
                output_dir, repo_id, token=hub_token, private=private, commit_message=commit_message
            )
        except Exception as err:  # any failure here leaves the saved checkpoint intact
            raise PushError(
                f"The checkpoint is saved in {output_dir}, but pushing it to {repo_id} failed "
                f"({one_line(err)}). Upload it later with `hf upload {repo_id} {output_dir}`."
            ) from err
        logger.info(
            "Pushed the initialized checkpoint to %s", getattr(commit, "commit_url", repo_id)
        )
    return output_dir


def restore_record(model: Any, folder: str | os.PathLike) -> GradInitResult | None:
    """The GradInit result saved with a checkpoint (``gradinit_scales.json``), put back in
    the model's ``config.gradinit``: a run resumed from a checkpoint of an initialized run
    saves models that reload as initialized. A checkpoint of a plain ``Trainer`` with the
    callback has no scales file: the record in its ``config.json`` is put back instead (and
    None returned). None also if the record is not the run the model's config names."""
    path = os.path.join(str(folder), SCALES_FILE)
    if not os.path.isfile(path):
        config = getattr(model, "config", None)
        saved = os.path.join(str(folder), "config.json")
        if (
            config is not None
            and getattr(config, CONFIG_KEY, None) is None
            and os.path.isfile(saved)
        ):
            entry = json.loads(Path(saved).read_text()).get(CONFIG_KEY)
            if isinstance(entry, dict):
                setattr(config, CONFIG_KEY, entry)
        return None
    try:
        result = load_gradinit_result(path)
    except ValueError as err:
        logger.warning("Ignoring %s: %s", path, err)
        return None
    entry = getattr(getattr(model, "config", None), "gradinit", None)
    if entry and not same_run(entry, result.config_entry()):
        logger.warning("Ignoring %s: it is not the GradInit run the model's config names.", path)
        return None
    record_in_config(model, result.config_entry(), result.scales)
    return result
