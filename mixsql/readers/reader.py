"""The chunk reader: pointers in, samples out (:class:`ChunkReader`), with read-ahead on a
background thread; each file's rows go to its format's reader (:mod:`.jsonl`, :mod:`.parquet`,
:mod:`.webdataset`), shards through the node cache (:mod:`.entries`)."""
from __future__ import annotations

import collections
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from .. import storage
from ..cache import NodeCache
from ..errors import OperationalError, StaleFileError
from .columns import _assemble, _text_column
from .entries import _FillProgress, _NodeCacheEntries
from .files import _LRU, _FileInfo, _pread
from .jsonl import _JsonlReading
from .parquet import _ParquetReading
from .webdataset import _TarReading

DEFAULT_CACHE_BYTES = 256 << 20
_END = object()


class ChunkReader(_NodeCacheEntries, _JsonlReading, _ParquetReading, _TarReading):
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
