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
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

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

PLOT_FILE = "gradinit_scales.png"
CARD_FILE = "README.md"
TAG = "gradinit"

PAPER = "https://arxiv.org/abs/2102.08098"
CITATION = """@inproceedings{zhu2021gradinit,
  title     = {GradInit: Learning to Initialize Neural Networks for Stable and Efficient Training},
  author    = {Zhu, Chen and Ni, Renkun and Xu, Zheng and Kong, Kezhi and Huang, W. Ronny and Goldstein, Tom},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2021}
}"""


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


# --------------------------------------------------------------------------------------
# Tables and plot
# --------------------------------------------------------------------------------------

_LAYER = re.compile(r"^(.*?\.\d+)\.(.+)$")


def _split_layer(name: str) -> tuple[str, str]:
    """('model.encoder.layers.3', 'fc1.weight') for a tensor inside a numbered layer."""
    match = _LAYER.match(name)
    return (match.group(1), match.group(2)) if match else ("-", name)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return "-" if value is None else str(value)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub/Hub markdown table (cells escaped)."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join(" --- " for _ in header) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def scales_table(result: GradInitResult) -> str:
    """The learned scales by layer, in model order: layer, tensor, kind, scale, tied names."""
    rows = []
    for name, scale in result.scales.items():
        layer, rest = _split_layer(name)
        tied = ", ".join(result.aliases.get(name, []))
        rows.append([layer, rest, result.kinds.get(name, "?"), f"{scale:.4g}", tied or ""])
    return markdown_table(["Layer", "Tensor", "Kind", "Scale", "Also (tied)"], rows)


def settings_table(result: GradInitResult) -> str:
    return markdown_table(
        ["Setting", "Value"], [[k, _fmt(v)] for k, v in result.config.to_dict().items()]
    )


def render_scales_plot(result: GradInitResult) -> bytes | None:
    """A PNG of the scales (bars, log axis) and of the GradInit losses per iteration.

    Returns None when matplotlib is not installed (it is optional: ``pip install
    hf-gradinit[plots]``). Uses matplotlib's object API, so no pyplot backend is touched.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    import io

    names = list(result.scales)
    values = [result.scales[n] for n in names]
    colors = {"weight": "tab:blue", "gain": "tab:orange", "bias": "tab:green"}
    fig = Figure(figsize=(max(8.0, min(0.12 * len(names), 24.0)), 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_scales, ax_loss = fig.subplots(2, 1, height_ratios=[3, 2])
    ax_scales.bar(  # bars from 1 (the original init) to the learned scale
        range(len(values)),
        [v - 1.0 for v in values],
        bottom=1.0,
        color=[colors.get(result.kinds.get(n, ""), "tab:gray") for n in names],
    )
    ax_scales.axhline(1.0, color="black", linewidth=0.8)
    if values and min(values) > 0 and max(values) / min(values) > 3:
        ax_scales.set_yscale("log")
    ax_scales.set_ylabel("learned scale")
    ax_scales.set_title("GradInit scales by tensor (blue: weights, orange: gains, green: biases)")
    if len(names) <= 80:
        ax_scales.set_xticks(range(len(names)))
        ax_scales.set_xticklabels(
            [n.removeprefix("model.") for n in names], rotation=90, fontsize=5
        )
    else:
        ax_scales.set_xlabel("tensor (model order)")
    its = [h["iteration"] + 1 for h in result.history]
    ax_loss.plot(its, [h["loss"] for h in result.history], label="loss on S", linewidth=1)
    after = [(h["iteration"] + 1, h["loss_after_step"]) for h in result.history]
    after = [(i, v) for i, v in after if v is not None]
    if after:
        ax_loss.plot(*zip(*after), label="loss on S~ after the simulated step", linewidth=1)
    ax_loss.set_xlabel("GradInit iteration")
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="best", fontsize=8)
    ax_norm = ax_loss.twinx()
    ax_norm.plot(its, [h["grad_norm"] for h in result.history], color="tab:red", linewidth=0.8)
    ax_norm.set_ylabel(f"gradient {result.config.norm_type} norm", color="tab:red")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


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
# Model card
# --------------------------------------------------------------------------------------


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [v for v in value if v]


TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"


def make_model_card(
    result: GradInitResult,
    *,
    model_name: str,
    model_class: str | None = None,
    repo_id: str | None = None,
    trained: bool = False,
    language: str | Sequence[str] | None = None,
    license: str | None = None,
    datasets: str | Sequence[str] | None = None,
    tags: str | Sequence[str] | None = None,
    base_model: str | None = None,
    pipeline_tag: str | None = None,
    training_hyperparameters: Mapping[str, Any] | None = None,
    training_results: Sequence[Mapping[str, Any]] | None = None,
    eval_results: Mapping[str, Any] | None = None,
    plot_file: str | None = PLOT_FILE,
    plot_note: str = "matplotlib is not installed (`pip install hf-gradinit[plots]`)",
    optim: str | None = None,
    learning_rate: float | None = None,
    data_description: str | None = None,
) -> ModelCard:
    """A model card for a GradInit-initialized (and possibly trained) model, rendered from
    ``templates/model_card.md`` with ``huggingface_hub.ModelCard.from_template``.

    It says whether the learned scales were applied or the probe kept the original init,
    and why. With ``plot_file`` None the card gives ``plot_note`` instead of an image.
    """
    card_tags = [TAG] + [t for t in dict.fromkeys(_as_list(tags)) if t != TAG]
    data = ModelCardData(
        library_name="transformers",
        tags=card_tags,
        language=_as_list(language) or None,
        license=license,
        datasets=_as_list(datasets) or None,
        base_model=base_model or None,
        pipeline_tag=pipeline_tag,
    )
    training = ", ".join(
        t
        for t in (
            f"`{optim}`" if optim else "",
            f"lr {_fmt(learning_rate)}" if learning_rate else "",
        )
        if t
    )
    tuned_for = (
        f"a simulated `{result.config.inner_optimizer}` step with eta {_fmt(result.config.eta)}"
    )
    tuned_for += f" (training with {training})" if training else ""
    if data_description is None and _as_list(datasets):
        data_description = ", ".join(f"`{d}`" for d in _as_list(datasets))
    results_table = None
    if training_results:
        header = list(training_results[0])
        results_table = markdown_table(
            header, [[_fmt(r.get(h)) for h in header] for r in training_results]
        )
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        model_class=model_class or "AutoModel",
        source=repo_id or model_name,
        trained=trained,
        base_model=base_model,
        paper=PAPER,
        data_description=data_description,
        kept=result.kept,
        reason=(result.probe or {}).get("reason"),
        tuned_for=tuned_for,
        summary=result.summary(),
        norm_type=result.config.norm_type,
        tied_notes=result.tied_notes(),
        settings_table=settings_table(result),
        scales_table=scales_table(result),
        plot_file=plot_file,
        plot_note=plot_note,
        eval_results=dict(eval_results) if eval_results else None,
        training_hyperparameters=dict(training_hyperparameters or {}) if trained else None,
        training_results=results_table if trained else None,
        versions=_versions(),
        citation=CITATION,
        fmt=_fmt,
    )


def trainer_model_card(
    trainer: Any,
    result: GradInitResult,
    *,
    has_plot: bool,
    tags: str | list[str] | None = None,
    results: Mapping[str, Any] | None = None,
    **card_kwargs: Any,
) -> ModelCard:
    """The card of a trainer's model: ``Trainer.create_model_card``'s metadata (``tags``,
    ``language``, ``dataset``...) and training table, ``results`` as the evaluation list."""
    from transformers.modelcard import TrainingSummary

    summary = TrainingSummary.from_trainer(
        trainer, tags=[tags] if isinstance(tags, str) else list(tags or []), **card_kwargs
    )
    base = summary.finetuned_from
    if not base or os.path.isdir(base):  # built from a config, or a local folder
        base = None
    model = trainer.accelerator.unwrap_model(trainer.model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    names = _as_list(summary.dataset)
    output_dir = trainer.args.output_dir
    return make_model_card(
        result,
        model_name=summary.model_name or os.path.basename(os.path.abspath(output_dir)),
        model_class=type(model).__name__,
        repo_id=trainer.hub_model_id or trainer.args.hub_model_id,
        trained=trainer.state.global_step > 0,
        language=summary.language,
        license=summary.license,
        datasets=summary.dataset_tags,
        tags=[*_as_list(summary.tags), *_as_list(model_type)],
        base_model=base,
        pipeline_tag=summary.tasks if isinstance(summary.tasks, str) else None,
        training_hyperparameters=summary.hyperparameters,
        training_results=summary.eval_lines,
        eval_results=dict(results) if results is not None else summary.eval_results,
        plot_file=PLOT_FILE if has_plot else None,
        data_description=" and ".join(f"the {n} dataset" for n in names) if names else None,
        optim=str(getattr(trainer.args.optim, "value", trainer.args.optim)),
        learning_rate=trainer.args.learning_rate,
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("hf-gradinit", "transformers", "torch", "accelerate", "huggingface_hub"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


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


def _one_line(err: BaseException) -> str:
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
        repo_id=repo_id,
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
                f"({_one_line(err)}). Upload it later with `hf upload {repo_id} {output_dir}`."
            ) from err
        logger.info(
            "Pushed the initialized checkpoint to %s", getattr(commit, "commit_url", repo_id)
        )
    return output_dir
