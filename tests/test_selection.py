"""The node's selection cache: built once under a lock, memory-mapped by every process, never
trusted half-written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from conftest import write_jsonl_catalog
from mixsql.selection import cache_root, selection_key
from mixsql.stream import MixStream

SQL = ("SELECT * FROM samples MIX BY lang WITH (en 0.5, de 0.3, fr 0.2) "
       "SETTINGS (chunk_size = 16, on_exhausted = 'redistribute', seed = 3)")
OPEN = ("import json, sys; from mixsql.stream import MixStream; s = MixStream.open_cached(sys.argv[1], sys.argv[2]);"
        "print(json.dumps([s.built, [[int(f), int(r)] for c in s.chunks() for f, r in "
        "zip(c.column('file_id').to_pylist(), c.column('row').to_pylist())]]))")


def _catalog(tmp_path, n=3000):
    recs = [{"text": f"doc {i}", "lang": ["en", "de", "fr"][i % 3]} for i in range(n)]
    return str(write_jsonl_catalog(tmp_path / "cat", recs, properties={"lang": "VARCHAR"}, rows_per_file=500))


def _spawn(cat, env):
    return subprocess.Popen([sys.executable, "-c", OPEN, cat, SQL], stdout=subprocess.PIPE, text=True, env=env)


def test_concurrent_first_openers_build_once_and_map_the_same_selection(tmp_path):
    cat = _catalog(tmp_path)
    env = dict(os.environ, MIXSQL_CACHE_DIR=str(tmp_path / "cache"), MIXSQL_SELECTION_PUBLISH_DELAY="1")
    procs = [_spawn(cat, env) for _ in range(2)]
    out = [json.loads(p.communicate(timeout=240)[0]) for p in procs]
    assert sorted(b for b, _ in out) == [False, True]   # one planned, the other waited and mapped
    assert out[0][1] == out[1][1] and len(out[0][1]) == 3000
    assert sorted(map(tuple, out[0][1])) == sorted(set(map(tuple, out[0][1])))
    env.pop("MIXSQL_SELECTION_PUBLISH_DELAY")
    again = json.loads(subprocess.run([sys.executable, "-c", OPEN, cat, SQL], capture_output=True, text=True,
                                      env=env, check=True).stdout)
    assert again == [False, out[0][1]]   # a restart maps the published selection, no re-plan


def test_a_killed_builder_leaves_nothing_a_later_open_trusts(tmp_path, monkeypatch):
    cat = _catalog(tmp_path, n=600)
    env = dict(os.environ, MIXSQL_CACHE_DIR=str(tmp_path / "cache"), MIXSQL_SELECTION_PUBLISH_DELAY="60")
    p = _spawn(cat, env)
    monkeypatch.setenv("MIXSQL_CACHE_DIR", str(tmp_path / "cache"))
    root = cache_root()
    deadline = time.time() + 120
    while not list(root.glob("*.tmp-*/meta.json")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(root.glob("*.tmp-*/meta.json")), "the builder wrote its files"
    p.kill()
    p.wait()
    from mixsql.catalog import Catalog
    with Catalog(cat, read_only=True) as c:
        key = selection_key(cat, c.snapshot, SQL, None)
    assert not (root / key).exists()   # nothing was published
    s = MixStream.open_cached(cat, SQL)
    assert s.built                       # planned again, the dead builder's files are gone
    assert not list(root.glob("*.tmp-*"))
    ref = MixStream.open(cat, SQL, user_columns=False)
    got = [(f, r) for c in s.chunks() for f, r in zip(c.column("file_id").to_pylist(), c.column("row").to_pylist())]
    exp = [(f, r) for c in ref.chunks() for f, r in zip(c.column("file_id").to_pylist(), c.column("row").to_pylist())]
    assert got == exp   # the cached selection streams exactly what planning in-process streams


def test_the_stored_selection_is_compact_and_streams_what_planning_streams(tmp_path, monkeypatch):
    """The published form keeps per sample only what a chunk reads (narrow types), per group and
    per file the rest; every chunk column equals what in-process planning streams."""
    import pyarrow as pa

    from mixsql.packed import PackedSelection
    from mixsql.selection import COMPACT_DERIVED

    cat = tmp_path / "cat"
    for src, n in (("web", 700), ("code", 500)):
        recs = [{"text": f"{src} {'x' * (i % 9)} {i}", "lang": ["en", "de", "py"][i % 3]} for i in range(n)]
        write_jsonl_catalog(cat, recs, source=src, properties={"lang": "VARCHAR"}, rows_per_file=160)
    monkeypatch.setenv("MIXSQL_CACHE_DIR", str(tmp_path / "cache"))
    for sql in ("SELECT * FROM samples WHERE lang <> 'de' MIX BY source WITH (web 0.7, code 0.3) "
                "SETTINGS (chunk_size = 50, on_exhausted = 'repeat', max_epochs = 2, seed = 4)",
                "SELECT * FROM samples MIX BY lang WITH (en 0.5, py 0.5) ORDER BY n_bytes DESC "
                "SETTINGS (chunk_size = 300, unit = 'tokens', on_exhausted = 'redistribute')"):
        s = MixStream.open_cached(str(cat), sql)
        if "ORDER BY" in sql:   # a stored order: the table form
            assert s.built and not set(COMPACT_DERIVED) & set(s.pointers.column_names)
            assert s.pointers.schema.field("__mix_row").type == pa.uint32()
        else:                   # packed: about a byte a sample (mixsql.packed)
            assert s.built and isinstance(s.pointers, PackedSelection)
            stored = sum(f.stat().st_size for f in s.pointers.directory.iterdir() if f.suffix != ".json")
            assert stored < 4 * 1024 + 8 * s.pointers.num_rows   # npy headers + one stored block
        ref = MixStream.open(str(cat), sql, user_columns=False)
        got, exp = list(s.chunks()), list(ref.chunks())
        assert len(got) == len(exp) > 3 and all(a.equals(b) for a, b in zip(got, exp))
        assert {x for c in got for x in c.column("source").to_pylist()} == {"web", "code"}
