"""The data ledger of a training run: which samples trained which step, recomputed, never logged.

A run's consumption is a pure function of what one rank's ``loader.state_dict()`` records
(:func:`read_state`; the ``run`` entry of :class:`mixsql.torch.MixDataLoader`'s state): the
statement, parameters, catalog and snapshot give the chunks (chunk ``k`` computed directly by the
engine, scheduled and recorded feedback weight changes re-applied); the topology gives who read
chunk ``k`` (rank ``k % dp_world``, worker ``(k // dp_world) % workers``, :mod:`mixsql.topology`);
batching gives the step:

* each (rank, worker) *lane* reads its chunks in index order; its items are the chunks' rows
  (samples), or with ``seq_len`` the packed sequences of its token stream (:mod:`mixsql.packing`:
  ``[bos] + doc + [eos]`` per document, one buffer per group with ``by_group``);
* a lane's items form batches of ``batch_size`` (the last short, or dropped with ``drop_last``);
* the rank's step ``s`` is its ``s``-th batch in DataLoader order: round robin over the workers,
  a worker leaving the rotation when it has no batch left.

Rows of the ledger (:data:`LEDGER_SCHEMA`): ``step, rank, worker, sequence`` (the row of the
batch), ``offset, tokens`` (where the document's piece sits in a packed sequence and how many
tokens it has; without packing 0 and the sample's token count), ``doc_offset`` (first token of
the piece inside the framed document), ``chunk, position, epoch, group, source, file, row``.

Costs. Without packing a step's rows cost O(groups) per chunk they touch (every chunk of a
``unit = 'samples'`` stream but the last holds ``chunk_size`` rows, so a lane's item ``m`` is in
its chunk ``m // chunk_size``); ``unit = 'tokens'`` sums the chunk sizes of the lane up to the
step (O(groups) each). The inverse (:meth:`Ledger.sample`) inverts the group's permutation and
the composition (:meth:`mixsql.engine.MixEngine.occurrences`), never scanning the history.
Packed sequences depend on every document's token count before them, so packed steps tokenize
the lane's documents from its first chunk (the run's tokenizer; exact, cost proportional to the
position in the run).

Topologies: the state records every topology of the run (:class:`Segment`: from which step a
number of ranks, workers and batch size held, and the old ranks' states a change resumed from).
A segment after a change gives each (rank, worker) first the chunks its resumed state left to
redo (pending chunks past their consumed rows, holes), then its chunks from the frontier on;
steps are answered by the segment that produced them. Packed sequences after a change are not
recomputed (leftover tokens of the old ranks start them).

Server mode: the state carries the server job's record (``run.job``, fetched with the Flight
action ``ledger`` at checkpoint time: catalog snapshot, the stream's fingerprint, every weight
change since chunk 0); the ledger plans the statement on the server's catalog at that snapshot,
refuses a catalog whose stream has another fingerprint, and re-applies the job's weight changes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from .errors import ProgrammingError

LEDGER_SCHEMA = pa.schema([
    ("step", pa.int64()), ("rank", pa.int32()), ("worker", pa.int32()), ("sequence", pa.int32()),
    ("offset", pa.int32()), ("tokens", pa.int64()), ("doc_offset", pa.int64()),
    ("chunk", pa.int64()), ("position", pa.int32()), ("epoch", pa.int32()),
    ("group", pa.string()), ("source", pa.string()), ("file", pa.string()), ("row", pa.int64()),
])
_POINTER_COLUMNS = ("chunk", "position", "epoch", "group", "source", "file", "row")


# --------------------------------------------------------------------------- the run's record
def read_state(source: Any) -> dict:
    """One rank's loader state from a dict, a JSON file, or a ``torch.save``d checkpoint (loaded
    with ``torch.load(weights_only=True)``: no pickled objects) holding it at any depth."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ProgrammingError(f"mix_ledger: no checkpoint file {path!r}")
        with open(path, "rb") as f:
            head = f.read(1).lstrip()
        if head in (b"{", b"["):
            try:
                with open(path) as f:
                    obj = json.load(f)
            except ValueError as e:
                raise ProgrammingError(f"mix_ledger: {path} is not valid JSON ({e})") from None
        else:
            try:
                import torch
            except ImportError:
                raise ProgrammingError(f"mix_ledger: {path} is not JSON; reading a torch checkpoint needs torch "
                                       "(pip install 'mixsql[torch]')") from None
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:   # torch raises many kinds for foreign or unsafe files
                raise ProgrammingError(f"mix_ledger: cannot read {path} as JSON or as a torch checkpoint with "
                                       f"weights_only=True ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    else:
        obj, path = source, "the given object"
    found = _find_state(obj)
    if found is None:
        raise ProgrammingError(f"mix_ledger: {path} holds no mixsql loader state (a dict with 'mixsql' and 'run' "
                               "entries, as MixDataLoader.state_dict() returns)")
    return found


def _find_state(obj: Any, depth: int = 0) -> dict | None:
    if isinstance(obj, dict):
        if "mixsql" in obj and isinstance(obj["mixsql"], dict):
            return obj
        for v in obj.values():
            if depth < 6 and (hit := _find_state(v, depth + 1)) is not None:
                return hit
    elif isinstance(obj, (list, tuple)) and depth < 6:
        for v in obj:
            if (hit := _find_state(v, depth + 1)) is not None:
                return hit
    return None


@dataclass(frozen=True)
class Segment:
    """One topology of a run: from training step ``step`` on, ``dp_world`` ranks x ``workers``
    DataLoader workers and per-rank batches of ``batch_size``. A segment after the first
    resumed from ``states``: the old ranks' states (engine and packed carries left out), whose
    pending chunks, holes and frontier say what each new (rank, worker) read first."""

    step: int
    dp_world: int
    workers: int
    batch_size: int
    drop_last: bool = False
    states: list | None = None

    @classmethod
    def from_record(cls, t: dict) -> "Segment":
        return cls(step=int(t.get("step") or 0), dp_world=int(t["dp_world"]), workers=max(1, int(t.get("workers") or 1)),
                   batch_size=int(t.get("batch_size") or 1), drop_last=bool(t.get("drop_last")), states=t.get("states"))


@dataclass(frozen=True)
class Run:
    """What a loader state says about its run (see :meth:`MixDataset._run_record`)."""

    sql: str
    catalog: str | None
    snapshot: int | None
    params: Any = None
    seq_len: int | None = None
    tokenizer: str | None = None
    by_group: bool | None = None
    eos_id: int | None = None
    bos_id: int | None = None
    dp_world: int = 1
    workers: int = 1
    batch_size: int = 1
    drop_last: bool = False
    steps: int = 0
    server: str | None = None
    weight_changes: list = field(default_factory=list)
    segments: list = field(default_factory=list)
    job: dict | None = None
    rank_batch_size: int | None = None

    @classmethod
    def from_state(cls, state: dict) -> "Run":
        run = state.get("run")
        if not run or not run.get("sql"):
            raise ProgrammingError("mix_ledger: this state has no 'run' record (it predates the ledger, or comes "
                                   "from a stream_factory dataset); save loader.state_dict() with this mixsql")
        dp_world = int(run.get("dp_world") or state["mixsql"]["dp_world"])
        workers, batch = max(1, int(run.get("workers") or 1)), int(run.get("batch_size") or 1)
        tops = run.get("topologies") or [{"step": 0, "dp_world": dp_world, "workers": workers, "batch_size": batch,
                                          "drop_last": run.get("drop_last")}]
        job = run.get("job")
        if job is not None:   # server mode: the job's recorded weight changes and catalog snapshot
            changes, snapshot = job.get("weight_changes") or [], job.get("catalog_snapshot")
        else:
            changes, snapshot = (state.get("dynamic") or {}).get("weights", []), state.get("snapshot")
        return cls(sql=run["sql"], catalog=run.get("catalog"), snapshot=snapshot,
                   params=run.get("params"), seq_len=run.get("seq_len"), tokenizer=run.get("tokenizer"),
                   by_group=run.get("by_group"), eos_id=run.get("eos_id"), bos_id=run.get("bos_id"),
                   dp_world=dp_world, workers=workers, batch_size=batch, drop_last=bool(run.get("drop_last")),
                   steps=int(run.get("steps") or 0), server=run.get("server"),
                   weight_changes=[[int(a), [float(x) for x in w]] for a, w in changes],
                   segments=[Segment.from_record(t) for t in tops], job=job,
                   rank_batch_size=run.get("rank_batch_size"))


# --------------------------------------------------------------------------- lanes
class _SampleLane:
    """One (rank, worker)'s samples in one segment: first the chunks its start state left to
    redo (pending chunks past the rows already consumed, holes), then every chunk from the
    frontier on that the topology gives it (``rank + dp_world * (worker + workers * j)``)."""

    def __init__(self, led: "Ledger", dp_world: int, workers: int, rank: int, worker: int, start: dict | None = None):
        from .packing import MIXED
        from .torch import _explicit_tasks

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


# --------------------------------------------------------------------------- segments
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
        from .torch import merge_rank_states

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


# --------------------------------------------------------------------------- the ledger
class Ledger:
    """The consumption ledger of one run (see the module doc).

    ``source``: a loader state dict, a JSON file or a torch checkpoint holding one.
    ``catalog``: the catalog directory (default: the one the run recorded; for a server-mode
    run, the server's catalog). ``tokenizer``: overrides the recorded tokenizer (needed for
    packed runs that passed a tokenizer object). ``stream``: an opened
    :class:`~mixsql.stream.MixStream` of the run's statement instead."""

    def __init__(self, source: Any, catalog: str | os.PathLike | None = None, tokenizer: Any = None,
                 stream: Any = None):
        from .engine import MixEngine
        from .stream import MixStream

        self.state = read_state(source)
        self.run = run = Run.from_state(self.state)
        cat = catalog if catalog is not None else run.catalog
        if stream is None:
            if run.server is not None and run.job is None:
                raise ProgrammingError("mix_ledger: this server-mode state carries no record of the server's job "
                                       "(saved by an older mixsql); checkpoint with this version")
            if cat is None:
                raise ProgrammingError("mix_ledger: the state records no catalog directory; pass catalog=")
            stream = MixStream.open_cached(os.fspath(cat), run.sql, run.params, snapshot=run.snapshot)
        self.stream = stream
        spec = self.stream.spec
        step_size = self._schedule_step_size(spec)
        self.engine = (self.stream.engine() if step_size is None else
                       MixEngine(self.stream.pointers, spec, None, batch_size=step_size))
        if run.job is not None and run.job.get("fingerprint") not in (None, self.engine._fingerprint):
            raise ProgrammingError(
                f"mix_ledger: the catalog {cat} at snapshot {run.snapshot} does not plan the stream that the "
                f"server's job {run.job.get('job')} served (another catalog, or changed files); pass the "
                "server's catalog: Ledger(ckpt, catalog=...) or mixsql.connect(<server catalog>)")
        for at, w in run.weight_changes:
            self.engine.set_weights(w, at_chunk=at)
        self.C = int(spec.chunk_size)
        self.fixed = spec.unit == "samples"
        self.end = self.engine.stream_end()
        self.by_group = run.by_group if run.by_group is not None else spec.unit == "tokens"
        self._tokenizer_spec = tokenizer if tokenizer is not None else run.tokenizer
        self._tok = self._reader = None
        self._chunks: dict[int, pa.Table] = {}
        segs = run.segments
        self.segments = [_Segment(self, i, sg, segs[i + 1].step if i + 1 < len(segs) else None)
                         for i, sg in enumerate(segs)]

    def _schedule_step_size(self, spec) -> int | None:
        """The chunk mapping of a SCHEDULE without ``SETTINGS (batch_size)`` that the loader
        derived from its batch size (as :meth:`MixDataset._schedule_step_size`)."""
        run = self.run
        if not spec.schedule or spec.batch_size or run.server is not None or run.rank_batch_size is None:
            return None
        per_step = int(run.rank_batch_size) * run.segments[0].dp_world
        if run.seq_len is None and spec.unit == "samples":
            return per_step
        if run.seq_len is not None and spec.unit == "tokens":
            return per_step * (int(run.seq_len) + 1)
        return None

    def close(self) -> None:
        """Close the data files a packed ledger read."""
        if self._reader is not None:
            self._reader.close()
            self._reader = self._tok = None

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- pieces ------------------------------------------------------------------------------
    def chunk(self, k: int) -> pa.Table | None:
        t = self._chunks.get(k)
        if t is None:
            t = self.engine.chunk(k)
            if t is None:
                return None
            if len(self._chunks) >= 64:
                self._chunks.pop(next(iter(self._chunks)))
            self._chunks[k] = t
        return t

    def doc_lengths(self, table: pa.Table) -> np.ndarray:
        """Token count of every document of a chunk with the run's tokenizer (read and encoded)."""
        from .readers import ChunkReader
        from .tokenize import get_tokenizer
        from .torch import _chunk_tokens

        if self._tok is None:
            self._tok = get_tokenizer(self._tokenizer_spec, eos_id=self.run.eos_id, bos_id=self.run.bos_id)
            self._reader = ChunkReader(self.stream.files)
        return _chunk_tokens(self._reader.read(table), self._tok)[1]

    def _file_id(self, path: str) -> int | None:
        """The catalog's file id of ``path`` (from the stream's files table), None if unknown."""
        ids = getattr(self, "_file_ids", None)
        files = self.stream.files
        if ids is None:
            ids = self._file_ids = (dict(zip(files.column("path").to_pylist(), files.column("file_id").to_pylist()))
                                    if files is not None and "file_id" in files.column_names else {})
        return ids.get(path)

    def segment_of(self, step: int) -> "_Segment":
        """The segment (topology) that produced training step ``step``."""
        seg = self.segments[0]
        for s in self.segments:
            if s.seg.step <= step:
                seg = s
        return seg

    def lane(self, rank: int, worker: int):
        """The (rank, worker) lane of the run's first topology."""
        return self.segments[0].lane(rank, worker)

    # -- queries -----------------------------------------------------------------------------
    def steps(self, first: int, last: int, ranks: Iterable[int] | None = None) -> pa.Table:
        """Every sample (or document piece) of steps ``first..last`` (inclusive) on ``ranks``."""
        parts = []
        for step in range(max(0, int(first)), int(last) + 1):
            seg = self.segment_of(step)
            chosen = range(seg.D) if ranks is None else [r for r in ranks if 0 <= r < seg.D]
            for r in chosen:
                slot = seg.slot(r, step - seg.seg.step)
                if slot is not None:
                    parts.append(seg.batch(step, r, *slot))
        return _concat(parts)

    def _rows(self, step: int, rank: int, worker: int, rows: list) -> pa.Table:
        """Ledger rows from ``(chunk, row in chunk, sequence, offset, tokens or None, doc_offset)``."""
        if not rows:
            return LEDGER_SCHEMA.empty_table()
        cols: dict[str, list] = {c: [] for c in _POINTER_COLUMNS}
        ntok = []
        by_chunk: dict[int, list[int]] = {}
        for i, (k, p, *_rest) in enumerate(rows):
            by_chunk.setdefault(k, []).append(i)
        order = []
        for k, idx in by_chunk.items():
            t = self.chunk(k).take(pa.array([rows[i][1] for i in idx], pa.int64()))
            for c in _POINTER_COLUMNS:
                col = t.column(c)
                cols[c].extend((col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col).to_pylist())
            ntok.extend(t.column("n_tokens").to_pylist())
            order.extend(idx)
        inv = np.empty(len(order), np.int64)
        inv[np.asarray(order)] = np.arange(len(order))
        n = len(rows)
        data = {"step": [step] * n, "rank": [rank] * n, "worker": [worker] * n,
                "sequence": [r[2] for r in rows], "offset": [r[3] for r in rows],
                "tokens": [r[4] if r[4] is not None else ntok[inv[i]] for i, r in enumerate(rows)],
                "doc_offset": [r[5] for r in rows]}
        for c in _POINTER_COLUMNS:
            data[c] = [cols[c][inv[i]] for i in range(n)]
        return pa.table(data, schema=LEDGER_SCHEMA)

    def sample(self, file: str, row: int, until_step: int | None = None) -> pa.Table:
        """Every step (and epoch) at which sample ``(file, row)`` is consumed; with unbounded
        repeats or packed sequences (whose steps need the lane packed up to there), up to the
        first occurrence past ``until_step`` (default: the run's steps so far)."""
        run = self.run
        horizon = max(run.steps - 1, until_step if until_step is not None else 0)
        found, info = [], None
        for epoch, k, pos in self.engine.occurrences(file, int(row), self._file_id(file)):
            steps, packed = [], run.seq_len is not None
            for seg in reversed(self.segments):   # the latest topology that read this position
                hit = seg.find(k, pos)
                if hit is None:
                    continue
                rank, worker, lane, pieces = hit
                for item, off, ntok, doff in pieces:
                    j = item // seg.B
                    local = seg.step_of(rank, worker, j)
                    if local is None or (seg.stop is not None and seg.seg.step + local >= seg.stop):
                        continue
                    step = seg.seg.step + local
                    steps.append(step)
                    if info is None:
                        info = self.engine.pointer(self.engine.locate(file, int(row)))
                    found.append({"step": step, "rank": rank, "worker": worker, "sequence": item - j * seg.B,
                                  "offset": off, "tokens": info["n_tokens"] if ntok is None else ntok,
                                  "doc_offset": doff, "chunk": k, "position": pos, "epoch": epoch,
                                  "group": info["group"], "source": info["source"], "file": info["file"],
                                  "row": info["row"]})
                break
            if (self.end is None or packed) and steps and min(steps) > horizon:
                break
        return pa.Table.from_pylist(found, schema=LEDGER_SCHEMA)


def _concat(parts: list[pa.Table]) -> pa.Table:
    parts = [p for p in parts if p.num_rows]
    return pa.concat_tables(parts) if parts else LEDGER_SCHEMA.empty_table()


__all__ = ["Ledger", "Run", "Segment", "read_state", "LEDGER_SCHEMA"]
