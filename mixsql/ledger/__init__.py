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

Parts: :mod:`.record` reads the run's record from a state; :mod:`.lanes` locates a (rank,
worker)'s items; :mod:`.segments` turns lanes into steps; this module's :class:`Ledger` answers
the queries (:meth:`Ledger.steps`, :meth:`Ledger.sample`).
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from ..errors import ProgrammingError
from .record import Run, Segment, read_state
from .segments import _Segment

LEDGER_SCHEMA = pa.schema([
    ("step", pa.int64()), ("rank", pa.int32()), ("worker", pa.int32()), ("sequence", pa.int32()),
    ("offset", pa.int32()), ("tokens", pa.int64()), ("doc_offset", pa.int64()),
    ("chunk", pa.int64()), ("position", pa.int32()), ("epoch", pa.int32()),
    ("group", pa.string()), ("source", pa.string()), ("file", pa.string()), ("row", pa.int64()),
])
_POINTER_COLUMNS = ("chunk", "position", "epoch", "group", "source", "file", "row")


class Ledger:
    """The consumption ledger of one run (see the module doc).

    ``source``: a loader state dict, a JSON file or a torch checkpoint holding one.
    ``catalog``: the catalog directory (default: the one the run recorded; for a server-mode
    run, the server's catalog). ``tokenizer``: overrides the recorded tokenizer (needed for
    packed runs that passed a tokenizer object). ``stream``: an opened
    :class:`~mixsql.stream.MixStream` of the run's statement instead."""

    def __init__(self, source: Any, catalog: str | os.PathLike | None = None, tokenizer: Any = None,
                 stream: Any = None):
        from ..engine import MixEngine
        from ..stream import MixStream

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
        from ..readers import ChunkReader
        from ..tokenize import get_tokenizer
        from ..torch.items import _chunk_tokens

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
