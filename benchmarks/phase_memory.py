"""Peak memory and time of a whole run with GradInit (the scales, the probe as the run's first
steps, training) next to the same run without it, each in a fresh process.

Cases: a bf16 Post-LN Marian (6+6 layers, d_model 256: 12.5M parameters, Adam) on token
batches, and a ViT on 64x64 images (the probe's batches used to be drawn up front and kept).
Peak memory is the growth of the process's peak RSS during ``trainer.train()`` over what the
model and data already held (on CUDA: torch.cuda.max_memory_allocated). Read the ratios, not
the absolute numbers: the machines are noisy.

    python benchmarks/phase_memory.py          # writes results/phase_memory.{json,md}
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CASES = ("marian-bf16", "vit-images")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(case: str):
    import torch
    from transformers import MarianConfig, MarianMTModel, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if case == "marian-bf16":
        config = MarianConfig(
            vocab_size=8000, d_model=256, encoder_layers=6, decoder_layers=6,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=1024,
            decoder_ffn_dim=1024, max_position_embeddings=64, activation_function="relu",
            scale_embedding=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )  # fmt: skip
        model = MarianMTModel(config).to(torch.bfloat16)
        data = [
            {
                "input_ids": torch.randint(3, 8000, (32,), generator=g),
                "attention_mask": torch.ones(32, dtype=torch.long),
                "labels": torch.randint(3, 8000, (32,), generator=g),
            }
            for _ in range(256)
        ]
    else:
        config = ViTConfig(
            image_size=64, patch_size=8, num_channels=3, hidden_size=128, num_hidden_layers=6,
            num_attention_heads=4, intermediate_size=512, num_labels=10,
        )  # fmt: skip
        model = ViTForImageClassification(config)
        data = [
            {"pixel_values": torch.randn(3, 64, 64, generator=g), "labels": int(i % 10)}
            for i in range(512)
        ]
    return model, data


def run_case(case: str, gradinit: bool, steps: int, probe_steps: int, iterations: int) -> dict:
    """One run in this process: returns the peak-memory growth (MiB) and the time (s)."""
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    from hf_gradinit import GradInitCallback, GradInitConfig

    torch.set_num_threads(1)
    model, data = build(case)
    callbacks = []
    if gradinit:
        config = GradInitConfig(iterations=iterations, probe_steps=probe_steps)
        callbacks = [GradInitCallback(config)]
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, use_cpu=True, report_to="none", disable_tqdm=True,
            save_strategy="no", max_steps=steps, per_device_train_batch_size=16,
            learning_rate=1e-3, logging_steps=10, bf16=case == "marian-bf16",
        )  # fmt: skip
        trainer = Trainer(
            model=model, args=args, train_dataset=data, data_collator=default_data_collator,
            callbacks=callbacks,
        )  # fmt: skip
        before = _rss_mib()
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        peak = _rss_mib() - before
    return {"peak_mib": round(peak, 1), "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--probe_steps", type=int, default=10)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    p.add_argument("--gradinit", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no_write", action="store_true")
    args = p.parse_args(argv)
    if args.case:  # the subprocess
        out = run_case(args.case, args.gradinit, args.steps, args.probe_steps, args.iterations)
        print(json.dumps(out))
        return out
    rows = {}
    for case in CASES:
        for gradinit in (False, True):
            cmd = [sys.executable, __file__, "--case", case, "--steps", str(args.steps)]
            cmd += ["--probe_steps", str(args.probe_steps), "--iterations", str(args.iterations)]
            cmd += ["--gradinit"] if gradinit else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows[(case, gradinit)] = json.loads(out.strip().splitlines()[-1])
    table = [
        f"Written by `python benchmarks/phase_memory.py` ({args.steps} training steps, GradInit "
        f"{args.iterations} iterations and a {args.probe_steps}-step probe; one thread; fresh "
        "process per run).\n",
        "| case | peak memory growth, no GradInit (MiB) | with GradInit (MiB) | ratio | time ratio |",
        "|---|---|---|---|---|",
    ]
    result = {}
    for case in CASES:
        a, b = rows[(case, False)], rows[(case, True)]
        ratio = b["peak_mib"] / max(a["peak_mib"], 1e-9)
        result[case] = {"without": a, "with": b, "peak_ratio": round(ratio, 2)}
        table.append(
            f"| {case} | {a['peak_mib']} | {b['peak_mib']} | {ratio:.2f}x | "
            f"{b['seconds'] / max(a['seconds'], 1e-9):.2f}x |"
        )
    text = "\n".join(table) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "phase_memory.json").write_text(json.dumps(result, indent=1) + "\n")
        (RESULTS / "phase_memory.md").write_text("# Peak memory of a run with GradInit\n\n" + text)
    return result


if __name__ == "__main__":
    main()
