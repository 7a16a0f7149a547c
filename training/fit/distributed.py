"""Training in several processes under `torchrun` (DistributedDataParallel, gloo on CPU).

`torchrun --nproc-per-node 2 -m training fit ...` starts the same command in two processes. Each reads the data
and splits it with the same seed, trains on its share of every batch (gradients are averaged, so a step sees the
whole batch as one process would), validates on the whole validation split (same weights, same number, same
early-stopping decision), and only rank 0 exports, writes and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call in training steps: DDP's wrapper when there are several processes."""
        if self.size == 1:
            return model
        return nn.parallel.DistributedDataParallel(model)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's share of a batch of indices."""
        return batch if self.size == 1 else batch[self.rank :: self.size]

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()


def join() -> World:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR...); a
    plain run is a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return World(torch.distributed.get_rank(), torch.distributed.get_world_size())


def leave(world: World) -> None:
    if world.size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
