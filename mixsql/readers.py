"""Readers: turn a chunk of pointers into the pointed-to samples, for every registered format.

``ChunkReader(files).read(chunk)`` returns the chunk table plus ``text`` (string) and/or
``tokens`` (list<int32>, for Parquet sources registered with a ``tokens`` option), row for
row in chunk order. Files may be local paths or object-store URIs (:mod:`mixsql.storage`).

* JSONL (plain, local): rows of one file are read with positioned reads sorted by offset; nearby
  lines are coalesced into one read.
* JSONL .zst / .gz with a seek table (multi-frame zstd, multi-member gzip; recorded at
  registration): a row is reached by decompressing from the nearest seek point, never from
  byte 0; decompressed segments live in the bounded in-RAM LRU (``cache_bytes``).
* JSONL .zst / .gz without one (a single frame), and JSONL objects: the whole file is
  decompressed (or fetched) once per node into the node cache (:mod:`mixsql.cache`), then read
  like plain JSONL with positioned reads: decompressed bytes live on disk, not in worker RAM.
  While this process fills an entry, rows are served from its temporary file as soon as
  the bytes they need are written (the first chunk does not wait for whole shards); the entry
  itself appears only when whole (atomic fills).
* Text: one JSON parse per line (orjson), the chunk's texts gathered in chunk order into one
  Arrow array (no per-file arrays, no reordering copy).
* Parquet: ``read_row_group`` with only the text/tokens column (ranged reads for objects),
  cached per (file, row group) in the in-RAM LRU.
* WebDataset tar: ``loc_length`` bytes at ``loc_offset`` (the text member's data), ranged reads
  for objects.

Every file is checked against the catalog (size, mtime_ns; objects also their ETag) when first
opened; a changed or missing file raises :class:`mixsql.errors.StaleFileError`. An object read
through a node-cache entry is checked when the entry is filled: an entry is keyed by the registered
size, mtime and ETag, so it holds exactly the registered bytes, and a warm node cache serves an
object without a request to the store (a rewrite is reported when the object is next fetched).
:meth:`ChunkReader.prefetch` reads the next chunks on a background thread while the caller works
on the current one, and starts node-cache fills for the files of chunks further ahead
(:meth:`ChunkReader.warm`; with ``ahead=``, a second iterator over the stream's chunks, fills start
``ahead_by`` chunks early, so the next shard window is decompressed while this one is read).
"""
from __future__ import annotations

import collections
import gzip
import json
import mmap
import os
import shutil
import threading
import weakref
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np
import orjson
import pyarrow as pa
import zstandard

from . import storage
from .cache import NodeCache, entry_key, node_cache, payload_size
from .errors import DataError, OperationalError, StaleFileError

DEFAULT_CACHE_BYTES = 256 << 20
_COALESCE_GAP = 64 << 10   # merge ranged reads of an object whose gap is below this (one request)
_LOCAL_GAP = 4 << 10       # ... and positioned reads of a local file (reading a gap costs less than a call)
_OPEN_ENTRIES = 64         # node-cache entries a reader keeps open
_FILL_THREADS = int(os.environ.get("MIXSQL_FILL_THREADS", "2"))
_COPY_BYTES = 4 << 20
_END = object()
_FILL_WRITE = 1 << 20      # a fill publishes its progress to readers every this many bytes


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


class ChunkReader:
    """Reads chunks of pointers (the engine's chunk tables) into samples.

    ``files`` is ``Catalog.files_table()`` (at least the files the chunks reference);
    ``cache_bytes`` bounds the in-RAM cache (Parquet row groups, decompressed seek segments);
    ``node_cache`` is the node-local disk cache (default: :func:`mixsql.cache.node_cache`).
    """

    def __init__(self, files: pa.Table, cache_bytes: int = DEFAULT_CACHE_BYTES, check_files: bool = True,
                 node_cache: NodeCache | None = None):
        self.files = {int(r["file_id"]): _FileInfo(r) for r in files.to_pylist()}
        self.cache = _LRU(cache_bytes)
        self.check_files = check_files
        self._node_cache = node_cache
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._fill_pool: ThreadPoolExecutor | None = None
        self._fills: dict[int, Future] = {}
        self._progress: dict[int, _FillProgress] = {}   # file_id -> progress of a fill queued or running
        self._entries: collections.OrderedDict = collections.OrderedDict()   # file_id -> open entry

    # -- public ----------------------------------------------------------------------------
    def read(self, chunk: pa.Table) -> pa.Table:
        """The chunk's table plus ``text`` and/or ``tokens`` columns, in chunk order."""
        n = chunk.num_rows
        cols = {"text": [], "tokens": []}   # name -> [(chunk row indices, pa.Array)] (Parquet)
        texts: list = [None] * n            # JSONL / tar text, filled in chunk order
        py_rows: list = []                  # chunk row indices of ``texts`` that readers filled
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
            self.warm_files([int(fids[idx[0]]) for idx in groups])
            for idx in groups:
                info = self._info(int(fids[idx[0]]))
                if self._read_file(info, idx, offs, lens, rows, cols, texts):
                    py_rows.append(idx)
        out = chunk
        have_tok = bool(cols["tokens"])
        have_txt = bool(cols["text"]) or bool(py_rows) or not have_tok
        if have_txt:
            out = out.append_column("text", _text_column(texts, py_rows, cols["text"], n))
        if have_tok:
            out = out.append_column("tokens", _assemble(cols["tokens"], n, pa.list_(pa.int32())))
        return out

    def warm(self, chunk: pa.Table | None) -> None:
        """Start node-cache fills (background threads) for the files ``chunk`` reads through the
        cache; a later :meth:`read` waits only for what is not yet there."""
        if chunk is not None and chunk.num_rows:
            fids = chunk.column("file_id").to_numpy(zero_copy_only=False)
            self.warm_files(np.unique(fids).tolist())

    def warm_files(self, file_ids: Iterable[int]) -> None:
        for fid in file_ids:
            info = self.files.get(int(fid))
            if info is None or not info.cached:
                continue
            with self._lock:
                if fid in self._entries or fid in self._fills:
                    continue
                if self._fill_pool is None:
                    self._fill_pool = ThreadPoolExecutor(max_workers=max(1, _FILL_THREADS),
                                                         thread_name_prefix="mixsql-fill")
                progress = self._progress[fid] = _FillProgress()
                self._fills[fid] = self._fill_pool.submit(self._open_entry, fid, progress)

    def prefetch(self, chunks: Iterable, depth: int = 2, table=None, read=None, tables=None,
                 ahead: Iterable | None = None, ahead_by: int = 64) -> Iterator[tuple]:
        """Yield ``(item, read(table(item)))`` while up to ``depth`` next items are read on a
        background thread (memory stays bounded by ``depth`` chunks). ``table`` maps an item to
        its chunk table (default: the item is the table); a None table reads as None. ``read``
        (item -> result) replaces the whole step, e.g. to read several chunks at once;
        ``tables`` (item -> chunk tables) then names the tables the item reads, so that their
        node-cache fills start as soon as the item is queued (:meth:`warm`).

        ``ahead``: the chunk tables of the same stream, from its start, as a second iterator
        (the stream's future is computable; e.g. a second engine). Only their files' node-cache
        fills start, kept up to ``ahead_by`` tables in front of those queued (the lead grows with
        the queue, so the first reads are not delayed): the next shard window is decompressed
        while the current one is read. What is read and yielded never depends on it."""
        get = table or (lambda x: x)
        if tables is None:
            tables = (lambda x: [get(x)]) if read is None else (lambda x: ())
        future = iter(ahead) if ahead is not None and ahead_by > 0 else None
        queued = warmed = 0

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
                for t in tables(ch):
                    self.warm(t)
                    queued += 1
                pending.append((ch, self._pool.submit(work, ch)))
                while future is not None and warmed < queued + min(ahead_by, queued):
                    t = next(future, _END)
                    if t is _END:
                        future = None
                        break
                    self.warm(t)
                    warmed += 1
            if not pending:
                return
            ch, fut = pending.popleft()
            yield ch, fut.result()

    def close(self) -> None:
        for attr in ("_pool", "_fill_pool"):
            pool = getattr(self, attr)
            if pool is not None:
                setattr(self, attr, None)
                try:
                    pool.shutdown(wait=False, cancel_futures=True)
                except Exception:  # noqa: BLE001 - interpreter shutdown (generator finalised late)
                    pass
        with self._lock:   # entry files close as the last reference to them goes
            self._entries = collections.OrderedDict()

    # -- internals ---------------------------------------------------------------------------
    def _info(self, file_id: int) -> _FileInfo:
        info = self.files.get(file_id)
        if info is None:
            raise OperationalError(
                f"chunk references file_id {file_id}, which is not in the reader's files table; "
                "build the ChunkReader from Catalog.files_table() of the same catalog snapshot"
            )
        if self.check_files and not info.checked and not (info.remote and info.cached):
            self._check(info)   # objects read through the node cache are checked when fetched
        return info

    def _check(self, info: _FileInfo) -> None:
        try:
            st = storage.stat(info.path)
        except FileNotFoundError:
            raise StaleFileError(info.path, "the file no longer exists") from None
        except storage.StorageError as exc:
            if "no such object" in str(exc):
                raise StaleFileError(info.path, "the object no longer exists") from None
            raise
        if info.size is not None and st.size != info.size:
            raise StaleFileError(info.path, f"size {st.size} bytes, registered {info.size}")
        if info.mtime_ns is not None and st.mtime_ns != info.mtime_ns:
            raise StaleFileError(info.path, f"mtime_ns {st.mtime_ns}, registered {info.mtime_ns}")
        fp = info.fingerprint
        if st.etag is not None and isinstance(fp, str) and fp.startswith("etag:") and fp[5:] != st.etag:
            raise StaleFileError(info.path, f"ETag {st.etag}, registered {fp[5:]}")
        info.checked = True

    def _read_file(self, info, idx, offs, lens, rows, cols, texts) -> bool:
        """Read the file's rows ``idx`` of the chunk: text into ``texts`` (True), or Arrow pieces
        into ``cols`` (Parquet, False)."""
        fmt = info.format
        if fmt == "jsonl":
            if info.cached:
                self._jsonl_cached(info, idx, offs, lens, rows, texts)
            elif info.compression == "none":
                with open(info.path, "rb") as f:
                    self._jsonl_lines(info, idx, offs, lens, rows, texts, _pread(f))
            else:
                self._jsonl_seekable(info, idx, offs, lens, rows, texts)
        elif fmt == "parquet":
            self._parquet(info, idx, offs, lens, cols)
            return False
        elif fmt == "webdataset":
            self._tar(info, idx, offs, lens, texts)
        else:
            raise OperationalError(f"{info.path}: no reader for format {fmt!r} (source {info.source})")
        return True

    # -- node-cache entries ------------------------------------------------------------------
    def _cache(self) -> NodeCache:
        if self._node_cache is None:
            try:
                self._node_cache = node_cache()
            except OSError as exc:
                raise OperationalError(f"cannot use the node cache directory ({exc})",
                                       hint="set MIXSQL_CACHE_DIR to a writable local directory") from None
        return self._node_cache

    def _open_or_filling(self, info):
        """The file's node-cache entry, ``(file, payload size, mapped payload)``, once it is whole; or, while
        this process fills it, the fill's :class:`_FillProgress` (rows are read from the
        temporary file as soon as the bytes they need are written)."""
        fid = info.file_id
        with self._lock:
            entry = self._entries.get(fid)
            if entry is not None:
                self._entries.move_to_end(fid)
                return entry
            fut, progress = self._fills.get(fid), self._progress.get(fid)
        if progress is not None and progress.wait_started():
            return progress
        return fut.result() if fut is not None else self._open_entry(fid)

    def _open_entry(self, file_id: int, progress: "_FillProgress | None" = None) -> tuple:
        """Open (filling if needed) the file's node-cache entry and keep it open (and mapped):
        ``(file, payload size, mapped payload)``."""
        error = None
        try:
            info = self._info(file_id)
            f = self._cache().get_or_fill(info.entry_key(), lambda out: self._checked_fill(info, out, progress))
            size = payload_size(f)
            entry = (f, size, _mapped(f, size))
            with self._lock:
                self._entries[file_id] = entry
                while len(self._entries) > _OPEN_ENTRIES:   # closed when no reader holds it any more
                    self._entries.popitem(last=False)
            return entry
        except BaseException as exc:
            error = exc
            raise
        finally:
            with self._lock:
                self._fills.pop(file_id, None)
                self._progress.pop(file_id, None)
            if progress is not None:
                progress.end(error)

    def _checked_fill(self, info, out, progress: "_FillProgress | None") -> None:
        """:meth:`_fill`, after checking the file against the catalog. A present entry is not
        checked: its key holds the registered size, mtime and ETag, so it holds exactly the
        registered bytes, and a warm node cache reads an object without contacting the store."""
        if self.check_files and not info.checked:
            self._check(info)
        self._fill(info, out, progress)

    def _fill(self, info, out, progress: "_FillProgress | None" = None) -> None:
        """Write the file's decompressed (or fetched) bytes to ``out`` (the entry's temporary
        file); with ``progress``, every write is flushed and published to readers at once."""
        if progress is not None:
            out = progress.writer(out)
        with storage.open_input(info.path, info.size, buffer_size=_COPY_BYTES) as raw:
            if info.compression == "none":
                shutil.copyfileobj(raw, out, _FILL_WRITE)
                return
            try:
                if info.compression == "zstd":   # every frame, in C
                    zstandard.ZstdDecompressor().copy_stream(raw, out, read_size=1 << 20, write_size=_FILL_WRITE)
                elif info.compression == "gzip":
                    shutil.copyfileobj(gzip.GzipFile(fileobj=raw), out, _FILL_WRITE)
                else:
                    raise OperationalError(f"{info.path}: unsupported compression {info.compression!r}")
            except (zstandard.ZstdError, OSError, EOFError, zlib.error) as exc:
                if isinstance(exc, storage.StorageError):
                    raise
                raise StaleFileError(info.path, f"cannot decompress the file ({exc})") from None

    # -- JSONL ---------------------------------------------------------------------------------
    def _jsonl_lines(self, info, idx, offs, lens, rows, texts, pread) -> None:
        """Lines through ``pread(start, n)`` (a local file: a copy from the page cache); runs of
        lines less than _LOCAL_GAP apart coalesce into one read."""
        for run, start, buf in _coalesced(idx, offs, lens, pread, info.path, _LOCAL_GAP):
            o = offs[run].astype(np.int64) - start
            self._parse_lines(info, run, o, o + lens[run], memoryview(buf), rows, texts)

    def _jsonl_cached(self, info, idx, offs, lens, rows, texts) -> None:
        """Lines of a node-cache entry: a whole entry is memory-mapped (entries are immutable and
        only ever unlinked, so a mapping never loses its pages) and every line of the file is
        parsed in place in one pass; an entry this process is still filling is read with
        positioned reads as its bytes arrive."""
        src = self._open_or_filling(info)
        if isinstance(src, _FillProgress):
            self._jsonl_lines(info, idx, offs, lens, rows, texts, src.pread)
            return
        o = offs[idx].astype(np.int64)
        e = o + lens[idx].astype(np.int64)
        mapped = src[2]
        try:
            self._parse_lines(info, idx, o, e, memoryview(mapped)[:src[1]], rows, texts)
        finally:
            _release(mapped, o, e)

    def _jsonl_seekable(self, info, idx, offs, lens, rows, texts) -> None:
        """Rows grouped by their nearest seek point; each group decompresses from its point."""
        o_sel = offs[idx].astype(np.int64)
        e_sel = o_sel + lens[idx].astype(np.int64)
        seg = np.searchsorted(info.seek_d, o_sel, side="right") - 1
        for s in np.unique(seg).tolist():
            m = seg == s
            base = int(info.seek_d[s])
            data = self._decompressed_span(info, s, int(e_sel[m].max()))
            self._parse_lines(info, idx[m], o_sel[m] - base, e_sel[m] - base, memoryview(data), rows, texts)

    def _decompressed_span(self, info, s: int, end: int) -> bytes:
        """Decompressed bytes from seek point ``s`` up to at least ``end``: segment by segment
        (a segment runs to the next seek point), each cached in the in-RAM LRU."""
        parts, pos, k = [], int(info.seek_d[s]), s
        while pos < end:
            if k >= len(info.seek_d):
                raise StaleFileError(info.path, f"decompressed stream ends before byte {end} that the index points to")
            seg = self._segment(info, k)
            parts.append(seg)
            pos += len(seg)
            k += 1
            if not seg:
                raise StaleFileError(info.path, f"decompressed stream ends before byte {end} that the index points to")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _segment(self, info, k: int) -> bytes:
        key = ("seg", info.file_id, k)
        data = self.cache.get(key)
        if data is None:
            c0 = int(info.seek_c[k])
            c1 = int(info.seek_c[k + 1]) if k + 1 < len(info.seek_c) else int(info.size)
            data = _decompress_frames(info, storage.read_range(info.path, c0, c1))
            want = int(info.seek_d[k + 1] - info.seek_d[k]) if k + 1 < len(info.seek_d) else None
            if want is not None and len(data) != want:
                raise StaleFileError(info.path, f"frames at byte {c0} decompress to {len(data)} bytes, "
                                                f"registered {want}")
            self.cache.put(key, data, len(data))
        return data

    def _parse_lines(self, info, idx, starts, ends, mv, rows, texts) -> None:
        """``texts[k]`` = the text of the JSON line ``mv[starts[i]:ends[i]]`` for ``k = idx[i]``."""
        if len(ends) and int(ends.max()) > len(mv):
            raise StaleFileError(info.path, f"file ends before byte {int(ends.max())} that the index points to")
        loads = orjson.loads
        key = info.text_path[0] if len(info.text_path) == 1 else None
        for k, o, e in zip(idx.tolist(), starts.tolist(), ends.tolist()):
            if key is not None:   # fast path: a top-level string field
                try:
                    t = loads(mv[o:e])[key]
                    if type(t) is str:
                        texts[k] = t
                        continue
                except Exception:  # noqa: BLE001 - the slow path below names the problem
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

    # -- Parquet, WebDataset ------------------------------------------------------------------
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
                    pf = pq.ParquetFile(storage.open_input(info.path, info.size) if info.remote else info.path)
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
        if info.remote:
            runs = _coalesced(idx, offs, lens, lambda start, n: storage.read_range(info.path, start, start + n),
                              info.path)
            for run, start, buf in runs:
                for k in run.tolist():
                    o = int(offs[k]) - start
                    texts[k] = bytes(buf[o:o + int(lens[k])]).decode("utf-8", errors="replace")
            return
        with open(info.path, "rb") as f:
            for k in idx:
                f.seek(int(offs[k]))
                n = int(lens[k])
                b = f.read(n)
                if len(b) < n:
                    raise StaleFileError(info.path, f"tar ends before byte {int(offs[k]) + n}")
                texts[k] = b.decode("utf-8", errors="replace")


class _FillProgress:
    """A node-cache fill this process runs, as readers see it: queued, then writing its
    temporary file (``written`` bytes so far, readable at once), then ended (the entry is whole,
    or the fill failed and ``pread`` raises its error for bytes it never wrote)."""

    def __init__(self):
        self._cond = threading.Condition()
        self.fd: int | None = None
        self.written = 0
        self.ended = False
        self.error: BaseException | None = None

    def writer(self, out) -> "_ProgressWriter":
        """``out`` (the temporary file) wrapped so that every write is flushed and published."""
        fd = os.open(out.name, os.O_RDONLY)
        weakref.finalize(self, os.close, fd)
        with self._cond:
            self.fd = fd
            self._cond.notify_all()
        return _ProgressWriter(out, self)

    def advance(self, n: int) -> None:
        with self._cond:
            self.written += n
            self._cond.notify_all()

    def end(self, error: BaseException | None = None) -> None:
        with self._cond:
            self.ended, self.error = True, error
            self._cond.notify_all()

    def wait_started(self) -> bool:
        """Wait until this process writes the entry (True) or the fill ended without writing
        (another process filled it, it was already there, or it failed: False)."""
        with self._cond:
            self._cond.wait_for(lambda: self.fd is not None or self.ended)
            return self.fd is not None and not (self.ended and self.error is None)

    def pread(self, start: int, n: int) -> bytes:
        """Bytes ``[start, start + n)`` of the entry's payload, once written (short at its end)."""
        with self._cond:
            self._cond.wait_for(lambda: self.written >= start + n or self.ended)
            if self.written < start + n and self.error is not None:
                raise self.error
            avail = self.written
        return os.pread(self.fd, max(0, min(n, avail - start)), start)


class _ProgressWriter:
    """A file-like ``write`` that flushes each write to the file and reports it to a :class:`_FillProgress`."""

    def __init__(self, out, progress: _FillProgress):
        self.out, self.progress = out, progress

    def write(self, data) -> int:
        n = self.out.write(data)
        self.out.flush()
        self.progress.advance(len(data))
        return n


def _text_column(texts: list, py_rows: list, pieces: list, n: int) -> pa.Array:
    """The chunk's ``text`` column: ``texts`` (chunk order) for the rows ``py_rows`` that readers
    filled, plus Arrow ``pieces`` (Parquet); rows neither covers are null."""
    if not pieces:
        return pa.array(texts, type=pa.string())
    if py_rows:
        idx = np.concatenate(py_rows)
        pieces = pieces + [(idx, pa.array([texts[k] for k in idx.tolist()], type=pa.string()))]
    return _assemble(pieces, n, pa.string())


def _mapped(f, size: int | None) -> "mmap.mmap | bytes":
    """An immutable node-cache entry, memory-mapped read-only (``b""`` when empty)."""
    if not size:
        return b""
    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _release(mapped, starts: np.ndarray, ends: np.ndarray) -> None:
    """Drop the pages of ``[min(starts), max(ends))`` from this process' mapping: they stay in the
    page cache (shared by every process on the node), but not in this worker's resident set,
    which stays bounded by the rows it is reading, whatever the size of the shards."""
    if not isinstance(mapped, mmap.mmap) or not len(starts):
        return
    lo = int(starts.min()) // mmap.PAGESIZE * mmap.PAGESIZE
    hi = min(int(ends.max()), len(mapped))
    if hi > lo:
        mapped.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def _pread(f, limit: int | None = None):
    """``(start, n) -> bytes`` positioned reads of ``f`` (kept open by the closure), never past ``limit``."""
    if limit is None:
        return lambda start, n: os.pread(f.fileno(), n, start)
    return lambda start, n: os.pread(f.fileno(), max(0, min(n, limit - start)), start)


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


def _decompress_frames(info, raw: bytes) -> bytes:
    """All frames (zstd) or members (gzip) in ``raw``, decompressed."""
    try:
        if info.compression == "zstd":
            return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read()
        out, d = [], zlib.decompressobj(wbits=47)
        while raw:
            out.append(d.decompress(raw))
            raw = d.unused_data if d.eof else b""
            if d.eof and raw:
                d = zlib.decompressobj(wbits=47)
        return b"".join(out)
    except (zstandard.ZstdError, zlib.error) as exc:
        raise StaleFileError(info.path, f"cannot decompress the frames at a seek point ({exc})") from None


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
