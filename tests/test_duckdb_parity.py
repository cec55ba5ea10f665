"""Plain DuckDB SQL through mixsql returns exactly what DuckDB returns (issue 3's parity check).

Every statement runs twice, in lock-step: through a mixsql cursor on a catalog, and through a
raw DuckDB connection on an identical database. Rows, column names and errors must agree; where
DuckDB answers DDL/DML with a status row (``Count`` / ``Success``), mixsql follows PEP 249: no
``description`` and ``rowcount`` = the rows changed.
"""
import duckdb
import pytest

import mixsql

SETUP = [
    "CREATE TABLE docs (id INTEGER PRIMARY KEY, lang VARCHAR, score DOUBLE, tags VARCHAR[], meta STRUCT(src VARCHAR, n INTEGER))",
    "INSERT INTO docs VALUES (1, 'en', 0.9, ['a', 'b'], {'src': 'web', 'n': 3}), (2, 'de', 0.4, [], {'src': 'code', 'n': 1}),"
    " (3, 'en', NULL, ['c'], {'src': 'web', 'n': 7}), (4, 'fr', 0.7, NULL, {'src': 'books', 'n': 2})",
    "CREATE TABLE scores (doc_id INTEGER, judge VARCHAR, value DOUBLE)",
    "INSERT INTO scores SELECT i % 4 + 1, 'j' || (i % 3), i / 10 FROM range(20) t(i)",
    "CREATE VIEW en_docs AS SELECT * FROM docs WHERE lang = 'en'",
]

STATEMENTS = [
    ("SELECT * FROM docs ORDER BY id", None),
    ("SELECT lang, count(*) AS n, avg(score) FROM docs GROUP BY ALL ORDER BY ALL", None),
    ("SELECT d.id, s.judge, s.value FROM docs d JOIN scores s ON s.doc_id = d.id ORDER BY ALL", None),
    ("SELECT d.id, s.value FROM docs d LEFT JOIN scores s ON s.doc_id = d.id AND s.judge = 'j9' ORDER BY ALL", None),
    ("SELECT id, score, rank() OVER (ORDER BY score DESC NULLS LAST) AS r, "
     "sum(score) OVER (PARTITION BY lang ORDER BY id ROWS UNBOUNDED PRECEDING) FROM docs ORDER BY id", None),
    ("SELECT doc_id, judge, value FROM scores QUALIFY row_number() OVER (PARTITION BY doc_id ORDER BY value DESC) = 1 ORDER BY doc_id", None),
    ("WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 5) SELECT sum(n) FROM t", None),
    ("SELECT id, meta.src, len(tags), list_transform(coalesce(tags, []), x -> upper(x)) FROM docs ORDER BY id", None),
    ("SELECT * FROM docs WHERE lang = ? AND coalesce(score, 0) >= ? ORDER BY id", ["en", 0.5]),
    ("SELECT $1::INTEGER + 1, $2 AS name", [41, "mix"]),
    ("SELECT * FROM en_docs ORDER BY id", None),
    ("SELECT unnest(tags) AS tag, id FROM docs ORDER BY ALL", None),
    ("PIVOT scores ON judge USING sum(value) GROUP BY doc_id ORDER BY doc_id", None),
    ("UPDATE docs SET score = 0.5 WHERE score IS NULL", None),
    ("DELETE FROM scores WHERE value > 1.5", None),
    ("SELECT count(*), sum(value) FROM scores", None),
    ("INSERT INTO docs (id, lang) VALUES (5, 'es') RETURNING id, lang", None),
    ("SELECT lang, string_agg(id::VARCHAR, ',' ORDER BY id) FROM docs GROUP BY lang ORDER BY lang", None),
    ("SELECT id FROM docs EXCEPT SELECT doc_id FROM scores ORDER BY 1", None),
    ("SELECT 'a mix of words' AS mix, 'source' AS source", None),  # MIX/SOURCE as plain words
    ("EXPLAIN SELECT * FROM docs", None),
    ("DESCRIBE docs", None),
    ("ALTER TABLE docs ADD COLUMN extra INTEGER DEFAULT 7", None),
    ("SELECT id, extra FROM docs ORDER BY id", None),
    ("SELECT * FROM no_such_table", None),                      # an error on both sides
    ("SELECT id FROM docs WHERE", None),                        # a syntax error on both sides
    ("DROP VIEW en_docs", None),
]


def _run(cursor, sql, params):
    try:
        cursor.execute(sql, params) if params is not None else cursor.execute(sql)
        if cursor.description is None:   # PEP 249: no rows; rowcount = rows changed (-1: not counted)
            return ("no rows", cursor.rowcount, None)
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
        if isinstance(cursor, duckdb.DuckDBPyConnection) and not sql.startswith(("SELECT", "WITH", "PIVOT", "DESCRIBE")):
            # raw DuckDB answers DDL/DML with a status row, which PEP 249 reports as no rows
            if names == ["Count"]:
                return ("no rows", rows[0][0], None)
            if names == ["Success"]:
                return ("no rows", -1, None)
        return ("rows", names, rows)
    except (duckdb.Error, mixsql.Error) as exc:
        return ("error", None, str(exc).splitlines()[0])


def test_plain_sql_matches_duckdb(tmp_path):
    con = mixsql.connect(str(tmp_path / "cat"))
    ours = con.cursor()
    raw = duckdb.connect(str(tmp_path / "raw.duckdb"))
    for sql in SETUP:
        ours.execute(sql)
        raw.execute(sql)
    for sql, params in STATEMENTS:
        mine = _run(ours, sql, params)
        theirs = _run(raw, sql, params)
        if sql.startswith("EXPLAIN"):  # plans carry no stable row values; the shape must match
            assert mine[0] == theirs[0] == "rows" and mine[1] == theirs[1], sql
            continue
        if theirs[0] == "error":
            assert mine[0] == "error", sql
            assert theirs[2] in mine[2], (sql, mine[2], theirs[2])  # DuckDB's message is kept
            continue
        assert mine == theirs, sql
    con.close()
    raw.close()


@pytest.mark.parametrize("sql", ["SELECT ?", "SELECT ? + ?"])
def test_parameter_count_errors_match(tmp_path, sql):
    cur = mixsql.connect(str(tmp_path / "c")).cursor()
    with pytest.raises(mixsql.ProgrammingError):
        cur.execute(sql, [1, 2, 3])
