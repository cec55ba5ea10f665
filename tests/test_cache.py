"""The node-local cache: atomic fills shared by processes, LRU eviction under a size limit, and
nothing partial trusted after a process is killed mid-fill."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

from mixsql.cache import NodeCache, entry_key, parse_size, payload_size


def _read(f) -> bytes:
    with f:
        return f.read()[:payload_size(f)]


def _payload(i: int, n: int = 1000) -> bytes:
    return bytes([i % 251]) * n


def test_parse_size():
    assert parse_size("20GB") == 20 * 10 ** 9
    assert parse_size("512MiB") == 512 << 20
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError, match="as a size"):
        parse_size("lots")


def test_fill_once_then_reuse_after_restart(tmp_path):
    calls = []

    def fill(out):
        calls.append(1)
        out.write(b"hello world")

    key = entry_key("s3://b/k", 11, 5, "etag", "jsonl")
    assert _read(NodeCache(tmp_path, limit=1 << 20).get_or_fill(key, fill)) == b"hello world"
    # a new process' handle
    assert _read(NodeCache(tmp_path, limit=1 << 20).get_or_fill(key, fill)) == b"hello world"
    assert len(calls) == 1
    assert entry_key("s3://b/k", 11, 5, "other-etag", "jsonl") != key   # a rewritten object misses


def test_failed_fill_leaves_nothing(tmp_path):
    cache = NodeCache(tmp_path, limit=1 << 20)

    def broken(out):
        out.write(b"half")
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError):
        cache.get_or_fill("k1", broken)
    assert not cache.contains("k1")
    assert os.listdir(cache.tmp_dir) == []


def test_eviction_keeps_limit_and_recent_entries(tmp_path):
    cache = NodeCache(tmp_path, limit=3600)
    held = cache.get_or_fill("e0", lambda out: out.write(_payload(0)))
    for i in range(1, 6):
        time.sleep(0.02)   # distinct access times
        cache.get_or_fill(f"e{i}", lambda out, i=i: out.write(_payload(i))).close()
    assert cache.usage() <= 3600
    kept = sorted(os.listdir(cache.data_dir))
    assert kept == ["e3", "e4", "e5"]
    for k in kept:   # survivors are whole
        assert _read(cache.open(k)) == _payload(int(k[1:]))
    assert _read(held) == _payload(0)   # an evicted entry still open keeps reading


def test_lru_touch_on_open(tmp_path):
    cache = NodeCache(tmp_path, limit=2100)
    for i in range(2):
        cache.get_or_fill(f"e{i}", lambda out, i=i: out.write(_payload(i))).close()
    time.sleep(1.1)   # opens touch an entry at most once a second per process
    cache.open("e0").close()   # e0 is now the most recently used
    cache.get_or_fill("e2", lambda out: out.write(_payload(2))).close()
    assert sorted(os.listdir(cache.data_dir)) == ["e0", "e2"]


def _fill_counting(root, log):
    def fill(out):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)
        out.write(b"x" * 10_000)

    assert _read(NodeCache(root, limit=1 << 20).get_or_fill("shared", fill)) == b"x" * 10_000


def test_processes_share_one_fill(tmp_path):
    log = tmp_path / "fills.log"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_fill_counting, args=(str(tmp_path / "c"), str(log))) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(log.read_text().split()) == 1


_KILLED_FILLER = """
import sys, time
from mixsql.cache import NodeCache
def fill(out):
    out.write(b"partial" * 1000)
    out.flush()
    open(sys.argv[2], "w").close()   # tell the test we are mid-fill
    time.sleep(60)
    out.write(b"never")
NodeCache(sys.argv[1], limit=1 << 20).get_or_fill("victim", fill)
"""


def test_kill_mid_fill_then_refill(tmp_path):
    root, ready = tmp_path / "c", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_FILLER, str(root), str(ready)])
    try:
        deadline = time.time() + 30
        while not ready.exists():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
        cache = NodeCache(root, limit=1 << 20)
        assert not cache.contains("victim") and len(os.listdir(cache.tmp_dir)) == 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _read(cache.get_or_fill("victim", lambda out: out.write(b"whole"))) == b"whole"   # lock released
    assert os.listdir(cache.tmp_dir) == []   # the dead filler's temporary was cleaned


def test_entry_cut_short_is_not_trusted(tmp_path):
    cache = NodeCache(tmp_path, limit=1 << 20)
    cache.get_or_fill("k", lambda out: out.write(b"y" * 5000)).close()
    with open(cache.path("k"), "r+b") as f:   # what a machine crash after the rename can leave
        f.truncate(3000)
    assert cache.open("k") is None and not cache.contains("k")
    assert _read(cache.get_or_fill("k", lambda out: out.write(b"z" * 10))) == b"z" * 10


def test_a_fill_finishing_during_a_scan_is_not_an_error(tmp_path, monkeypatch):
    """A temporary file renamed into place (or cleaned up) between listing and stat: counted as 0."""
    import mixsql.cache as cache_mod

    cache = NodeCache(tmp_path / "c", limit=1000)
    cache.get_or_fill("a", lambda out: out.write(b"x" * 8)).close()

    class Vanished:
        name, path = "b.1.ff.tmp", str(tmp_path / "gone")

        def is_file(self):
            return True

        def stat(self):
            raise FileNotFoundError(self.path)

    real = os.scandir

    def scandir(path):
        return iter([*real(path), Vanished()]) if str(path) == str(cache.tmp_dir) else real(path)

    monkeypatch.setattr(cache_mod.os, "scandir", scandir)
    assert cache.usage() == os.path.getsize(cache.path("a"))
    assert cache.evict() == []
