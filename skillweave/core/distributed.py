"""Running one stage on several processes (accelerate launch, torchrun, srun): who does what.

Every rank of a multi-process launch runs the same `python -m skillweave stage=dpo ...`. Training is
collective, but the artifact bookkeeping is not: rank 0 alone takes the artifact lock and writes
config.json, the delta and the manifest. If every rank took the (exclusive) lock, rank 0 would hold
it and wait in training for ranks that wait on the lock: a deadlock. So the other ranks skip the
lock and follow rank 0's decisions (`main_process_decides`), and all ranks take the same branch.
"""

from __future__ import annotations

import os
from typing import TypeVar

from .errors import ConfigError

T = TypeVar("T")


def process_rank() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; (0, 1) for a plain `python -m skillweave`."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return process_rank()[0] == 0


def check_launch(stage: str, distributed: list[str]) -> None:
    """Refuse a multi-process launch of a stage that would only repeat the same work on every rank.

    Args:
        distributed: the stages that run as one multi-process job (`Stage.distributed`).
    Raises:
        ConfigError: WORLD_SIZE > 1 for a stage not in `distributed`.
    """
    world = process_rank()[1]
    if world > 1 and stage not in distributed:
        raise ConfigError(
            f"stage={stage} was launched on {world} processes, but only {', '.join(distributed)} runs on "
            "several; run the other stages with plain `python -m skillweave` (a Slurm job array spreads domains)"
        )


def main_process_decides(value: T) -> T:
    """Rank 0's `value`, on every rank: file checks can differ between ranks while another job writes.

    Initialises the default process group (NCCL on GPUs, gloo on CPU) from the launcher's
    environment if nothing has yet; accelerate, DeepSpeed and the Trainer reuse it.
    """
    if process_rank()[1] == 1:
        return value
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def leave_process_group() -> None:
    """Destroy the default process group, if one was made, before the interpreter exits.

    A gloo group left to interpreter shutdown aborts the process now and then ("terminate called
    without an active exception", about 1 run in 6 of two ranks here), failing a launch that did its
    work. No barrier: on an error path the ranks may not all get here.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
