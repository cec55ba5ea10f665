"""Which process consumes which chunk: a pure function of the chunk index and the topology.

Chunk ``k`` goes to data-parallel rank ``k % dp_world`` and, inside that rank, to DataLoader
worker ``(k // dp_world) % num_workers``. Data-parallel ranks therefore get disjoint chunks,
workers of one rank stripe that rank's chunks, and tensor/pipeline peers (replicas) that share a
``dp_rank`` compute exactly the same chunks. No coordination, no dependence on request timing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Topology:
    dp_rank: int = 0
    dp_world: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self):
        if self.dp_world < 1 or self.num_workers < 1:
            raise ValueError(f"dp_world and num_workers must be >= 1, got {self}")
        if not (0 <= self.dp_rank < self.dp_world) or not (0 <= self.worker < self.num_workers):
            raise ValueError(f"dp_rank / worker out of range in {self}")

    @property
    def period(self) -> int:
        """Chunks per full round over all (rank, worker) pairs."""
        return self.dp_world * self.num_workers

    @property
    def slot(self) -> int:
        """Offset of this (rank, worker) inside a round: owns chunks ``slot + i * period``."""
        return self.dp_rank + self.worker * self.dp_world

    def owns(self, chunk: int) -> bool:
        return owner(chunk, self.dp_world, self.num_workers) == (self.dp_rank, self.worker)


def owner(chunk: int, dp_world: int, num_workers: int) -> tuple[int, int]:
    """(dp_rank, worker) that consumes chunk ``chunk``."""
    return chunk % dp_world, (chunk // dp_world) % num_workers


def owned_chunks(topology: Topology, start: int = 0, stop: int | None = None) -> Iterator[int]:
    """Chunk indices owned by ``topology``, ascending, from the first one >= ``start`` (and
    below ``stop``)."""
    p, s = topology.period, topology.slot
    k = start + ((s - start) % p)
    while stop is None or k < stop:
        yield k
        k += p
