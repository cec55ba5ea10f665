"""MixStream over a real catalog: plan + execute + engine."""
from __future__ import annotations

import json

import numpy as np

from mixsql.catalog import Catalog
from mixsql.stream import MixStream
from mixsql.topology import Topology

SQL = ("SELECT * FROM samples WHERE quality >= 0 MIX BY language WITH (JavaScript 0.5, HTML 0.3, Python 0.2) "
       "SETTINGS (chunk_size = 10, seed = 3, on_exhausted = 'redistribute')")


def test_open_and_stream_exactly_once(langs_catalog):
    s = MixStream.open(langs_catalog, SQL)
    assert s.statement == SQL and s.snapshot >= 1
    assert set(s.files.column("file_id").to_pylist()) == set(s.pointers.column("__mix_file_id").to_pylist())
    chunks = list(s.chunks())
    keys = [(f, r) for c in chunks for f, r in zip(c.column("file").to_pylist(), c.column("row").to_pylist())]
    assert len(keys) == 100 == len(set(keys))
    assert "language" in chunks[0].column_names and "quality" in chunks[0].column_names
    assert set(chunks[0].column("group").to_pylist()) <= {"JavaScript", "HTML", "Python"}


def test_open_with_catalog_object_and_restore(langs_catalog):
    with Catalog(langs_catalog, read_only=True) as cat:
        s = MixStream.open(cat, SQL)
    eng = s.engine()
    first = [eng.next_chunk() for _ in range(3)]
    state = json.loads(json.dumps(eng.state_dict()))
    rest = list(eng)
    again = list(MixStream.open(langs_catalog, SQL).chunks(state=state))
    assert [c.equals(d) for c, d in zip(rest, again)] == [True] * len(rest) and len(rest) == len(again)
    assert first[0].column("chunk")[0].as_py() == 0


def test_topology_filters_chunks(langs_catalog):
    s = MixStream.open(langs_catalog, SQL)
    mine = [c.column("chunk")[0].as_py() for c in s.chunks(Topology(1, 2, 0, 2))]
    assert mine == [1, 5, 9]


def test_pointer_only_stream_matches_full(langs_catalog):
    full = list(MixStream.open(langs_catalog, SQL).chunks())
    ptr = MixStream.open(langs_catalog, SQL, user_columns=False)
    assert "language" in ptr.plan.user_columns
    lean = list(ptr.chunks())
    assert len(full) == len(lean)
    for a, b in zip(full, lean):
        assert "language" not in b.column_names
        assert a.select(b.column_names).equals(b)
    sub = next(MixStream.open(langs_catalog, SQL, user_columns=["quality"]).chunks())
    assert sub.column("quality").equals(full[0].column("quality"))


def test_order_by_consumption_matches_duckdb(langs_catalog):
    """ORDER BY keys ranked in numpy (and a LIST key ranked by DuckDB) give DuckDB's order,
    ties broken by (file, row), in the stream and in the DB-API's canonical table."""
    from mixsql import planner

    for order, dd in (("quality DESC, n_bytes", "quality DESC, n_bytes"),
                      ("[round(quality * 3)] NULLS FIRST", "[round(quality * 3)] NULLS FIRST")):
        sql = (f"SELECT * FROM samples MIX BY language WITH (JavaScript 0.5, HTML 0.3, Python 0.2) ORDER BY {order} "
               "SETTINGS (chunk_size = 10, on_exhausted = 'redistribute')")
        s = MixStream.open(langs_catalog, sql)
        got = {}
        for c in s.chunks():
            for g, f, r in zip(*(c.column(n).to_pylist() for n in ("group", "file_id", "row"))):
                got.setdefault(g, []).append((f, r))
        cat = Catalog(langs_catalog, read_only=True)
        try:
            for lang, seq in got.items():
                ref = cat.con.execute(f"SELECT file_id, \"row\" FROM samples WHERE language = ? "
                                      f"ORDER BY {dd}, file_id, \"row\"", [lang]).fetchall()
                assert seq == [tuple(x) for x in ref], order
            p = planner.plan(cat, sql)
            table, _ = planner.execute_plan(cat, p)
            rank, grp = (table.column(n).to_numpy() for n in ("__mix_order", "__mix_group"))
            assert (np.diff(grp) >= 0).all() and (np.diff(rank)[np.diff(grp) == 0] > 0).all()
        finally:
            cat.close()
