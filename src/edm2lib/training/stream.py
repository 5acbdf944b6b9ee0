"""Deterministic, resumable, rank-sharded order of training examples and per-micro-batch seeds.

The global stream of example indices is a pure function of (seed, position): position q belongs to epoch
q // N and picks entry q % N of that epoch's seeded permutation. A training step at `nimg` consumes
positions [nimg, nimg + batch); the global batch is cut into micro-batches of `batch_gpu` consecutive
positions, and micro-batch k = round * world + rank goes to `rank` in accumulation `round`. So the content of
a global batch does not depend on how it is split, and resuming at `nimg` reproduces the exact stream.
Each example's random draws (noise level, noise, latent sample) are seeded from (seed, its position), so
they do not depend on the split either; only dropout, which uses the global RNG, is seeded per micro-batch.
"""

from __future__ import annotations

import hashlib
import threading

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that is a stable function of `parts` (sha256 of their text; never Python's hash())."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(device: torch.device | str, *parts: object) -> torch.Generator:
    """A torch.Generator on `device` seeded with `derive_seed(*parts)`."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g


class ShardedSampler:
    """Indices of the examples each rank uses in each accumulation round of each step."""

    def __init__(self, num_examples: int, seed: int, rank: int = 0, world_size: int = 1, batch_gpu: int = 1):
        if num_examples <= 0:
            raise ValueError(f"ShardedSampler: the data set is empty (num_examples={num_examples})")
        if not 0 <= rank < world_size:
            raise ValueError(f"ShardedSampler: rank {rank} is outside world size {world_size}")
        self.num_examples = num_examples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.batch_gpu = batch_gpu
        self._perms: dict[int, torch.Tensor] = {}  # the last two epochs (a batch may straddle a boundary)
        self._lock = threading.Lock()  # loader threads share the cache

    def permutation(self, epoch: int) -> torch.Tensor:
        """The seeded permutation of all example indices used in `epoch`."""
        with self._lock:
            if epoch not in self._perms:
                g = make_generator("cpu", "sampler", self.seed, epoch)
                self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
                self._perms[epoch] = torch.randperm(self.num_examples, generator=g)
            return self._perms[epoch]

    def positions(self, start: int, count: int) -> list[int]:
        """Global stream entries [start, start + count): example indices."""
        q = torch.arange(start, start + count)
        epoch = q // self.num_examples
        out = torch.empty(count, dtype=torch.int64)
        for e in epoch.unique().tolist():
            sel = epoch == e
            out[sel] = self.permutation(e)[q[sel] % self.num_examples]
        return out.tolist()

    def micro_batch_start(self, nimg: int, accum_round: int) -> int:
        """First stream position of this rank's micro-batch in round `accum_round` of the step at `nimg`."""
        return nimg + (accum_round * self.world_size + self.rank) * self.batch_gpu

    def indices(self, nimg: int, accum_round: int) -> list[int]:
        """Example indices of this rank's micro-batch in round `accum_round` of the step at `nimg`."""
        return self.positions(self.micro_batch_start(nimg, accum_round), self.batch_gpu)
