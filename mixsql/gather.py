"""A chunk's pointer rows over many groups, gathered with a few numpy operations.

A chunk draws ``d_g`` consecutive sequence positions ``[c_g, c_g + d_g)`` from each group ``g``
(``c_g``: what the group delivered before the chunk, epochs included). With thousands of groups
most draw one or two samples per chunk, so per-group Python work would dominate. Instead:

* :class:`LazySequences` builds a group's :class:`~mixsql.shuffle.GroupSequence` (its
  consumption order) the first time the group is drawn from, not for every group up front;
* :class:`RunCache` keeps, per group, the pointer rows of one *run* of up to :data:`RUN`
  consecutive positions of one epoch (fetched with ``GroupSequence.indices``) in one flat pool.
  A chunk's draws that lie inside their group's cached run (nearly all of them) are gathered for
  all groups at once; a group whose draw leaves its run refills it from the draw's start (one
  ``indices`` call per ``RUN`` samples, or per epoch of a smaller group); a draw longer than a
  run or crossing an epoch goes through ``indices`` directly.

The rows are exactly ``GroupSequence.indices`` of the drawn positions, whatever the permutation
(the cache never computes an order itself). Memory: the pool holds at most one run per group it
has served and is emptied and refilled once it passes ``limit`` entries.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

RUN = 256   # positions fetched per refill


class LazySequences:
    """``seqs[g]``: group g's sequence, made by ``make(g)`` on first access."""

    def __init__(self, n_groups: int, make: Callable[[int], object]):
        self._make = make
        self._items: list = [None] * n_groups

    def __getitem__(self, g: int):
        seq = self._items[g]
        if seq is None:
            seq = self._items[g] = self._make(int(g))
        return seq

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return (self[g] for g in range(len(self._items)))


class RunCache:
    """Cached runs of pointer rows per group (see the module docstring); ``sizes``: samples
    per group; ``run``: positions fetched per refill; ``limit``: pool entries kept at most
    (beyond what one chunk needs)."""

    def __init__(self, sizes: np.ndarray, run: int = RUN, limit: int = 1 << 22):
        self.n = np.asarray(sizes, np.int64)
        G = len(self.n)
        self.cap = np.minimum(self.n, run)           # slot length of each group
        self.lo = np.full(G, -1, np.int64)           # first cached position (epochs included)
        self.hi = np.full(G, -1, np.int64)           # one past the last
        self.slot = np.full(G, -1, np.int64)         # offset of the group's slot in the pool
        self.pool = np.zeros(0, np.int64)
        self.used = 0
        self.limit = limit

    def _clear(self) -> None:
        self.lo[:] = -1
        self.hi[:] = -1
        self.slot[:] = -1
        self.used = 0

    def _allocate(self, groups: np.ndarray) -> None:
        """Give each of ``groups`` (none has a slot) a slot at the end of the pool."""
        if not len(groups):
            return
        ends = self.used + np.cumsum(self.cap[groups])
        self.slot[groups] = ends - self.cap[groups]
        self.used = int(ends[-1])
        if self.used > len(self.pool):
            grown = np.zeros(max(self.used, 2 * len(self.pool)), np.int64)
            grown[:len(self.pool)] = self.pool
            self.pool = grown

    def rows(self, seqs, count: np.ndarray, draws: np.ndarray):
        """(pointer rows, epochs) of positions ``[count[g], count[g] + draws[g])`` of every group
        with ``draws > 0``, concatenated in group order."""
        gs = np.flatnonzero(draws > 0)
        d = draws[gs].astype(np.int64)
        c = count[gs].astype(np.int64)
        n = self.n[gs]
        e = c // n
        p = c - e * n
        total = int(d.sum())
        idx = np.empty(total, np.int64)
        epochs = np.empty(total, np.int32)
        out_at = np.cumsum(d) - d                    # where each group's rows start in the output
        fits = (p + d <= n) & (d <= self.cap[gs])
        cached = fits & (c >= self.lo[gs]) & (c + d <= self.hi[gs])
        refill = np.flatnonzero(fits & ~cached)
        if len(refill):
            fresh = gs[refill][self.slot[gs[refill]] < 0]
            if self.used and self.used + int(self.cap[fresh].sum()) > self.limit:
                self._clear()   # full: start over, every fitting draw refills
                refill = np.flatnonzero(fits)
                fresh = gs[refill]
            self._allocate(fresh)
            for i in refill.tolist():
                g = int(gs[i])
                ep, start = int(e[i]), int(p[i])
                stop = min(int(n[i]), start + int(self.cap[g]))
                at = int(self.slot[g])
                self.pool[at:at + stop - start] = seqs[g].indices(ep, start, stop)
                self.lo[g] = c[i]
                self.hi[g] = c[i] + stop - start
        f = np.flatnonzero(fits)
        if len(f):
            df = d[f]
            within = np.arange(int(df.sum()), dtype=np.int64) - np.repeat(np.cumsum(df) - df, df)
            src = np.repeat(self.slot[gs[f]] + c[f] - self.lo[gs[f]], df) + within
            if len(f) == len(gs):
                idx[:] = self.pool[src]
                epochs[:] = np.repeat(e, d)
            else:
                dst = np.repeat(out_at[f], df) + within
                idx[dst] = self.pool[src]
                epochs[dst] = np.repeat(e[f], df)
        for i in np.flatnonzero(~fits).tolist():   # long draws, or draws across an epoch
            g, size = int(gs[i]), int(n[i])
            start, stop, at = int(c[i]), int(c[i] + d[i]), int(out_at[i])
            while start < stop:
                ep, pos = divmod(start, size)
                q = min(size, pos + (stop - start))
                idx[at:at + q - pos] = seqs[g].indices(ep, pos, q)
                epochs[at:at + q - pos] = ep
                at += q - pos
                start += q - pos
        return gs, d, idx, epochs


__all__ = ["LazySequences", "RunCache", "RUN"]
