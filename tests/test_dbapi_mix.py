"""DB-API on mixsql statements: MIX streams, EXPLAIN MIX, CREATE/REFRESH/DROP SOURCE, SHOW SOURCES."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

import mixsql
from mixsql.dbapi import MIX_LEADING_COLUMNS, POINTER_DETAIL_COLUMNS

MIX = ("SELECT language, quality FROM samples "
       "MIX BY language WITH (JavaScript 0.5, HTML 0.3, Python 0.2) SETTINGS (seed = 3, chunk_size = 10)")


@pytest.fixture
def cur(langs_catalog):
    con = mixsql.connect(langs_catalog)
    yield con.cursor()
    con.close()


# ------------------------------------------------------------------ MIX streams

def test_mix_description_before_fetch_and_rows_in_training_order(cur):
    cur.execute(MIX)
    names = [d[0] for d in cur.description]
    assert tuple(names[:6]) == MIX_LEADING_COLUMNS
    assert names[6:] == ["language", "quality"]
    assert cur.description[0][1] == mixsql.NUMBER and cur.description[2][1] == mixsql.STRING
    rows = cur.fetchall()
    assert len(rows) == 100  # 50/30/20 at weights .5/.3/.2: every sample, nothing dropped
    keys = [(r[0], r[1]) for r in rows]
    assert keys == sorted(keys)  # chunk, then position: training order
    assert {r[2] for r in rows} == {"JavaScript", "HTML", "Python"}
    assert all(r[2] == r[6] for r in rows)  # group is the MIX BY value
    assert len({(r[4], r[5]) for r in rows}) == 100  # each sample exactly once
    assert cur.fetchone() is None


def test_mix_fetches_are_lazy_and_deterministic(cur, langs_catalog):
    cur.execute(MIX)
    first = cur.fetchone()
    some = cur.fetchmany(15)
    cur.arraysize = 7
    more = cur.fetchmany()
    rest = list(cur)
    again = cur.connection.cursor().execute(MIX).fetchall()
    assert [first, *some, *more, *rest] == again


def test_mix_chunks_carry_the_description_columns_and_pointer_chunks_add_details(cur):
    cur.execute(MIX)
    names = [d[0] for d in cur.description]
    chunks = list(cur.chunks())
    assert chunks and all(isinstance(c, pa.Table) and c.column_names == names for c in chunks)
    assert tuple(names[:6]) == MIX_LEADING_COLUMNS
    engine = list(cur.execute(MIX).pointer_chunks())
    assert [c.column_names for c in engine] == [names + list(POINTER_DETAIL_COLUMNS)] * len(chunks)
    assert [c.select(names) for c in engine] == chunks
    with pytest.raises(mixsql.ProgrammingError, match="pointer_chunks"):
        cur.execute("SELECT 1").pointer_chunks()
    assert [c.column("chunk")[0].as_py() for c in chunks] == list(range(len(chunks)))
    assert sum(c.num_rows for c in chunks) == 100


def test_mix_partial_rows_then_chunks_and_arrow(cur):
    cur.execute(MIX)
    head = cur.fetchmany(3)
    rest = list(cur.chunks())
    assert len(head) + sum(c.num_rows for c in rest) == 100
    table = cur.execute(MIX).fetch_arrow_table()
    assert table.num_rows == 100
    assert table.column_names == [d[0] for d in cur.description]


def test_unbounded_stream_refuses_fetchall(cur):
    cur.execute("SELECT * FROM samples MIX BY language WITH (JavaScript 0.5, HTML 0.5) "
                "SETTINGS (on_exhausted = 'repeat', chunk_size = 8)")
    assert cur.unbounded
    with pytest.raises(mixsql.ProgrammingError, match="unbounded"):
        cur.fetchall()
    with pytest.raises(mixsql.ProgrammingError, match="max_epochs"):
        cur.fetch_arrow_table()
    assert len(cur.fetchmany(500)) == 500  # reading incrementally still works, past one epoch


def test_bounded_repeat_fetchall(cur):
    cur.execute("SELECT * FROM samples MIX BY language WITH (JavaScript 0.5, HTML 0.5) "
                "LIMIT 120 SAMPLES SETTINGS (on_exhausted = 'repeat', chunk_size = 8)")
    assert not cur.unbounded
    assert len(cur.fetchall()) == 120


def test_mix_sql_error_has_caret(cur):
    with pytest.raises(mixsql.ProgrammingError) as info:
        cur.execute("SELECT * FROM samples MIX BY langauge WITH (Python 1)")
    text = str(info.value)
    assert "^" in text and "language" in text


def test_executemany_rejects_mix(cur):
    with pytest.raises(mixsql.NotSupportedError):
        cur.executemany(MIX, [[1]])


def test_explain_mix_result_set(cur):
    cur.execute("EXPLAIN MIX " + MIX)
    assert cur.description is not None
    rows = cur.fetchall()
    assert len(rows) >= 3
    assert cur.rowcount == len(rows)
    text = " ".join(str(v) for r in rows for v in r)
    for lang in ("JavaScript", "HTML", "Python"):
        assert lang in text


# ------------------------------------------------------------------ registration through execute

def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_create_refresh_drop_show_sources(tmp_path):
    data = tmp_path / "data"
    _write_jsonl(data / "a.jsonl", [{"text": f"doc {i}", "meta": {"lang": "en" if i % 2 else "de"}}
                                    for i in range(20)])
    with mixsql.connect(tmp_path / "cat") as con:
        cur = con.cursor()
        cur.execute(f"CREATE SOURCE web FROM '{data}/*.jsonl' FORMAT jsonl WITH (lang = 'meta.lang')")
        assert cur.description is not None and cur.fetchall()
        cur.execute("SHOW SOURCES")
        names = [d[0] for d in cur.description]
        src = [dict(zip(names, r)) for r in cur.fetchall()]
        assert [s["name"] for s in src] == ["web"]
        assert cur.execute("SELECT lang, count(*) FROM samples GROUP BY 1 ORDER BY 1").fetchall() == \
            [("de", 10), ("en", 10)]
        _write_jsonl(data / "b.jsonl", [{"text": "new", "meta": {"lang": "fr"}}])
        cur.execute("REFRESH SOURCE web")
        assert cur.execute("SELECT count(*) FROM samples").fetchone() == (21,)
        with pytest.raises(mixsql.Error):
            cur.execute(f"CREATE SOURCE web FROM '{data}/*.jsonl'")
        cur.execute("DROP SOURCE web")
        assert cur.execute("SHOW SOURCES").fetchall() == []
