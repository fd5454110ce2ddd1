"""Run GradInit on each process of a torch.distributed job (launched by the tests).

``core`` mode: each rank takes its own half of every global batch; the scales each rank
ends with are written to <out>/scales-rank<R>.json with the world size it really ran with.
``trainer`` mode: GradInitTrainer trains and saves; each rank records its scales and how
often it wrote GradInit files, to <out>/trainer-rank<R>.json.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testing_utils import seq2seq_examples, tiny_marian  # noqa: E402
from transformers import default_data_collator  # noqa: E402

from hf_gradinit import GradInitConfig, compute_gradinit_scales  # noqa: E402


def main(out: str) -> None:
    from accelerate import PartialState

    state = PartialState(cpu=True)
    torch.manual_seed(0)
    model = tiny_marian().to(state.device)
    global_batches = [default_data_collator(seq2seq_examples(12, seed=i)) for i in range(3)]
    half = 12 // state.num_processes
    lo = state.process_index * half
    local = [{k: v[lo : lo + half] for k, v in b.items()} for b in global_batches]
    config = GradInitConfig(iterations=6, scale_lr=2e-2, overlap=1.0, gamma=0.9, probe_steps=0)
    result = compute_gradinit_scales(model, local, config, accelerator=state, show_progress=False)
    record = {
        "world_size": torch.distributed.get_world_size()
        if torch.distributed.is_initialized()
        else 1,
        "num_processes": state.num_processes,
        "scales": result.scales,
        "branches": [h["branch"] for h in result.history],
    }
    Path(out, f"scales-rank{state.process_index}.json").write_text(json.dumps(record))


def trainer_main(out: str) -> None:
    import hf_gradinit.trainer as trainer_module
    from hf_gradinit import GradInitTrainer, GradInitTrainingArguments

    writes = []
    real_write = trainer_module.write_gradinit_files

    def counting_write(*args, **kwargs):
        writes.append(str(args[0]))
        return real_write(*args, **kwargs)

    trainer_module.write_gradinit_files = counting_write
    torch.manual_seed(0)
    args = GradInitTrainingArguments(
        output_dir=str(Path(out, "run")),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        per_device_train_batch_size=6,
        max_steps=2,
        learning_rate=1e-3,
        gradinit_iterations=3,
        gradinit_probe_steps=2,  # the probe's losses are averaged across processes too
        save_strategy="no",
        seed=0,
    )
    trainer = GradInitTrainer(
        model=tiny_marian(),
        args=args,
        train_dataset=seq2seq_examples(48),
        data_collator=default_data_collator,
    )
    trainer.train()
    trainer.save_model()
    record = {
        "world_size": torch.distributed.get_world_size(),
        "scales": trainer.gradinit_result.scales,
        "writes": writes,
    }
    Path(out, f"trainer-rank{args.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    (trainer_main if sys.argv[2:] == ["trainer"] else main)(sys.argv[1])
