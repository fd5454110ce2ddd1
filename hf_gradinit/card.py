"""The model card and the plot of a GradInit-initialized model.

The card is rendered from ``templates/model_card.md`` with
``huggingface_hub.ModelCard.from_template``: Hub metadata, whether the learned scales were
applied (or the probe kept the original init, and why), the settings, the scales by layer
and, for a trained model, the trainer's hyperparameters and results.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .result import GradInitResult

PLOT_FILE = "gradinit_scales.png"
CARD_FILE = "README.md"
TAG = "gradinit"
TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"

PAPER = "https://arxiv.org/abs/2102.08098"
CITATION = """@inproceedings{zhu2021gradinit,
  title     = {GradInit: Learning to Initialize Neural Networks for Stable and Efficient Training},
  author    = {Zhu, Chen and Ni, Renkun and Xu, Zheng and Kong, Kezhi and Huang, W. Ronny and Goldstein, Tom},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2021}
}"""


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


# --------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [v for v in value if v]


def make_model_card(
    result: GradInitResult,
    *,
    model_name: str,
    model_class: str | None = None,
    repo_id: str | None = None,
    folder: str | os.PathLike | None = None,
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
    and why. Its usage line loads ``repo_id`` (give it when the card is pushed), else
    ``folder``, the folder the card and weights are written to, as given (``out/checkpoint-2``),
    else ``model_name``. With ``plot_file`` None the card gives ``plot_note`` instead of an
    image.
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
        source=repo_id or (Path(folder).as_posix() if folder is not None else model_name),
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
    folder: str | os.PathLike | None = None,
    tags: str | list[str] | None = None,
    results: Mapping[str, Any] | None = None,
    **card_kwargs: Any,
) -> ModelCard:
    """The card of a trainer's model: ``Trainer.create_model_card``'s metadata (``tags``,
    ``language``, ``dataset``...) and training table, ``results`` as the evaluation list.
    ``folder``: where the card goes (a checkpoint's folder; default ``output_dir``), the
    folder its usage line loads unless the trainer pushes to the Hub."""
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
    args = trainer.args
    return make_model_card(
        result,
        model_name=summary.model_name or os.path.basename(os.path.abspath(args.output_dir)),
        model_class=type(model).__name__,
        repo_id=trainer.hub_model_id or (args.hub_model_id if args.push_to_hub else None),
        folder=args.output_dir if folder is None else folder,
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
        optim=str(getattr(args.optim, "value", args.optim)),
        learning_rate=args.learning_rate,
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
