"""The catalog directory's files: snapshot manifests, segments, leases and the writer lock.

Layout of a catalog directory::

    snapshots/<n>.json     manifest of snapshot n: its sources, each pointing at one segment
    segments/<id>.duckdb   one source's index (tables ``files``, ``sample_index``); immutable
    leases/<n>-<host>-<pid>-<token>.lease   a process holds snapshot n (see below)
    writer.lock            writers take an exclusive ``flock`` on it; holds the holder's pid

Commit protocol (one writer at a time, under ``writer.lock``): write and close the new segment
files, then write ``snapshots/<n+1>.json.tmp-<pid>``, fsync, ``rename`` to ``<n+1>.json``
(atomic), fsync the directory. The newest manifest *is* the catalog; a writer killed at any
point leaves at most unreferenced ``segments/*`` or ``*.tmp-*`` files, removed by the next
writer's garbage collection.

Holding a snapshot across processes: a lease file names the snapshot, host and pid. It is
live while that pid runs (checked with ``kill(pid, 0)`` on the same host; a lease from another
host sharing the directory counts as live until it is ``LEASE_TTL_S`` old). Garbage
collection (after each commit, under the writer lock) keeps the newest ``keep`` snapshots and
every snapshot with a live lease, deletes the other manifests, re-reads the leases (a reader that
leased a snapshot meanwhile gets its manifest written back) and then deletes segments no kept
manifest references. Dead leases are removed.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from .errors import OperationalError

FORMAT_VERSION = "2"
LEASE_TTL_S = 7 * 24 * 3600
LOCK_TIMEOUT_S = float(os.environ.get("MIXSQL_LOCK_TIMEOUT", "600"))
KEEP_SNAPSHOTS = int(os.environ.get("MIXSQL_KEEP_SNAPSHOTS", "1"))
_MANIFEST_RE = re.compile(r"^(\d+)\.json$")
_LEASE_RE = re.compile(r"^(\d+)-(.+)-(\d+)-([0-9a-f]+)\.lease$")
_HOST = socket.gethostname().replace("-", "_")


def empty_manifest() -> dict:
    return {"format_version": FORMAT_VERSION, "snapshot": 0, "committed_at": None, "next_source_id": 1,
            "next_file_id": 1, "columns": [], "sources": []}


class Store:
    """The files of one catalog directory (no DuckDB here)."""

    def __init__(self, root: Path):
        self.root = root
        self.snapshots = root / "snapshots"
        self.segments = root / "segments"
        self.leases = root / "leases"

    def exists(self) -> bool:
        return self.snapshots.is_dir()

    def create(self) -> None:
        for d in (self.snapshots, self.segments, self.leases):
            d.mkdir(parents=True, exist_ok=True)

    # -- manifests
    def snapshot_numbers(self) -> list[int]:
        try:
            names = os.listdir(self.snapshots)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_MANIFEST_RE.match, names) if m)

    def latest(self) -> int:
        nums = self.snapshot_numbers()
        return nums[-1] if nums else 0

    def read(self, n: int) -> dict | None:
        """Manifest n, or None when it does not exist (n = 0 with no manifest: empty)."""
        try:
            doc = json.loads((self.snapshots / f"{n}.json").read_text())
        except FileNotFoundError:
            return empty_manifest() if n == 0 and not self.snapshot_numbers() else None
        if doc.get("format_version") != FORMAT_VERSION:
            raise OperationalError(f"catalog {self.root} has format {doc.get('format_version')}, this mixsql "
                                   f"reads {FORMAT_VERSION}")
        return doc

    def write(self, doc: dict) -> None:
        """Atomically publish manifest ``doc['snapshot']``."""
        n = int(doc["snapshot"])
        tmp = self.snapshots / f"{n}.json.tmp-{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, self.snapshots / f"{n}.json")
        _fsync_dir(self.snapshots)

    def new_segment_path(self) -> Path:
        return self.segments / f"{uuid.uuid4().hex}.duckdb"

    # -- leases
    def lease(self, n: int) -> Path | None:
        """Hold snapshot n for this process; None when the directory is not writable."""
        path = self.leases / f"{n}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}.lease"
        try:
            path.touch()
        except OSError:
            return None
        return path

    def live_leases(self) -> set[int]:
        held = set()
        try:
            names = os.listdir(self.leases)
        except FileNotFoundError:
            return held
        for name in names:
            m = _LEASE_RE.match(name)
            if m and _lease_alive(self.leases / name, m.group(2), int(m.group(3))):
                held.add(int(m.group(1)))
        return held

    def remove_dead_leases(self) -> None:
        for name in os.listdir(self.leases):
            m = _LEASE_RE.match(name)
            if m and not _lease_alive(self.leases / name, m.group(2), int(m.group(3))):
                _unlink(self.leases / name)

    # -- the writer lock
    @contextmanager
    def writer_lock(self, what: str, timeout: float | None = None):
        """Exclusive writer lock; waits (saying so on stderr once) up to ``timeout`` seconds."""
        timeout = LOCK_TIMEOUT_S if timeout is None else timeout
        path = self.root / "writer.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            t0 = time.monotonic()
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                waited = time.monotonic() - t0
                holder = _read_holder(path)
                if waited >= timeout:
                    raise OperationalError(
                        f"catalog {self.root} is being changed by {holder} for over {timeout:g} s; wait for it "
                        "to finish, or raise the wait with MIXSQL_LOCK_TIMEOUT=seconds "
                        "(mixsql.connect(..., lock_timeout=...))")
                if not told:
                    print(f"mixsql: waiting for {holder} to finish changing catalog {self.root} "
                          f"(up to {timeout:g} s; MIXSQL_LOCK_TIMEOUT)", file=sys.stderr, flush=True)
                    told = True
                time.sleep(min(0.05 * (1 + waited), 0.5))
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({what})".encode(), 0)
            yield
        finally:
            os.close(fd)   # releases the flock (so does the process dying)

    # -- garbage collection (call under the writer lock)
    def collect(self, keep: int = KEEP_SNAPSHOTS) -> list[int]:
        """Delete unheld old snapshots and unreferenced segments; returns the dropped numbers."""
        nums = self.snapshot_numbers()
        keep_set = set(nums[-max(keep, 1):]) | self.live_leases()
        dropped = {n: self.read(n) for n in nums if n not in keep_set}
        for n in dropped:
            _unlink(self.snapshots / f"{n}.json")
        held_now = self.live_leases()
        for n in [n for n in dropped if n in held_now]:   # leased while we were deleting it
            self.write(dropped.pop(n))
        used = set()
        for n in self.snapshot_numbers():
            doc = self.read(n)
            if doc:
                used.update(s["segment"] for s in doc["sources"])
        for name in os.listdir(self.segments):
            if f"segments/{name}" not in used:
                _unlink(self.segments / name)
        for name in os.listdir(self.snapshots):
            if ".tmp-" in name:
                _unlink(self.snapshots / name)
        self.remove_dead_leases()
        return sorted(dropped)


def _lease_alive(path: Path, host: str, pid: int) -> bool:
    if host != _HOST:
        try:
            return time.time() - path.stat().st_mtime < LEASE_TTL_S
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Lease:
    """This process holds snapshot ``snapshot`` of a catalog until ``release()`` (or exit).

    Pickles as the snapshot number only: a copy in another process (a DataLoader worker) holds
    nothing itself; the creating process's lease keeps the snapshot."""

    def __init__(self, store: Store, snapshot: int):
        self.snapshot = int(snapshot)
        self._owner = os.getpid()
        self._path = store.lease(self.snapshot)

    def release(self) -> None:
        if self._path is not None and self._owner == os.getpid():
            _unlink(self._path)
        self._path = None

    def __getstate__(self):
        return {"snapshot": self.snapshot, "_owner": None, "_path": None}

    def __del__(self):
        self.release()
