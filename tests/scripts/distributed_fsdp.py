"""GradInit and FSDP2 on 2 CPU processes (gloo), launched by tests/test_distributed.py under
torchrun: ``apply_gradinit`` before ``fully_shard`` (the same scales on every rank), sharded
training from the result, and a model sharded before GradInit refused before any work. Each rank
writes <out>/fsdp-rank<R>.json."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testing_utils import seq2seq_examples, tiny_marian  # noqa: E402


def main(out: str) -> None:
    import torch.distributed as dist
    from accelerate import PartialState
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import default_data_collator

    from hf_gradinit import GradInitConfig, GradInitError, apply_gradinit

    state = PartialState(cpu=True)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = tiny_marian()
    config = GradInitConfig(iterations=4, scale_lr=2e-2, probe_steps=0)
    result = apply_gradinit(
        model, seq2seq_examples(24), config, batch_size=6, accelerator=state, show_progress=False
    )

    mesh = init_device_mesh("cpu", (world,))
    for layer in [*model.model.encoder.layers, *model.model.decoder.layers]:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    examples = seq2seq_examples(48, seed=1)
    losses = []
    model.train()
    for step in range(4):  # each rank its own half of the batch, as a distributed sampler
        batch = default_data_collator(examples[step * 12 + rank * 6 : step * 12 + rank * 6 + 6])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())

    # A fresh model, sharded before GradInit: refused before any work, shards intact.
    fresh = tiny_marian()
    for layer in [*fresh.model.encoder.layers, *fresh.model.decoder.layers]:
        fully_shard(layer, mesh=mesh)
    fully_shard(fresh, mesh=mesh)
    local = {n: p.to_local().detach().clone() for n, p in fresh.named_parameters()}
    refused = ""
    try:
        apply_gradinit(
            fresh, seq2seq_examples(24), config, batch_size=6, accelerator=state,
            show_progress=False,
        )  # fmt: skip
    except GradInitError as err:
        refused = str(err)
    intact = all(torch.equal(p.to_local(), local[n]) for n, p in fresh.named_parameters())
    record = {
        "world_size": world,
        "scales": result.scales,
        "sharded": type(next(model.parameters())).__name__,
        "losses": losses,
        "refused": refused,
        "intact": intact,
    }
    Path(out, f"fsdp-rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
