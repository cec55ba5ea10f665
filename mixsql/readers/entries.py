"""Node-cache entries: JSONL shards decompressed (or objects fetched) once per node into
:mod:`mixsql.cache`, filled on background threads (:meth:`_NodeCacheEntries.warm_files`) and kept
open, memory-mapped, by the reader (pages it has parsed leave the worker's resident set:
:func:`_release`). While this process fills an entry, :class:`_FillProgress` serves the bytes
written so far, so rows are read before the whole shard is there."""
from __future__ import annotations

import gzip
import mmap
import os
import shutil
import threading
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import numpy as np
import zstandard

from .. import storage
from ..cache import NodeCache, node_cache, payload_size
from ..errors import OperationalError, StaleFileError

_OPEN_ENTRIES = 64         # node-cache entries a reader keeps open
_FILL_THREADS = int(os.environ.get("MIXSQL_FILL_THREADS", "2"))
_COPY_BYTES = 4 << 20
_FILL_WRITE = 1 << 20      # a fill publishes its progress to readers every this many bytes


class _NodeCacheEntries:
    """:class:`~mixsql.readers.ChunkReader`'s node-cache methods (its state is set up in
    ``ChunkReader.__init__``)."""

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

    def _cache(self) -> NodeCache:
        if self._node_cache is None:
            try:
                self._node_cache = node_cache()
            except OSError as exc:
                raise OperationalError(f"cannot use the node cache directory ({exc})",
                                       hint="set MIXSQL_CACHE_DIR to a writable local directory") from None
        return self._node_cache

    def _open_or_filling(self, info):
        """The file's node-cache entry, ``(payload size, mapping)``, once it is whole; or, while
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
        """Open (filling if needed) the file's node-cache entry and keep it mapped:
        ``(payload size, mapping)`` (the mapping holds the file; its descriptor is closed)."""
        error = None
        try:
            info = self._info(file_id)
            with self._cache().get_or_fill(info.entry_key(),
                                           lambda out: self._checked_fill(info, out, progress)) as f:
                size = payload_size(f)
                entry = (size, _mapped(f, size))
            with self._lock:
                self._entries[file_id] = entry
                while len(self._entries) > _OPEN_ENTRIES:   # unmapped when no reader holds it any more
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

