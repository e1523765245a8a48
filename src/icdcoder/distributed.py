"""Several training processes (``accelerate launch``, ``torchrun``): who writes, and waiting for each other.

Under a launcher every process runs the same command. The rule icdcoder follows: every rank joins the
training itself (TRL's trainers and PLM-ICD shard the batches and average gradients), and rank 0 alone
writes: prepared data, checkpoints, saved models, predictions, metrics, reports. The other ranks wait at
a barrier until rank 0 has written what they read next, so every rank sees the same files when a run
starts. A single process (no ``WORLD_SIZE``) never touches ``torch.distributed``.

The process group is created here, before any trainer, with a long timeout: rank 0 may spend an hour
scoring a split while the other ranks wait, and the default (30 minutes) would kill them. On CPU it
uses gloo, on GPUs NCCL (accelerate's ``PartialState`` picks; trainers created later share it).
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Iterator

TIMEOUT_ENV = "ICDCODER_DIST_TIMEOUT_HOURS"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main_process() -> bool:
    """False on the extra ranks of ``accelerate launch``/``torchrun``: they train, rank 0 does the rest."""
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def init() -> None:
    """Create the process group once (no-op in a single process or when a trainer already made it)."""
    if not is_distributed():
        return
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    from accelerate import PartialState

    hours = float(os.environ.get(TIMEOUT_ENV, "12"))
    PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=hours))


def barrier() -> None:
    """Every rank waits here until all have arrived (no-op in a single process)."""
    if not is_distributed():
        return
    import torch.distributed as dist

    init()
    dist.barrier()


@contextlib.contextmanager
def main_writes_first() -> Iterator[bool]:
    """``with main_writes_first() as main:`` rank 0 does the body (``main`` is True), then every rank
    continues past the barrier, so the others read what rank 0 wrote."""
    yield is_main_process()
    barrier()  # not reached when the body raises: the launcher then stops every rank
