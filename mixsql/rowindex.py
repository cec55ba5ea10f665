"""The catalog's row index on a node: every sample's location, addressed by a global row number.

A catalog snapshot numbers its samples ``gidx = start[file] + row``: files in ``file_id`` order,
each spanning ``max(row) + 1`` numbers (``start`` is their prefix sum). ``loc.bin`` holds one
20-byte record per number (byte offset, length, text bytes, token count; ``-1`` tokens = none),
so a packed selection (:mod:`mixsql.packed`) stores only each sample's ``gidx`` and recovers
file, row and location from here. Built once per (catalog, snapshot) on a node, under the same
lock-and-rename protocol as selections (:func:`mixsql.selection.publish_once`), shared by every
statement over that snapshot and memory-mapped by every process: a chunk touches only its own
rows' records.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from .errors import OperationalError
from .progress import StatusLine, human_bytes

ROWINDEX_VERSION = 1
LOC = np.dtype([("offset", "<u8"), ("length", "<u4"), ("n_bytes", "<u4"), ("n_tokens", "<i4")])
BATCH_ROWS = 1 << 20
_LOC_COLUMNS = 'file_id, "row", loc_offset, loc_length, n_bytes, n_tokens'


def index_root() -> Path:
    from .selection import cache_root
    return cache_root().parent / "rowindex"


def index_key(catalog_path: str, snapshot: int) -> str:
    text = json.dumps([ROWINDEX_VERSION, os.path.abspath(catalog_path), int(snapshot)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class RowIndex:
    """A published row index, memory-mapped (see the module docstring)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.files: pa.Table = pa.ipc.open_file(pa.memory_map(str(self.directory / "files.arrow"), "r")).read_all()
        self.file_ids = self.files.column("file_id").to_numpy().astype(np.int64)
        self.starts = np.load(self.directory / "starts.npy", mmap_mode="r")
        self.size = int(self.starts[-1]) if len(self.starts) else 0
        self.loc = np.memmap(self.directory / "loc.bin", dtype=LOC, mode="r") if self.size else np.zeros(0, LOC)
        self.paths = self.files.column("path").to_pylist()
        names, codes = np.unique(np.array(self.files.column("source").to_pylist(), dtype=object), return_inverse=True)
        self.file_source = codes.astype(np.int32)         # sources sorted by name, as the planner's
        self.sources = pa.array(list(names), pa.string())

    @classmethod
    def open_or_build(cls, catalog, catalog_path: str, snapshot: int) -> "RowIndex":
        """The node's row index of ``catalog`` (an open Catalog at ``snapshot``): mapped when
        published, else built once (:func:`build`)."""
        from .selection import publish_once
        final, _, _ = publish_once(index_root(), index_key(catalog_path, snapshot),
                                   lambda tmp: build(catalog, tmp))
        return cls(final)

    def gidx(self, file_id: np.ndarray, row: np.ndarray) -> np.ndarray:
        """Global row numbers of ``(file_id, row)`` pairs (int64)."""
        pos = np.searchsorted(self.file_ids, file_id)
        pos = np.minimum(pos, max(len(self.file_ids) - 1, 0))
        if len(pos) and (self.file_ids[pos] != file_id).any():
            raise OperationalError("a selected sample's file is not in the catalog's row index: "
                                   "the node cache is stale; remove ~/.cache/mixsql/rowindex and retry")
        return np.asarray(self.starts[pos], np.int64) + np.asarray(row, np.int64)

    def file_pos(self, gidx: np.ndarray) -> np.ndarray:
        """Position (in ``files``) of the file holding each global row number."""
        return (np.searchsorted(self.starts, gidx, side="right") - 1).astype(np.int32)


def build(catalog, tmp: Path) -> None:
    """Write ``catalog``'s row index into ``tmp`` (one streaming pass over ``sample_index``)."""
    status = StatusLine()
    with catalog.lock:
        files = catalog.files_table()
        spans = dict(catalog.con.execute(
            'SELECT file_id, max("row") + 1 FROM sample_index GROUP BY file_id').fetchall())
        ids = files.column("file_id").to_numpy().astype(np.int64)
        span = np.array([int(spans.get(int(i), 0) or 0) for i in ids.tolist()], np.int64)
        starts = np.concatenate([[0], np.cumsum(span)]).astype(np.int64)
        total = int(starts[-1])
        loc = np.memmap(tmp / "loc.bin", dtype=LOC, mode="w+", shape=(max(total, 1),))
        reader = catalog.con.sql(f"SELECT {_LOC_COLUMNS} FROM sample_index").to_arrow_reader(BATCH_ROWS)
        done = 0
        for batch in reader:
            fid = batch.column(0).to_numpy().astype(np.int64)
            pos = np.searchsorted(ids, fid)
            g = starts[pos] + batch.column(1).to_numpy().astype(np.int64)
            loc["offset"][g] = batch.column(2).to_numpy()
            loc["length"][g] = batch.column(3).to_numpy()
            nb = batch.column(4).to_numpy()
            tok = batch.column(5)
            tk = tok.fill_null(-1).to_numpy() if tok.null_count else tok.to_numpy()
            if len(nb) and (nb.max() >= 2**32 or tk.max() >= 2**31):
                raise OperationalError("a sample of over 4 GB or 2**31 tokens does not fit the row index")
            loc["n_bytes"][g] = nb
            loc["n_tokens"][g] = tk
            done += len(fid)
            status.show(f"mixsql: indexing catalog rows {done:,} / {total:,} ({human_bytes(done * LOC.itemsize)})")
        loc.flush()
        del loc
    status.clear()
    if not total:
        os.truncate(tmp / "loc.bin", 0)
    np.save(tmp / "starts.npy", starts)
    with pa.OSFile(str(tmp / "files.arrow"), "wb") as f, pa.ipc.new_file(f, files.schema) as w:
        w.write_table(files)
    (tmp / "meta.json").write_text(json.dumps({"version": ROWINDEX_VERSION, "rows": total,
                                               "snapshot": int(catalog.snapshot)}))
