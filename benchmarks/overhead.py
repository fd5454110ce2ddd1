"""What one GradInit iteration costs next to one training step on the same batch.

Model: the study's Post-LN Marian (6+6 layers, d_model 256, FFN 1024, 4 heads, relu,
scaled and tied embeddings). Time is measured side by side in one process (alternating,
median of repeats); peak memory is the growth of peak RSS during one operation, each in a
fresh subprocess (on CUDA: torch.cuda.max_memory_allocated). The machines are noisy:
read the ratios, not the absolute numbers.

    python benchmarks/overhead.py                      # CPU, writes benchmarks/results/
    python benchmarks/overhead.py --device cuda --batch_size 64
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import MarianConfig, MarianMTModel

from hf_gradinit import GradInitConfig, split_batch
from hf_gradinit.core.loop import ScaleLearner, inner_step, norm_direction
from hf_gradinit.core.probe import default_optimizer
from hf_gradinit.core.problem import ScaledModel, gradinit_mode

RESULTS = Path(__file__).parent / "results"

# One iteration of each kind. "gradinit_objective" and "gradinit_constraint" are what
# hf_gradinit runs by default (the bound's branch by a finite difference of gradients);
# "gradinit_constraint_exact" is the bound's branch by double backward (hvp=
# "double_backward"); "gradinit_lookahead_4" an objective iteration with lookahead_steps=4;
# "reference_style" is what a straight reimplementation of the reference does on every
# iteration: the double-backward graph through g is always built, even when the objective
# branch then ignores it, and S and S~ are each a full batch (as the prototype in
# shared/docs/measurements.md did); "probe_step" one step of the probe (the real optimizer
# on a copy of the weights; the probe takes 2 x probe_steps of them).
OPERATIONS = (
    "train_step",
    "gradinit_objective",
    "gradinit_constraint",
    "gradinit_constraint_exact",
    "gradinit_lookahead_4",
    "reference_style",
    "probe_step",
)


def build(args: argparse.Namespace):
    torch.manual_seed(0)
    config = MarianConfig(
        vocab_size=args.vocab_size,
        d_model=args.d_model,
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=args.ffn_dim,
        decoder_ffn_dim=args.ffn_dim,
        max_position_embeddings=256,
        activation_function="relu",
        scale_embedding=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        dropout=0.1,
    )
    model = MarianMTModel(config).to(args.device)
    g = torch.Generator().manual_seed(0)
    n, length = args.batch_size, args.seq_len
    batch = {
        "input_ids": torch.randint(3, args.vocab_size, (n, length), generator=g),
        "attention_mask": torch.ones(n, length, dtype=torch.long),
        "labels": torch.randint(3, args.vocab_size, (n, length), generator=g),
    }
    return model, {k: v.to(args.device) for k, v in batch.items()}


def make_operation(name: str, model, batch, args):
    """A zero-argument callable running one iteration of the named kind."""
    if name == "train_step":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
        model.train()

        def train_step():
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return train_step

    device = torch.device(args.device)
    problem = ScaledModel(model, device)
    generator = torch.Generator().manual_seed(0)

    def iteration(**settings):
        """One iteration of hf_gradinit's own loop (its batches: this one, again and again)."""
        config = GradInitConfig(eta=2e-3, **settings)
        loop = ScaleLearner(problem, itertools.repeat(batch), config, None)
        counter = itertools.count()
        return lambda: loop.iteration(next(counter))

    def reference_style():
        """The objective with the graph through g always built; S and S~ full batches."""
        config = GradInitConfig(eta=2e-3)
        alpha = problem.ones().requires_grad_(True)
        batch_s, batch_t = split_batch(batch, 1.0, generator)
        _, grads = problem.gradient(alpha, batch_s, create_graph=True)
        steps = inner_step([g.detach() for g in grads], config)
        del grads
        problem.objective_grad(alpha, steps, config.eta, batch_t)

    def probe_step():
        make = default_optimizer(GradInitConfig(eta=1e-3))
        state = {}

        def step():  # the first call also makes the probe's copy of the weights
            if not state:
                named = list(problem.parameters_at({}))
                state.update(optimizer=make(named), leaves=dict(named))
            optimizer, leaves = state["optimizer"], state["leaves"]
            _, grads = problem.loss_and_grad(leaves, batch)
            for t, g in zip(leaves.values(), grads):
                t.grad = g
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def run(make, double_backward: bool = False):
        with gradinit_mode(model, device, double_backward):
            fn = make()

        def wrapped():
            with gradinit_mode(model, device, double_backward):
                fn()

        return wrapped

    bound = dict(gamma=1e-9, gamma_unit="absolute")  # every iteration in the bound's branch
    return {
        "gradinit_objective": lambda: run(iteration),
        "reference_style": lambda: run(lambda: reference_style, True),
        "gradinit_constraint": lambda: run(lambda: iteration(**bound)),
        "gradinit_constraint_exact": lambda: run(
            lambda: iteration(**bound, hvp="double_backward"), True
        ),
        "gradinit_lookahead_4": lambda: run(lambda: iteration(lookahead_steps=4)),
        "probe_step": lambda: run(probe_step),
    }[name]()


def hvp_accuracy(args) -> dict[str, float]:
    """Relative error (vector l2) of the finite-difference norm gradient in float32 and
    float64 against the exact double-backward one in float64, on the benchmark's model at
    its init (dropout off) and an 8-sentence slice of its batch."""
    model, batch = build(args)
    model = model.to(torch.float64).eval()
    batch = {k: v[:8] for k, v in batch.items()}
    device = torch.device(args.device)
    out = {}
    with gradinit_mode(model, device, True):
        exact_problem = ScaledModel(model, device)
        alpha = exact_problem.ones().requires_grad_(True)
        for norm_type in ("l1", "l2"):
            _, grads = exact_problem.gradient(alpha, batch, create_graph=True)
            direction = norm_direction([g.detach() for g in grads], norm_type)
            exact = exact_problem.norm_grad(alpha, grads, direction)
            for dtype in (torch.float64, torch.float32):
                model.to(dtype)
                problem = ScaledModel(model, device)
                a = problem.ones()
                _, plain = problem.gradient(a, batch)
                d = norm_direction(plain, norm_type)
                fd = problem.norm_grad_fd(a, d, batch, problem.w_dot(plain)).to(torch.float64)
                out[f"{norm_type}_{str(dtype).split('.')[-1]}"] = float(
                    (fd - exact).norm() / exact.norm()
                )
            model.to(torch.float64)
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_times(args) -> dict[str, list[float]]:
    model, batch = build(args)
    ops = {name: make_operation(name, model, batch, args) for name in OPERATIONS}
    for fn in ops.values():  # warm up (allocator, Adam state)
        fn()
    times: dict[str, list[float]] = {name: [] for name in OPERATIONS}
    for _ in range(args.repeats):
        for name, fn in ops.items():  # interleaved, so drift hits all alike
            _sync(args.device)
            t0 = time.perf_counter()
            fn()
            _sync(args.device)
            times[name].append(time.perf_counter() - t0)
    return times


def measure_memory_one(args, name: str) -> float:
    """Peak memory growth (MiB) of one operation, in this (fresh) process."""
    model, batch = build(args)
    fn = make_operation(name, model, batch, args)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # reset the kernel's peak RSS (VmHWM)
        f.write("5")
    base = _status_mib("VmRSS")
    fn()
    return _status_mib("VmHWM") - base


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status (peak RSS needs Linux)")


def measure_memory(args) -> dict[str, float]:
    out = {}
    for name in OPERATIONS:
        cmd = [sys.executable, __file__, "--_memory_of", name, *sys.argv[1:]]
        cmd = [c for c in cmd if c != "--write"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[name] = float(result.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=32)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--ffn_dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's). 1 keeps the ratios steady on a busy machine, "
        "where a descheduled OpenMP thread stalls every parallel region",
    )
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/")
    parser.add_argument("--_memory_of", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory_of:
        print(measure_memory_one(args, args._memory_of))
        return {}

    load_before = os.getloadavg()[0]
    times = measure_times(args)
    memory = measure_memory(args)
    accuracy = hvp_accuracy(args)
    load_after = os.getloadavg()[0]
    median = {k: statistics.median(v) for k, v in times.items()}
    base_t, base_m = median["train_step"], memory["train_step"]
    rows = [
        "| operation | time (s, median) | x train step | peak memory growth (MiB) | x train step |",
        "|---|---|---|---|---|",
    ]
    for name in OPERATIONS:
        rows.append(
            f"| {name} | {median[name]:.3f} | {median[name] / base_t:.2f} | "
            f"{memory[name]:.0f} | {memory[name] / base_m:.2f} |"
        )
    table = "\n".join(rows)
    print(table)
    accuracy_rows = ["| norm | dtype | forward difference |", "|---|---|---|"]
    for norm_type in ("l1", "l2"):
        for dtype in ("float64", "float32"):
            error = accuracy[f"{norm_type}_{dtype}"]
            accuracy_rows.append(f"| {norm_type} | {dtype} | {error:.1e} |")
    accuracy_table = "\n".join(accuracy_rows)
    print(accuracy_table)
    report = {
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "threads": torch.get_num_threads(),
        "load_average": [load_before, load_after],
        "torch": torch.__version__,
        "times_s": times,
        "median_s": median,
        "peak_memory_growth_mib": memory,
        "time_ratio_objective": median["gradinit_objective"] / base_t,
        "time_ratio_constraint": median["gradinit_constraint"] / base_t,
        "memory_ratio_objective": memory["gradinit_objective"] / base_m,
        "memory_ratio_constraint": memory["gradinit_constraint"] / base_m,
        "hvp_relative_error": accuracy,
    }
    if args.write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/overhead.py " + " ".join(argv or sys.argv[1:])
        (RESULTS / "overhead.md").write_text(
            "# GradInit iteration vs training step\n\n"
            f"Command: `{command}`\n\n"
            f"Post-LN Marian {args.layers}+{args.layers} layers, d_model {args.d_model}, FFN "
            f"{args.ffn_dim}, vocab {args.vocab_size}; batch {args.batch_size} x "
            f"{args.seq_len} tokens; device {args.device}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}; {args.repeats} interleaved repeats; load average "
            f"{load_before:.1f} before, {load_after:.1f} after (other jobs on the machine "
            "slow every operation alike, but make the ratios noisier).\n\n"
            f"{table}\n\n"
            "- `train_step`: forward + backward + Adam step, dropout on.\n"
            "- `gradinit_objective`: the usual iteration: gradient on S (2/3 of the batch), "
            "sign step, loss and scale gradient on S~ (the other overlapping 2/3).\n"
            "- `gradinit_constraint`: an iteration whose gradient norm is above the bound, as "
            'hf_gradinit runs it (`hvp="forward_difference"`): gradient on S, then one '
            "more gradient on S at theta + r d; no graph through g.\n"
            "- `gradinit_constraint_exact`: the same by double backward "
            '(`hvp="double_backward"`): gradient on S with its graph, then a '
            "Hessian-vector product through it.\n"
            "- `gradinit_lookahead_4`: an objective iteration with `lookahead_steps=4`: four "
            "gradients along the simulated trajectory, then the loss on S~.\n"
            "- `reference_style`: the objective iteration as a straight reimplementation "
            "does it: the double-backward graph through g built every time, and S and S~ "
            "each a full batch.\n"
            "- `probe_step`: one step of the probe: forward, backward and an Adam step on a "
            "copy of the weights (its memory: the first step's, the copy and Adam's state "
            "included). The probe takes 2 x `probe_steps` of them (300 by default: 600 "
            "steps), on top of the iterations.\n\n"
            "## Accuracy of the norm's gradient without double backward\n\n"
            "Relative error (l2 over all scales) of the finite-difference gradient of the "
            "gradient norm against the exact one (double backward, float64), on this model "
            "at its init, dropout off, 8 sentences:\n\n"
            f"{accuracy_table}\n"
        )
        (RESULTS / "overhead.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
