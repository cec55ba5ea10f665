"""PEP 249 driver: every method and error path on plain SQL over real catalog files."""
from __future__ import annotations

import datetime
import threading

import pyarrow as pa
import pytest

import mixsql
from mixsql import dbapi


@pytest.fixture
def con(tmp_path):
    c = mixsql.connect(tmp_path / "cat")
    yield c
    c.close()


@pytest.fixture
def cur(con):
    c = con.cursor()
    c.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b VARCHAR, c DOUBLE, d DATE)")
    c.executemany("INSERT INTO t VALUES (?, ?, ?, ?)",
                  [(i, f"s{i}", i / 2, datetime.date(2024, 1, 1 + i)) for i in range(10)])
    return c


# ------------------------------------------------------------------ module surface

def test_module_globals_and_exceptions():
    assert mixsql.apilevel == "2.0"
    assert mixsql.threadsafety in (0, 1, 2, 3)
    assert mixsql.paramstyle == "qmark"
    assert issubclass(mixsql.Error, Exception) and issubclass(mixsql.Warning, Exception)
    for name in ("InterfaceError", "DatabaseError"):
        assert issubclass(getattr(mixsql, name), mixsql.Error)
    for name in ("DataError", "OperationalError", "IntegrityError", "InternalError",
                 "ProgrammingError", "NotSupportedError"):
        assert issubclass(getattr(mixsql, name), mixsql.DatabaseError)
    assert mixsql.connect is dbapi.connect and mixsql.Cursor is dbapi.Cursor


def test_exceptions_are_connection_attributes(con):
    for name in ("Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
                 "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError"):
        assert getattr(con, name) is getattr(mixsql, name)


def test_type_objects_and_constructors():
    assert mixsql.STRING == "VARCHAR" and "VARCHAR" == mixsql.STRING
    assert mixsql.NUMBER == "BIGINT" and mixsql.NUMBER == "DECIMAL(10,2)" and mixsql.NUMBER != "VARCHAR"
    assert mixsql.DATETIME == "TIMESTAMP" and mixsql.DATETIME == "DATE"
    assert mixsql.BINARY == "BLOB" and mixsql.ROWID != "BLOB"
    assert mixsql.Date(2024, 1, 2) == datetime.date(2024, 1, 2)
    assert mixsql.Time(1, 2, 3) == datetime.time(1, 2, 3)
    assert mixsql.Timestamp(2024, 1, 2, 3, 4, 5) == datetime.datetime(2024, 1, 2, 3, 4, 5)
    assert isinstance(mixsql.DateFromTicks(0), datetime.date)
    assert isinstance(mixsql.TimeFromTicks(0), datetime.time)
    assert isinstance(mixsql.TimestampFromTicks(0), datetime.datetime)
    assert mixsql.Binary(b"ab") == b"ab"


# ------------------------------------------------------------------ connection

def test_connect_creates_catalog_and_read_only_needs_one(tmp_path):
    with pytest.raises(mixsql.OperationalError, match="no mixsql catalog"):
        mixsql.connect(tmp_path / "missing", read_only=True)
    with mixsql.connect(tmp_path / "new") as c:
        assert (tmp_path / "new" / "snapshots").is_dir()
        assert c.cursor().execute("SELECT count(*) FROM samples").fetchone() == (0,)
    with mixsql.connect(tmp_path / "new", read_only=True) as c:
        with pytest.raises(mixsql.Error):
            c.cursor().execute("CREATE TABLE x (a INT)")


def test_commit_and_rollback(con, cur):
    cur.execute("BEGIN")
    cur.execute("DELETE FROM t")
    con.rollback()
    assert cur.execute("SELECT count(*) FROM t").fetchone() == (10,)
    cur.execute("BEGIN")
    cur.execute("DELETE FROM t WHERE a < 5")
    con.commit()
    other = con.cursor()
    assert other.execute("SELECT count(*) FROM t").fetchone() == (5,)
    con.rollback()  # no transaction open: fine
    con.commit()


def test_connection_context_manager_and_close(tmp_path):
    with mixsql.connect(tmp_path / "c") as c:
        cur = c.cursor()
        cur.execute("CREATE TABLE k (a INT)")
    assert c.closed and cur.closed
    for fn in (c.cursor, c.commit, c.rollback):
        with pytest.raises(mixsql.InterfaceError, match="connection is closed"):
            fn()
    with pytest.raises(mixsql.InterfaceError):
        cur.execute("SELECT 1")
    c.close()  # closing twice is allowed
    with mixsql.connect(tmp_path / "c") as c2:  # user tables belong to their connection, not the catalog
        with pytest.raises(mixsql.ProgrammingError, match="does not exist"):
            c2.execute("SELECT count(*) FROM k")


# ------------------------------------------------------------------ cursor: plain SQL

def test_description_rowcount_and_fetches(cur):
    cur.execute("SELECT a, b, c, d FROM t WHERE a >= ? ORDER BY a", [2])
    assert [d[0] for d in cur.description] == ["a", "b", "c", "d"]
    assert all(len(d) == 7 for d in cur.description)
    assert cur.description[0][1] == mixsql.NUMBER
    assert cur.description[1][1] == mixsql.STRING
    assert cur.description[3][1] == mixsql.DATETIME
    assert cur.rowcount == -1
    assert cur.fetchone() == (2, "s2", 1.0, datetime.date(2024, 1, 3))
    assert cur.arraysize == 1
    assert len(cur.fetchmany()) == 1
    cur.arraysize = 3
    assert [r[0] for r in cur.fetchmany()] == [4, 5, 6]
    assert [r[0] for r in cur.fetchmany(2)] == [7, 8]
    assert cur.fetchall() == [(9, "s9", 4.5, datetime.date(2024, 1, 10))]
    assert cur.fetchone() is None and cur.fetchmany(5) == [] and cur.fetchall() == []


def test_named_and_numbered_parameters(cur):
    assert cur.execute("SELECT b FROM t WHERE a = $1", [3]).fetchall() == [("s3",)]
    assert cur.execute("SELECT b FROM t WHERE a = $x", {"x": 4}).fetchall() == [("s4",)]


def test_executemany_rowcount_and_dml(cur):
    cur.executemany("INSERT INTO t (a, b) VALUES (?, ?)", [(100, "x"), (101, "y"), (102, "z")])
    assert cur.rowcount == 3
    assert cur.description is None
    cur.execute("UPDATE t SET b = 'u' WHERE a >= 100")
    assert (cur.description, cur.rowcount) == (None, 3)
    cur.executemany("INSERT INTO t (a) VALUES (?)", [])
    assert cur.description is None


def test_iteration_and_execute_returns_cursor(cur):
    assert cur.execute("SELECT a FROM t ORDER BY a LIMIT 3") is cur
    assert [r for r in cur] == [(0,), (1,), (2,)]


def test_fetch_arrow_table_and_chunks(cur):
    table = cur.execute("SELECT a, b FROM t ORDER BY a").fetch_arrow_table()
    assert isinstance(table, pa.Table) and table.num_rows == 10 and table.column_names == ["a", "b"]
    cur.execute("SELECT a FROM t ORDER BY a")
    assert cur.fetchone() == (0,)
    rest = cur.fetch_arrow_table()
    assert rest.column("a").to_pylist() == list(range(1, 10))
    parts = list(cur.execute("SELECT * FROM range(100000)").chunks())
    assert all(isinstance(p, pa.Table) for p in parts)
    assert sum(p.num_rows for p in parts) == 100000


def test_optional_methods(cur):
    cur.setinputsizes([10])
    cur.setoutputsize(100)
    cur.setoutputsize(100, 0)
    with pytest.raises(mixsql.NotSupportedError):
        cur.callproc("anything", [1])
    with pytest.raises(mixsql.NotSupportedError):
        cur.nextset()
    assert cur.lastrowid is None and cur.connection is not None


# ------------------------------------------------------------------ error paths

def test_fetch_without_result_set(con):
    cur = con.cursor()
    for fn in (cur.fetchone, cur.fetchall, cur.fetchmany, cur.fetch_arrow_table):
        with pytest.raises(mixsql.ProgrammingError, match="no result set"):
            fn()
    assert cur.description is None and cur.rowcount == -1


def test_duckdb_errors_map_to_pep249_classes_with_duckdb_message(cur):
    with pytest.raises(mixsql.ProgrammingError, match='syntax error at or near "SELEC"'):
        cur.execute("SELEC 1")
    with pytest.raises(mixsql.ProgrammingError, match="nope"):
        cur.execute("SELECT * FROM nope")
    with pytest.raises(mixsql.IntegrityError, match="(?i)duplicate key"):
        cur.execute("INSERT INTO t (a) VALUES (1)")
    with pytest.raises(mixsql.DataError, match="(?i)conver"):
        cur.execute("SELECT 'abc'::INTEGER")
    with pytest.raises(mixsql.ProgrammingError):
        cur.execute("SELECT ?", [1, 2])
    # still usable afterwards
    assert cur.execute("SELECT 1").fetchone() == (1,)


def test_bad_arguments(cur):
    with pytest.raises(mixsql.InterfaceError):
        cur.execute(b"SELECT 1")  # type: ignore[arg-type]
    cur.execute("SELECT 1")
    with pytest.raises(mixsql.InterfaceError):
        cur.fetchmany(-1)


def test_closed_cursor(cur):
    cur.close()
    assert cur.closed
    for call in (lambda: cur.execute("SELECT 1"), lambda: cur.executemany("SELECT ?", [[1]]),
                 cur.fetchone, cur.fetchall, cur.fetchmany, cur.fetch_arrow_table,
                 lambda: cur.callproc("p"), lambda: cur.setinputsizes([]),
                 lambda: cur.setoutputsize(1), lambda: iter(cur)):
        with pytest.raises(mixsql.InterfaceError, match="cursor is closed"):
            call()
    cur.close()


def test_cursor_context_manager(con):
    with con.cursor() as c:
        assert c.execute("SELECT 2").fetchone() == (2,)
    assert c.closed


def test_cancel_interrupts_running_query(con):
    cur = con.cursor()
    timer = threading.Timer(0.3, cur.cancel)
    timer.start()
    try:
        with pytest.raises(mixsql.OperationalError, match="(?i)interrupt"):
            cur.execute("SELECT count(*) FROM range(1000000000000) a, range(10) b WHERE a.range % 7 = b.range")
    finally:
        timer.cancel()
    assert cur.execute("SELECT 3").fetchone() == (3,)


def test_map_duckdb_error_keeps_message():
    import duckdb

    err = dbapi.map_duckdb_error(duckdb.ConstraintException("boom"))
    assert isinstance(err, mixsql.IntegrityError) and str(err) == "boom"
    assert isinstance(dbapi.map_duckdb_error(duckdb.InterruptException("x")), mixsql.OperationalError)
    assert isinstance(dbapi.map_duckdb_error(duckdb.NotImplementedException("x")), mixsql.NotSupportedError)
    assert isinstance(dbapi.map_duckdb_error(duckdb.InternalException("x")), mixsql.InternalError)
    assert isinstance(dbapi.map_duckdb_error(duckdb.IOException("x")), mixsql.OperationalError)


# ------------------------------------------------------------------ catalog views and helpers

def test_samples_view_through_cursor(langs_catalog):
    with mixsql.connect(langs_catalog, read_only=True) as c:
        cur = c.cursor()
        cur.execute("SELECT language, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1")
        assert cur.fetchall() == [("HTML", 30), ("JavaScript", 50), ("Python", 20)]
        assert [d[0] for d in cur.description] == ["language", "n"]


def test_split_statements():
    sql = "SELECT ';' AS a; -- c;\n SELECT 2 /* ; */;\n\n; SELECT 'it''s;'"
    assert dbapi.split_statements(sql) == ["SELECT ';' AS a", "-- c;\n SELECT 2 /* ; */", "SELECT 'it''s;'"]
    assert dbapi.split_statements("  -- only a comment\n") == []


def test_arrow_type_codes():
    assert dbapi.arrow_type_code(pa.int64()) == "BIGINT"
    assert dbapi.arrow_type_code(pa.string()) == "VARCHAR"
    assert dbapi.arrow_type_code(pa.list_(pa.int32())) == "INTEGER[]"
    assert dbapi.arrow_type_code(pa.decimal128(10, 2)) == "DECIMAL(10,2)"
    desc = dbapi.describe_arrow(pa.schema([("x", pa.decimal128(10, 2))]))
    assert desc == [("x", "DECIMAL(10,2)", None, None, 10, 2, None)]


def test_statements_without_rows_have_no_description_and_refuse_fetches(tmp_path):
    """PEP 249: description is None after DDL/DML, rowcount counts changed rows, fetch raises."""
    with mixsql.connect(tmp_path / "cat") as con:
        cur = con.cursor()
        expected = [("CREATE TABLE t (a INT)", -1), ("INSERT INTO t VALUES (1), (2), (3)", 3),
                    ("UPDATE t SET a = a + 1 WHERE a > 1", 2), ("DELETE FROM t WHERE a = 1", 1),
                    ("CREATE TABLE u AS SELECT * FROM t", 2), ("DROP TABLE u", -1)]
        for sql, changed in expected:
            cur.execute(sql)
            assert (cur.description, cur.rowcount) == (None, changed), sql
            for fetch in (cur.fetchone, cur.fetchall, lambda: cur.fetchmany(2)):
                with pytest.raises(mixsql.ProgrammingError, match="returned no rows"):
                    fetch()
        cur.executemany("INSERT INTO t VALUES (?)", [(7,), (8,)])
        assert (cur.description, cur.rowcount) == (None, 2)
        assert cur.execute("INSERT INTO t VALUES (9) RETURNING a").fetchall() == [(9,)]
        assert cur.execute("SELECT count(*)::BIGINT AS Count FROM t").fetchall() == [(5,)]
        assert [d[0] for d in cur.description] == ["Count"]
