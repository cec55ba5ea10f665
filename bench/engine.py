"""Mixture-engine figures: statement to first chunk, steady-state composition, restore cost.

``run(quick)`` reports:

* ``first_chunk_s_{1M,10M[,100M]}``  statement text -> first chunk through the real path
  (``MixStream.open``: planner + DuckDB query over a metadata-only catalog built directly into
  the catalog schema under ``bench/.data/engine/``, then ``MixEngine`` + ``next_chunk``), with
  the split ``plan_execute_s_*`` (planner + DuckDB) and ``engine_first_chunk_s_*`` (engine
  construction + first chunk, from the pointer table). 100M only when not quick. This is the
  training path (``MixStream.open(..., user_columns=False)``: pointers only);
  ``first_chunk_full_s_*`` is the DB-API path (``user_columns=True``: the whole ``SELECT *``), 1M
  and 10M only. ``*_cpu_s_*``: process CPU time of the same span (the machine is shared).
* ``pointers_per_s``  steady-state ``next_chunk`` rate (chunk 512, 3 groups, full chunk
  tables) and ``compose_pointers_per_s`` (``skip_chunk``: composition only). Target > 1M/s.
* ``restore_s_chunk0`` vs ``restore_s_chunk100000``: engine construction from a state dict +
  first chunk after it (``load_state_dict_s_*`` alone). Target: equal (O(groups), no replay).

* ``ordered_first_chunk_s_*`` (+ ``_cpu_s_``, ``ordered_plan_execute_s_*``): the same with
  ``ORDER BY n_tokens DESC, lang`` (1M, 10M).

Every figure is the median of 5 interleaved runs, ``*_range`` its [min, max].

Run: ``python -m bench.engine [--quick | --ordered]``.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / ".data" / "engine"
SQL = ("SELECT * FROM samples MIX BY lang WITH (en 0.5, de 0.3, fr 0.2) "
       "SETTINGS (chunk_size = 512, seed = 1, on_exhausted = 'repeat')")
SQL_ORDERED = ("SELECT * FROM samples MIX BY lang WITH (en 0.5, de 0.3, fr 0.2) ORDER BY n_tokens DESC, lang "
               "SETTINGS (chunk_size = 512, seed = 1, on_exhausted = 'repeat')")
ROWS_PER_FILE = 10_000


def build_catalog(n: int) -> Path:
    """Metadata-only catalog of n samples (3 languages, 10k samples per file), cached."""
    from mixsql.catalog import Catalog

    path = DATA / f"cat_{n}"
    if (path / "done").exists():
        return path
    import shutil
    shutil.rmtree(path, ignore_errors=True)
    cat = Catalog(path)
    nf = -(-n // ROWS_PER_FILE)
    with cat.write("bench engine corpus") as w:
        sid, first = w.next_source_id(), w.reserve_file_ids(nf)
        seg = w.segment([("lang", "VARCHAR")])
        seg.con.execute(f"INSERT INTO files SELECT i + {first}, {sid}, '/data/web/part-' || lpad(i::VARCHAR, 6, '0') "
                        f"|| '.jsonl', 'none', {ROWS_PER_FILE * 200}, 0, 'bench', {ROWS_PER_FILE}, "
                        f"{ROWS_PER_FILE * 199} FROM range({nf}) t(i)")
        seg.con.execute(f"INSERT INTO sample_index SELECT (i // {ROWS_PER_FILE} + {first})::INTEGER, "
                        f"i % {ROWS_PER_FILE}, (i % {ROWS_PER_FILE}) * 200, 199, 199, 40 + i % 23, "
                        "CASE WHEN hash(i) % 10 < 5 THEN 'en' WHEN hash(i) % 10 < 8 THEN 'de' ELSE 'fr' END "
                        f"FROM range({n}) t(i)")
        w.put_source({"source_id": sid, "name": "web", "format": "jsonl", "pattern": "/data/*.jsonl",
                      "options": "{}", "property_types": [["lang", "VARCHAR"]]}, seg)
    cat.close()
    (path / "done").write_text("ok")
    return path


def first_chunk(n: int) -> dict:
    from mixsql.engine import MixEngine
    from mixsql.stream import MixStream

    cat = build_catalog(n)
    tag = f"{n // 1_000_000}M"
    out = {}
    if n <= 10_000_000:
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        full = MixStream.open(cat, SQL, user_columns=True)
        assert full.engine().next_chunk().num_rows == 512
        out[f"first_chunk_full_s_{tag}"] = round(time.perf_counter() - t0, 3)
        out[f"first_chunk_full_cpu_s_{tag}"] = round(time.process_time() - c0, 3)
        del full
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    s = MixStream.open(cat, SQL, user_columns=False)
    t1 = time.perf_counter()
    eng = s.engine()
    c = eng.next_chunk()
    t2, c2 = time.perf_counter(), time.process_time()
    assert c is not None and c.num_rows == 512
    # engine alone once more (pointer table already in memory)
    t3 = time.perf_counter()
    MixEngine(s.pointers, s.spec).next_chunk()
    t4 = time.perf_counter()
    out.update({f"first_chunk_s_{tag}": round(t2 - t0, 3), f"first_chunk_cpu_s_{tag}": round(c2 - c0, 3),
                f"plan_execute_s_{tag}": round(t1 - t0, 3), f"engine_first_chunk_s_{tag}": round(t4 - t3, 3)})
    return out, s


def ordered_first_chunk(n: int) -> dict:
    """Statement -> first chunk with ORDER BY (training path: pointers only)."""
    from mixsql.stream import MixStream

    cat = build_catalog(n)
    tag = f"{n // 1_000_000}M"
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    s = MixStream.open(cat, SQL_ORDERED, user_columns=False)
    t1, c1 = time.perf_counter(), time.process_time()
    c = s.engine().next_chunk()
    t2, c2 = time.perf_counter(), time.process_time()
    assert c is not None and c.num_rows == 512
    return {f"ordered_first_chunk_s_{tag}": round(t2 - t0, 3), f"ordered_first_chunk_cpu_s_{tag}": round(c2 - c0, 3),
            f"ordered_plan_execute_s_{tag}": round(t1 - t0, 3), f"ordered_plan_execute_cpu_s_{tag}": round(c1 - c0, 3)}


def steady(s, chunks: int) -> dict:
    from mixsql.engine import MixEngine

    eng = MixEngine(s.pointers, s.spec)
    for _ in range(20):
        eng.next_chunk()
    t0 = time.perf_counter()
    rows = 0
    for _ in range(chunks):
        rows += eng.next_chunk().num_rows
    t1 = time.perf_counter()
    for _ in range(chunks):
        eng.skip_chunk()
    t2 = time.perf_counter()
    return {"pointers_per_s": int(rows / (t1 - t0)), "compose_pointers_per_s": int(chunks * 512 / (t2 - t1))}


def restore(s) -> dict:
    from mixsql.engine import MixEngine

    eng = MixEngine(s.pointers, s.spec)
    st0 = json.dumps(eng.state_dict())
    t0 = time.perf_counter()
    for _ in range(100_000):
        eng.skip_chunk()
    skip_s = time.perf_counter() - t0
    assert eng.next_index == 100_000
    st1 = json.dumps(eng.state_dict())
    ref = eng.next_chunk()
    out = {"state_bytes_chunk100000": len(st1), "reach_chunk100000_by_skipping_s": round(skip_s, 2)}
    for tag, st in (("chunk0", st0), ("chunk100000", st1)):   # one measurement; run() takes medians
        gc.collect()
        t0 = time.perf_counter()
        e = MixEngine(s.pointers, s.spec, state=json.loads(st))
        c = e.next_chunk()
        t1 = time.perf_counter()
        e.load_state_dict(json.loads(st))
        t2 = time.perf_counter()
        if tag == "chunk100000":
            assert c.equals(ref)
        out[f"restore_s_{tag}"] = round(t1 - t0, 4)
        out[f"load_state_dict_s_{tag}"] = round(t2 - t1, 6)
    return out


REPS = 5


def _median_of(runs: list[dict]) -> dict:
    """Each numeric figure's median over repeated runs, with its spread as ``<figure>_range``."""
    from .results import spread

    out = {}
    for key, first in runs[0].items():
        sp = spread(r[key] for r in runs)
        if isinstance(first, int):
            out[key] = int(sp["median"])
            out[f"{key}_range"] = [int(sp["min"]), int(sp["max"])]
        else:
            digits = 6 if sp["median"] < 0.01 else 3
            out[key] = round(sp["median"], digits)
            out[f"{key}_range"] = [round(sp["min"], digits), round(sp["max"], digits)]
    return out


def run(quick: bool = False, reps: int = REPS) -> dict:
    """Every figure is the median of ``reps`` runs, interleaved over sizes and measurements so a
    burst of load on the shared machine hits each alike; ``*_range`` is [min, max]."""
    res = {"cores": os.cpu_count(), "statement": SQL, "reps": reps,
           "source": "metadata-only catalogs built via DuckDB into mixsql's catalog schema; real planner"}
    sizes = [1_000_000, 10_000_000] + ([] if quick else [100_000_000])
    for n in sizes:
        build_catalog(n)
    runs: list[dict] = []
    for _ in range(reps):
        figures: dict = {}
        keep = None
        for n in sizes:
            r, s = first_chunk(n)
            figures.update(r)
            if n == 1_000_000:
                keep = s
            del s
            gc.collect()
            if n <= 10_000_000:
                figures.update(ordered_first_chunk(n))
        figures.update(steady(keep, 2000 if quick else 10000))
        figures.update(restore(keep))
        runs.append(figures)
        del keep
        gc.collect()
    res.update(_median_of(runs))
    return res


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--ordered" in argv:   # ORDER BY figures only (1M, 10M)
        print(json.dumps({**ordered_first_chunk(1_000_000), **ordered_first_chunk(10_000_000)}, indent=2))
        return
    print(json.dumps(run("--quick" in argv), indent=2))


if __name__ == "__main__":
    main()
