"""Per-chunk hot path of :class:`~mixsql.torch.MixDataset`: read chunks, their tokens, items.

Consecutive small chunks are read together on the prefetch thread (``_grouped``,
``_GroupRead``); the files of a worker's future chunks start filling the node cache ahead of
the reads (``_future_chunks``); a read chunk's documents become one flat int32 array
(``_chunk_tokens``); packed rows become item dicts that are row views of one per-chunk tensor
(``_items_of``, group names by ``_row_names``), unpacked rows one item each (``_unpacked_items``).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import torch

from ..packing import MIXED, PackedBatch, document_positions
from ..tokenize import encode_flat

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
