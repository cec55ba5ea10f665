"""A catalog many processes share: readers never blocked, writers queue, snapshots pinned,
kill -9 at any point harmless, nothing silently replaced, REFRESH independent of the cwd."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mixsql
from mixsql.catalog import Catalog, hold_snapshot
from mixsql.errors import IntegrityError, OperationalError
from mixsql.registration import create_source, refresh_source
from mixsql.snapshots import Store
from mixsql.stream import MixStream

ENV = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))


def write_docs(path: Path, n: int, lang: str = "en", start: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": f"{lang} doc {i}", "lang": lang}) + "\n"
                            for i in range(start, start + n)))
    return path


def child(code: str, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


READER = """
    import sys, time, json
    from pathlib import Path
    import mixsql
    cat, stop, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    seen, errors, n = set(), [], 0
    con = mixsql.connect(cat, read_only=True)
    while not stop.exists() or n < 5:
        try:
            if n % 7 == 0:   # fresh connections too, not only a long-lived one
                with mixsql.connect(cat, read_only=True) as c2:
                    seen.add(c2.execute("SELECT count(*) FROM samples").fetchone()[0])
            seen.add(con.execute("SELECT count(*) FROM samples").fetchone()[0])
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        n += 1
    out.write_text(json.dumps({"seen": sorted(seen), "errors": errors, "queries": n}))
"""

WRITER = """
    import sys
    from mixsql.catalog import Catalog
    from mixsql.registration import create_source, refresh_source
    cat = Catalog(sys.argv[1])
    d = sys.argv[2]
    for name in ("a", "b", "c"):
        create_source(cat, name, f"{d}/{name}/*.jsonl", progress=False)
    open(f"{d}/b/more.jsonl", "w").write("".join('{"text": "x", "lang": "de"}\\n' for _ in range(5)))
    refresh_source(cat, "b", progress=False)
"""


def test_reader_never_errors_and_sees_only_committed_counts(tmp_path):
    for name, n in (("a", 10), ("b", 20), ("c", 30)):
        write_docs(tmp_path / "d" / name / "x.jsonl", n)
    cat = tmp_path / "cat"
    Catalog(cat).close()
    stop, out = tmp_path / "stop", tmp_path / "reader.json"
    reader = child(READER, cat, stop, out)
    writer = child(WRITER, cat, tmp_path / "d")
    try:
        assert writer.wait(180) == 0, writer.stderr.read()
        stop.touch()
        assert reader.wait(120) == 0, reader.stderr.read()
    finally:
        for p in (reader, writer):
            if p.poll() is None:
                p.kill()
    res = json.loads(out.read_text())
    assert res["errors"] == []
    assert set(res["seen"]) <= {0, 10, 30, 60, 65} and 65 in res["seen"]


HOLD_LOCK = """
    import sys, time
    from pathlib import Path
    from mixsql.snapshots import Store
    with Store(Path(sys.argv[1])).writer_lock("test holder"):
        Path(sys.argv[2]).touch()
        deadline = time.monotonic() + float(sys.argv[3])
        while time.monotonic() < deadline and not Path(sys.argv[2] + ".release").exists():
            time.sleep(0.02)
"""

REGISTER = """
    import sys
    from mixsql.catalog import Catalog
    from mixsql.registration import create_source
    s = create_source(Catalog(sys.argv[1]), sys.argv[2], sys.argv[3], progress=False)
    print(s["snapshot"])
"""


def _wait_for(path: Path, proc) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_concurrent_registrations_queue_and_both_commit(tmp_path):
    cat = tmp_path / "cat"
    Catalog(cat).close()
    write_docs(tmp_path / "a.jsonl", 4)
    write_docs(tmp_path / "b.jsonl", 6)
    held = tmp_path / "held"
    holder = child(HOLD_LOCK, cat, held, 120)
    _wait_for(held, holder)
    errs = [tmp_path / f"{n}.err" for n in ("a", "b")]
    regs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(REGISTER), str(cat), n, str(tmp_path / f"{n}.jsonl")],
                             env=ENV, stdout=subprocess.PIPE, stderr=open(e, "w"), text=True)
            for n, e in zip(("a", "b"), errs)]
    deadline = time.monotonic() + 120
    while not all("waiting for pid" in e.read_text() for e in errs):   # both queue behind the holder
        assert time.monotonic() < deadline and all(p.poll() is None for p in regs), [e.read_text() for e in errs]
        time.sleep(0.05)
    Path(str(held) + ".release").touch()
    outs = [p.communicate(timeout=120)[0] for p in regs]
    assert holder.wait(30) == 0
    assert [p.returncode for p in regs] == [0, 0], [e.read_text() for e in errs]
    assert all("test holder" in e.read_text() for e in errs)
    assert sorted(int(o) for o in outs) == [1, 2]       # serialised: one snapshot each
    with mixsql.connect(cat, read_only=True) as con:
        assert con.execute("SELECT source, count(*) FROM samples GROUP BY 1 ORDER BY 1").fetchall() == \
            [("a", 4), ("b", 6)]


def test_writer_lock_timeout_is_a_clear_error(tmp_path):
    cat = tmp_path / "cat"
    Catalog(cat).close()
    write_docs(tmp_path / "a.jsonl", 3)
    held = tmp_path / "held"
    holder = child(HOLD_LOCK, cat, held, 30)
    try:
        _wait_for(held, holder)
        with mixsql.connect(cat, lock_timeout=0.3) as con:
            with pytest.raises(OperationalError, match=r"being changed by pid \d+ \(test holder\).*MIXSQL_LOCK_TIMEOUT"):
                con.execute(f"CREATE SOURCE a FROM '{tmp_path / 'a.jsonl'}'")
            assert con.execute("SELECT count(*) FROM samples").fetchone() == (0,)   # reading never waits
    finally:
        holder.kill()
        holder.wait()


SQL = "SELECT * FROM samples WHERE lang = 'en' MIX BY lang WITH NATURAL SETTINGS (chunk_size = 4, seed = 5)"


def test_pinned_stream_reads_its_snapshot_after_refresh_adds_and_removes_files(tmp_path):
    d = tmp_path / "d"
    write_docs(d / "en1.jsonl", 6)
    write_docs(d / "en2.jsonl", 5, start=100)
    write_docs(d / "de.jsonl", 4, lang="de")
    with Catalog(tmp_path / "cat") as cat:
        n = create_source(cat, "web", str(d / "*.jsonl"), progress=False)["snapshot"]
        lease = hold_snapshot(cat.path)           # e.g. a training job planned on snapshot n
        assert lease.snapshot == n
        before = MixStream.open(cat.path, SQL)
        expect = [c.to_pylist() for c in before.chunks()]
        (d / "en2.jsonl").rename(tmp_path / "en2.jsonl.away")   # out of the glob: REFRESH removes it
        write_docs(d / "en3.jsonl", 7, start=200)
        s = refresh_source(cat, "web", progress=False)
        assert (s["new_files"], s["removed_files"], s["samples_before"], s["samples_after"]) == (1, 1, 15, 17)
        pinned = MixStream.open(cat.path, SQL.replace("FROM samples", f"FROM samples AT SNAPSHOT {n}"))
        assert [c.to_pylist() for c in pinned.chunks()] == expect
        now = MixStream.open(cat.path, SQL)
        assert sum(c.num_rows for c in now.chunks()) == 13 != sum(len(c) for c in expect)
        with mixsql.connect(cat.path) as con:
            assert con.execute(f"SELECT count(*) FROM samples AT SNAPSHOT {n}").fetchone() == (15,)
            assert con.execute("SELECT count(*) FROM samples").fetchone() == (17,)
        (tmp_path / "en2.jsonl.away").rename(d / "en2.jsonl")   # back (same bytes and mtime), not re-indexed
        from mixsql import torch as torch_mod
        ds = torch_mod.MixDataset(SQL.replace("FROM samples", f"FROM samples AT SNAPSHOT {n}"),
                                  catalog=str(cat.path))
        texts = [x["text"] for x in ds]
        assert sorted(texts) == sorted([f"en doc {i}" for i in range(6)] + [f"en doc {i}" for i in range(100, 105)])
        lease.release()
        del ds
        write_docs(d / "en4.jsonl", 1, start=300)
        refresh_source(cat, "web", progress=False)   # nobody holds n any more: collected
    with pytest.raises(OperationalError, match=f"snapshot {n} .* no longer exists.*plan the statement again"):
        MixStream.open(tmp_path / "cat", SQL.replace("FROM samples", f"FROM samples AT SNAPSHOT {n}"))


def test_resume_fingerprint_includes_the_snapshot(tmp_path):
    from mixsql import torch as torch_mod
    d = tmp_path / "d"
    write_docs(d / "a.jsonl", 6)
    with Catalog(tmp_path / "cat") as cat:
        n = create_source(cat, "web", str(d / "*.jsonl"), progress=False)["snapshot"]
        ds = torch_mod.MixDataset(SQL, catalog=str(cat.path))
        it = iter(ds)
        next(it)
        state = ds.state_dict()
        assert state["snapshot"] == n
        write_docs(d / "b.jsonl", 3)
        refresh_source(cat, "web", progress=False)
        fresh = torch_mod.MixDataset(SQL, catalog=str(cat.path))
        with pytest.raises(mixsql.ProgrammingError, match=f"snapshot {n}.*AT SNAPSHOT {n}"):
            fresh.load_state_dict(state)
        pinned = torch_mod.MixDataset(SQL.replace("FROM samples", f"FROM samples AT SNAPSHOT {n}"),
                                      catalog=str(cat.path))
        pinned.load_state_dict(state)


KILLABLE = """
    import sys
    from mixsql.catalog import Catalog
    from mixsql.registration import create_source, refresh_source, drop_source
    cat = Catalog(sys.argv[1])
    d = sys.argv[2]
    k = 0
    while True:
        create_source(cat, f"s{k}", f"{d}/*.jsonl", progress=False)
        refresh_source(cat, f"s{k}", progress=False)
        drop_source(cat, f"s{k}")
        k += 1
"""


def test_kill_9_of_a_writer_at_random_points_leaves_readers_and_next_writer_fine(tmp_path):
    d = tmp_path / "d"
    for i in range(3):
        write_docs(d / f"p{i}.jsonl", 50, start=100 * i)
    cat = tmp_path / "cat"
    with Catalog(cat) as c:
        create_source(c, "base", str(d / "*.jsonl"), progress=False)
    rng = random.Random(3)
    for _ in range(4):
        proc = child(KILLABLE, cat, d)
        time.sleep(rng.uniform(0.6, 2.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        with mixsql.connect(cat, read_only=True) as con:
            got = dict(con.execute("SELECT source, count(*) FROM samples GROUP BY 1").fetchall())
            assert got["base"] == 150 and all(v == 150 for v in got.values())
        with Catalog(cat) as c:   # the next writer works, and cleans what the dead one left
            s = create_source(c, "after", str(d / "*.jsonl"), progress=False, replace=True)
            assert s["samples"] == 150
            store = Store(c.path)
            used = {src["segment"] for n in store.snapshot_numbers() for src in store.read(n)["sources"]}
            assert {f"segments/{p.name}" for p in store.segments.iterdir()} == used


def test_reregistering_another_path_errors_or_replace_replaces(tmp_path):
    write_docs(tmp_path / "a.jsonl", 3)
    write_docs(tmp_path / "b.jsonl", 5)
    with mixsql.connect(tmp_path / "cat") as con:
        con.execute(f"CREATE SOURCE js FROM '{tmp_path / 'a.jsonl'}'")
        with pytest.raises(IntegrityError, match="already exists.*OR REPLACE"):
            con.execute(f"CREATE SOURCE js FROM '{tmp_path / 'b.jsonl'}'")
        con.execute(f"CREATE SOURCE IF NOT EXISTS js FROM '{tmp_path / 'b.jsonl'}'")
        assert con.execute("SELECT count(*) FROM samples").fetchone() == (3,)
        con.execute(f"CREATE OR REPLACE SOURCE js FROM '{tmp_path / 'b.jsonl'}'")
        assert con.execute("SELECT count(*), min(file) FROM samples").fetchone() == (5, str(tmp_path / "b.jsonl"))
    from mixsql.cli import main
    cat = str(tmp_path / "cat")
    assert main(["register", "js", str(tmp_path / "a.jsonl"), "--catalog", cat]) == 1
    assert main(["register", "js", str(tmp_path / "a.jsonl"), "--replace", "--catalog", cat]) == 0
    with mixsql.connect(cat, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchone() == (3,)


def test_refresh_from_another_directory_changes_nothing(tmp_path, monkeypatch):
    write_docs(tmp_path / "one" / "data" / "x.jsonl", 8)
    write_docs(tmp_path / "two" / "data" / "y.jsonl", 2)
    monkeypatch.chdir(tmp_path / "one")
    with Catalog(tmp_path / "cat") as cat:
        s = create_source(cat, "web", "data/*.jsonl", progress=False)
        assert cat.source("web")["pattern"] == str(tmp_path / "one" / "data" / "*.jsonl")
        monkeypatch.chdir(tmp_path / "two")
        r = refresh_source(cat, "web", progress=False)
        assert (r["snapshot"], r["samples_after"], r["new_files"], r["removed_files"]) == (s["snapshot"], 8, 0, 0)
