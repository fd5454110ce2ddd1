"""Why the 6+6 Post-LN model needs warmup at lr 2e-3: what one update does, step by step.

The corpus model of ``compute_study.py`` (the translation example made 6+6 deep, fairseq's
embedding layout, length-bucketed batches) at Adam lr 2e-3, 300 steps, trained with no
warmup, 300 steps of linear warmup, RAdam, and from GradInit's learned init (no probe: the
run trains from the learned init, so what it does is seen). After every step, on one fixed
batch (the first 32 validation pairs, model in eval mode, no dropout anyway):

* **output change per layer** (Liu et al. 2020, "Understanding the difficulty of training
  transformers": the amplification of an update by the residual branches): the relative
  change ||h_t - h_{t-1}|| / ||h_{t-1}|| of each layer's output and of the logits;
* **update-to-weight ratio per tensor kind**: ||W_t - W_{t-1}|| / ||W_{t-1}|| summed over
  the tensors of a kind (self-attention, cross-attention, feed-forward, norms, embeddings);
* **collapse**: the mean cosine similarity between the outputs at different positions of
  each layer (1: every position says the same, the unigram model's state) and the loss on
  the fixed batch.

    python benchmarks/warmup_mechanism.py            # 4 runs, 2 side by side (~15 min, CPU)
    python benchmarks/warmup_mechanism.py --report   # table + figure from the record
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RECORD = RESULTS / "warmup_mechanism.json"
BASE = ["--encoder_layers", "6", "--decoder_layers", "6", "--share_all_embeddings", "False"]
BASE += ["--learning_rate", "2e-3", "--max_steps", "300", "--seed", "1", "--logging_steps", "10"]
BASE += ["--do_eval", "False", "--do_predict", "False", "--save_strategy", "no"]
BASE += ["--report_to", "none", "--disable_tqdm", "True"]
METHODS = {
    "no warmup": ["--no_gradinit"],
    "warmup 300": ["--no_gradinit", "--warmup_steps", "300"],
    "RAdam": ["--no_gradinit", "--torch_optimizer", "radam"],
    "GradInit (learned init)": ["--gradinit_probe_steps", "0"],
}
COLLAPSE_COS = 0.9  # a layer "collapsed": its positions' outputs this similar on average


def kind(name: str) -> str:
    if "embed" in name or "shared" in name or "lm_head" in name:
        return "embeddings"
    if "layer_norm" in name or "layernorm" in name:
        return "norms"
    if "encoder_attn" in name:
        return "cross-attention"
    if "self_attn" in name:
        return "self-attention"
    if "fc1" in name or "fc2" in name:
        return "feed-forward"
    return "other"


def fixed_batch(tokenizer_dir: Path, n: int = 32) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    path = ROOT / "examples" / "translation" / "data" / "validation.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        pairs = [json.loads(line)["translation"] for _, line in zip(range(n), f)]
    batch = tokenizer(
        [p["de"] for p in pairs],
        text_target=[p["en"] for p in pairs],
        padding=True,
        truncation=True,
        max_length=64,
        return_tensors="pt",
    )
    batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
    return dict(batch)


def make_callback(batch: dict, record: dict):
    import torch
    from transformers import TrainerCallback

    class UpdateEffects(TrainerCallback):
        """After each step: the fixed batch's layer outputs and the weights, against the
        previous step's."""

        def __init__(self) -> None:
            self.previous: dict | None = None
            self.weights: dict | None = None

        def measure(self, model) -> dict:
            outputs: dict[str, torch.Tensor] = {}
            hooks = []
            for side in ("encoder", "decoder"):
                for i, layer in enumerate(getattr(model.model, side).layers):

                    def keep(_m, _a, out, key=f"{side[:3]}{i}"):
                        outputs[key] = (out[0] if isinstance(out, tuple) else out).detach()

                    hooks.append(layer.register_forward_hook(keep))
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    out = model(**{k: v.to(model.device) for k, v in batch.items()})
            finally:
                model.train(was_training)
                for h in hooks:
                    h.remove()
            outputs["logits"] = out.logits.detach()
            masks = {"enc": batch["attention_mask"].bool(), "dec": batch["labels"] != -100}
            cos = {}
            for key, h in outputs.items():
                if key == "logits":
                    continue
                rows = h[masks[key[:3]].to(h.device)].float()
                rows = torch.nn.functional.normalize(rows, dim=-1)
                n = rows.shape[0]
                cos[key] = float(((rows @ rows.T).sum() - n) / (n * (n - 1)))
            return dict(outputs=outputs, loss=float(out.loss), cos=cos)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.previous = self.measure(model)
            self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}
            record["steps"].append(
                dict(step=0, loss=self.previous["loss"], cos=self.previous["cos"])
            )

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            now = self.measure(model)
            change = {
                k: float(
                    (v - self.previous["outputs"][k]).norm() / self.previous["outputs"][k].norm()
                )
                for k, v in now["outputs"].items()
            }
            sums: dict[str, list[float]] = {}
            for n, p in model.named_parameters():
                w0 = self.weights[n]
                s = sums.setdefault(kind(n), [0.0, 0.0])
                s[0] += float((p.detach() - w0).pow(2).sum())
                s[1] += float(w0.pow(2).sum())
                w0.copy_(p.detach())
            ratio = {k: (a / b) ** 0.5 for k, (a, b) in sums.items() if b > 0}
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
            record["steps"].append(
                dict(
                    step=state.global_step,
                    lr=lr,
                    loss=now["loss"],
                    change=change,
                    ratio=ratio,
                    cos=now["cos"],
                )  # fmt: skip
            )
            self.previous = now

    return UpdateEffects()


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def run_one(method: str, tokenizer_dir: Path, out: Path, extra: list[str]) -> None:
    """One method in this process (the runner's code path, plus the measuring callback)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import translation_runner as runner
    from transformers import HfArgumentParser

    argv = [*BASE, *METHODS[method], *extra, "--tokenizer_name", str(tokenizer_dir)]
    argv += ["--output_dir", str(out.parent / "run"), "--cpu_threads", "1"]
    parser = HfArgumentParser(runner.StudyArguments, add_help=False, allow_abbrev=False)
    study, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    record = dict(method=method, command=["python", "benchmarks/translation_runner.py", *argv[:-4]])
    record["steps"] = []
    callback = make_callback(fixed_batch(tokenizer_dir), record)
    runner.run.main(
        runner.run_argv(rest),
        make_config=functools.partial(runner.study_config, study=study),
        make_trainer=functools.partial(
            runner.StudyTrainer, torch_optimizer=study.torch_optimizer, extra_callbacks=[callback]
        ),
    )
    out.write_text(json.dumps(_rounded(record)))


def onset(steps: list[dict]) -> tuple[int | None, str | None]:
    """The first step from which the decoder's last layer stays collapsed, and the first
    layer that collapsed at or before it."""
    last = max(k for k in steps[0]["cos"] if k.startswith("dec"))
    collapsed = [s["cos"][last] >= COLLAPSE_COS for s in steps]
    if not collapsed[-1]:
        return None, None
    k = len(collapsed)
    while k > 0 and collapsed[k - 1]:
        k -= 1
    step = steps[k]["step"]
    first = None
    for s in steps[: k + 1]:
        hit = [key for key, c in s["cos"].items() if c >= COLLAPSE_COS]
        if hit:
            first = f"{hit[0]} (step {s['step']})"
            break
    return step, first


def report(records: list[dict]) -> str:
    lines = ["# What one update does at lr 2e-3 (6+6 Post-LN Marian, seed 1)", ""]
    lines += ["`python benchmarks/warmup_mechanism.py` (record: `warmup_mechanism.json`).", ""]
    kinds = ["self-attention", "cross-attention", "feed-forward", "norms", "embeddings"]
    lines += [
        "| method | fixed-batch loss at 300 | logits change, steps 1-10 / 11-100 (mean) | "
        "largest layer change, steps 1-10 | "
        + " | ".join(f"{k} update/weight, steps 1-10" for k in kinds)
        + " | self-attention update/weight, steps 101-300"
        + " | decoder's last layer: cos >= 0.9 first at step | stays collapsed from step |"
        " first layer collapsed |",
        "|" + "---|" * (8 + len(kinds)),
    ]
    for r in records:
        steps = [s for s in r["steps"] if s["step"] > 0]
        early, mid = steps[:10], steps[10:100]
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        logit = f"{mean([s['change']['logits'] for s in early]):.3f} / {mean([s['change']['logits'] for s in mid]):.3f}"
        layer_means = {
            k: mean([s["change"][k] for s in early]) for k in early[0]["change"] if k != "logits"
        }
        top = max(layer_means, key=layer_means.get)
        ratios = " | ".join(f"{mean([s['ratio'].get(k, 0) for s in early]):.4f}" for k in kinds)
        step, first = onset(r["steps"])
        last = max(k for k in steps[0]["cos"] if k.startswith("dec"))
        reached = next((s["step"] for s in steps if s["cos"][last] >= COLLAPSE_COS), None)
        lines.append(
            f"| {r['method']} | {steps[-1]['loss']:.3f} | {logit} | {top} {layer_means[top]:.3f} | "
            f"{ratios} | {mean([s['ratio']['self-attention'] for s in steps[100:]]):.4f} | "
            f"{reached if reached is not None else 'never'} | "
            f"{step if step is not None else 'recovered'} | {first or '-'} |"
        )
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for r in records:
        steps = [s for s in r["steps"] if s["step"] > 0]
        x = [s["step"] for s in steps]
        axes[0, 0].plot(x, [s["change"]["logits"] for s in steps], label=r["method"], lw=1)
        axes[0, 1].plot(x, [s["ratio"].get("self-attention", 0) for s in steps], lw=1)
        last = max(k for k in steps[0]["cos"] if k.startswith("dec"))
        axes[1, 0].plot(x, [s["cos"][last] for s in steps], lw=1)
        axes[1, 1].plot(x, [s["loss"] for s in steps], lw=1)
    titles = [
        "logits change per update (relative)",
        "self-attention update / weight",
        "decoder last layer: mean cosine between positions",
        "loss on the fixed batch",
    ]
    for ax, title in zip(axes.flat, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0, 0].set_yscale("log")
    axes[0, 1].set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--one", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache_dir", type=Path, default=ROOT / "benchmarks/cache/mechanism")
    parser.add_argument("--record", type=Path, default=RECORD)
    parser.add_argument("extra", nargs="*", help="runner flags for every run (after --)")
    args = parser.parse_args(argv)
    if args.one:
        return run_one(args.one, args.cache_dir / "tokenizer", args.out, args.extra)
    if not args.report:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from compute_study import prepare_tokenizer

        prepare_tokenizer(args.cache_dir / "tokenizer")
        done = (
            {r["method"] for r in json.loads(args.record.read_text())}
            if args.record.exists()
            else set()
        )

        def one(method: str) -> dict:
            folder = args.cache_dir / method.split()[0]
            folder.mkdir(parents=True, exist_ok=True)
            out = folder / "record.json"
            command = [sys.executable, __file__, "--one", method, "--out", str(out)]
            command += ["--cache_dir", str(args.cache_dir), "--record", str(args.record)]
            command += ["--", *args.extra]
            with open(folder / "log.txt", "w") as log:
                subprocess.run(command, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            return json.loads(out.read_text())

        todo = [m for m in METHODS if m not in done]
        with ThreadPoolExecutor(args.workers) as pool:
            for record in pool.map(one, todo):
                records = json.loads(args.record.read_text()) if args.record.exists() else []
                args.record.write_text(json.dumps([*records, record]) + "\n")
                print(f"{record['method']} recorded", flush=True)
    records = json.loads(args.record.read_text())
    order = {m: i for i, m in enumerate(METHODS)}
    records.sort(key=lambda r: order.get(r["method"], 99))
    text = report(records)
    (args.record.with_suffix(".md")).write_text(text)
    plot(records, args.record.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
