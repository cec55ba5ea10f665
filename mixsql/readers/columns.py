"""The chunk's ``text`` and ``tokens`` columns, assembled in chunk order from per-file pieces;
a Parquet row group's token lists kept as numpy (offsets, values), so taking rows is a few slice
copies rather than an Arrow kernel call per file and chunk."""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def _text_column(texts: list, py_rows: list, pieces: list, n: int) -> pa.Array:
    """The chunk's ``text`` column: ``texts`` (chunk order) for the rows ``py_rows`` that readers
    filled, plus Arrow ``pieces`` (Parquet); rows neither covers are null."""
    if not pieces:
        return pa.array(texts, type=pa.string())
    if py_rows:
        idx = np.concatenate(py_rows)
        pieces = pieces + [(idx, pa.array([texts[k] for k in idx.tolist()], type=pa.string()))]
    return _assemble(pieces, n, pa.string())


class _TokenLists:
    """A row group's null-free ``list<int32>`` column as numpy (offsets, values): taking rows is
    a few slice copies, no Arrow kernel call per file and chunk (see :func:`_assemble`)."""

    def __init__(self, arr: pa.Array):
        self.offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        self.values = arr.values.to_numpy(zero_copy_only=False)
        self.nbytes = arr.nbytes

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def take(self, rows: np.ndarray) -> "_Rows":
        return _Rows(self.values, self.offsets[rows], self.offsets[rows + 1])


class _Rows:
    """Rows taken from a :class:`_TokenLists`: ``values[starts[i]:ends[i]]``."""

    __slots__ = ("values", "starts", "ends")

    def __init__(self, values, starts, ends):
        self.values, self.starts, self.ends = values, starts, ends

    def to_arrow(self) -> pa.Array:
        return _list_array([(self.values, self.starts, self.ends, np.arange(len(self.starts)))], len(self.starts))


def _list_array(parts: list, n: int) -> pa.Array:
    """``list<int32>`` of ``n`` rows from ``(values, starts, ends, rows)`` parts covering every row once."""
    src = np.empty(n, dtype=np.intp)
    starts = np.empty(n, dtype=np.int64)
    ends = np.empty(n, dtype=np.int64)
    for i, (_, s, e, rows) in enumerate(parts):
        src[rows] = i
        starts[rows] = s
        ends[rows] = e
    lengths = ends - starts
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.int32)
    vals = [p[0] for p in parts]
    for i, s, e, o in zip(src.tolist(), starts.tolist(), ends.tolist(), offsets[:-1].tolist()):
        out[o:o + e - s] = vals[i][s:e]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(out))


def _assemble(pieces: list, n: int, typ) -> pa.Array:
    """One column in chunk order from ``(chunk row indices, array)`` pieces; rows no piece
    covers are null."""
    if any(isinstance(p[1], _Rows) for p in pieces):
        if sum(len(p[0]) for p in pieces) == n and all(isinstance(p[1], _Rows) for p in pieces):
            return _list_array([(r.values, r.starts, r.ends, idx) for idx, r in pieces], n)
        pieces = [(idx, r.to_arrow() if isinstance(r, _Rows) else r) for idx, r in pieces]
    if len(pieces) == 1 and len(pieces[0][0]) == n:
        idx, arr = pieces[0]
        if n < 2 or (np.diff(idx) == 1).all() and idx[0] == 0:
            return arr
        inv = np.empty(n, dtype=np.int64)
        inv[idx] = np.arange(n)
        return arr.take(pa.array(inv))
    covered = np.concatenate([p[0] for p in pieces]) if pieces else np.empty(0, np.int64)
    arrays = [p[1] for p in pieces]
    if len(covered) < n:
        missing = np.setdiff1d(np.arange(n), covered)
        arrays.append(pa.nulls(len(missing), typ))
        covered = np.concatenate([covered, missing])
    whole = pa.concat_arrays(arrays) if len(arrays) > 1 else arrays[0]
    inv = np.empty(n, dtype=np.int64)
    inv[covered] = np.arange(n)
    return whole.take(pa.array(inv))

