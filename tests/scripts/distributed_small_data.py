"""GradInit on 2 processes with little data (launched by the tests under torchrun).

``apply`` mode: ``apply_gradinit`` with 7 and with 9 examples at batch 6 on each process;
each rank writes its scales to <out>/apply-<n>-rank<R>.json. ``cli`` mode: ``hf-gradinit
init --push_to_hub`` with the upload patched; each rank that saved or pushed leaves a file.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testing_utils import seq2seq_examples, tiny_marian  # noqa: E402


def apply_main(out: str) -> None:
    from accelerate import PartialState

    from hf_gradinit import GradInitConfig, apply_gradinit

    state = PartialState(cpu=True)
    for n in (7, 9):
        torch.manual_seed(0)
        config = GradInitConfig(iterations=3, probe_steps=2)
        result = apply_gradinit(
            tiny_marian(), seq2seq_examples(n), config, batch_size=6, accelerator=state,
            show_progress=False,
        )  # fmt: skip
        record = {"world_size": state.num_processes, "scales": result.scales}
        Path(out, f"apply-{n}-rank{state.process_index}.json").write_text(json.dumps(record))


def cli_main(out: str, argv: list[str]) -> None:
    import torch.distributed as dist

    import hf_gradinit.hub as hub
    from hf_gradinit.cli import main

    rank = dist.get_rank() if dist.is_initialized() else int(__import__("os").environ["RANK"])
    real_save = hub.save_initialized_checkpoint

    def save(*args, **kwargs):
        Path(out, f"saved-rank{rank}").write_text("1")
        return real_save(*args, **kwargs)

    def push(folder, repo_id, **kwargs):
        Path(out, f"pushed-rank{rank}").write_text(repo_id)

    hub.save_initialized_checkpoint = save
    hub.push_folder_to_hub = push
    status = main(argv)
    Path(out, f"status-rank{rank}").write_text(str(status))


if __name__ == "__main__":
    if sys.argv[2] == "apply":
        apply_main(sys.argv[1])
    else:
        cli_main(sys.argv[1], sys.argv[3:])
