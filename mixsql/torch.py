"""PyTorch integration: ``MixDataset`` (an ``IterableDataset``), ``mix_collate`` and ``MixDataLoader``.

Who reads what
    Chunk *k* of the statement goes to data-parallel rank ``k % dp_world`` and, inside that rank,
    to DataLoader worker ``(k // dp_world) % num_workers`` (``mixsql.topology``). ``dp_rank`` /
    ``dp_world`` come from ``torch.distributed`` (global rank // ``replicas``, so tensor/pipeline
    peers get identical data) unless given; workers come from ``get_worker_info()``.

What is yielded
    ``seq_len=None``: one dict per sample ``{"text", "group"}`` (+ ``columns=`` from the chunk);
    samples of pre-tokenized sources come as ``{"tokens" (LongTensor), "group"}``.
    ``seq_len=N``: packed ``{"input_ids" (LongTensor N+1), "group_ids" (per token), "group",
    "length"}``; with ``unit = 'tokens'`` (or ``by_group=True``) every sequence holds one group's
    tokens. Leftover tokens carry to the worker's next chunk; at the end of the stream each
    worker delivers its leftovers as final sequences padded with ``pad_id`` (``length`` < N+1,
    ``mix_collate`` turns it into ``mask``).

Training-loop conventions
    ``boundaries=True`` (packed): items carry ``position_ids`` restarting at 0 at every document,
    and MixDataLoader batches also ``cu_seqlens`` (int32) / ``max_seqlen`` for flash-attention's
    varlen kernels (:func:`add_boundaries`, :mod:`mixsql.packing`). ``by_group=False`` under
    ``unit = 'tokens'`` packs the groups into shared sequences; every token is still delivered
    once, so the token shares stay those of the chunks.
    Even endings (``even_end``, MixDataLoader under torch.distributed): every data-parallel rank
    hands out the same number of batches of a finite stream, so DDP's last step never hangs.
    ``'drop'`` (default): all ranks stop at the first batch some rank lacks; what was not handed
    out stays in ``state_dict()`` (a resumed run would deliver it). ``'pad'``: ranks that ran out
    hand out fully masked packed batches until all have ended. ``'off'``: no agreement.
    Schedules: a ``WITH SCHEDULE`` statement without ``SETTINGS (batch_size)`` maps steps onto
    chunks from ``batch_size`` (per rank; MixDataLoader passes its own) when a step's
    consumption is known in the statement's unit (unpacked samples; packed sequences of
    ``seq_len + 1`` tokens under ``unit = 'tokens'``); otherwise, iterated in-process, it
    follows ``set_step(step)`` (or ``feedback``); anywhere else iteration raises before data moves.
    ``persistent_workers=True``: workers keep their dataset copy (and the selection it opened)
    across epochs; each epoch's start state reaches them through a queue.
    Tokenizers are checked when the dataset is built (packed mode): no EOS, an EOS outside the
    vocabulary or a failing probe encode is an InterfaceError there, not in a worker
    (``mixsql.tokenize.validate_tokenizer``). Under ``unit = 'tokens'`` (or ``LIMIT ... TOKENS``)
    ``tokenizer_check`` compares the tokenizer with the one that counted the selected sources'
    ``n_tokens`` (``mixsql.tokenizer_check``): ``'warn'`` (default) a TokenizerMismatchWarning
    naming both, ``'error'`` a ProgrammingError before any data moves, ``'off'`` nothing. Token
    shares count each document's EOS (``mixsql.spec.EOS_TOKENS``), so the tokens a group's
    packed sequences carry are the tokens its share was computed on.

Hot path (per chunk, no per-token Python)
    Consecutive small chunks are read together on the prefetch thread (one ``ChunkReader.read``);
    each chunk's documents become one flat int32 array (pre-tokenized: the list column's values
    via offsets; raw text: one ``encode_flat`` batch call, see ``mixsql.tokenize`` for the thread
    policy in workers) that ``Packer.add_chunk`` frames and cuts with reshape; items are row views
    of one per-chunk tensor. Only the first item of a chunk carries the chunk's resume info; the
    others carry a (worker, task, key, tokens) tuple.

Batches (``MixDataLoader``)
    Packed mode with the default ``mix_collate`` and a ``batch_size``: the dataset itself cuts
    each worker's rows into batches (``_Batcher``: slices of the per-chunk packed arrays, one flat
    int32 buffer of ids, group ids and lengths per batch, one aggregated resume token
    (worker, task, {key: tokens}, info) per task the batch touches) and the underlying
    ``DataLoader`` runs with ``batch_size=None``; ``dl.batch_size`` / ``dl.drop_last`` still show
    the user's values. Workers send their batches in bundles (``_bundled``: one DataLoader message
    per up to ~256 KB of batches, the first bundle a single batch) and the main process restores
    the per-batch round robin over workers (``_interleave``), so the batches, their order and every
    ``state_dict()`` are exactly those of DataLoader's own per-item batching (each worker groups its
    own rows, B at a time, its last batch short or dropped with ``drop_last``). A custom
    ``collate_fn``, ``batch_size=None`` or ``seq_len=None`` keep the per-item path; there, with
    workers, ``_wire_collate`` ships each packed batch as one flat buffer. Either way the main
    process rebuilds ``mix_collate``'s batch (int64 tensors, ``mask``) in ``_unwire``.

Exactly-once resume
    Every item carries a compact resume token (worker, task, buffer key, tokens). ``MixDataLoader``
    (or direct iteration of the dataset in the main process) records the tokens of the items it
    *handed to the training loop*, never what workers prefetched. ``state_dict()`` converts them
    into a canonical, worker-count-independent description of the remaining work: partially
    consumed chunks (with their carry-in and how many tokens/samples of the chunk were consumed),
    chunks below the frontier that nobody started, the frontier, and one engine state to seek
    from (restoring costs O(groups) plus skipping the few chunks between the slowest and the
    fastest worker; never a replay of the stream).
    Guarantee: after ``load_state_dict`` the remaining data is exactly the data not yet consumed,
    every token/sample once. With the same ``num_workers`` (and ranks) the remaining batches are
    identical to an uninterrupted run; with a different ``num_workers`` the same tokens are
    delivered (nothing lost or duplicated) but sequence boundaries and order may differ.
    Loaders built elsewhere: inside a DataLoader worker that is not MixDataLoader's, each
    dataset copy records the items *it* handed out, and its ``state_dict()`` /
    ``load_state_dict()`` describe that worker's remaining work. This is torchdata's
    ``StatefulDataLoader`` protocol (it snapshots every worker's dataset state with the batches
    and hands each worker its own state back on resume, same ``num_workers``), so
    ``StatefulDataLoader(ds, num_workers=N).state_dict()`` resumes exactly like MixDataLoader. In
    the main process, ``ds.state_dict()`` after workers iterated copies of ``ds`` raises instead
    of returning a stale state.
    Elastic resume: ``load_state_dict([state of rank 0, ..., state of rank D-1])`` on a different
    number of data-parallel ranks (:func:`merge_rank_states`) continues the global stream from the
    largest old frontier; every chunk some old rank had not finished is redone by the new rank that
    owns its index, so nothing is lost or repeated. A single state needs the same world size.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .errors import InterfaceError, ProgrammingError
from .packing import MIXED, PackedBatch, Packer, cu_seqlens, document_positions
from .readers import DEFAULT_CACHE_BYTES, ChunkReader
from .tokenizer_check import MODES as TOKENIZER_CHECKS, check_counting_tokenizer
from .tokenize import configure_worker_threads, encode_flat, get_tokenizer, tokenizer_record, validate_tokenizer

STATE_VERSION = 1


# --------------------------------------------------------------------------- topology helpers
def _owner_worker(k: int, dp_world: int, num_workers: int) -> int:
    return (k // dp_world) % num_workers


def _suffix(start: int, dp_rank: int, dp_world: int, num_workers: int, worker: int, stop: int | None = None):
    """Chunks >= start (and < stop) owned by (dp_rank, worker)."""
    k = start + ((dp_rank - start) % dp_world)
    while stop is None or k < stop:
        if _owner_worker(k, dp_world, num_workers) == worker:
            yield k
        k += dp_world


def initial_state(dp_rank: int = 0, dp_world: int = 1, engine_state: dict | None = None) -> dict:
    return {"version": STATE_VERSION, "dp_rank": dp_rank, "dp_world": dp_world, "pending": [],
            "holes": [], "frontier": 0, "base": 0, "engine": engine_state, "end": None}


def _explicit_tasks(state: dict, num_workers: int, worker: int) -> list[dict]:
    """The pending entries and holes of ``state`` that ``worker`` (of ``num_workers``) redoes,
    sorted by chunk (carry-only entries first)."""
    D = state["dp_world"]
    tasks = []
    for i, p in enumerate(state["pending"]):
        c = p.get("chunk")
        w = (p.get("worker", i) % num_workers) if c is None else _owner_worker(c, D, num_workers)
        if w == worker:
            tasks.append({"chunk": c, "carry": p.get("carry") or {}, "drop": p.get("drop") or {}})
    for h in state["holes"]:
        if _owner_worker(h, D, num_workers) == worker:
            tasks.append({"chunk": h, "carry": {}, "drop": {}})
    tasks.sort(key=lambda t: -1 if t["chunk"] is None else t["chunk"])
    return tasks


def merge_rank_states(states: list[dict], dp_rank: int, dp_world: int) -> dict:
    """The state of new rank ``dp_rank`` of ``dp_world`` from every old rank's state.

    Old rank r (of D) has consumed its chunks ``k = r (mod D)`` below its frontier except its
    pending (partially consumed) chunks and holes (never started). The merged run continues from
    the largest old frontier F: the new rank redoes, as explicit tasks, the pending entries, holes
    and old ranks' unstarted chunks in ``[frontier_r, F)`` whose index it owns in the new topology
    (``k % dp_world == dp_rank``; leftover packed tokens without a chunk go to ``old rank %
    dp_world``), then streams its own chunks from F. With an unchanged world the rank's own state
    is returned as is (the remaining batches are identical to an uninterrupted run)."""
    by_rank: dict[int, dict] = {}
    for s in states:
        if s.get("version") != STATE_VERSION:
            raise ProgrammingError(f"unsupported mixsql state version {s.get('version')!r}")
        by_rank.setdefault(int(s["dp_rank"]), s)   # replicas of one dp rank hold the same state
    D = {int(s["dp_world"]) for s in by_rank.values()}
    if len(D) != 1:
        raise ProgrammingError(f"the states come from different world sizes {sorted(D)}; pass one run's states")
    D = D.pop()
    if sorted(by_rank) != list(range(D)):
        if len(by_rank) == 1 and D == dp_world and dp_rank in by_rank:
            return by_rank[dp_rank]
        missing = sorted(set(range(D)) - set(by_rank))
        raise ProgrammingError(f"states of data-parallel ranks {missing} (of {D}) are missing; pass every "
                               "old rank's loader.state_dict()")
    if D == dp_world:
        return by_rank[dp_rank]
    F = max(int(s["frontier"]) for s in by_rank.values())
    ends = [int(s["end"]) for s in by_rank.values() if s.get("end") is not None]
    end = min(ends) if ends else None
    pending, holes = [], set()
    for r, s in sorted(by_rank.items()):
        for p in s["pending"]:
            c = p.get("chunk")
            owner = (r if c is None else c) % dp_world
            if owner == dp_rank:
                pending.append({"chunk": c, "carry": p.get("carry") or {}, "drop": p.get("drop") or {},
                                "worker": len(pending)})
        holes.update(int(h) for h in s["holes"] if int(h) % dp_world == dp_rank)
        f = int(s["frontier"])
        k = f + ((r - f) % D)
        while k < F:
            if k % dp_world == dp_rank:
                holes.add(k)
            k += D
    if end is not None:
        holes = {h for h in holes if h < end}
    base = min(int(s["base"]) for s in by_rank.values())
    engine = next(s["engine"] for s in by_rank.values() if int(s["base"]) == base)
    return {"version": STATE_VERSION, "dp_rank": dp_rank, "dp_world": dp_world, "pending": pending,
            "holes": sorted(holes), "frontier": F, "base": base, "engine": engine, "end": end}


def _merge_carry(a: dict, b: dict) -> dict:
    """Carry ``a`` followed by carry ``b`` per key (values: int32 arrays or JSON lists)."""
    if not a:
        return dict(b)
    if not b:
        return dict(a)
    out = dict(a)
    for k, v in b.items():
        if k in out:
            out[k] = {f: np.concatenate([np.asarray(out[k][f], dtype=np.int32), np.asarray(v[f], dtype=np.int32)])
                      for f in ("ids", "groups")}
        else:
            out[k] = v
    return out


def _ledger_copy(state: dict) -> dict:
    """A rank state as the ledger keeps it in the topology history: without the engine state
    (O(groups); the ledger recomputes chunks) and packed carries (their tokens)."""
    pending = [{**p, "carry": {}} for p in state.get("pending", [])]
    return {**state, "engine": None, "pending": pending}


def _jsonable(v):
    return v.tolist() if isinstance(v, np.ndarray) else list(v)


# --------------------------------------------------------------------------- per-chunk helpers
_GROUP_ROWS = 256   # read consecutive small chunks together, up to this many rows ...
_GROUP_MAX = 32     # ... or this many chunks (the first read is always a single chunk)
PREFETCH_AHEAD = 64  # chunks of a worker's future whose node-cache fills start before they are read


def _grouped(tasks, max_group: int = _GROUP_MAX):
    """Batch consecutive tasks so tiny chunks share one read (and one thread hand-off)."""
    size, buf, rows = 1, [], 0
    for x in tasks:
        buf.append(x)
        rows += 0 if x[3] is None else x[3].num_rows
        if len(buf) >= size or rows >= _GROUP_ROWS or x[1] == "flush":
            yield buf
            buf, rows, size = [], 0, min(2 * size, max_group)
    if buf:
        yield buf


class _GroupRead:
    """Adapter so ``ChunkReader.prefetch`` reads a whole group of tasks with one ``read``."""

    def __init__(self, reader):
        self.reader = reader

    @staticmethod
    def tables(group):
        """The chunk tables the group reads (their node-cache fills start when it is queued)."""
        return [x[3] for x in group if x[3] is not None]

    def __call__(self, group):
        tables = [x[3] for x in group if x[3] is not None]
        if not tables:
            return [None] * len(group)
        try:
            data = self.reader.read(pa.concat_tables(tables)) if len(tables) > 1 else self.reader.read(tables[0])
        except pa.ArrowInvalid:   # chunk schemas differ: read them one by one
            data = None
        out, off = [], 0
        for x in group:
            if x[3] is None:
                out.append(None)
            elif data is None:
                out.append(self.reader.read(x[3]))
            else:
                out.append(data.slice(off, x[3].num_rows))
                off += x[3].num_rows
        return out


def _future_chunks(engine, ks, end: int | None) -> Iterator[pa.Table]:
    """Chunks ``ks`` (this worker's, in order) computed directly by ``engine`` without moving it:
    the files ``ChunkReader.prefetch(ahead=...)`` starts filling ahead of the reads. Prediction
    only: what is read comes from the tasks. Engines without random access predict nothing."""
    chunk = getattr(engine, "chunk", None)
    if chunk is None:
        return
    for k in ks:
        if end is not None and k >= end:
            return
        t = chunk(k)
        if t is None:
            return
        yield t


def _ungroup(pairs):
    for group, datas in pairs:
        yield from zip(group, datas)


def _chunk_tokens(data, tok) -> tuple[np.ndarray, np.ndarray]:
    """All documents of a read chunk as ``(flat int32 ids, ids per document)``."""
    if "tokens" in data.column_names:
        col = data.column("tokens")
        col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
        if col.null_count == 0:
            off = col.offsets.to_numpy()          # n + 1 offsets of this (possibly sliced) array
            values = col.values.to_numpy(zero_copy_only=False)[off[0]:off[-1]]
            return values.astype(np.int32, copy=False), np.diff(off).astype(np.int64)
        if "text" not in data.column_names:
            lengths = col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
            values = col.flatten().to_numpy(zero_copy_only=False)
            return values.astype(np.int32, copy=False), lengths
        docs = col.to_pylist()   # some rows (e.g. from text sources) need tokenizing
        missing = [i for i, v in enumerate(docs) if v is None]
        texts = data.column("text").to_pylist()
        for i, e in zip(missing, tok.encode_batch([texts[i] for i in missing])):
            docs[i] = e
        arrs = [np.asarray(d, dtype=np.int32) for d in docs]
        return (np.concatenate(arrs) if arrs else np.empty(0, np.int32),
                np.fromiter(map(len, arrs), dtype=np.int64, count=len(arrs)))
    return encode_flat(tok, data.column("text").to_pylist())


def _row_names(pb: PackedBatch, names: dict) -> list[str]:
    """The ``group`` name of every packed row."""
    keys = pb.keys
    if all(k != MIXED for k in keys):
        return [names.get(int(k), k) for k in keys]
    return _majority_names(pb, names)


def _items_of(pb: PackedBatch, names: dict, token, eos: int | None = None) -> Iterator[dict]:
    """One dict per packed row; tensors are row views of one per-chunk tensor. With ``eos``, each
    item also carries ``position_ids`` (:func:`mixsql.packing.document_positions`)."""
    n = len(pb)
    if not n:
        return
    ids = torch.from_numpy(pb.ids.astype(np.int64))
    grp = torch.from_numpy(pb.groups.astype(np.int64))
    pos = None if eos is None else torch.from_numpy(document_positions(pb.ids, pb.lengths, eos))
    lengths = pb.lengths.tolist()
    keys = pb.keys
    gnames = _row_names(pb, names)
    for i in range(n):
        item = {"input_ids": ids[i], "group_ids": grp[i], "group": gnames[i], "length": lengths[i]}
        if pos is not None:
            item["position_ids"] = pos[i]
        item["_mix"] = token(keys[i], lengths[i])
        yield item


def _unpacked_items(data: pa.Table, skip: int, names: dict, columns, token) -> Iterator[dict]:
    """One item per row of a chunk's loaded data from row ``skip`` on: its text (or pre-tokenized
    ids), group name and the user's columns; ``token(MIXED, 1)`` tags each with its position."""
    cols = data.column_names
    n_rows = data.num_rows
    texts = data.column("text").to_pylist() if "text" in cols else [None] * n_rows
    ids = data.column("tokens").to_pylist() if "tokens" in cols else None
    gids = data.column("group_id").to_pylist()
    extra = {c: data.column(c).to_pylist() for c in columns}
    for i in range(skip, n_rows):
        g = names.get(gids[i], str(gids[i]))
        if texts[i] is None and ids is not None and ids[i] is not None:
            item = {"tokens": torch.tensor(ids[i], dtype=torch.long), "group": g}   # pre-tokenized
        else:
            item = {"text": texts[i], "group": g}
        for c in columns:
            item[c] = extra[c][i]
        item["_mix"] = token(MIXED, 1)
        yield item


def add_boundaries(batch: dict, eos_id: int) -> dict:
    """Add document boundaries to a packed batch (``input_ids`` [B, L], ``length``):
    ``position_ids`` [B, L] restarting at 0 at every document (HF flattening convention),
    ``cu_seqlens`` (int32) and ``max_seqlen`` for flash-attention's varlen kernels over the model
    inputs ``input_ids[:, :-1][mask[:, :-1]]`` (see :mod:`mixsql.packing`)."""
    ids, lengths = batch["input_ids"].numpy(), batch["length"].numpy()
    pos = batch.get("position_ids")
    pos = document_positions(ids, lengths, eos_id) if pos is None else pos.numpy()
    cu = cu_seqlens(pos, lengths)
    batch["position_ids"] = torch.from_numpy(pos)
    batch["cu_seqlens"] = torch.from_numpy(cu)
    batch["max_seqlen"] = int(np.diff(cu).max()) if len(cu) > 1 else 0
    return batch


def _majority_names(pb: PackedBatch, names: dict) -> list[str]:
    """Per row: the name of the most frequent group among its real tokens (ties: lowest id)."""
    n, L = pb.groups.shape
    real = np.arange(L)[None, :] < pb.lengths[:, None]
    vals, inv = np.unique(pb.groups[real], return_inverse=True)
    rows = np.broadcast_to(np.arange(n)[:, None], (n, L))[real]
    counts = np.bincount(rows * len(vals) + inv.reshape(-1), minlength=n * len(vals)).reshape(n, len(vals))
    out = []
    for k, gid in zip(pb.keys, vals[counts.argmax(1)].tolist()):
        gid = int(k) if k != MIXED else gid
        out.append(names.get(gid, str(gid)))
    return out


class _Batcher:
    """Cuts one worker's packed rows into ready batches of ``B`` rows, vectorised (the fast path
    of ``MixDataLoader`` with ``mix_collate``): exactly the batches the per-item path builds (the
    worker's rows in order, ``B`` at a time, the last one short or dropped with ``drop_last``).

    A batch is a ``_wire_collate``-style dict: one flat int32 buffer (ids, group ids, lengths), the
    group names, and one aggregated resume token ``(worker, task, {key: tokens}, info)`` per task
    the batch touches (``info`` only where the batch holds the task's first row)."""

    def __init__(self, w: int, B: int, drop_last: bool, shared: bool):
        self.w, self.B, self.drop_last, self.shared = w, int(B), bool(drop_last), shared
        self.pend: list = []   # (PackedBatch, names, task, info or None, first row, end row)
        self.have = 0

    def add(self, pb: PackedBatch, gnames: list, t: int, info: dict) -> Iterator[dict]:
        n, i, B = len(pb), 0, self.B
        while i < n:
            take = min(B - self.have, n - i)
            self.pend.append((pb, gnames, t, info if i == 0 else None, i, i + take))
            self.have += take
            i += take
            if self.have == B:
                yield self._build()

    def finish(self) -> Iterator[dict]:
        if self.have and not self.drop_last:
            yield self._build()
        self.pend, self.have = [], 0

    def _build(self) -> dict:
        pend, B = self.pend, self.have
        self.pend, self.have = [], 0
        L = pend[0][0].ids.shape[1]
        buf = np.empty(2 * B * L + B, dtype=np.int32)   # half the bytes to pickle; int64 in _unwire
        ids, grp, lens = buf[:B * L].reshape(B, L), buf[B * L:2 * B * L].reshape(B, L), buf[2 * B * L:]
        o, names, toks = 0, [], []
        for pb, gn, t, info, a, b in pend:
            m = b - a
            ids[o:o + m] = pb.ids[a:b]
            grp[o:o + m] = pb.groups[a:b]
            ln = pb.lengths[a:b]
            lens[o:o + m] = ln
            o += m
            names += gn[a:b]
            counts: dict = {}
            for k, n in zip(pb.keys[a:b], ln.tolist()):
                counts[k] = counts.get(k, 0) + n
            toks.append((self.w, t, counts, info))
        if self.shared:   # to a worker's queue: bytes pickle at half the cost of an ndarray
            wire = torch.from_numpy(buf) if buf.nbytes > _WIRE_TENSOR_BYTES else buf.tobytes()
        else:
            wire = buf
        return {"_wire": wire, "_wire_shape": (B, L), "_wire_full": bool((lens == L).all()), "group": names,
                "_mix": toks}


_BUNDLE_BYTES = 256 << 10   # a worker sends its batches in bundles of up to this many bytes ...
_BUNDLE_MAX = 16            # ... and this many batches (the first bundle holds one batch)


def _bundled(batches: Iterator[dict], w: int) -> Iterator[tuple]:
    """A worker's batches as ``(worker, [batch, ...], last)`` messages: one DataLoader message
    (index request, pickling, pipe hand-off, main-process bookkeeping) per bundle instead of per
    batch. Bundles grow 1, 2, 4, ... up to ``_BUNDLE_BYTES`` / ``_BUNDLE_MAX``; the worker's final
    message (possibly empty) has ``last=True`` so the main process knows the worker is done."""
    buf: list = []
    k, kmax = 1, _BUNDLE_MAX
    for b in batches:
        if len(buf) >= k:   # only sent once more is known to follow (the last one is flagged)
            yield (w, buf, False)
            buf, k = [], min(2 * k, kmax)
        if isinstance(b["_wire"], torch.Tensor):
            kmax = k = 1    # shared-memory batches travel one by one
        elif kmax == _BUNDLE_MAX:
            kmax = max(1, min(_BUNDLE_MAX, _BUNDLE_BYTES // max(1, len(b["_wire"]))))
            k = min(k, kmax)
        buf.append(b)
    yield (w, buf, True)


def _interleave(messages: Iterator[tuple], W: int, start: int) -> Iterator[dict]:
    """Batches from workers' bundles in the order DataLoader delivers per-batch messages: round
    robin over the workers (physical worker ``i`` is data worker ``(start + i) % W``), a worker
    leaving the rotation when it has no batch left."""
    import collections

    queues = [collections.deque() for _ in range(W)]
    ended = [False] * W
    rot = collections.deque((start + i) % W for i in range(W))
    while rot:
        w = rot[0]
        q = queues[w]
        while not q and not ended[w]:
            msg = next(messages, None)
            if msg is None:   # the DataLoader finished: every worker is done
                ended = [True] * W
                break
            mw, batches, last = msg
            queues[mw].extend(batches)
            ended[mw] = ended[mw] or last
        if q:
            yield q.popleft()
            rot.rotate(-1)
        else:
            rot.popleft()


def _one_item(item: dict) -> dict:
    """``mix_collate``'s stand-in with ``batch_size=None``: the item itself, its token in a list."""
    return {**item, "_mix": [item["_mix"]]}


def _pass(batch):
    """Collate of the fast path: the dataset already yields whole batches (or bundles of them)."""
    return batch


# --------------------------------------------------------------------------- consumption tracker
class _Tracker:
    """Turns the resume tokens of consumed items into a canonical state (see module doc)."""

    def __init__(self, state: dict, num_workers: int):
        self.start = state
        self.W = max(1, num_workers)
        self.cur: dict[int, dict] = {}     # worker -> {"t", "info", "n": {key: consumed}}
        self.next_worker = state.get("next_worker", 0) if state.get("workers") == self.W else 0

    def observe(self, tok) -> None:
        """One item's token ``(worker, task, key, tokens, info)``."""
        w, t, key, n, info = tok
        self.observe_counts(w, t, {key: n}, info)

    def observe_counts(self, w: int, t: int, counts: dict, info) -> None:
        """An aggregated token (one batch's rows of one task): same state as one ``observe`` per row."""
        cur = self.cur.get(w)
        if cur is None or cur["t"] != t:
            if info is None:  # cannot happen: the first item of a task carries its info
                raise InterfaceError("resume token stream out of order; consume items in DataLoader order")
            cur = self.cur[w] = {"t": t, "info": info, "n": {}}
        n = cur["n"]
        for key, k in counts.items():
            n[key] = n.get(key, 0) + k
        self.next_worker = (w + 1) % self.W

    def state(self) -> dict:
        s = self.start
        D, r = s["dp_world"], s["dp_rank"]
        K_old = s["frontier"]
        pending, holes = [], []
        suffix_next: dict[int, int | None] = {}   # worker -> first unstarted suffix chunk (None: ended)
        frontier = K_old
        engines = [(s["base"], s["engine"])]
        end = s.get("end")
        for w in range(self.W):
            tasks = _explicit_tasks(s, self.W, w)
            cur = self.cur.get(w)
            if cur is None:
                rest, nxt = tasks, K_old
            else:
                info, t = cur["info"], cur["t"]
                carry_in, drop = info["carry"], dict(info["drop"])
                carry = {}
                for key, v in carry_in.items():
                    k = cur["n"].get(key, 0)
                    if k < len(v["ids"]):
                        carry[key] = {"ids": _jsonable(v["ids"][k:]), "groups": _jsonable(v["groups"][k:])}
                for key, k in cur["n"].items():
                    extra = k - len(carry_in.get(key, {"ids": ()})["ids"])
                    if extra > 0:
                        drop[key] = drop.get(key, 0) + extra
                entry = {"chunk": info["chunk"], "carry": carry, "drop": drop, "worker": w}
                if entry["chunk"] is not None or carry:
                    pending.append(entry)
                if info.get("eng") is not None:
                    engines.append(tuple(info["eng"]))
                if info.get("end") is not None:
                    end = info["end"] if end is None else min(end, info["end"])
                rest = tasks[t + 1:] if t < len(tasks) else []
                if info["kind"] == "flush":
                    nxt = None
                    if info.get("end") is not None:   # every chunk below the end was handed out
                        frontier = max(frontier, info["end"])
                elif info["kind"] == "suffix":
                    nxt = info["chunk"] + 1
                    frontier = max(frontier, nxt)
                else:
                    nxt = K_old
            for task in rest:
                if task["carry"] or task["drop"] or task["chunk"] is None:
                    pending.append({**task, "worker": w})
                else:
                    holes.append(task["chunk"])
            suffix_next[w] = nxt
        for w, nxt in suffix_next.items():
            if nxt is not None:
                holes.extend(_suffix(nxt, r, D, self.W, w, stop=frontier))
        if end is not None:
            holes = [h for h in holes if h < end]
            pending = [p for p in pending if p["chunk"] is None or p["chunk"] < end or p["carry"]]
        needed = [p["chunk"] for p in pending if p["chunk"] is not None] + holes + [frontier]
        low = min(needed)
        base, eng = max((e for e in engines if e[0] <= low), key=lambda e: e[0])
        return {"version": STATE_VERSION, "dp_rank": r, "dp_world": D, "pending": pending,
                "holes": sorted(set(holes)), "frontier": frontier, "base": base, "engine": eng, "end": end,
                "workers": self.W, "next_worker": self.next_worker}


# --------------------------------------------------------------------------- the dataset
def _shared_flag():
    """A byte in shared memory that DataLoader workers (forked or started from this process) set."""
    import multiprocessing

    return multiprocessing.RawValue("b", 0)


def _spawning() -> bool:
    from multiprocessing.context import get_spawning_popen

    return get_spawning_popen() is not None


def _dp_from_dist(replicas: int) -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if world % replicas:
            raise InterfaceError(f"world size {world} is not a multiple of replicas={replicas}")
        return rank // replicas, world // replicas
    return 0, 1


def _hold_snapshot(catalog, sql):
    """Hold the catalog snapshot the dataset plans on (AT SNAPSHOT n in ``sql``, else the newest)."""
    from .catalog import Catalog, hold_snapshot
    from .source_statements import split_snapshot

    path = catalog.path if isinstance(catalog, Catalog) else catalog
    return hold_snapshot(path, split_snapshot(sql)[1] if sql else None)


class MixDataset(IterableDataset):
    """Stream a MIX statement as training samples or packed token sequences (see module doc).

    ``stream_factory`` (advanced/testing) replaces ``MixStream.open(catalog, sql, params)``:
    a zero-argument callable returning an object with ``files`` (files table), ``spec`` and
    ``engine(state) -> MixEngine``.
    """

    def __init__(self, sql: str | None = None, catalog: Any = "./mixsql_catalog", server: Any = None,
                 tokenizer: Any = None, seq_len: int | None = None, params: Any = None, replicas: int = 1,
                 dp_rank: int | None = None, dp_world: int | None = None, by_group: bool | None = None,
                 eos_id: int | None = None, bos_id: int | None = None, pad_id: int | None = None,
                 columns: Sequence[str] = (), cache_bytes: int = DEFAULT_CACHE_BYTES, prefetch: int = 2,
                 even_end: str = "drop", boundaries: bool = False, batch_size: int | None = None,
                 tokenizer_check: str = "warn", stream_factory: Callable[[], Any] | None = None,
                 prefetch_ahead: int = PREFETCH_AHEAD):
        super().__init__()
        if sql is None and stream_factory is None:
            raise InterfaceError("MixDataset needs a MIX statement: MixDataset(sql, catalog=...)")
        self.sql, self.catalog, self.server, self.params = sql, catalog, server, params
        self._lease = _hold_snapshot(catalog, sql) if server is None and stream_factory is None else None
        self.snapshot = self._lease.snapshot if self._lease is not None else None
        self.tokenizer_spec, self.seq_len = tokenizer, seq_len
        self.replicas = int(replicas)
        if self.replicas < 1:
            raise InterfaceError("replicas must be >= 1")
        if dp_rank is None or dp_world is None:
            r, wd = _dp_from_dist(self.replicas)
            dp_rank = r if dp_rank is None else dp_rank
            dp_world = wd if dp_world is None else dp_world
        if not 0 <= dp_rank < dp_world:
            raise InterfaceError(f"dp_rank {dp_rank} is outside 0..{dp_world - 1}")
        self.dp_rank, self.dp_world = int(dp_rank), int(dp_world)
        self.by_group, self.eos_id, self.bos_id, self.pad_id = by_group, eos_id, bos_id, pad_id
        self.eos: int | None = None   # the EOS id the packer appends (packed mode)
        tok = None
        if seq_len is not None:   # tokenizer problems (no EOS, unreadable file) surface here, not in a worker
            tok = get_tokenizer(tokenizer, eos_id=eos_id, bos_id=bos_id)
            self.eos = validate_tokenizer(tok, eos_id)
        self.columns = tuple(columns)
        if even_end not in EVEN_ENDS:
            raise InterfaceError(f"even_end must be one of {', '.join(map(repr, EVEN_ENDS))}, got {even_end!r}")
        if even_end == "pad" and seq_len is None:
            raise InterfaceError("even_end='pad' pads with masked packed sequences and needs seq_len=; "
                                 "use 'drop' for samples")
        self.even_end = even_end
        if boundaries and seq_len is None:
            raise InterfaceError("boundaries=True marks documents inside packed sequences and needs seq_len=")
        self.boundaries = bool(boundaries)
        self.batch_size = batch_size   # per rank and step; MixDataLoader fills in its own
        self.cache_bytes, self.prefetch_depth = cache_bytes, prefetch
        if int(prefetch_ahead) < 0:
            raise InterfaceError(f"prefetch_ahead must be >= 0 (chunks), got {prefetch_ahead}")
        self.prefetch_ahead = int(prefetch_ahead)
        self.stream_factory = stream_factory
        self._state = initial_state(self.dp_rank, self.dp_world)
        self._tracker: _Tracker | None = None
        self._stream = None
        self._engine = None
        self._algo = None                 # in-process USING algorithm (feedback with num_workers=0)
        self._algo_state: dict | None = None   # restored algorithm state, applied when it is created
        self._weight_log: list = []       # in-process weight changes [[at_chunk, weights], ...]
        self._steps = 0                   # items (direct iteration) or batches (MixDataLoader) handed out
        self._topologies: list | None = None   # the restored run's topology history (see _run_record)
        self._resumed: dict | None = None      # {"step", "states"}: where and from what this run resumed
        self._job_ledger: dict | None = None   # server mode: the job's ledger record (static jobs: cached)
        self._worker_flag = _shared_flag()  # set by workers of a loader other than MixDataLoader
        self._step_size: int | None = None  # global step size that maps SCHEDULE steps (see set_step)
        self._epoch_states = None           # MixDataLoader with persistent workers: epoch start states
        if tokenizer_check not in TOKENIZER_CHECKS:
            raise InterfaceError(f"tokenizer_check must be one of {', '.join(map(repr, TOKENIZER_CHECKS))}, "
                                 f"got {tokenizer_check!r}")
        self.tokenizer_check = tokenizer_check
        self._check_tokenizer(tok)

    def _check_tokenizer(self, tok) -> None:
        """The packing tokenizer against the one that counted the catalog's n_tokens
        (:mod:`mixsql.tokenizer_check`), before any data moves. Local catalogs only (a server's
        catalog is not read here); unpacked samples are tokenized by the user, not checked."""
        from .catalog import Catalog
        from .snapshots import Store

        if tok is None or self._lease is None:
            return
        path = self.catalog.path if isinstance(self.catalog, Catalog) else Path(self.catalog).expanduser().resolve()
        sources = (Store(path).read(self.snapshot) or {}).get("sources", [])

        def selection():
            stream = self._open()
            self._stream = None   # workers map the node's cached selection themselves
            spec = stream.spec
            tokens = spec.unit == "tokens" or (spec.budget is not None and spec.budget.kind == "tokens")
            return tokens, set(stream.files.column("source").to_pylist())

        check_counting_tokenizer(sources, tokenizer_record(tok), self.tokenizer_check, selection)

    def __getstate__(self):
        state = dict(self.__dict__)
        if not _spawning():   # shared-memory objects only travel to processes started from this one
            state["_worker_flag"] = state["_epoch_states"] = None
        return state

    def _workers_iterated(self) -> bool:
        return self._worker_flag is not None and bool(self._worker_flag.value)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What this copy of the dataset handed out: direct iteration in the main process, or,
        inside a DataLoader worker, that worker's items (torchdata's ``StatefulDataLoader``
        collects these per worker and hands each back to its worker on resume).

        In the main process while DataLoader workers iterate copies of this dataset, its own state
        is stale: that raises (use ``MixDataLoader.state_dict()`` or ``StatefulDataLoader``)."""
        if self._tracker is None and get_worker_info() is None and self._workers_iterated():
            raise InterfaceError(
                "MixDataset.state_dict() in the main process does not see what DataLoader workers "
                "consumed; checkpoint the loader instead: mixsql.torch.MixDataLoader(ds, ...).state_dict() "
                "or torchdata.stateful_dataloader.StatefulDataLoader(ds, ...).state_dict()")
        st = self._tracker.state() if self._tracker else self._state
        return {"mixsql": st, "statement": self._fingerprint(), "snapshot": self.snapshot, **self._dynamic_state(),
                "run": self._run_record(self._steps, state=st)}

    def _run_record(self, steps: int, workers: int = 1, batch_size: int | None = 1, drop_last: bool = False,
                    state: dict | None = None) -> dict:
        """What :mod:`mixsql.ledger` needs to recompute the run's consumption: the statement, its
        catalog, packing, topology, batching and how many steps (batches) were handed out; the
        topology history (``topologies``: from which step each topology held, with the old
        ranks' states a changed topology resumed from); in server mode the job's record
        (``job``: catalog snapshot, stream fingerprint, weight changes; see ``Job.ledger``)."""
        from .catalog import Catalog

        cat = self.catalog.path if isinstance(self.catalog, Catalog) else self.catalog
        now = {"dp_world": self.dp_world, "workers": max(1, int(workers)), "batch_size": batch_size,
               "drop_last": bool(drop_last)}
        topologies = list(self._topologies or [])
        if not topologies:
            topologies = [{"step": 0, **now}]
        elif any(topologies[-1].get(k) != v for k, v in now.items()):
            resumed = self._resumed or {"step": int(steps), "states": None}
            topologies.append({"step": resumed["step"], **now, "states": resumed["states"]})
        record = {"topologies": topologies}
        if self.server is not None and self.sql is not None:
            record["job"] = self._server_job_record(state)
        return {**record, "sql": self.sql, "params": self.params,
                "catalog": os.path.abspath(cat) if isinstance(cat, (str, os.PathLike)) else None,
                "server": self.server if isinstance(self.server, str) else None,
                "seq_len": self.seq_len,
                "tokenizer": self.tokenizer_spec if isinstance(self.tokenizer_spec, (str, type(None))) else None,
                "by_group": self.by_group, "eos_id": self.eos_id, "bos_id": self.bos_id, "pad_id": self.pad_id,
                "dp_world": self.dp_world, "replicas": self.replicas, "workers": max(1, int(workers)),
                "rank_batch_size": self.batch_size,
                "batch_size": batch_size, "drop_last": bool(drop_last), "steps": int(steps)}

    def _server_job_record(self, state: dict | None) -> dict:
        """The server job's ledger record (the ``ledger`` action), fetched at checkpoint time:
        the job this run read (its id travels in the engine state), else the statement's job."""
        if self._job_ledger is not None and not self._job_ledger.get("dynamic"):
            return self._job_ledger
        from .client import MixClient

        own = isinstance(self.server, str)
        client = MixClient(self.server) if own else self.server
        try:
            job = ((state or {}).get("engine") or {}).get("job")
            if job is None:
                job = client.register(self.sql, self.params)["job"]
            self._job_ledger = client.ledger(job)
        finally:
            if own:
                client.close()
        return self._job_ledger

    def _dynamic_state(self) -> dict:
        """In-process feedback's part of a checkpoint: the algorithm's state and the weight
        changes it made (re-applied from the restored engine position on)."""
        import copy

        algo = self._algo.state_dict() if self._algo is not None else self._algo_state
        algo = copy.deepcopy(algo)   # a snapshot: the live algorithm keeps appending
        if algo is None and not self._weight_log:
            return {}
        return {"dynamic": {"algorithm": algo, "weights": [[int(a), list(w)] for a, w in self._weight_log]}}

    def load_state_dict(self, state: dict | Sequence[dict]) -> None:
        """Restore ``state_dict()`` output. ``state`` may be the list of *every* old rank's state
        (as saved per rank): with a different number of data-parallel ranks (or workers) the
        remaining work is redistributed over the new topology, nothing lost or repeated."""
        given = [s.get("mixsql", s) for s in state] if isinstance(state, (list, tuple)) else None
        if isinstance(state, (list, tuple)):
            state = self._merge_states(list(state))
        st = state.get("mixsql", state)
        if state.get("snapshot") not in (None, self.snapshot):
            raise ProgrammingError(f"this checkpoint was taken on catalog snapshot {state['snapshot']}, this dataset "
                                   f"reads snapshot {self.snapshot}; resume with 'AT SNAPSHOT {state['snapshot']}' "
                                   "after FROM samples in the statement")
        if state.get("statement") not in (None, self._fingerprint()):
            raise ProgrammingError("this checkpoint was taken with a different MIX statement or parameters; "
                                   "resume with the same statement")
        if st.get("version") != STATE_VERSION:
            raise ProgrammingError(f"unsupported mixsql state version {st.get('version')!r}")
        if (st["dp_rank"], st["dp_world"]) != (self.dp_rank, self.dp_world):
            raise ProgrammingError(
                f"checkpoint is for data-parallel rank {st['dp_rank']} of {st['dp_world']}, this process is "
                f"rank {self.dp_rank} of {self.dp_world}; resume with the same number of data-parallel ranks"
            )
        self._state = st
        self._tracker = None
        run = state.get("run")
        if run is not None:   # a checkpoint (a state without one continues this run's record)
            self._steps = int(run.get("steps", 0))
            self._topologies = run.get("topologies") or [
                {"step": 0, **{k: run.get(k) for k in ("dp_world", "batch_size", "drop_last")},
                 "workers": max(1, int(run.get("workers") or 1))}]
            self._resumed = {"step": self._steps, "states": [_ledger_copy(s) for s in (given or [st])]}
        if self._worker_flag is not None:
            self._worker_flag.value = 0
        dyn = state.get("dynamic") or {}
        if self._algo is not None:
            self._algo.close()
        self._algo, self._algo_state = None, dyn.get("algorithm")
        self._weight_log = [[int(a), [float(x) for x in w]] for a, w in dyn.get("weights", [])]

    def _merge_states(self, states: list[dict]) -> dict:
        """One state for this rank from all old ranks' states (see :func:`merge_rank_states`)."""
        if not states:
            raise ProgrammingError("load_state_dict got an empty list of states")
        fps = {s.get("statement") for s in states}
        if len(fps) > 1:
            raise ProgrammingError("the states come from different MIX statements; pass the states of one run")
        dyn = [s.get("dynamic") for s in states if s.get("dynamic")]
        merged = merge_rank_states([s.get("mixsql", s) for s in states], self.dp_rank, self.dp_world)
        out = {"mixsql": merged, "statement": next(iter(fps))}
        if states[0].get("run"):
            out["run"] = states[0]["run"]
        if dyn:
            out["dynamic"] = dyn[0]
        return out

    def _fingerprint(self) -> str:
        from .source_statements import split_snapshot

        text = f"{split_snapshot(self.sql)[0]}\x00{self.params!r}\x00{self.seq_len}\x00{self.snapshot}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # -- iteration --------------------------------------------------------------------------
    def _open(self):
        if self._stream is None:
            if self.stream_factory is not None:
                self._stream = self.stream_factory()
            elif self.server is not None:
                self._stream = _ServerStream(self.server, self.sql, self.params, self.catalog,
                                             self.dp_rank)
            else:
                from .stream import MixStream

                if self.columns or not isinstance(self.catalog, (str, os.PathLike)):
                    # a path: MixStream.open opens the catalog read-only and closes it when done
                    self._stream = MixStream.open(self.catalog, self.sql, self.params, user_columns=self.columns,
                                                  snapshot=self.snapshot)
                else:   # pointers only: the node's cached selection, planned once, memory-mapped
                    self._stream = MixStream.open_cached(self.catalog, self.sql, self.params,
                                                         snapshot=self.snapshot)
        return self._stream

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        if info is not None:
            # a worker process: the resume tokens travel to MixDataLoader through mix_collate
            if getattr(self, "_epoch_states", None) is not None:   # persistent workers
                self._epoch = getattr(self, "_epoch", 0) + 1
                if self._epoch > 1:
                    self._state = self._epoch_states.get()
            st, W = self._state, info.num_workers
            w = (info.id + st.get("next_worker", 0)) % W if st.get("workers") == W else info.id
            configure_worker_threads(W)   # tokenizer threads: cores split between the workers
            if not getattr(self, "_emit_tokens", False):   # a stock DataLoader / StatefulDataLoader
                if self._worker_flag is not None:
                    self._worker_flag.value = 1
                return self._tracked(st, W, info.id)
            batcher = self._batcher(w, shared=True)
            items = self._items(st, W, w, batcher)
            return items if batcher is None else _bundled(items, w)
        if getattr(self, "_emit_tokens", False):  # MixDataLoader with num_workers=0
            return self._items(self._state, 1, 0, self._batcher(0, shared=False))
        return self._direct()

    def _batcher(self, w: int, shared: bool) -> _Batcher | None:
        """Whole batches instead of items when MixDataLoader asked for them (packed mode only)."""
        b = getattr(self, "_batching", None)
        if b is None or self.seq_len is None:
            return None
        return _Batcher(w, b[0], b[1], shared)

    def _direct(self) -> Iterator[dict]:
        if self._worker_flag is not None:
            self._worker_flag.value = 0
        return self._tracked(self._state, 1, 0)

    def _tracked(self, state: dict, W: int, w: int) -> Iterator[dict]:
        """Items of worker ``w`` of ``W``, their resume tokens recorded in ``self._tracker`` as
        each item is handed out (what ``state_dict()`` of this copy reports)."""
        self._tracker = tracker = _Tracker(state, W)
        for item in self._items(state, W, w):
            tracker.observe(item.pop("_mix"))
            self._steps += 1
            yield item

    def _items(self, state: dict, W: int, w: int, batcher: _Batcher | None = None) -> Iterator[dict]:
        stream = self._open()
        spec = stream.spec
        names = {g.id: g.path for g in spec.groups}
        packed = self.seq_len is not None
        tok = get_tokenizer(self.tokenizer_spec, eos_id=self.eos_id, bos_id=self.bos_id) if packed else None
        by_group = self.by_group if self.by_group is not None else spec.unit == "tokens"
        eos = self.eos_id if self.eos_id is not None else (tok.eos_id if tok else None)
        bos = self.bos_id  # BOS is prepended only when asked for explicitly
        # per-item position ids where no MixDataLoader adds boundaries to whole batches
        item_eos = eos if self.boundaries and not getattr(self, "_emit_tokens", False) else None
        self._step_size = step_size = self._schedule_step_size(spec, in_process=W == 1 and get_worker_info() is None)
        reader = ChunkReader(stream.files, cache_bytes=self.cache_bytes)
        engine = stream.engine(state["engine"])
        if step_size is not None:   # SCHEDULE steps at fixed chunks, as SETTINGS (batch_size) would
            engine = type(engine)(stream.pointers, spec, state["engine"], batch_size=step_size)
        for at, weights in self._weight_log:   # in-process feedback beyond the restored position
            if at >= engine.next_index:
                engine.set_weights(weights, at_chunk=at)
        self._engine = engine
        D, r, K = state["dp_world"], state["dp_rank"], state["frontier"]
        end = state.get("end")
        explicit = _explicit_tasks(state, W, w)

        def tasks():
            for t, task in enumerate(explicit):
                yield t, "explicit", task
            t = len(explicit)
            for k in _suffix(K, r, D, W, w):
                if end is not None and k >= end:
                    break
                yield t, "suffix", {"chunk": k, "carry": {}, "drop": {}}
                t += 1
            yield t, "flush", {"chunk": None, "carry": {}, "drop": {}}

        def with_chunks():
            """Position the engine and fetch each task's pointer chunk (in this thread)."""
            nonlocal end
            for t, kind, task in tasks():
                c = task["chunk"]
                table = eng = None
                if c is not None and (end is None or c < end):
                    seek = getattr(engine, "seek", None)
                    if seek is not None and engine.next_index < c:
                        seek(c)   # chunk c computed directly: other workers' chunks are never composed
                    while engine.next_index < c:
                        if not engine.skip_chunk():
                            end = engine.next_index
                            break
                    if end is None or c < end:
                        eng = [engine.next_index, engine.state_dict()]
                        table = engine.next_chunk()
                        if table is None:
                            end, eng = c, None
                if kind == "suffix" and table is None:
                    # the stream ended: only this worker's leftovers remain
                    yield t, "flush", {"chunk": None, "carry": {}, "drop": {}}, None, None
                    return
                yield t, kind, task, table, eng

        dynamic = spec.algorithm is not None or bool(spec.schedule)
        running: dict = {}
        try:
            for (t, kind, task, _table, eng), data in _ungroup(reader.prefetch(
                    # feedback-driven weights apply from the engine's next unfetched chunk: with one
                    # chunk per read, how far reading runs ahead is the same in a resumed run
                    _grouped(with_chunks(), 1 if dynamic else _GROUP_MAX),
                    depth=self.prefetch_depth, read=_GroupRead(reader), tables=_GroupRead.tables,
                    ahead=None if dynamic else _future_chunks(engine, _suffix(K, r, D, W, w), end),
                    ahead_by=self.prefetch_ahead)):
                carry_in = _merge_carry(running, task["carry"])
                info = {"kind": kind, "chunk": task["chunk"] if data is not None else None,
                        "carry": carry_in, "drop": dict(task["drop"]), "eng": eng,
                        "end": end if kind == "flush" else None}
                if kind == "explicit" and data is None and task["chunk"] is not None:
                    info["chunk"] = None  # a pending chunk beyond the end of the stream
                first = [info]

                def token(key, n):
                    i = first.pop() if first else None
                    return (w, t, key, n, i)

                if not packed:
                    if data is not None:
                        yield from _unpacked_items(data, task["drop"].get(MIXED, 0), names, self.columns, token)
                    continue
                packer = Packer(self.seq_len, eos, bos, by_group=by_group, pad_id=self.pad_id, drop=task["drop"])
                parts = [packer.load_carry_batch(carry_in)]
                if data is not None and data.num_rows:
                    values, lengths = _chunk_tokens(data, tok)
                    gids = data.column("group_id").to_numpy(zero_copy_only=False)
                    parts.append(packer.add_chunk(values, lengths, gids))
                if kind == "flush":
                    parts.append(packer.flush_batch())
                    running = {}
                else:
                    running = packer.carry_arrays()
                pb = PackedBatch.concat(parts, packer.L)
                if batcher is None:
                    yield from _items_of(pb, names, token, item_eos)
                elif len(pb):
                    yield from batcher.add(pb, _row_names(pb, names), t, info)
            if batcher is not None:
                yield from batcher.finish()
        finally:
            reader.close()

    # -- schedules ---------------------------------------------------------------------------
    def _schedule_step_size(self, spec, in_process: bool) -> int | None:
        """What one global training step consumes in the statement's unit, when a SCHEDULE needs
        it (no ``SETTINGS (batch_size)``) and the per-rank batch size says it: samples per step
        (``B * dp_world``) without packing, tokens (``B * dp_world * (seq_len + 1)``) for packed
        sequences under ``unit = 'tokens'``. Otherwise ``None``: in-process the schedule follows
        ``set_step``; anywhere else that is an error, raised before any data moves."""
        if not spec.schedule or spec.batch_size or self.server is not None:
            return None
        b = self.batch_size
        if b is not None:
            per_step = int(b) * self.dp_world
            if self.seq_len is None and spec.unit == "samples":
                return per_step
            if self.seq_len is not None and spec.unit == "tokens":
                return per_step * (self.seq_len + 1)
        if in_process:
            return None
        raise ProgrammingError(
            "WITH SCHEDULE needs to know the training step, and this stream cannot: add SETTINGS "
            "(batch_size = B) to the statement (samples, or tokens under unit = 'tokens', per global "
            "step), or pass batch_size= (per rank) for unpacked samples / packed sequences under "
            "unit = 'tokens', or iterate in-process (num_workers=0) and call ds.set_step(step)")

    def set_step(self, step: int) -> None:
        """The training step about to run: puts the SCHEDULE's weights for ``step`` in force from
        the next chunk (in-process iteration; the change is part of ``state_dict()``). A no-op
        when steps map to chunks through a batch size; an error for statements without SCHEDULE."""
        spec = self._open().spec
        if not spec.schedule:
            raise ProgrammingError("set_step() drives WITH SCHEDULE mixtures; this statement's weights are "
                                   + spec.weighting)
        if spec.batch_size or self._step_size is not None or self.server is not None:
            return   # the engine maps steps to chunks itself
        if self._engine is None:
            raise InterfaceError("set_step() needs this dataset iterating in this process (num_workers=0); "
                                 "with DataLoader workers give a batch size (SETTINGS (batch_size = B) or "
                                 "batch_size=)")
        at = self._engine.apply_schedule_for_step(int(step))
        if at is not None:
            weights = [st.weights for st in spec.schedule if st.step <= step][-1]
            self._weight_log.append([int(at), [float(x) for x in weights]])

    # -- feedback ---------------------------------------------------------------------------
    def feedback(self, step: int, group_loss_sums: Sequence[float], group_token_counts: Sequence[float]) -> None:
        """Report per-group loss sums and token counts (drives USING ADO / loss_average mixtures).

        With ``server=`` the report goes to the Flight server; otherwise it is applied to this
        process's engine (single-process runs, ``num_workers=0``) and the algorithm's state and
        weight changes become part of ``state_dict()``. Static mixtures refuse it."""
        if self.server is not None:
            stream = self._open()
            fb = getattr(stream, "feedback", None)
            if fb is None:
                raise InterfaceError("the server client does not accept feedback")
            fb(step, list(group_loss_sums), list(group_token_counts))
            return
        spec = self._open().spec
        if spec.algorithm is None and spec.schedule:
            self.set_step(step)
            return
        if spec.algorithm is None:
            raise ProgrammingError(
                "feedback() needs a dynamic mixture (MIX BY ... USING ADO (...) or loss_average); "
                "this statement's weights are " + spec.weighting
            )
        if self._engine is None:
            raise InterfaceError("feedback() in-process needs an iterating dataset (num_workers=0); "
                                 "with DataLoader workers or several ranks use server=...")
        apply = getattr(self._engine, "feedback", None)
        if apply is not None:
            apply(step, list(group_loss_sums), list(group_token_counts))
            return
        from .algorithms import make_algorithm

        algo = self._algo
        if algo is None:
            algo = self._algo = make_algorithm(spec.algorithm.name, [g.path for g in spec.groups],
                                               spec.weights(), spec.algorithm.kwargs())
            if self._algo_state is not None:
                algo.load_state_dict(self._algo_state)
                self._algo_state = None
        weights = algo.update(step, list(group_loss_sums), list(group_token_counts))
        if weights is not None:
            at = self._engine.set_weights(weights, at_chunk=self._engine.next_index)
            self._weight_log.append([int(at), [float(x) for x in weights]])


class _ServerEngine:
    """MixEngine interface over a Flight server job: chunk k is fetched by index."""

    def __init__(self, client, job: str, rank: int, state: dict | None):
        self.client, self.job, self.rank = client, job, rank
        self.next_index = int((state or {}).get("next_index", 0))

    def skip_chunk(self) -> bool:
        self.next_index += 1
        return True

    def next_chunk(self):
        t = self.client.get_chunk(self.job, self.next_index, rank=self.rank)
        if t is not None:
            self.next_index += 1
        return t

    def state_dict(self) -> dict:
        return {"next_index": self.next_index, "job": self.job}


class _ServerStream:
    """Stream adapter for ``MixDataset(server=...)``: the server executes the statement and
    sends the job's files table (paths, formats, options, fingerprints) with it, so ranks read
    the data files without the catalog (``catalog`` is not used)."""

    def __init__(self, server, sql, params, catalog, rank):
        import json

        from .client import MixClient
        from .spec import MixSpec

        self.client = MixClient(server) if isinstance(server, str) else server
        info = self.client.register(sql, params)
        self.job = info["job"]
        spec = info["spec"]
        self.spec = MixSpec.from_json(spec if isinstance(spec, str) else json.dumps(spec))
        self.files = self.client.files(self.job)
        self.rank = rank

    def engine(self, state=None):
        return _ServerEngine(self.client, self.job, self.rank, state)

    def feedback(self, step, loss_sums, token_counts):
        return self.client.feedback(self.job, step, loss_sums, token_counts)


# --------------------------------------------------------------------------- batching
def mix_collate(items: list[dict]) -> dict:
    """Batch MixDataset items: tensors are stacked once (``mask`` from ``length``), the rest become
    lists.

    Resume tokens travel under ``"_mix"``; MixDataLoader removes them."""
    out: dict = {}
    if not items:
        return out
    first = items[0]
    if "input_ids" in first:
        out["input_ids"] = torch.stack([it["input_ids"] for it in items])
        out["group_ids"] = torch.stack([it["group_ids"] for it in items])
        if "position_ids" in first:
            out["position_ids"] = torch.stack([it["position_ids"] for it in items])
        lengths = [it["length"] for it in items]
        L = out["input_ids"].shape[1]
        out["length"] = torch.tensor(lengths, dtype=torch.long)
        if min(lengths) == L:
            out["mask"] = torch.ones((len(items), L), dtype=torch.bool)
        else:
            out["mask"] = torch.arange(L).unsqueeze(0) < out["length"].unsqueeze(1)
    for key in first:
        if key not in out:
            out[key] = [it[key] for it in items]
    return out


_WIRE_TENSOR_BYTES = 1 << 20   # batches above this travel as one shared-memory tensor, below as bytes


def _wire_collate(items: list[dict]) -> dict:
    """``mix_collate`` for DataLoader workers: the tensors of a packed batch travel as ONE flat
    int64 buffer (ids, group ids, lengths), pickled in-band when small (no shared-memory file
    descriptor round trip per tensor); :func:`_unwire` restores ``mix_collate``'s batch."""
    if not items or "input_ids" not in items[0]:
        return mix_collate(items)
    B, L = len(items), int(items[0]["input_ids"].shape[0])
    buf = torch.empty(2 * B * L + B, dtype=torch.long)
    torch.stack([it["input_ids"] for it in items], out=buf[:B * L].view(B, L))
    torch.stack([it["group_ids"] for it in items], out=buf[B * L:2 * B * L].view(B, L))
    buf[2 * B * L:] = torch.tensor([it["length"] for it in items], dtype=torch.long)
    out: dict = {"_wire": buf.numpy() if buf.numel() * 8 <= _WIRE_TENSOR_BYTES else buf, "_wire_shape": (B, L)}
    for key in items[0]:
        if key not in ("input_ids", "group_ids", "length"):
            out[key] = [it[key] for it in items]
    return out


def _unwire(batch: dict, pin: bool = False) -> dict:
    buf = batch.pop("_wire", None)
    if buf is None:
        return batch
    B, L = batch.pop("_wire_shape")
    full = batch.pop("_wire_full", None)
    if isinstance(buf, bytes):   # the fast path ships int32 bytes
        buf = np.frombuffer(buf, dtype=np.int32)
    if isinstance(buf, np.ndarray):
        buf = torch.from_numpy(buf.astype(np.int64, copy=False))
    elif buf.dtype != torch.long:
        buf = buf.long()
    if pin and not buf.is_pinned():
        buf = buf.pin_memory()
    ids, grp, length = buf.split((B * L, B * L, B))
    out = {"input_ids": ids.view(B, L), "group_ids": grp.view(B, L), "length": length}
    if full if full is not None else int(length.min()) == L:
        out["mask"] = torch.ones((B, L), dtype=torch.bool)
    else:
        out["mask"] = torch.arange(L).unsqueeze(0) < length.unsqueeze(1)
    out.update(batch)
    return out


EVEN_ENDS = ("drop", "pad", "off")


class _EvenEnd:
    """Equal batch counts on every data-parallel rank of a finite stream (``even_end``).

    Before handing out each batch, the ranks agree over torch.distributed (one 1-element
    all-reduce per batch on a gloo group) whether every rank still has one: under ``'drop'``
    (the default) all ranks stop at the first batch some rank lacks, the batches not handed out
    staying in ``state_dict()`` as unconsumed; under ``'pad'`` the ranks that ran out hand out
    fully masked packed batches (``mask`` False, ``length`` 0, ``group`` '') until every rank
    has ended. Off for ``'off'`` and without an initialised process group of more than one rank
    (a stream that never ends pays the one small all-reduce per batch all the same).""" 

    def __init__(self, loader, group):
        ds = loader.dataset
        self.mode, self.group, self.rank = ds.even_end, group, ds.dp_rank
        self.B = loader.batch_size or 1
        self.L = ds.seq_len + 1 if ds.seq_len is not None else None
        self.pad_id = ds.pad_id if ds.pad_id is not None else 0
        self.shape: dict | None = None

    @classmethod
    def of(cls, loader) -> "_EvenEnd | None":
        import torch.distributed as dist

        ds = loader.dataset
        if ds.even_end == "off" or not (dist.is_available() and dist.is_initialized()):
            return None
        if dist.get_world_size() < 2:
            return None
        group = getattr(loader, "_even_group", None)
        if group is None:   # one gloo group per loader (an NCCL default group cannot reduce CPU tensors)
            group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
            loader._even_group = group
        return cls(loader, group)

    def _all(self, have: bool, op) -> int:
        import torch.distributed as dist

        t = torch.tensor([1 if have else 0], dtype=torch.int32)
        dist.all_reduce(t, op=op, group=self.group)
        return int(t.item())

    def others_have_one(self) -> bool:
        import torch.distributed as dist

        return bool(self._all(True, dist.ReduceOp.MIN if self.mode == "drop" else dist.ReduceOp.MAX))

    def warn_drop(self) -> None:
        import warnings

        from .errors import ExhaustedWarning

        warnings.warn(f"even_end='drop': data-parallel rank {self.rank} stops with batches left because another "
                      "rank ran out (every rank hands out the same number); the rest stays in loader.state_dict() "
                      "(even_end='pad' pads instead)", ExhaustedWarning, stacklevel=3)

    def pads(self) -> Iterator[dict]:
        """This rank ran out: agree once more (drop) or pad until every rank ran out (pad)."""
        import torch.distributed as dist

        op = dist.ReduceOp.MIN if self.mode == "drop" else dist.ReduceOp.MAX
        while self._all(False, op):
            yield self._pad_batch()

    def _pad_batch(self) -> dict:
        ref = self.shape
        B = len(ref["group"]) if ref is not None else self.B
        L = ref["input_ids"].shape[1] if ref is not None else self.L
        out = {"input_ids": torch.full((B, L), self.pad_id, dtype=torch.long),
               "group_ids": torch.full((B, L), -1, dtype=torch.long),
               "length": torch.zeros(B, dtype=torch.long), "mask": torch.zeros((B, L), dtype=torch.bool)}
        if ref is not None and "position_ids" in ref:
            out["position_ids"] = torch.zeros((B, L), dtype=torch.long)
        out["group"] = [""] * B
        return out


def _worker_context():
    """The start method for DataLoader workers when the caller names none.

    PyTorch's default (``fork`` on Linux) unless gRPC (Arrow Flight, the server mode) is live in
    this process: forking a process with gRPC threads can crash the child, so then workers start
    from a fork server that preloaded torch and mixsql. (A fork server, like spawn, needs the
    ``if __name__ == "__main__":`` guard in the training script.)"""
    import multiprocessing
    import sys

    if "pyarrow._flight" not in sys.modules or "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "mixsql.torch"])
    return ctx


class MixDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`MixDataset` whose ``state_dict()`` records exactly the batches
    handed to the training loop (see the module doc for the resume guarantee)."""

    def __init__(self, dataset: MixDataset, batch_size: int | None = 1, num_workers: int = 0,
                 collate_fn=mix_collate, **kwargs):
        if num_workers > 0 and "multiprocessing_context" not in kwargs:
            kwargs["multiprocessing_context"] = _worker_context()
        # packed + mix_collate: the dataset yields whole batches (_Batcher), the DataLoader only
        # passes them on; otherwise workers ship packed batches as one buffer (_wire_collate).
        # Both are unpacked in __iter__.
        self._fast = (collate_fn is mix_collate and batch_size is not None
                      and getattr(dataset, "seq_len", None) is not None)
        self._wire = collate_fn is mix_collate and num_workers > 0 and batch_size is not None
        if collate_fn is mix_collate and batch_size is None:
            collate_fn = _one_item   # DataLoader hands single items to the collate then
        drop_last = bool(kwargs.pop("drop_last", False))
        if self._fast:
            super().__init__(dataset, batch_size=None, num_workers=num_workers, collate_fn=_pass, **kwargs)
            # the user's batching, as DataLoader would show it (iteration never reads these:
            # batch_sampler stays None, so DataLoader does no batching of its own)
            object.__setattr__(self, "batch_size", batch_size)
            object.__setattr__(self, "drop_last", drop_last)
        else:
            super().__init__(dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                             collate_fn=_wire_collate if self._wire else collate_fn, **kwargs)
        self._tracker: _Tracker | None = None
        if getattr(dataset, "batch_size", 0) is None and batch_size is not None:
            dataset.batch_size = int(batch_size)   # SCHEDULE steps follow the batches consumed

    def __iter__(self):
        if self._tracker is not None:  # re-iterating continues after what was consumed
            self.dataset.load_state_dict({"mixsql": self._tracker.state()})
        if self.persistent_workers and self.num_workers > 0:
            self._send_epoch_state()
        self._tracker = _Tracker(self.dataset._state, max(1, self.num_workers))
        tracker = self._tracker
        self.dataset._emit_tokens = True
        self.dataset._batching = (self.batch_size, self.drop_last) if self._fast else None
        try:
            it = super().__iter__()
        finally:
            self.dataset._emit_tokens = False
            self.dataset._batching = None
        fast = self._fast
        if fast and self.num_workers > 0:   # workers send bundles of batches
            it = _interleave(iter(it), self.num_workers, tracker.next_worker)
        wire, pin = self._wire or fast, bool(self.pin_memory) and torch.cuda.is_available()
        observe, observe_counts = tracker.observe, tracker.observe_counts
        ends = _EvenEnd.of(self)
        eos = self.dataset.eos if self.dataset.boundaries else None
        for batch in it:
            if ends is not None and not ends.others_have_one():
                ends.warn_drop()
                return   # 'drop': another rank ran out; this batch (and the rest) stay in the state
            if wire and isinstance(batch, dict):
                batch = _unwire(batch, pin)
            toks = batch.pop("_mix", None) if isinstance(batch, dict) else None
            if toks is None:
                raise InterfaceError("MixDataLoader needs mix_collate (or a collate keeping the '_mix' tokens)")
            if fast:
                for seg in toks:
                    observe_counts(*seg)
            else:
                for tok in toks:
                    observe(tok)
            self.dataset._steps += 1
            if eos is not None and "input_ids" in batch:
                batch = add_boundaries(batch, eos)
            if ends is not None:
                ends.shape = batch
            yield batch
        if ends is not None:
            for pad in ends.pads():   # a padded step is a training step too
                self.dataset._steps += 1
                yield pad

    def _send_epoch_state(self) -> None:
        """Persistent workers keep their dataset copies (and the planned selection they opened)
        across epochs: each epoch's start state reaches them through a queue, one message per
        worker, taken when DataLoader restarts their iteration (it waits for every worker)."""
        ds = self.dataset
        if getattr(self, "_iterator", None) is None:   # workers start now, with a copy of ds
            import multiprocessing

            ctx = self.multiprocessing_context or multiprocessing.get_context()
            ds._epoch_states = ctx.Queue()
            ds._epoch = 0
            return
        for _ in range(self.num_workers):
            ds._epoch_states.put(ds._state)

    def state_dict(self) -> dict:
        st = self._tracker.state() if self._tracker else self.dataset._state
        ds = self.dataset
        return {"mixsql": st, "statement": ds._fingerprint(), "snapshot": ds.snapshot, **ds._dynamic_state(),
                "run": ds._run_record(ds._steps, self.num_workers, self.batch_size, self.drop_last, state=st)}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)
        self._tracker = None


__all__ = ["MixDataset", "MixDataLoader", "add_boundaries", "mix_collate", "initial_state"]
