"""Does GradInit let a Post-LN Transformer train without learning-rate warmup?

Trains the translation example's Post-LN Marian from scratch on the shipped De-En corpus
with a fixed step budget per run, comparing, at each learning rate and Adam beta2:

* ``baseline``: no warmup;
* ``warmup-W``: linear warmup over W steps (the best of a small set is reported);
* ``gradinit``: GradInit (eta = ``--eta_multiplier`` x lr), then no warmup.

Each run is cached as JSON under ``--cache_dir`` (delete a file to redo a run), so the
study resumes after an interruption. Results go to ``benchmarks/results/``: a markdown
table, loss curves and the learned scales per layer.

    python benchmarks/no_warmup_study.py                       # CPU preset (~90 min, 2 cores)
    python benchmarks/no_warmup_study.py --preset gpu --device cuda
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "translation" / "data"
RESULTS = Path(__file__).resolve().parent / "results"

PRESETS = {
    # Fits ~90 minutes on a 2-core CPU (two runs side by side, one thread each).
    "cpu": dict(
        d_model=128,
        ffn_dim=512,
        layers=6,
        heads=4,
        vocab_size=8000,
        batch_size=32,
        max_len=48,
        steps=300,
        eval_sentences=100,
        gradinit_iterations=50,
    ),
    # The paper's transformer_iwslt_de_en sizes, for a GPU.
    "gpu": dict(
        d_model=512,
        ffn_dim=1024,
        layers=6,
        heads=4,
        vocab_size=10000,
        batch_size=128,
        max_len=64,
        steps=4000,
        eval_sentences=1000,
        gradinit_iterations=780,
    ),
}


# --------------------------------------------------------------------------------------
# Data and tokenizer
# --------------------------------------------------------------------------------------


def read_pairs(split: str) -> list[tuple[str, str]]:
    with gzip.open(DATA / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line)["translation"] for line in f]
    return [(r["de"], r["en"]) for r in rows]


def get_tokenizer(cache_dir: Path, vocab_size: int):
    """A joint BPE (Metaspace, so decoding detokenizes) trained on the training split."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    path = cache_dir / f"tokenizer-{vocab_size}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False
    )
    pairs = read_pairs("train")
    tok.train_from_iterator((s for pair in pairs for s in pair), trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok


def encode(tok, pairs, max_len: int):
    eos = tok.token_to_id("</s>")
    src = [e.ids[: max_len - 1] + [eos] for e in tok.encode_batch([p[0] for p in pairs])]
    tgt = [e.ids[: max_len - 1] + [eos] for e in tok.encode_batch([p[1] for p in pairs])]
    return src, tgt


def collate(src, tgt, index):
    import torch

    n = len(index)
    ls, lt = max(len(src[i]) for i in index), max(len(tgt[i]) for i in index)
    input_ids = torch.zeros(n, ls, dtype=torch.long)
    attention = torch.zeros(n, ls, dtype=torch.long)
    labels = torch.full((n, lt), -100, dtype=torch.long)
    for row, i in enumerate(index):
        input_ids[row, : len(src[i])] = torch.tensor(src[i])
        attention[row, : len(src[i])] = 1
        labels[row, : len(tgt[i])] = torch.tensor(tgt[i])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def batches(src, tgt, batch_size: int, seed: int, pool: int = 50):
    """Random batches of sentences of similar length (less padding, same data).

    Shuffle, cut into pools of ``pool`` batches, sort each pool by length, batch it and
    shuffle the batches: every sentence is seen once per epoch, in a random batch.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(src), generator=g).tolist()
        chunks = []
        for k in range(0, len(order), pool * batch_size):
            chunk = sorted(order[k : k + pool * batch_size], key=lambda i: len(src[i]))
            chunks += [
                chunk[j : j + batch_size] for j in range(0, len(chunk) - batch_size + 1, batch_size)
            ]
        for j in torch.randperm(len(chunks), generator=g).tolist():
            yield collate(src, tgt, chunks[j])


def unigram_entropy(tgt) -> float:
    """Loss of a model that predicts the target unigram distribution: the Post-LN stall."""
    counts: dict[int, int] = {}
    for seq in tgt:
        for t in seq:
            counts[t] = counts.get(t, 0) + 1
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


# --------------------------------------------------------------------------------------
# Model and one run
# --------------------------------------------------------------------------------------


def build_model(p: dict, vocab_size: int, seed: int):
    import torch
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(seed)
    config = MarianConfig(
        vocab_size=vocab_size,
        d_model=p["d_model"],
        encoder_layers=p["layers"],
        decoder_layers=p["layers"],
        encoder_attention_heads=p["heads"],
        decoder_attention_heads=p["heads"],
        encoder_ffn_dim=p["ffn_dim"],
        decoder_ffn_dim=p["ffn_dim"],
        max_position_embeddings=256,
        activation_function="relu",
        scale_embedding=True,
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=True,
    )
    return MarianMTModel(config)


def gradinit_scales(run: dict, p: dict, cache_dir: Path, device: str) -> dict:
    """GradInit scales for this lr and seed (beta2 does not enter: the step is sign(g))."""
    import torch

    from hf_gradinit import GradInitConfig, compute_gradinit_scales

    g = run["gradinit"]
    key = f"gradinit-lr{run['lr']}-seed{run['seed']}-" + _hash(g)
    path = cache_dir / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    tok = get_tokenizer(cache_dir, p["vocab_size"])
    src, tgt = encode(tok, read_pairs("train"), p["max_len"])
    model = build_model(p, tok.get_vocab_size(), run["seed"]).to(device)
    config = GradInitConfig(
        eta=g["eta_multiplier"] * run["lr"],
        scale_lr=g["scale_lr"],
        iterations=g["iterations"],
        gamma=g["gamma"],
        gamma_unit="init",
        seed=run["seed"],
    )
    # S and S~ are each one training batch: 1.5 batches, split in thirds.
    data = batches(src, tgt, p["batch_size"] * 3 // 2, seed=10_000 + run["seed"])
    one_pass = (next(data) for _ in range(g["iterations"]))
    t0 = time.perf_counter()
    result = compute_gradinit_scales(model, one_pass, config, show_progress=False)
    print(
        f"  GradInit lr {run['lr']}: {time.perf_counter() - t0:.0f}s, {result.summary()}",
        flush=True,
    )
    out = {
        "scales": result.scales,
        "kinds": result.kinds,
        "summary": result.summary(),
        "time_s": time.perf_counter() - t0,
        "history": result.history,
    }
    path.write_text(json.dumps(out))
    del torch
    return out


def run_one(run: dict, p: dict, cache_dir: str, device: str) -> dict:
    """Train one configuration (or load it from the cache)."""
    import torch

    torch.set_num_threads(p.get("threads", 1))
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{run['name']}.json"
    if path.exists():
        return json.loads(path.read_text())
    tok = get_tokenizer(cache_dir, p["vocab_size"])
    src, tgt = encode(tok, read_pairs("train"), p["max_len"])
    model = build_model(p, tok.get_vocab_size(), run["seed"]).to(device)
    gradinit_time = 0.0
    if run.get("gradinit"):
        from hf_gradinit import apply_scales

        g = gradinit_scales(run, p, cache_dir, device)
        apply_scales(model, g["scales"])
        gradinit_time = g["time_s"]
    optimizer = torch.optim.Adam(
        model.parameters(), lr=run["lr"], betas=(0.9, run["beta2"]), eps=1e-8
    )
    warmup = run["warmup"]
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
    )
    model.train()
    losses = []
    data = batches(src, tgt, p["batch_size"], seed=run["seed"])
    t0 = time.perf_counter()
    for _ in range(p["steps"]):
        batch = {k: v.to(device) for k, v in next(data).items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
        if len(losses) % 100 == 0:
            print(
                f"  {run['name']}: step {len(losses)} loss {statistics.mean(losses[-25:]):.3f} "
                f"({(time.perf_counter() - t0) / len(losses):.2f} s/step)",
                flush=True,
            )
    train_time = time.perf_counter() - t0
    bleu = evaluate_bleu(model, tok, p, device) if math.isfinite(losses[-1]) else 0.0
    final = statistics.mean(losses[-25:]) if math.isfinite(losses[-1]) else float("nan")
    stall = unigram_entropy(tgt)
    out = {
        **run,
        "losses": losses,
        "final_loss": final,
        "unigram_entropy": stall,
        # stalled at (or above) the unigram loss, or NaN: the Post-LN failure
        "diverged": not math.isfinite(final) or final > stall - 0.25,
        "bleu": bleu,
        "train_time_s": train_time,
        "gradinit_time_s": gradinit_time,
    }
    path.write_text(json.dumps(out))
    return out


def evaluate_bleu(model, tok, p, device) -> float:
    """Greedy sacreBLEU on the first ``eval_sentences`` validation pairs (detokenized)."""
    import sacrebleu
    import torch

    pairs = read_pairs("validation")[: p["eval_sentences"]]
    src, _ = encode(tok, pairs, p["max_len"])
    model.eval()
    hyps = []
    with torch.no_grad():
        for k in range(0, len(src), 50):
            idx = list(range(k, min(k + 50, len(src))))
            batch = collate(src, src, idx)
            out = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=p["max_len"] + 16,
                num_beams=1,
                do_sample=False,
            )
            hyps += [tok.decode(o.tolist(), skip_special_tokens=True) for o in out]
    return sacrebleu.corpus_bleu(hyps, [[en for _, en in pairs]]).score


def _hash(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


# --------------------------------------------------------------------------------------
# The grid, the table and the plots
# --------------------------------------------------------------------------------------


def grid(args) -> list[dict]:
    gradinit = dict(
        iterations=args.gradinit_iterations,
        scale_lr=args.scale_lr,
        eta_multiplier=args.eta_multiplier,
        gamma=args.gamma,
    )
    runs = []
    for seed in args.seeds:
        for lr in args.lrs:
            for beta2 in args.beta2s:
                if seed != args.seeds[0] and (lr, beta2) not in _second_seed_cells(args):
                    continue
                common = dict(lr=lr, beta2=beta2, seed=seed)
                tag = f"lr{lr}-b{beta2}-s{seed}"
                runs.append(
                    {**common, "method": "baseline", "warmup": 0, "name": f"baseline-{tag}"}
                )
                for w in args.warmups:
                    runs.append(
                        {**common, "method": f"warmup-{w}", "warmup": w, "name": f"warmup{w}-{tag}"}
                    )
                runs.append(
                    {
                        **common,
                        "method": "gradinit",
                        "warmup": 0,
                        "gradinit": gradinit,
                        "name": f"gradinit-{_hash(gradinit)}-{tag}",
                    }
                )
    return runs


def _second_seed_cells(args):
    return {(lr, args.beta2s[0]) for lr in args.lrs}


def label(r: dict) -> str:
    """The method, with GradInit's settings (variants are told apart in the table)."""
    g = r.get("gradinit")
    if not g:
        return r["method"]
    bound = f", bound {g['gamma']:g}x init" if g.get("gamma") else ""
    return (
        f"gradinit ({g['iterations']} it, scale lr {g['scale_lr']:g}, "
        f"eta {g['eta_multiplier']:g}x lr{bound})"
    )


def load_cached(cache: Path) -> list[dict]:
    """Every finished training run of this preset (all variants ever run)."""
    runs = []
    for path in sorted(cache.glob("*.json")):
        if path.name.startswith(("gradinit-lr", "tokenizer")):
            continue
        runs.append(json.loads(path.read_text()))
    return runs


def summarize(results: list[dict], args) -> str:
    cells: dict[tuple, dict[str, list[dict]]] = {}
    for r in results:
        cells.setdefault((r["lr"], r["beta2"]), {}).setdefault(label(r), []).append(r)
    lines = [
        "| lr | beta2 | method | seeds | final loss | val BLEU | diverged/stalled | "
        "GradInit time (% of run) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (lr, beta2), methods in sorted(cells.items()):
        warm = {m: rs for m, rs in methods.items() if m.startswith("warmup")}
        best_warm = (
            min(warm, key=lambda m: _mean(r["final_loss"] for r in warm[m])) if warm else None
        )
        gradinit = sorted(m for m in methods if m.startswith("gradinit"))
        for method in ["baseline", *sorted(warm, key=lambda m: int(m.split("-")[1])), *gradinit]:
            rs = methods.get(method)
            if not rs:
                continue
            row_label = method + (" (best warmup)" if method == best_warm else "")
            loss = ", ".join(f"{r['final_loss']:.2f}" for r in rs)
            bleu = ", ".join(f"{r['bleu']:.1f}" for r in rs)
            div = ", ".join("yes" if r["diverged"] else "no" for r in rs)
            share = (
                ", ".join(
                    f"{100 * r['gradinit_time_s'] / (r['gradinit_time_s'] + r['train_time_s']):.0f}%"
                    for r in rs
                )
                if method.startswith("gradinit")
                else "-"
            )
            lines.append(
                f"| {lr:g} | {beta2:g} | {row_label} | {len(rs)} | {loss} | {bleu} | {div} | {share} |"
            )
    return "\n".join(lines)


def _mean(xs) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return statistics.mean(xs) if xs else float("inf")


def plot_losses(results: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs, beta2s = sorted({r["lr"] for r in results}), sorted({r["beta2"] for r in results})
    fig, axes = plt.subplots(
        len(beta2s), len(lrs), figsize=(4.2 * len(lrs), 3.2 * len(beta2s)), squeeze=False
    )
    palette = ["tab:blue", "tab:purple", "tab:cyan", "tab:green", "tab:brown", "tab:pink"]
    colors = {"baseline": "tab:red", "warmup-50": "tab:orange", "warmup-100": "tab:olive"}
    for i, lab in enumerate(sorted({label(r) for r in results} - set(colors))):
        colors[lab] = palette[i % len(palette)]
    for r in sorted(results, key=label):
        ax = axes[beta2s.index(r["beta2"])][lrs.index(r["lr"])]
        smooth = _smooth(r["losses"], 15)
        style = "-" if r["seed"] == args.seeds[0] else ":"
        ax.plot(smooth, style, color=colors[label(r)], lw=1.2, label=f"{label(r)} s{r['seed']}")
    for i, b2 in enumerate(beta2s):
        for j, lr in enumerate(lrs):
            ax = axes[i][j]
            ax.set_title(f"lr {lr:g}, beta2 {b2:g}", fontsize=9)
            ax.set_ylim(2, 8.5)
            ax.axhline(results[0]["unigram_entropy"], color="gray", lw=0.6, ls="--")
            ax.set_xlabel("step", fontsize=8)
            ax.set_ylabel("train loss (smoothed)", fontsize=8)
            ax.tick_params(labelsize=7)
    uniq = {}
    for ax in axes.flat:
        for handle, lab in zip(*ax.get_legend_handles_labels()):
            uniq.setdefault(lab, handle)
        if not ax.lines[1:]:  # only the unigram line: this cell was not run
            ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", color="gray")
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=3, fontsize=7)
    fig.suptitle(
        "Post-LN Marian on LibreOffice help De-En: no warmup vs warmup vs GradInit "
        "(dashed: unigram loss = the stall)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(xs, k):
    out, acc = [], []
    for x in xs:
        acc.append(x)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_scales(scales: dict[str, float], title: str, path: Path) -> None:
    """The paper's figure: learned scale per layer, encoder vs decoder, by module type."""
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {
        "attention": re.compile(r"(self_attn|encoder_attn)\.(q|k|v|out)_proj\.weight$"),
        "FFN": re.compile(r"fc[12]\.weight$"),
        "LayerNorm": re.compile(r"layer_norm\.weight$"),
    }
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, side in zip(axes, ("encoder", "decoder")):
        for gname, pattern in groups.items():
            xs, ys = [], []
            for name, s in scales.items():
                m = re.search(rf"{side}\.layers\.(\d+)\.", name)
                if m and pattern.search(name):
                    xs.append(
                        int(m.group(1)) + {"attention": -0.2, "FFN": 0, "LayerNorm": 0.2}[gname]
                    )
                    ys.append(s)
            ax.scatter(xs, ys, s=14, label=gname, alpha=0.8)
        ax.set_title(side, fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.axhline(1.0, color="gray", lw=0.6, ls="--")
        ax.set_yscale("log")
    axes[0].set_ylabel("learned scale (log)", fontsize=8)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3])
    parser.add_argument("--beta2s", type=float, nargs="+", default=[0.98, 0.999])
    parser.add_argument("--warmups", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=None, help="override the preset")
    parser.add_argument("--gradinit_iterations", type=int, default=None)
    parser.add_argument("--scale_lr", type=float, default=1e-2)
    parser.add_argument("--eta_multiplier", type=float, default=2.0)
    parser.add_argument("--gamma", type=float, default=None, help="bound, x the init's norm")
    parser.add_argument("--workers", type=int, default=2, help="runs side by side, 1 thread each")
    parser.add_argument("--cache_dir", default=str(Path(__file__).parent / "cache" / "study"))
    parser.add_argument("--results_name", default="no_warmup_study")
    parser.add_argument(
        "--only", nargs="+", default=None, help="run only runs whose name contains one of these"
    )
    parser.add_argument(
        "--report_only", action="store_true", help="run nothing; table and plots from the cache"
    )
    parser.add_argument(
        "--all_cached",
        action="store_true",
        help="table and plots from every cached run of this preset (all variants), "
        "not only this grid's",
    )
    args = parser.parse_args(argv)
    p = dict(PRESETS[args.preset])
    if args.steps:
        p["steps"] = args.steps
    args.gradinit_iterations = args.gradinit_iterations or p["gradinit_iterations"]
    p["threads"] = 1 if args.device == "cpu" else os.cpu_count()
    cache = Path(args.cache_dir) / f"{args.preset}-{p['steps']}steps"
    cache.mkdir(parents=True, exist_ok=True)
    get_tokenizer(cache, p["vocab_size"])  # once, before the workers start

    runs = grid(args)
    if args.only:
        runs = [r for r in runs if any(o in r["name"] for o in args.only)]
    if args.report_only:
        runs = [r for r in runs if (cache / f"{r['name']}.json").exists()]
    # GradInit scales first (shared by both beta2 runs of an lr), then the training runs.
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        scale_jobs = {(r["lr"], r["seed"]): r for r in runs if r.get("gradinit")}
        list(
            pool.map(
                _scales_job,
                scale_jobs.values(),
                [p] * len(scale_jobs),
                [str(cache)] * len(scale_jobs),
                [args.device] * len(scale_jobs),
            )
        )
        results = []
        for r in pool.map(
            run_one, runs, [p] * len(runs), [str(cache)] * len(runs), [args.device] * len(runs)
        ):
            results.append(r)
            print(
                f"{r['name']:45s} loss {r['final_loss']:.3f} bleu {r['bleu']:5.1f} "
                f"{'DIVERGED/STALLED' if r['diverged'] else ''}",
                flush=True,
            )
    wall = time.perf_counter() - t0

    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.results_name
    if args.all_cached:
        results = load_cached(cache)
    table = summarize(results, args)
    plot_losses(results, args, RESULTS / f"{name}_losses.png")
    first = next(r for r in runs if r.get("gradinit"))
    g = gradinit_scales(first, p, cache, args.device)
    plot_scales(
        g["scales"],
        f"GradInit scales (lr {first['lr']:g}, eta {first['gradinit']['eta_multiplier']:g}x lr, "
        f"{first['gradinit']['iterations']} it.)",
        RESULTS / f"{name}_scales.png",
    )
    command = "python benchmarks/no_warmup_study.py " + " ".join(argv if argv else sys.argv[1:])
    (RESULTS / f"{name}.md").write_text(
        f"# No-warmup study ({args.preset} preset)\n\nCommand: `{command}`\n\n"
        f"Model: Post-LN Marian {p['layers']}+{p['layers']}, d_model {p['d_model']}, FFN "
        f"{p['ffn_dim']}, {p['heads']} heads, joint BPE {p['vocab_size']}; batch "
        f"{p['batch_size']} sentences (max {p['max_len']} tokens), {p['steps']} steps, Adam "
        f"(0.9, beta2), no clipping, dropout 0.1, constant lr after warmup. GradInit: "
        f"{args.gradinit_iterations} iterations, scale lr {args.scale_lr}, eta = "
        f"{args.eta_multiplier} x lr, bound {args.gamma} (x the init's l1 norm), batches of "
        f"1.5 x {p['batch_size']} split in overlapping thirds. Final loss = mean of the last "
        f"25 steps; BLEU = greedy sacreBLEU on the first {p['eval_sentences']} validation "
        f"pairs; 'stalled' = final loss within 0.25 of the unigram loss "
        f"({results[0]['unigram_entropy']:.2f}) or NaN. Wall time {wall / 60:.1f} min with "
        f"{args.workers} worker(s).\n\n{table}\n\n"
        f"![losses]({name}_losses.png)\n\n![scales]({name}_scales.png)\n"
    )
    (RESULTS / f"{name}.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k != "losses"} for r in results], indent=1)
    )
    print(table)
    print(f"wall time {wall / 60:.1f} min")


def _scales_job(run, p, cache_dir, device):
    import torch

    torch.set_num_threads(p.get("threads", 1))
    gradinit_scales(run, p, Path(cache_dir), device)


if __name__ == "__main__":
    main()
