"""Data parallelism for LoRA training under a multi-process launcher (`accelerate launch`, `torchrun`).

The launcher starts one copy of the command per device and sets WORLD_SIZE, RANK and LOCAL_RANK. Every
process runs the whole job (prompt generation, direction searches, evaluations: deterministic, so all
ranks agree); only the LoRA training steps are split. Each step's batch is sharded across ranks, each
rank's loss is normalised by the token weight of the *whole* batch, and gradients are summed, so a step
is the same step one process would take on the whole batch. Only rank 0 writes files.

Without a launcher (WORLD_SIZE unset or 1) everything here is a no-op."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


def world_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a multi-process launch (those leave writing to rank 0)."""
    return world_size() <= 1 or int(os.environ.get("RANK", "0")) == 0


def process_device(device: str | None) -> str | None:
    """Under a multi-process launch on GPUs, each process takes the GPU of its LOCAL_RANK when `device`
    is None or a bare "cuda"; otherwise `device` unchanged."""
    if world_size() > 1 and torch.cuda.is_available() and device in (None, "cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the training group: `rank` of `world_size` (0 of 1 without a launcher)."""

    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, indices: Sequence[int]) -> list[int]:
        """This rank's share of a batch (may be empty when the batch is smaller than the group)."""
        return list(indices)[self.rank :: self.world_size]

    def sum(self, value: float, device: torch.device) -> float:
        """`value` summed over the group."""
        if not self.active:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return float(total)

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the group (a rank with an empty shard contributes zeros)."""
        if not self.active:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)

    def broadcast(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Make every rank start from rank 0's parameters."""
        if not self.active:
            return
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)


def data_parallel() -> DataParallel:
    """The launcher's process group, initialised on first use (NCCL on GPUs, Gloo on CPUs)."""
    if world_size() <= 1:
        return DataParallel()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DataParallel(dist.get_rank(), dist.get_world_size())
