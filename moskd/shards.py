"""Which images a rank sees in an epoch, in which order: DistributedSampler's rule (a random
permutation from the epoch's generator, padded to a multiple of the world size, every world-th index
from the rank's own offset; evaluation: no shuffle, no padding). Both loaders (moskd.loader's
in-memory one and moskd.streaming's) take their order from here, so their batches are identical."""
from __future__ import annotations

import math

import torch


def rank_order(n: int, train: bool, rank: int, world: int, g: torch.Generator) -> torch.Tensor:
    """The indices (into n images) this rank visits, in order."""
    if not train:
        return torch.arange(rank, n, world)
    order = torch.randperm(n, generator=g)
    per_rank = math.ceil(n / world)
    order = torch.cat([order, order[: per_rank * world - n]])
    return order[rank::world]


def rank_batches(n: int, train: bool, rank: int, world: int, batch_size: int) -> int:
    """How many batches this rank takes from n images."""
    per_rank = math.ceil(n / world) if train else len(range(rank, n, world))
    return math.ceil(per_rank / batch_size)
