"""Lanes: the items one (rank, worker) reads in one topology, located without reading the others.

:class:`_SampleLane` maps a lane's item (a sample) to its chunk and row by chunk sizes alone;
:class:`_PackedLane` packs the lane's documents into sequences as :mod:`mixsql.packing` does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from . import Ledger


class _SampleLane:
    """One (rank, worker)'s samples in one segment: first the chunks its start state left to
    redo (pending chunks past the rows already consumed, holes), then every chunk from the
    frontier on that the topology gives it (``rank + dp_world * (worker + workers * j)``)."""

    def __init__(self, led: "Ledger", dp_world: int, workers: int, rank: int, worker: int, start: dict | None = None):
        from ..packing import MIXED
        from ..torch.tracker import _explicit_tasks

        self.led = led
        prefix, frontier = [], 0
        if start is not None:
            prefix = [(int(t["chunk"]), int((t["drop"] or {}).get(MIXED, 0)))
                      for t in _explicit_tasks(start, workers, worker) if t["chunk"] is not None]
            frontier = int(start["frontier"])
        first = frontier + ((rank - frontier) % dp_world)
        while (first // dp_world) % workers != worker:
            first += dp_world
        self.prefix, self.P = prefix, len(prefix)
        self.first, self.stride = first, dp_world * workers
        end = led.end
        self.n_suffix = None if end is None else max(0, -(-(end - first) // self.stride))
        self.n_chunks = None if self.n_suffix is None else self.P + self.n_suffix
        pcum = [0]
        for k, skip in prefix:
            pcum.append(pcum[-1] + max(0, led.engine.chunk_rows(k) - skip))
        self._pcum = pcum
        self._cum = [0]    # items before suffix chunk j (variable-size chunks)

    def chunk(self, i: int) -> int:
        return self.prefix[i][0] if i < self.P else self.first + self.stride * (i - self.P)

    def skip(self, i: int) -> int:
        return self.prefix[i][1] if i < self.P else 0

    def index_of(self, k: int) -> int | None:
        """The lane's index of chunk ``k``; None when the lane does not read it."""
        for i, (c, _) in enumerate(self.prefix):
            if c == k:
                return i
        j, r = divmod(k - self.first, self.stride)
        if k >= self.first and not r and (self.n_suffix is None or j < self.n_suffix):
            return self.P + j
        return None

    def _grow(self, j: int) -> None:
        cum = self._cum
        while len(cum) <= j:
            cum.append(cum[-1] + self.led.engine.chunk_rows(self.chunk(self.P + len(cum) - 1)))

    def _suffix_before(self, j: int) -> int:
        led = self.led
        if self.n_suffix is not None:
            j = min(j, self.n_suffix)
        if not led.fixed:
            self._grow(j)
            return self._cum[j]
        n = j * led.C
        if j and j == self.n_suffix and led.end - 1 == self.chunk(self.P + j - 1):
            n -= led.C - led.engine.chunk_rows(led.end - 1)
        return n

    def items_before(self, i: int) -> int:
        if i <= self.P:
            return self._pcum[i]
        return self._pcum[self.P] + self._suffix_before(i - self.P)

    def total(self) -> int | None:
        return None if self.n_chunks is None else self.items_before(self.n_chunks)

    def locate(self, m: int) -> tuple[int, int]:
        """(lane chunk index, row in the chunk) of item ``m`` (an item the lane has)."""
        pcum = self._pcum
        if m < pcum[-1]:
            i = int(np.searchsorted(pcum, m, side="right")) - 1
            return i, self.skip(i) + m - pcum[i]
        m -= pcum[-1]
        if self.led.fixed:
            return self.P + m // self.led.C, m % self.led.C
        cum = self._cum
        while cum[-1] <= m:
            if self.n_suffix is not None and len(cum) > self.n_suffix:
                raise IndexError(f"item {m} is past the lane's end")
            self._grow(len(cum))
        j = int(np.searchsorted(cum, m, side="right")) - 1
        return self.P + j, m - cum[j]

    def slices(self, first: int, stop: int) -> list[tuple[int, int, int, int]]:
        """Items ``[first, stop)`` as ``(chunk, row start, row stop, items before)`` slices."""
        out, m = [], first
        while m < stop:
            i, pos = self.locate(m)
            take = min(stop, self.items_before(i + 1)) - m
            if take <= 0:
                break
            out.append((self.chunk(i), pos, pos + take, m - first))
            m += take
        return out


class _PackedLane:
    """One (rank, worker)'s packed sequences, computed from its first chunk on: each document
    framed as ``[bos] + ids + [eos]``; per buffer key a continuous token stream cut every
    ``seq_len + 1`` tokens; sequences in the order their last token is fed; at the stream's end
    each buffer's leftover as one short sequence (keys in sorted order), as :mod:`mixsql.packing`."""

    def __init__(self, led: "Ledger", dp_world: int, workers: int, rank: int, worker: int):
        self.led, self.lane = led, _SampleLane(led, dp_world, workers, rank, worker)
        self.L = int(led.run.seq_len) + 1
        self.i = 0                         # next lane chunk to pack
        self.done = False
        self.seqs: list[tuple[str, int, int]] = []   # (key, start in key stream, length)
        self.where: dict[tuple[str, int], int] = {}   # (key, start) -> sequence index
        self.keys: dict[str, dict] = {}   # key -> {"pos": tokens so far, "start", "end", "chunk", "row"} lists

    def _pack_next(self) -> None:
        led, L = self.led, self.L
        k = self.lane.chunk(self.i)
        table = led.chunk(k) if self.lane.n_chunks is None or self.i < self.lane.n_chunks else None
        if table is None:
            for key in sorted(self.keys):   # flush: each buffer's leftover as one short sequence
                st = self.keys[key]
                start = st["pos"] - st["pos"] % L
                if st["pos"] > start:
                    self.where[(key, start)] = len(self.seqs)
                    self.seqs.append((key, start, st["pos"] - start))
            self.done = True
            return
        self.i += 1
        lengths = led.doc_lengths(table) + (1 if led.run.bos_id is None else 2)
        gids = table.column("group_id").to_numpy(zero_copy_only=False)
        keys = [str(int(g)) for g in gids] if led.by_group else ["*"] * len(gids)
        gpos = np.cumsum(lengths) - lengths      # where each document starts in this chunk's feed
        emitted = []
        for key in dict.fromkeys(keys):
            sel = np.flatnonzero(np.asarray(keys) == key)
            st = self.keys.setdefault(key, {"pos": 0, "start": [], "end": [], "chunk": [], "row": []})
            n0, flen = st["pos"], lengths[sel]
            kstart = n0 + np.cumsum(flen) - flen
            st["start"].append(kstart)
            st["end"].append(kstart + flen)
            st["chunk"].append(np.full(len(sel), k, np.int64))
            st["row"].append(sel.astype(np.int64))
            st["pos"] = n1 = n0 + int(flen.sum())
            for m in range(n0 // L, n1 // L):
                last = (m + 1) * L - 1
                d = int(np.searchsorted(kstart, last, side="right")) - 1
                emitted.append((int(gpos[sel[d]]) + last - int(kstart[d]), key, m * L))
        emitted.sort()
        for _, key, start in emitted:
            self.where[(key, start)] = len(self.seqs)
            self.seqs.append((key, start, L))

    def count_at_least(self, n: int) -> int:
        """Sequences of the lane, packing chunks until there are ``n`` (fewer: the lane ended)."""
        while len(self.seqs) < n and not self.done:
            self._pack_next()
        return len(self.seqs)

    def total(self) -> int | None:
        if self.lane.n_chunks is None:
            return None
        while not self.done:
            self._pack_next()
        return len(self.seqs)

    def _arrays(self, key: str) -> dict:
        st = self.keys[key]
        for name in ("start", "end", "chunk", "row"):
            if len(st[name]) > 1:
                st[name] = [np.concatenate(st[name])]
        return {name: st[name][0] for name in ("start", "end", "chunk", "row")}

    def pieces(self, s: int) -> list[tuple[int, int, int, int, int]]:
        """Documents of sequence ``s``: (chunk, row, offset in sequence, tokens, doc_offset)."""
        self.count_at_least(s + 1)
        key, start, length = self.seqs[s]
        a = self._arrays(key)
        ks, ke = a["start"], a["end"]
        lo_d = int(np.searchsorted(ke, start, side="right"))
        hi_d = int(np.searchsorted(ks, start + length, side="left"))
        out = []
        for d in range(lo_d, hi_d):
            lo, hi = max(int(ks[d]), start), min(int(ke[d]), start + length)
            out.append((int(a["chunk"][d]), int(a["row"][d]), lo - start, hi - lo, lo - int(ks[d])))
        return out

    def doc_sequences(self, k: int, pos: int) -> list[tuple[int, int, int, int]]:
        """Every sequence holding a piece of document ``pos`` of chunk ``k`` (a chunk of this
        lane): (sequence, offset in sequence, tokens, doc_offset)."""
        i = (k - self.lane.first) // self.lane.stride
        while self.i <= i and not self.done:
            self._pack_next()
        for key in self.keys:
            a = self._arrays(key)
            hit = np.flatnonzero((a["chunk"] == k) & (a["row"] == pos))
            if len(hit):
                break
        else:
            return []
        d, L, out = int(hit[0]), self.L, []
        ks, ke = int(a["start"][d]), int(a["end"][d])
        for m in range(ks // L, (ke - 1) // L + 1):
            while (key, m * L) not in self.where and not self.done:
                self._pack_next()
            s = self.where.get((key, m * L))
            if s is None:
                continue
            length = self.seqs[s][2]
            lo, hi = max(ks, m * L), min(ke, m * L + length)
            if hi > lo:
                out.append((s, lo - m * L, hi - lo, lo - ks))
        return out
