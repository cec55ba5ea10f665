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

Limits: one topology per run (a checkpoint resumed on a different number of ranks or workers
gives the new topology's answer for the steps before the change); server-mode runs are not
recomputed here.
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

    @classmethod
    def from_state(cls, state: dict) -> "Run":
        run = state.get("run")
        if not run or not run.get("sql"):
            raise ProgrammingError("mix_ledger: this state has no 'run' record (it predates the ledger, or comes "
                                   "from a stream_factory dataset); save loader.state_dict() with this mixsql")
        dyn = state.get("dynamic") or {}
        return cls(sql=run["sql"], catalog=run.get("catalog"), snapshot=state.get("snapshot"),
                   params=run.get("params"), seq_len=run.get("seq_len"), tokenizer=run.get("tokenizer"),
                   by_group=run.get("by_group"), eos_id=run.get("eos_id"), bos_id=run.get("bos_id"),
                   dp_world=int(run.get("dp_world") or state["mixsql"]["dp_world"]),
                   workers=max(1, int(run.get("workers") or 1)),
                   batch_size=int(run.get("batch_size") or 1), drop_last=bool(run.get("drop_last")),
                   steps=int(run.get("steps") or 0), server=run.get("server"),
                   weight_changes=[[int(a), [float(x) for x in w]] for a, w in dyn.get("weights", [])])


# --------------------------------------------------------------------------- lanes
class _SampleLane:
    """One (rank, worker)'s samples: item ``m`` is row ``pos`` of its ``i``-th chunk."""

    def __init__(self, led: "Ledger", rank: int, worker: int):
        self.led = led
        self.first, self.stride = rank + led.run.dp_world * worker, led.run.dp_world * led.run.workers
        end = led.end
        self.n_chunks = None if end is None else max(0, -(-(end - self.first) // self.stride))
        self._cum = [0]    # items before lane chunk i (variable-size chunks)

    def chunk(self, i: int) -> int:
        return self.first + self.stride * i

    def _grow(self, i: int) -> None:
        cum = self._cum
        while len(cum) <= i:
            cum.append(cum[-1] + self.led.engine.chunk_rows(self.chunk(len(cum) - 1)))

    def items_before(self, i: int) -> int:
        led = self.led
        if self.n_chunks is not None:
            i = min(i, self.n_chunks)
        if not led.fixed:
            self._grow(i)
            return self._cum[i]
        n = i * led.C
        if i and self.n_chunks is not None and i == self.n_chunks and led.end - 1 == self.chunk(i - 1):
            n -= led.C - led.engine.chunk_rows(led.end - 1)
        return n

    def total(self) -> int | None:
        return None if self.n_chunks is None else self.items_before(self.n_chunks)

    def locate(self, m: int) -> tuple[int, int]:
        """(lane chunk index, row) of item ``m`` (an item the lane has)."""
        if self.led.fixed:
            return m // self.led.C, m % self.led.C
        cum = self._cum
        while cum[-1] <= m:
            if self.n_chunks is not None and len(cum) > self.n_chunks:
                raise IndexError(f"item {m} is past the lane's end")
            self._grow(len(cum))
        i = int(np.searchsorted(cum, m, side="right")) - 1
        return i, m - cum[i]

    def slices(self, first: int, stop: int) -> list[tuple[int, int, int, int]]:
        """Items ``[first, stop)`` as ``(chunk, row start, row stop, items before)`` slices."""
        out, m = [], first
        while m < stop:
            i, pos = self.locate(m)
            take = min(stop - m, self.items_before(i + 1) - self.items_before(i) - pos)
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

    def __init__(self, led: "Ledger", rank: int, worker: int):
        self.led, self.lane = led, _SampleLane(led, rank, worker)
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


# --------------------------------------------------------------------------- the ledger
class Ledger:
    """The consumption ledger of one run (see the module doc).

    ``source``: a loader state dict, a JSON file or a torch checkpoint holding one.
    ``catalog``: the catalog directory (default: the one the run recorded). ``tokenizer``:
    overrides the recorded tokenizer (needed for packed runs that passed a tokenizer object).
    ``stream``: an opened :class:`~mixsql.stream.MixStream` of the run's statement instead."""

    def __init__(self, source: Any, catalog: str | os.PathLike | None = None, tokenizer: Any = None,
                 stream: Any = None):
        from .stream import MixStream

        self.state = read_state(source)
        self.run = run = Run.from_state(self.state)
        if stream is None:
            if run.server is not None:
                raise ProgrammingError("mix_ledger: this run streamed from a server (server=...); its ledger is "
                                       "not recomputed locally")
            cat = catalog if catalog is not None else run.catalog
            if cat is None:
                raise ProgrammingError("mix_ledger: the state records no catalog directory; pass catalog=")
            stream = MixStream.open_cached(os.fspath(cat), run.sql, run.params, snapshot=run.snapshot)
        self.stream = stream
        self.engine = self.stream.engine()
        for at, w in run.weight_changes:
            self.engine.set_weights(w, at_chunk=at)
        spec = self.stream.spec
        self.C = int(spec.chunk_size)
        self.fixed = spec.unit == "samples"
        self.end = self.engine.stream_end()
        self.by_group = run.by_group if run.by_group is not None else spec.unit == "tokens"
        self._tokenizer_spec = tokenizer if tokenizer is not None else run.tokenizer
        self._tok = self._reader = None
        self._chunks: dict[int, pa.Table] = {}
        self._lanes: dict[tuple[int, int], Any] = {}

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

    def lane(self, rank: int, worker: int):
        key = (rank, worker)
        if key not in self._lanes:
            cls = _SampleLane if self.run.seq_len is None else _PackedLane
            self._lanes[key] = cls(self, rank, worker)
        return self._lanes[key]

    def _lane_batches(self, rank: int, worker: int, cap: int) -> int:
        """Batches of a lane, or ``cap`` when it has at least that many."""
        lane, B = self.lane(rank, worker), self.run.batch_size
        if isinstance(lane, _PackedLane):
            n = lane.count_at_least(cap * B + (0 if self.run.drop_last else 1))
        else:
            total = lane.total()
            n = cap * B + 1 if total is None else total
        nb = n // B if self.run.drop_last else -(-n // B)
        return min(nb, cap)

    def _slot(self, rank: int, step: int) -> tuple[int, int] | None:
        """(worker, batch of that worker) of the rank's step ``step``; None past the end."""
        W = self.run.workers
        nb = [self._lane_batches(rank, w, step // W + 1) for w in range(W)]
        if min(nb) > step // W:
            return step % W, step // W
        nb = [self._lane_batches(rank, w, step + 1) for w in range(W)]   # a lane ended: the tail
        before, j = 0, 0
        while True:
            alive = [w for w in range(W) if nb[w] > j]
            if not alive:
                return None
            if step < before + len(alive):
                return alive[step - before], j
            before += len(alive)
            j += 1

    def _step_of(self, rank: int, worker: int, j: int) -> int | None:
        """The rank's step that hands out batch ``j`` of ``worker`` (None: dropped)."""
        W = self.run.workers
        nb = [self._lane_batches(rank, w, j + 1) for w in range(W)]
        if nb[worker] <= j:
            return None
        return sum(min(n, j) for n in nb) + sum(1 for w in range(worker) if nb[w] > j)

    # -- queries -----------------------------------------------------------------------------
    def steps(self, first: int, last: int, ranks: Iterable[int] | None = None) -> pa.Table:
        """Every sample (or document piece) of steps ``first..last`` (inclusive) on ``ranks``."""
        ranks = list(range(self.run.dp_world)) if ranks is None else [r for r in ranks if 0 <= r < self.run.dp_world]
        parts = []
        for step in range(max(0, int(first)), int(last) + 1):
            for r in ranks:
                slot = self._slot(r, step)
                if slot is not None:
                    parts.append(self._batch(step, r, *slot))
        return _concat(parts)

    def _batch(self, step: int, rank: int, worker: int, j: int) -> pa.Table:
        lane, B = self.lane(rank, worker), self.run.batch_size
        if isinstance(lane, _PackedLane):
            n = lane.count_at_least((j + 1) * B)
            rows = []
            for seq in range(j * B, min((j + 1) * B, n)):
                for k, row, off, ntok, doff in lane.pieces(seq):
                    rows.append((k, row, seq - j * B, off, ntok, doff))
            return self._rows(step, rank, worker, rows)
        total = lane.total()
        stop = (j + 1) * B if total is None else min((j + 1) * B, total)
        rows = []
        for k, a, b, seq0 in lane.slices(j * B, stop):
            rows.extend((k, p, seq0 + p - a, 0, None, 0) for p in range(a, b))
        return self._rows(step, rank, worker, rows)

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
        D, W, B = run.dp_world, run.workers, run.batch_size
        horizon = max(run.steps - 1, until_step if until_step is not None else 0)
        found, info = [], None
        for epoch, k, pos in self.engine.occurrences(file, int(row), self._file_id(file)):
            rank, worker = k % D, (k // D) % W
            lane = self.lane(rank, worker)
            if isinstance(lane, _PackedLane):
                pieces = lane.doc_sequences(k, pos)
            else:
                pieces = [(lane.items_before((k // D) // W) + pos, 0, None, 0)]
            steps = []
            for item, off, ntok, doff in pieces:
                j = item // B
                step = self._step_of(rank, worker, j)
                if step is not None:
                    steps.append(step)
                    if info is None:
                        info = self.engine.pointer(self.engine.locate(file, int(row)))
                    found.append({"step": step, "rank": rank, "worker": worker, "sequence": item - j * B,
                                  "offset": off, "tokens": info["n_tokens"] if ntok is None else ntok,
                                  "doc_offset": doff, "chunk": k, "position": pos, "epoch": epoch,
                                  "group": info["group"], "source": info["source"], "file": info["file"],
                                  "row": info["row"]})
            if (self.end is None or isinstance(lane, _PackedLane)) and steps and min(steps) > horizon:
                break
        return pa.Table.from_pylist(found, schema=LEDGER_SCHEMA)


def _concat(parts: list[pa.Table]) -> pa.Table:
    parts = [p for p in parts if p.num_rows]
    return pa.concat_tables(parts) if parts else LEDGER_SCHEMA.empty_table()


__all__ = ["Ledger", "Run", "read_state", "LEDGER_SCHEMA"]
