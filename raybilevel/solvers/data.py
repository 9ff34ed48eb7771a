"""Deterministic batches: every index and every random draw is a function of (seed, stream, step, micro,
rank), so the data position is just the step counter and a resumed run sees exactly the same batches."""
from __future__ import annotations

from functools import lru_cache

import torch


def stream_generator(seed: int, stream: str, step: int, micro: int, rank: int) -> torch.Generator:
    code = sum(ord(c) * 31 ** i for i, c in enumerate(stream)) % (2**31)
    mixed = hash((seed, code, step, micro, rank)) % (2**63)  # ints hash deterministically in Python
    return torch.Generator().manual_seed(mixed)


class EpochSampler:
    """Epochs of seeded permutations; the global batch is split over ranks without overlap."""

    def __init__(self, n: int, batch_size: int, seed: int, stream: str, rank: int = 0, world_size: int = 1,
                 grad_accum: int = 1) -> None:
        if n < 1:
            raise ValueError(f"the {stream} data is empty")
        self.n, self.batch_size, self.seed, self.stream = n, batch_size, seed, stream
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum

    @lru_cache(maxsize=4)
    def _order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=stream_generator(self.seed, self.stream, epoch, 0, 0))

    def indices(self, step: int, micro: int) -> list[int]:
        micro_global = step * self.grad_accum + micro
        start = (micro_global * self.world_size + self.rank) * self.batch_size
        return [int(self._order(i // self.n)[i % self.n]) for i in range(start, start + self.batch_size)]

    def generator(self, step: int, micro: int) -> torch.Generator:
        # keyed by the slice of the step's global batch, not by (micro, rank): 2 ranks and 1 process
        # accumulating 2 micro-batches draw the same noise for the same samples
        return stream_generator(self.seed, self.stream + ".noise", step, micro * self.world_size + self.rank, 0)
