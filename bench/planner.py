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

``groups`` (:func:`groups`): mixtures over thousands of groups on a 1M-sample catalog
(``bench/.data/planner-groups-1000000/``: ``site`` with 10,000 values, ``domain`` with 100,000):

* ``first_chunk_s.explicit_<n>``: statement text -> first chunk (``MixStream.open`` on the
  training path + ``next_chunk``) for ``MIX BY site WITH (<n - 1 sites>, OTHER)``, n = 100,
  1,000, 10,000 (target: 10,000 under 2 s); ``first_chunk_s.discovered_100000``: the same for
  ``MIX BY domain WITH NATURAL`` (target: under 10 s). Medians of interleaved runs, with
  ``[min, max]`` in ``*_range`` (the machine is shared: noisy);
* ``first_chunk_cpu_s.*``: the process CPU time of the same span (median; all threads): less
  sensitive to other jobs on the machine than wall time;
* ``split_s.*``: plan / execute_plan / engine + first chunk of the median run;
* ``compose_pointers_per_s_10000`` (``draws``: composition only, the samples each group gives
  to each of chunks 0..1,999) and ``pointers_per_s_10000`` (``next_chunk``: the tables of chunks
  0..399, every group's consumption order set up on its first draw included) at 10,000 groups
  (target > 1M/s), per wall second and per CPU second (``*_per_cpu_s_*``);
* ``explain_s_10000``: ``EXPLAIN MIX`` of the 10,000-group statement with ``LIMIT 500000``;
* ``met``: each target judged on the wall-time median.

Run: ``python -m bench.planner`` (10M rows) or ``python -m bench.planner --quick`` (1M rows).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from mixsql.catalog import Catalog

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


def metadata_catalog(path: Path, rows: int, sources: list[str], columns: dict[str, tuple[str, str]]) -> Path:
    """Cached metadata-only catalog of ``rows`` samples in files of 10,000 (file i belongs to
    source i mod len(sources)); ``columns``: property -> (type, SQL of it over the row number i)."""
    if (path / "ready").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    cat = Catalog(path)
    per_file = 10_000
    n_files = (rows + per_file - 1) // per_file
    props = [(name, typ) for name, (typ, _) in columns.items()]
    names = ", ".join(columns)
    values = ", ".join(expr for _, expr in columns.values())
    with cat.write("bench planner corpus") as w:
        w.reserve_file_ids(n_files)
        for k, name in enumerate(sources):   # file i belongs to source i % len(sources)
            sid = w.next_source_id()
            seg = w.segment(props)
            seg.con.execute(f"""INSERT INTO files SELECT i + 1, {sid},
                '/bench/data/part-' || lpad(i::VARCHAR, 6, '0') || '.jsonl', 'none', 0, 0, 'bench', {per_file}, 0
                FROM range({n_files}) t(i) WHERE i % {len(sources)} = {k}""")
            seg.con.execute(f"""INSERT INTO sample_index (file_id, "row", loc_offset, loc_length, n_bytes, n_tokens, {names})
                SELECT (i // {per_file}) + 1, i % {per_file}, (i % {per_file}) * 700, 699, 600 + i % 200, 150 + i % 50,
                       {values}
                FROM range({rows}) t(i) WHERE (i // {per_file}) % {len(sources)} = {k}""")
            w.put_source({"source_id": sid, "name": name, "format": "jsonl", "pattern": f"/bench/{name}/*.jsonl",
                          "options": '{"text": "text"}', "property_types": [list(p) for p in props]}, seg)
    cat.close()
    (path / "ready").write_text("ok")
    return path


def build(rows: int) -> Path:
    langs = "[" + ", ".join(f"'{x}'" for x in LANGS) + "]"
    return metadata_catalog(DATA / f"planner-{rows}", rows, SOURCES, {
        "language": ("VARCHAR", f"{langs}[((hash(i) % {len(LANGS)}) + 1)::BIGINT]"),
        "quality": ("DOUBLE", "(hash(i * 7) % 1000) / 1000.0"),
    })


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


GROUP_ROWS = 1_000_000
SITES, DOMAINS = 10_000, 100_000


def build_groups(rows: int = GROUP_ROWS) -> Path:
    """Metadata-only catalog: ``site`` (``s00000``.., SITES values) and ``domain`` (DOMAINS values)."""
    return metadata_catalog(DATA / f"planner-groups-{rows}", rows, ["web"], {
        "site": ("VARCHAR", f"'s' || lpad((hash(i) % {SITES})::VARCHAR, 5, '0')"),
        "domain": ("VARCHAR", f"'d' || lpad((hash(i * 3) % {DOMAINS})::VARCHAR, 6, '0')"),
    })


def explicit_sql(n: int, limit: str = "") -> str:
    """``MIX BY site`` listing n - 1 sites (weights 1..7) and OTHER."""
    body = ", ".join(f"s{i:05d} {1 + i % 7}" for i in range(n - 1))
    return f"SELECT * FROM samples MIX BY site WITH ({body}, OTHER 1){limit}"


DISCOVERED_SQL = "SELECT * FROM samples MIX BY domain WITH NATURAL"


def _first_chunk(cat: Catalog, sql: str) -> dict:
    """Statement -> first chunk on the training path, with its split."""
    from mixsql.planner import execute_plan, plan
    from mixsql.stream import MixStream

    c0, t0 = time.process_time(), time.perf_counter()
    p = plan(cat, sql)
    t1 = time.perf_counter()
    pointers, spec = execute_plan(cat, p, user_columns=False, canonical=False)
    t2 = time.perf_counter()
    chunk = next(iter(MixStream(pointers, spec).chunks()))
    t3 = time.perf_counter()
    assert chunk.num_rows > 0
    return {"total": t3 - t0, "cpu": time.process_time() - c0, "plan": t1 - t0, "execute": t2 - t1,
            "engine": t3 - t2, "groups": len(spec.groups)}


def _rates(cat: Catalog, sql: str, chunks: dict | None = None) -> dict:
    """Pointers per second (wall and process CPU) of ``draws`` (composition only: the samples
    each group gives to chunk k) and of ``next_chunk`` (chunk tables), each from a fresh engine
    over chunks 0, 1, ... (``chunks``: how many of each; fewer when the stream ends first).
    Fixed work, not a fixed time: a loaded machine stretches the wall time, not what is timed."""
    from mixsql.stream import MixStream

    chunks = chunks or {"compose": 2_000, "tables": 400}
    stream = MixStream.open(cat, sql, user_columns=False)
    out = {}
    for name, count in chunks.items():
        eng = stream.engine()
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        for k in range(count):
            if name == "compose":
                d = eng.draws(k)
                if d is None:
                    break
                n += int(d.sum())
            else:
                t = eng.next_chunk()
                if t is None:
                    break
                n += t.num_rows
        out[name] = (n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9))
    return out


def _summary(values: list[float], digits: int = 3) -> tuple:
    """(median, [min, max]) rounded to ``digits`` (0: integers)."""
    r = (lambda x: int(round(x))) if digits == 0 else (lambda x: round(x, digits))
    return r(statistics.median(values)), [r(min(values)), r(max(values))]


def groups(repeat: int = 5) -> dict:
    """Mixtures over thousands of groups (see the module docstring)."""
    from mixsql.planner import explain

    cat = Catalog(build_groups(), read_only=True)
    try:
        load = os.getloadavg()[0]
        _first_chunk(cat, explicit_sql(10))   # warm: catalog pages, DuckDB's JSON reader
        cases = {f"explicit_{n}": explicit_sql(n) for n in (100, 1_000, 10_000)}
        cases["discovered_100000"] = DISCOVERED_SQL
        explain_sql = "EXPLAIN MIX " + explicit_sql(10_000, " LIMIT 500000")
        runs: dict = {k: [] for k in cases}
        rates: dict = {"compose": [], "tables": []}
        explains: list = []
        for _ in range(repeat):   # interleaved: a burst of load hits every case alike
            for k, sql in cases.items():
                runs[k].append(_first_chunk(cat, sql))
            for name, rate in _rates(cat, cases["explicit_10000"]).items():
                rates[name].append(rate)
            t0, c0 = time.perf_counter(), time.process_time()
            explain(cat, explain_sql)
            explains.append((time.perf_counter() - t0, time.process_time() - c0))
        out: dict = {"rows": GROUP_ROWS, "repeat": repeat, "load_average_at_start": round(load, 1),
                     "load_average_at_end": round(os.getloadavg()[0], 1), "first_chunk_s": {},
                     "first_chunk_s_range": {}, "first_chunk_cpu_s": {}, "split_s": {}, "groups": {}}
        for k, rs in runs.items():
            med = sorted(rs, key=lambda r: r["total"])[len(rs) // 2]
            out["first_chunk_s"][k], out["first_chunk_s_range"][k] = _summary([r["total"] for r in rs])
            out["first_chunk_cpu_s"][k] = round(statistics.median(r["cpu"] for r in rs), 3)
            out["split_s"][k] = {x: round(med[x], 3) for x in ("plan", "execute", "engine")}
            out["groups"][k] = med["groups"]
        for name, key in (("compose", "compose_pointers_per_s_10000"), ("tables", "pointers_per_s_10000")):
            out[key], out[key + "_range"] = _summary([w for w, _ in rates[name]], 0)
            out[key.replace("_per_s", "_per_cpu_s")] = round(statistics.median(c for _, c in rates[name]))
        out["explain_s_10000"], out["explain_s_10000_range"] = _summary([w for w, _ in explains])
        out["explain_cpu_s_10000"] = round(statistics.median(c for _, c in explains), 3)
        out["targets"] = {"explicit_10000_s": 2, "discovered_100000_s": 10, "compose_pointers_per_s_10000": 1_000_000}
        out["met"] = {"explicit_10000": out["first_chunk_s"]["explicit_10000"] < 2,
                      "discovered_100000": out["first_chunk_s"]["discovered_100000"] < 10,
                      "compose_10000": out["compose_pointers_per_s_10000"] > 1_000_000}
        return out
    finally:
        cat.close()


def run(quick: bool) -> dict:
    rows = 1_000_000 if quick else 10_000_000
    t0 = time.perf_counter()
    path = build(rows)
    build_s = time.perf_counter() - t0
    cat = Catalog(path, read_only=True)
    try:
        repeat = 3 if quick else 1
        out = {
            "bench": "planner", "catalog_rows": rows, "build_s": round(build_s, 2),
            "nested_ordered": measure(cat, SQL, repeat),
            "flat": measure(cat, SQL_PLAIN, repeat),
        }
    finally:
        cat.close()
    out["groups"] = g = groups()
    out["_notes"] = (f"groups: medians of {g['repeat']} interleaved runs ([min, max] in *_range) on a machine shared "
                     f"with other jobs (1-min load average {g['load_average_at_start']} at the start, "
                     f"{g['load_average_at_end']} at the end, on 2 cores): wall times are noisy, the *_cpu_* figures "
                     "(process CPU time) less so; compare ratios.")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--groups", action="store_true", help="only the thousands-of-groups figures")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved runs of the groups figures")
    a = ap.parse_args()
    print(json.dumps(groups(a.repeat) if a.groups else run(a.quick), indent=2))
