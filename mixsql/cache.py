"""The node-local cache: one bounded directory per node for fetched objects and decompressed shards.

Location ``$MIXSQL_CACHE_DIR/objects`` (``MIXSQL_CACHE_DIR`` defaults to ``~/.cache/mixsql``); size
limit ``MIXSQL_CACHE_LIMIT`` (bytes, or ``'20GB'``/``'512MiB'``; default 64 GiB). Every worker and rank
process on the node shares it, and it survives restarts:

* an entry is a plain file named by a hash of what it holds (location, size, mtime_ns, ETag, kind),
  so a rewritten object never hits an old entry;
* fills are atomic: the bytes go to a temporary file, end with a footer (magic + length) and are
  renamed into place, so a process killed mid-fill leaves only a temporary file, never a partial
  entry; temporaries of dead processes are removed by the next fill. An entry whose footer does
  not match its size (a file cut short by a machine crash) is removed on open, never read;
  ``MIXSQL_CACHE_FSYNC=1`` also fsyncs every fill before the rename;
* one process fills a given entry at a time (``fcntl.flock`` on a per-entry lock file); the others
  wait for it and then read the finished entry;
* LRU eviction by access time (an entry's mtime is touched when it is opened): after each fill the
  oldest entries go until the directory fits the limit. A reader that already holds an evicted
  entry open keeps reading it (POSIX unlink semantics).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import struct
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

DEFAULT_LIMIT = 64 << 30
STALE_TMP_SECONDS = 3600      # a temporary older than this is abandoned whatever its pid
_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000 ** 2, "MB": 1000 ** 2, "G": 1000 ** 3, "GB": 1000 ** 3,
          "T": 1000 ** 4, "TB": 1000 ** 4, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
_FOOTER = struct.Struct("<8sQ")    # magic, payload length
_MAGIC = b"MIXSQLC1"
_TMP_RE = re.compile(r"^(?P<key>[0-9a-f]+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp$")


def parse_size(text: str | int) -> int:
    """``'20GB'`` / ``'512MiB'`` / ``1048576`` -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(text))
    if m is None or m.group(2).upper() not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 20GB, 512MiB or a byte count")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def default_root() -> str:
    base = os.environ.get("MIXSQL_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mixsql")
    return os.path.join(base, "objects")


def entry_key(*parts) -> str:
    """Stable entry name for what identifies the cached bytes (location, size, mtime, ETag, kind)."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:40]


class NodeCache:
    """A bounded directory of immutable entries shared by the node's processes (see module doc)."""

    def __init__(self, root: str | os.PathLike | None = None, limit: int | str | None = None):
        self.root = os.path.abspath(os.fspath(root or default_root()))
        env = os.environ.get("MIXSQL_CACHE_LIMIT")
        self.limit = parse_size(limit if limit is not None else (env or DEFAULT_LIMIT))
        self.data_dir = os.path.join(self.root, "data")
        self.lock_dir = os.path.join(self.root, "locks")
        self.tmp_dir = os.path.join(self.root, "tmp")
        self._make_dirs()
        self._touched: dict[str, float] = {}
        self._mutex = threading.Lock()

    def _make_dirs(self) -> None:
        for d in (self.data_dir, self.lock_dir, self.tmp_dir):
            os.makedirs(d, exist_ok=True)

    # -- entries ----------------------------------------------------------------------------
    def path(self, key: str) -> str:
        return os.path.join(self.data_dir, key)

    def open(self, key: str):
        """The entry's file opened for reading (and marked used), or None when absent or not
        whole. Its payload is bytes ``[0, payload_size(f))``."""
        try:
            f = open(self.path(key), "rb")
        except FileNotFoundError:
            return None
        if payload_size(f) is None:
            f.close()
            try:
                os.unlink(self.path(key))
            except FileNotFoundError:
                pass
            return None
        self._touch(key)
        return f

    def get_or_fill(self, key: str, fill: Callable[[object], None]):
        """The entry opened for reading; when absent, ``fill(file)`` writes it first (one process
        at a time; the others wait and reuse the result). ``fill`` errors propagate and leave no
        entry behind."""
        f = self.open(key)
        if f is not None:
            return f
        self._make_dirs()   # the directory may have been removed since (a user clearing the cache)
        with self._locked(key):
            f = self.open(key)   # another process filled it while we waited
            if f is not None:
                return f
            self._fill(key, fill)
            f = open(self.path(key), "rb")
        self.evict(keep=key)
        return f

    def contains(self, key: str) -> bool:
        return os.path.exists(self.path(key))

    def _fill(self, key: str, fill: Callable[[object], None]) -> None:
        self._clean_tmp()
        tmp = os.path.join(self.tmp_dir, f"{key}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            with open(tmp, "wb") as out:
                fill(out)
                out.write(_FOOTER.pack(_MAGIC, out.tell()))
                out.flush()
                if os.environ.get("MIXSQL_CACHE_FSYNC", "0") not in ("", "0"):
                    os.fsync(out.fileno())
            os.replace(tmp, self.path(key))
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def _touch(self, key: str) -> None:
        now = time.time()
        if now - self._touched.get(key, 0.0) < 1.0:
            return
        self._touched[key] = now
        try:
            os.utime(self.path(key), (now, now))
        except FileNotFoundError:
            pass

    @contextmanager
    def _locked(self, key: str):
        fd = os.open(os.path.join(self.lock_dir, key), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)   # releases the lock

    # -- housekeeping -------------------------------------------------------------------------
    def usage(self) -> int:
        """Bytes held by entries and in-progress fills."""
        return sum(size for _, size, _ in self._entries()) + self._filling_bytes()

    def _filling_bytes(self) -> int:
        """Bytes of in-progress fills."""
        return sum(size for _, size, _ in _files(self.tmp_dir))

    def _entries(self) -> list[tuple[str, int, float]]:
        return list(_files(self.data_dir))

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the directory fits the limit; returns their keys."""
        with self._mutex:
            fd = os.open(os.path.join(self.lock_dir, ".evict"), os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                entries = sorted(self._entries(), key=lambda x: x[2])
                total = sum(s for _, s, _ in entries) + self._filling_bytes()
                gone = []
                for name, size, _ in entries:
                    if total <= self.limit:
                        break
                    if name == keep:
                        continue
                    try:
                        os.unlink(os.path.join(self.data_dir, name))
                    except FileNotFoundError:
                        continue
                    total -= size
                    gone.append(name)
                return gone
            finally:
                os.close(fd)

    def _clean_tmp(self) -> None:
        """Drop temporaries left by dead processes (a fill killed midway) or abandoned long ago."""
        now = time.time()
        for e in os.scandir(self.tmp_dir):
            m = _TMP_RE.match(e.name)
            try:
                old = now - e.stat().st_mtime > STALE_TMP_SECONDS
            except FileNotFoundError:
                continue
            if m is not None and not old and _alive(int(m.group("pid"))):
                continue
            try:
                os.unlink(e.path)
            except FileNotFoundError:
                pass


def payload_size(f) -> int | None:
    """Length of an entry's payload from its footer; None when the footer is missing or wrong."""
    size = os.fstat(f.fileno()).st_size
    if size < _FOOTER.size:
        return None
    magic, n = _FOOTER.unpack(os.pread(f.fileno(), _FOOTER.size, size - _FOOTER.size))
    return n if magic == _MAGIC and n == size - _FOOTER.size else None


def _files(directory: str) -> Iterator[tuple[str, int, float]]:
    """``(name, size, mtime)`` of the files in ``directory``; one renamed or removed by another
    process or thread between the listing and its stat (a fill finishing, an eviction) is skipped."""
    for e in os.scandir(directory):
        try:
            if e.is_file():
                st = e.stat()
                yield e.name, st.st_size, st.st_mtime
        except FileNotFoundError:
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


_DEFAULT: dict = {}


def node_cache() -> NodeCache:
    """This process's handle on the default node cache (from the environment at first use)."""
    key = (default_root(), os.environ.get("MIXSQL_CACHE_LIMIT"))
    c = _DEFAULT.get(key)
    if c is None:
        c = _DEFAULT[key] = NodeCache()
    return c


__all__ = ["DEFAULT_LIMIT", "NodeCache", "default_root", "entry_key", "node_cache", "parse_size", "payload_size"]
