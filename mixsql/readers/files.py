"""What a reader knows about each registered file (:class:`_FileInfo`: format, compression, text
and tokens options, seek table, node-cache key), the in-RAM LRU (:class:`_LRU`: Parquet row groups,
decompressed seek segments), and positioned reads, nearby ones coalesced into one read."""
from __future__ import annotations

import collections
import json
import os
import threading

import numpy as np

from .. import storage
from ..cache import entry_key
from ..errors import StaleFileError

_COALESCE_GAP = 64 << 10   # merge ranged reads of an object whose gap is below this (one request)


class _LRU:
    """Thread-safe LRU of objects with a byte size; evicts beyond ``capacity`` bytes."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.size = 0
        self._d: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
                return v[0]
            return None

    def put(self, key, value, nbytes: int) -> None:
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self.size -= old[1]
            self._d[key] = (value, nbytes)
            self.size += nbytes
            while self.size > self.capacity and len(self._d) > 1:
                _, (_, nb) = self._d.popitem(last=False)
                self.size -= nb


class _FileInfo:
    __slots__ = ("file_id", "path", "compression", "size", "mtime_ns", "fingerprint", "source", "format",
                 "text_path", "text_col", "tokens_col", "checked", "remote", "seek_c", "seek_d")

    def __init__(self, row: dict):
        self.file_id = int(row["file_id"])
        self.path = row["path"]
        self.compression = (row.get("compression") or "none").lower()
        if self.compression in ("", "zst"):
            self.compression = "zstd" if self.compression else "none"
        self.size = row.get("size")
        self.mtime_ns = row.get("mtime_ns")
        self.fingerprint = row.get("fingerprint")
        self.source = row.get("source")
        self.format = (row.get("format") or "jsonl").lower()
        opts = row.get("options") or {}
        if isinstance(opts, str):
            opts = json.loads(opts) if opts.strip() else {}
        default_text = "txt" if self.format == "webdataset" else "text"
        text = opts.get("text") or default_text
        self.text_col = text
        self.text_path = tuple(text.split(".")) if self.format == "jsonl" else (text,)
        self.tokens_col = opts.get("tokens")
        self.checked = False
        self.remote = storage.is_remote(self.path)
        seek = row.get("seek")
        self.seek_c = self.seek_d = None
        if seek and len(seek) > 1:
            pts = np.asarray(seek, dtype=np.int64)
            self.seek_c, self.seek_d = pts[:, 0], pts[:, 1]

    @property
    def cached(self) -> bool:
        """Read through a node-cache entry (decompressed shard, or fetched JSONL object)."""
        if self.format != "jsonl":
            return False
        if self.compression == "none":
            return self.remote
        return self.seek_c is None

    def entry_key(self) -> str:
        kind = "jsonl" if self.compression == "none" else f"jsonl-decompressed-{self.compression}"
        return entry_key(self.path, self.size, self.mtime_ns, self.fingerprint, kind)



def _pread(f):
    """``(start, n) -> bytes`` positioned reads of ``f`` (kept open by the closure)."""
    return lambda start, n: os.pread(f.fileno(), n, start)


def _coalesced(idx, offs, lens, pread, path, gap: int = _COALESCE_GAP):
    """Yield ``(rows, start, bytes)``: runs of rows (``idx``, sorted by offset) whose gaps are
    below ``gap`` bytes, each read with one ``pread(start, n)``."""
    if not len(idx):
        return
    o = offs[idx].astype(np.int64)
    far = np.maximum.accumulate(o + lens[idx].astype(np.int64))   # furthest end so far
    cut = np.flatnonzero(o[1:] - far[:-1] >= gap) + 1
    bounds = np.concatenate([[0], cut, [len(o)]]).tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        start, end = int(o[a]), int(far[b - 1])
        buf = pread(start, end - start)
        if len(buf) < end - start:
            raise StaleFileError(path, f"file ends before byte {end} that the index points to")
        yield idx[a:b], start, buf

