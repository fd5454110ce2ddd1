"""Run GradInit on each process of a torch.distributed job (launched by the tests).

Each rank takes its own half of every global batch; the scales each rank ends with are
written to <out>/scales-rank<R>.json with the world size it really ran with.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import seq2seq_examples, tiny_marian  # noqa: E402
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
    config = GradInitConfig(iterations=6, scale_lr=2e-2, overlap=1.0, gamma=0.9)
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


if __name__ == "__main__":
    main(sys.argv[1])
