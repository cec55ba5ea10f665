"""Readers: turn a chunk of pointers into the pointed-to samples, for every registered format.

``ChunkReader(files).read(chunk)`` returns the chunk table plus ``text`` (string) and/or
``tokens`` (list<int32>, for Parquet sources registered with a ``tokens`` option), row for
row in chunk order.

* JSONL (plain): rows of one file are read with positioned reads sorted by offset; nearby
  lines are coalesced into one read.
* JSONL .zst / .gz: each needed file is decompressed at most once per chunk, by streaming up
  to the largest needed offset; decompressed prefixes live in a bounded LRU cache
  (``cache_bytes``), so consecutive chunks touching the same files do not decompress again.
* Parquet: ``read_row_group`` with only the text/tokens column, cached per (file, row group)
  in the same bounded cache.
* WebDataset tar: ``loc_length`` bytes at ``loc_offset`` (the text member's data).

Every file is checked against the catalog (size, mtime_ns) when first opened; a changed or
missing file raises :class:`mixsql.errors.StaleFileError`. :meth:`ChunkReader.prefetch`
reads the next chunks on a background thread while the caller works on the current one.
"""
from __future__ import annotations

import collections
import gzip
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np
import orjson
import pyarrow as pa

from .errors import DataError, OperationalError, StaleFileError

DEFAULT_CACHE_BYTES = 256 << 20
_COALESCE_GAP = 64 << 10   # merge plain-JSONL reads whose gap is below this


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
    __slots__ = ("file_id", "path", "compression", "size", "mtime_ns", "source", "format",
                 "text_path", "text_col", "tokens_col", "checked")

    def __init__(self, row: dict):
        self.file_id = int(row["file_id"])
        self.path = row["path"]
        self.compression = (row.get("compression") or "none").lower()
        self.size = row.get("size")
        self.mtime_ns = row.get("mtime_ns")
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


class ChunkReader:
    """Reads chunks of pointers (the engine's chunk tables) into samples.

    ``files`` is ``Catalog.files_table()`` (at least the files the chunks reference);
    ``cache_bytes`` bounds the decompressed-JSONL and Parquet row-group cache.
    """

    def __init__(self, files: pa.Table, cache_bytes: int = DEFAULT_CACHE_BYTES, check_files: bool = True):
        self.files = {int(r["file_id"]): _FileInfo(r) for r in files.to_pylist()}
        self.cache = _LRU(cache_bytes)
        self.check_files = check_files
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # -- public ----------------------------------------------------------------------------
    def read(self, chunk: pa.Table) -> pa.Table:
        """The chunk's table plus ``text`` and/or ``tokens`` columns, in chunk order."""
        n = chunk.num_rows
        cols = {"text": [], "tokens": []}   # name -> [(chunk row indices, pa.Array)]
        fids = chunk.column("file_id").to_numpy(zero_copy_only=False)
        offs = chunk.column("loc_offset").to_numpy(zero_copy_only=False)
        lens = chunk.column("loc_length").to_numpy(zero_copy_only=False)
        if "row" in chunk.column_names:
            rows = chunk.column("row").to_numpy(zero_copy_only=False)
        else:
            rows = np.full(n, -1, dtype=np.int64)
        if n:
            if (fids == fids[0]).all():
                groups = [np.argsort(offs, kind="stable")]
            else:
                order = np.lexsort((offs, fids))
                groups = np.split(order, np.flatnonzero(np.diff(fids[order])) + 1)
            for idx in groups:
                info = self._info(int(fids[idx[0]]))
                self._read_file(info, idx, offs, lens, rows, cols)
        out = chunk
        have_tok = bool(cols["tokens"])
        have_txt = bool(cols["text"]) or not have_tok
        if have_txt:
            out = out.append_column("text", _assemble(cols["text"], n, pa.string()))
        if have_tok:
            out = out.append_column("tokens", _assemble(cols["tokens"], n, pa.list_(pa.int32())))
        return out

    def prefetch(self, chunks: Iterable, depth: int = 2, table=None, read=None) -> Iterator[tuple]:
        """Yield ``(item, read(table(item)))`` while up to ``depth`` next items are read on a
        background thread (memory stays bounded by ``depth`` chunks). ``table`` maps an item to
        its chunk table (default: the item is the table); a None table reads as None. ``read``
        (item -> result) replaces the whole step, e.g. to read several chunks at once."""
        get = table or (lambda x: x)

        def work(item):
            if read is not None:
                return read(item)
            t = get(item)
            return None if t is None else self.read(t)

        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixsql-read")
        pending: collections.deque = collections.deque()
        it = iter(chunks)
        exhausted = False
        while True:
            while not exhausted and len(pending) < max(1, depth):
                try:
                    ch = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending.append((ch, self._pool.submit(work, ch)))
            if not pending:
                return
            ch, fut = pending.popleft()
            yield ch, fut.result()

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                pool.shutdown(wait=False, cancel_futures=True)
            except Exception:  # noqa: BLE001 - interpreter shutdown (generator finalised late)
                pass

    # -- internals ---------------------------------------------------------------------------
    def _info(self, file_id: int) -> _FileInfo:
        info = self.files.get(file_id)
        if info is None:
            raise OperationalError(
                f"chunk references file_id {file_id}, which is not in the reader's files table; "
                "build the ChunkReader from Catalog.files_table() of the same catalog snapshot"
            )
        if self.check_files and not info.checked:
            self._check(info)
        return info

    def _check(self, info: _FileInfo) -> None:
        try:
            st = os.stat(info.path)
        except FileNotFoundError:
            raise StaleFileError(info.path, "the file no longer exists") from None
        if info.size is not None and st.st_size != info.size:
            raise StaleFileError(info.path, f"size {st.st_size} bytes, registered {info.size}")
        if info.mtime_ns is not None and st.st_mtime_ns != info.mtime_ns:
            raise StaleFileError(info.path, f"mtime_ns {st.st_mtime_ns}, registered {info.mtime_ns}")
        info.checked = True

    def _read_file(self, info, idx, offs, lens, rows, cols) -> None:
        fmt = info.format
        texts: dict = {}
        if fmt == "jsonl":
            if info.compression in ("none", "", None):
                self._jsonl_plain(info, idx, offs, lens, rows, texts)
            else:
                self._jsonl_compressed(info, idx, offs, lens, rows, texts)
        elif fmt == "parquet":
            self._parquet(info, idx, offs, lens, cols)
            return
        elif fmt == "webdataset":
            self._tar(info, idx, offs, lens, texts)
        else:
            raise OperationalError(f"{info.path}: no reader for format {fmt!r} (source {info.source})")
        cols["text"].append((idx, pa.array([texts[k] for k in idx.tolist()], type=pa.string())))

    def _jsonl_plain(self, info, idx, offs, lens, rows, texts) -> None:
        with open(info.path, "rb") as f:
            i = 0
            m = len(idx)
            while i < m:
                # coalesce a run of lines whose gaps are small into one read
                start = int(offs[idx[i]])
                end = start + int(lens[idx[i]])
                j = i + 1
                while j < m and int(offs[idx[j]]) - end < _COALESCE_GAP:
                    end = max(end, int(offs[idx[j]]) + int(lens[idx[j]]))
                    j += 1
                f.seek(start)
                buf = f.read(end - start)
                if len(buf) < end - start:
                    raise StaleFileError(info.path, f"file ends before byte {end} that the index points to")
                for k in idx[i:j]:
                    o = int(offs[k]) - start
                    texts[k] = self._json_text(info, buf[o:o + int(lens[k])], rows[k])
                i = j

    def _decompressed(self, info, need: int) -> bytes:
        key = ("dec", info.file_id)
        data = self.cache.get(key)
        if data is not None and len(data) >= need:
            return data
        want = max(need, 2 * len(data) if data is not None else need)
        comp = info.compression
        with open(info.path, "rb") as raw:
            if comp in ("zstd", "zst"):
                import zstandard

                reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            elif comp in ("gzip", "gz"):
                reader = gzip.GzipFile(fileobj=raw)
            else:
                raise OperationalError(f"{info.path}: unsupported compression {comp!r}")
            parts = []
            got = 0
            while got < want:
                b = reader.read(min(want - got, 4 << 20))
                if not b:
                    break
                parts.append(b)
                got += len(b)
        data = b"".join(parts)
        if len(data) < need:
            raise StaleFileError(info.path, f"decompressed stream ends before byte {need} that the index points to")
        self.cache.put(key, data, len(data))
        return data

    def _jsonl_compressed(self, info, idx, offs, lens, rows, texts) -> None:
        o_sel = offs[idx].astype(np.int64)
        e_sel = o_sel + lens[idx].astype(np.int64)
        data = self._decompressed(info, int(e_sel.max()))
        mv = memoryview(data)
        path = info.text_path
        loads = orjson.loads
        for k, o, e in zip(idx.tolist(), o_sel.tolist(), e_sel.tolist()):
            try:   # fast path: a top-level string field
                obj = loads(mv[o:e])
                if len(path) == 1:
                    t = obj[path[0]]
                    if type(t) is str:
                        texts[k] = t
                        continue
            except Exception:
                pass
            texts[k] = self._json_text(info, mv[o:e], rows[k])

    def _json_text(self, info, line, row) -> str:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise StaleFileError(info.path, f"line of sample row {int(row)} is not valid JSON ({exc})") from None
        for part in info.text_path:
            if not isinstance(obj, dict) or part not in obj:
                raise DataError(
                    f"{info.path}: sample row {int(row)} has no text field {'.'.join(info.text_path)!r}; "
                    f"fix the source's text option (source {info.source})"
                )
            obj = obj[part]
        return obj if isinstance(obj, str) else ("" if obj is None else str(obj))

    def _parquet(self, info, idx, offs, lens, cols) -> None:
        """Per row group: the (cached) column array, ``take`` of the chunk's rows; no per-row Python."""
        import pyarrow.parquet as pq

        col = info.tokens_col or info.text_col
        target = cols["tokens"] if info.tokens_col else cols["text"]
        rgs = offs[idx]
        pf = None
        uniq = np.unique(rgs).tolist()
        for rg in uniq:
            sel_idx = idx if len(uniq) == 1 else idx[rgs == rg]
            key = ("pq", info.file_id, rg, col)
            arr = self.cache.get(key)
            if arr is None:
                if pf is None:
                    pf = pq.ParquetFile(info.path)
                if rg >= pf.num_row_groups:
                    raise StaleFileError(info.path, f"row group {rg} does not exist")
                if col not in pf.schema_arrow.names:
                    raise DataError(f"{info.path}: no column {col!r} (source {info.source}); fix its options")
                arr = pf.read_row_group(rg, columns=[col]).column(0).combine_chunks()
                if info.tokens_col and arr.type != pa.list_(pa.int32()):
                    arr = arr.cast(pa.list_(pa.int32()))
                elif not info.tokens_col and arr.type != pa.string():
                    arr = arr.cast(pa.string())
                if info.tokens_col and arr.null_count == 0:   # token lists: slices of one numpy array
                    arr = _TokenLists(arr)
                self.cache.put(key, arr, arr.nbytes)
            sel = lens[sel_idx].astype(np.int64)
            if len(sel) and int(sel.max()) >= len(arr):
                raise StaleFileError(info.path, f"row {int(sel.max())} of row group {rg} does not exist")
            target.append((sel_idx, arr.take(sel) if isinstance(arr, _TokenLists) else arr.take(pa.array(sel))))

    def _tar(self, info, idx, offs, lens, texts) -> None:
        with open(info.path, "rb") as f:
            for k in idx:
                f.seek(int(offs[k]))
                n = int(lens[k])
                b = f.read(n)
                if len(b) < n:
                    raise StaleFileError(info.path, f"tar ends before byte {int(offs[k]) + n}")
                texts[k] = b.decode("utf-8", errors="replace")


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


__all__ = ["ChunkReader", "DEFAULT_CACHE_BYTES"]
