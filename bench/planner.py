"""Planner overhead on a large metadata-only catalog.

Builds (once, cached under ``bench/.data/planner-<rows>/``) a catalog whose ``sample_index``
holds ``rows`` samples inserted directly with DuckDB (no data files: planning never reads
them), then times, for a nested MIX statement with OTHER, multi-value groups and ORDER BY:

* ``query_s``: DuckDB running the planned query to Arrow (the relational work);
* ``plan_s``: ``planner.plan`` (parse, validation, binding probes, query build);
* ``execute_s``: ``planner.execute_plan`` (query + data checks + weight resolution);
* ``overhead_s = plan_s + execute_s - query_s``: what mixsql adds beyond the DuckDB query;
* ``execute_pointers_s``: ``execute_plan(user_columns=False, canonical=False)``, the training
  path (pointer columns only, rows left for the engine to order).

Run: ``python -m bench.planner`` (10M rows) or ``python -m bench.planner --quick`` (1M rows).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from mixsql.catalog import Catalog, bump_snapshot, create_samples_view

DATA = Path(__file__).resolve().parent / ".data"
SQL = """SELECT * FROM samples
WHERE quality > 0.1
MIX BY source WITH (
    (web, c4) 0.6,
    code 0.25 MIX BY language WITH (python 0.5, javascript 0.3, OTHER 0.2),
    OTHER 0.15
)
ORDER BY quality DESC
LIMIT 2e9 TOKENS
SETTINGS (seed = 7, chunk_size = 512, unit = 'tokens', on_exhausted = 'repeat', max_epochs = 4)"""
SQL_PLAIN = "SELECT * FROM samples MIX BY language WITH (en 0.5, de 0.2, python 0.1, javascript 0.1, OTHER 0.1)"
SOURCES = ["web", "c4", "code", "books", "arxiv"]
LANGS = ["en", "de", "fr", "python", "javascript", "go"]


def build(rows: int) -> Path:
    path = DATA / f"planner-{rows}"
    if (path / "ready").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    cat = Catalog(path)
    con = cat.con
    per_file = 10_000
    n_files = (rows + per_file - 1) // per_file
    con.execute("BEGIN")
    con.execute("ALTER TABLE sample_index ADD COLUMN language VARCHAR")
    con.execute("ALTER TABLE sample_index ADD COLUMN quality DOUBLE")
    for i, name in enumerate(SOURCES, start=1):
        con.execute("INSERT INTO sources (source_id, name, format, pattern, options, properties) "
                    "VALUES (?, ?, 'jsonl', ?, '{\"text\": \"text\"}', '{}')", [i, name, f"/bench/{name}/*.jsonl"])
    con.execute(f"""INSERT INTO files SELECT i + 1, (i % {len(SOURCES)}) + 1,
        '/bench/data/part-' || lpad(i::VARCHAR, 6, '0') || '.jsonl', 'none', 0, 0, 'bench', {per_file}, 0
        FROM range({n_files}) t(i)""")
    langs = "[" + ", ".join(f"'{x}'" for x in LANGS) + "]"
    con.execute(f"""INSERT INTO sample_index (file_id, "row", loc_offset, loc_length, n_bytes, n_tokens, language, quality)
        SELECT (i // {per_file}) + 1, i % {per_file}, (i % {per_file}) * 700, 699, 600 + i % 200, 150 + i % 50,
               {langs}[((hash(i) % {len(LANGS)}) + 1)::BIGINT], (hash(i * 7) % 1000) / 1000.0
        FROM range({rows}) t(i)""")
    create_samples_view(con)
    bump_snapshot(con)
    con.execute("COMMIT")
    con.execute("CHECKPOINT")
    cat.close()
    (path / "ready").write_text("ok")
    return path


def _time(fn, repeat: int):
    out, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out), result


def measure(cat: Catalog, sql: str, repeat: int) -> dict:
    from mixsql.planner import execute_plan, plan

    plan_s, p = _time(lambda: plan(cat, sql), repeat)
    def query():  # touch a column: DuckDB's Arrow result may materialise on first access
        t = cat.con.sql(p.sql).to_arrow_table()
        t.column("__mix_file_id").to_numpy()
        return t

    query_s, table = _time(query, repeat)
    execute_s, (ptrs, spec) = _time(lambda: execute_plan(cat, p), repeat)
    execute_ptr_s, _ = _time(lambda: execute_plan(cat, p, user_columns=False, canonical=False), repeat)
    return {
        "rows_selected": ptrs.num_rows, "groups": len(spec.groups),
        "plan_s": round(plan_s, 4), "query_s": round(query_s, 4), "execute_s": round(execute_s, 4),
        "overhead_s": round(plan_s + execute_s - query_s, 4), "execute_pointers_s": round(execute_ptr_s, 4),
    }


def run(quick: bool) -> dict:
    rows = 1_000_000 if quick else 10_000_000
    t0 = time.perf_counter()
    path = build(rows)
    build_s = time.perf_counter() - t0
    cat = Catalog(path, read_only=True)
    try:
        repeat = 3 if quick else 1
        return {
            "bench": "planner", "catalog_rows": rows, "build_s": round(build_s, 2),
            "nested_ordered": measure(cat, SQL, repeat),
            "flat": measure(cat, SQL_PLAIN, repeat),
        }
    finally:
        cat.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(run(ap.parse_args().quick), indent=2))
