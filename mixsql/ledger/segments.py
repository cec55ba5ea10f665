"""The steps one topology produced: its lanes and the DataLoader's round robin over their batches."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ..errors import ProgrammingError
from .lanes import _PackedLane, _SampleLane
from .record import Segment

if TYPE_CHECKING:
    from . import Ledger


class _Segment:
    """The steps one topology produced: lanes, and the DataLoader's round robin over them."""

    def __init__(self, led: "Ledger", index: int, seg: Segment, stop: int | None):
        self.led, self.index, self.seg, self.stop = led, index, seg, stop
        self.D, self.W, self.B, self.drop_last = seg.dp_world, seg.workers, seg.batch_size, seg.drop_last
        self._lanes: dict[tuple[int, int], Any] = {}
        self._starts: dict[int, dict] = {}

    def _start(self, rank: int) -> dict | None:
        """The state rank ``rank`` started this segment from (None: the run's first segment)."""
        if self.index == 0:
            return None
        if rank in self._starts:
            return self._starts[rank]
        from ..torch.tracker import merge_rank_states

        where = (f"steps from {self.seg.step} on ran on {self.D} ranks x {self.W} workers, resumed from "
                 "other ranks' states")
        if self.led.run.seq_len is not None:
            raise ProgrammingError(f"mix_ledger: {where}; packed sequences after a change of topology are not "
                                   f"recomputed (the old ranks' leftover tokens start them); steps before "
                                   f"{self.seg.step} are answered")
        states = self.seg.states or []
        old = {int(s["dp_rank"]) for s in states}
        D_old = int(states[0]["dp_world"]) if states else None
        if not states or (old != set(range(D_old)) and not (D_old == self.D and rank in old)):
            have = ", ".join(map(str, sorted(old))) or "none"
            raise ProgrammingError(f"mix_ledger: {where}, and this checkpoint holds the old states of ranks "
                                   f"{have} only: ask the ledger of rank {rank} from that rank's checkpoint")
        self._starts[rank] = st = merge_rank_states(states, rank, self.D)
        return st

    def rotation(self, rank: int) -> int:
        """The lane DataLoader worker 0 reads (a resumed state with the same workers rotates)."""
        st = self._start(rank)
        return int(st.get("next_worker", 0)) % self.W if st is not None and st.get("workers") == self.W else 0

    def lane(self, rank: int, worker: int):
        key = (rank, worker)
        if key not in self._lanes:
            start = self._start(rank)
            if self.led.run.seq_len is None:
                self._lanes[key] = _SampleLane(self.led, self.D, self.W, rank, worker, start)
            else:
                self._lanes[key] = _PackedLane(self.led, self.D, self.W, rank, worker)
        return self._lanes[key]

    def _lane_batches(self, rank: int, worker: int, cap: int) -> int:
        """Batches of a lane, or ``cap`` when it has at least that many."""
        lane, B = self.lane(rank, worker), self.B
        if isinstance(lane, _PackedLane):
            n = lane.count_at_least(cap * B + (0 if self.drop_last else 1))
        else:
            total = lane.total()
            n = cap * B + 1 if total is None else total
        nb = n // B if self.drop_last else -(-n // B)
        return min(nb, cap)

    def slot(self, rank: int, step: int) -> tuple[int, int] | None:
        """(worker, batch of that worker) of the segment's step ``step``; None past the end."""
        W, rot = self.W, self.rotation(rank)
        order = [(p + rot) % W for p in range(W)]   # DataLoader workers 0..W-1 read these lanes
        nb = [self._lane_batches(rank, w, step // W + 1) for w in order]
        if min(nb) > step // W:
            return order[step % W], step // W
        nb = [self._lane_batches(rank, w, step + 1) for w in order]   # a lane ended: the tail
        before, j = 0, 0
        while True:
            alive = [p for p in range(W) if nb[p] > j]
            if not alive:
                return None
            if step < before + len(alive):
                return order[alive[step - before]], j
            before += len(alive)
            j += 1

    def step_of(self, rank: int, worker: int, j: int) -> int | None:
        """The segment's step that hands out batch ``j`` of ``worker`` (None: dropped)."""
        W, rot = self.W, self.rotation(rank)
        order = [(p + rot) % W for p in range(W)]
        nb = [self._lane_batches(rank, w, j + 1) for w in order]
        p = order.index(worker)
        if nb[p] <= j:
            return None
        return sum(min(n, j) for n in nb) + sum(1 for q in range(p) if nb[q] > j)

    def batch(self, step: int, rank: int, worker: int, j: int) -> pa.Table:
        lane, B = self.lane(rank, worker), self.B
        if isinstance(lane, _PackedLane):
            n = lane.count_at_least((j + 1) * B)
            rows = []
            for seq in range(j * B, min((j + 1) * B, n)):
                for k, row, off, ntok, doff in lane.pieces(seq):
                    rows.append((k, row, seq - j * B, off, ntok, doff))
            return self.led._rows(step, rank, worker, rows)
        total = lane.total()
        stop = (j + 1) * B if total is None else min((j + 1) * B, total)
        rows = []
        for k, a, b, seq0 in lane.slices(j * B, stop):
            rows.extend((k, p, seq0 + p - a, 0, None, 0) for p in range(a, b))
        return self.led._rows(step, rank, worker, rows)

    def find(self, k: int, pos: int) -> tuple[int, int, Any, list] | None:
        """(rank, worker, lane, pieces) of position ``pos`` of chunk ``k`` in this segment; None
        when this segment did not read it (pieces: ``(item, offset, tokens, doc_offset)``)."""
        rank = k % self.D
        for worker in range(self.W):
            lane = self.lane(rank, worker)
            if isinstance(lane, _PackedLane):
                if worker != (k // self.D) % self.W:
                    continue
                return rank, worker, lane, lane.doc_sequences(k, pos)
            i = lane.index_of(k)
            if i is not None:
                if pos < lane.skip(i):
                    return None   # consumed before this segment
                return rank, worker, lane, [(lane.items_before(i) + pos - lane.skip(i), 0, None, 0)]
        return None
