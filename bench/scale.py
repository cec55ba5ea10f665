"""``python -m bench scale [--quick]``: one selection per node at pretraining scale.

A metadata-only catalog (index rows only, no data files: ``bench.planner.metadata_catalog``,
cached under ``bench/.data/scale-<rows>/``) with realistic properties (source, language,
quality, license, token counts) is queried with a WHERE clause and a nested mixture, through the
training path (``MixStream.open_cached``: plan once per node, publish the selection to the node's
cache, memory-map it). Measured, each in a fresh process unless said otherwise:

* ``statement_to_first_chunk_cold_s``: statement text -> first chunk with an empty node cache
  (imports + plan + the catalog's row index + DuckDB query + publish the packed selection + map +
  chunk 0); ``statement_to_first_chunk_s_row_index_present``: the same for a second statement
  over the same catalog snapshot (the node's row index is shared, :mod:`mixsql.rowindex`);
* ``restart_to_first_chunk_warm_s``: a restarted process with a warm cache resumes from a
  checkpoint at chunk 1,000,000 and builds its first chunk (imports + map + engine + chunk;
  ``restart_after_imports_s`` without the Python imports), median of several restarts;
* ``chunk_k_direct_ms``: time of ``engine.chunk(k)`` for k = 0, 1e3, 1e5, 1e7 (interleaved rounds,
  median with range), and chunk 1e7 on engines that computed nothing before (``fresh``);
  ``flat_in_k``: whether chunk 1e7 costs under 3x chunk 0;
* node memory with 1 rank x 8 DataLoader-like worker processes (forked from the rank, as
  DataLoader forks its workers), each composing and materialising 64 of its own chunks: PSS
  summed over the node's processes (shared pages counted once), against the same 9 processes
  running the same statement restricted to 1/500 of the rows (``"row" < 20``: same imports,
  catalog handles and code paths) as baseline; PSS is split by mapping (``/proc/<pid>/smaps``):
  anonymous, the selection file's, the row index's, the rest (code, libraries);
  ``selection_ram_bytes_per_sample`` = (anonymous + selection-file PSS - the baseline's) /
  (selected samples - baseline's selected samples): what each selected sample adds. The row
  index's resident pages depend on which rows the chunks read, not on the selection's size
  (``node_pss_row_index_pages_mb``). The selection is a file mapping: pages are resident once read, so over a whole epoch it
  grows towards the file's size, which ``selection_file_bytes_per_sample`` reports (page cache,
  shared by every process of the node). The catalog's row index (locations, 20 B per catalog row,
  shared by every statement over the snapshot) is reported on its own: its pages are read per
  chunk like the data files' and are evictable page cache;
  ``row_index_bytes_per_selected_sample_if_resident`` is the bound if all of them stayed.

Kept out of CI (minutes of CPU, GBs of disk at full size); ``--quick`` uses 2M samples. The
full size is ``MIXSQL_BENCH_SCALE_N`` (default 100M); the machine's load average is recorded.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.planner import DATA, metadata_catalog

SOURCES = ["web", "c4", "code", "books", "arxiv", "wiki", "forums"]
LANGS = ["en", "de", "fr", "es", "zh", "python", "javascript", "go"]
LICENSES = ["cc-by", "cc-by-sa", "mit", "apache-2.0", "unknown"]
SQL = """SELECT * FROM samples
WHERE quality > 0.2 AND license <> 'unknown'
MIX BY source WITH (
    (web, c4) 0.55,
    code 0.2 MIX BY language WITH (python 0.5, javascript 0.3, OTHER 0.2),
    books 0.1,
    OTHER 0.15
)
SETTINGS (seed = 7, chunk_size = 512, on_exhausted = 'repeat')"""
SQL_TINY = SQL.replace("WHERE ", 'WHERE "row" < 20 AND ')   # same statement, 1/500 of the selection
SQL_SECOND = SQL.replace("seed = 7", "seed = 8")                 # another statement, same snapshot
KS = (0, 1_000, 100_000, 10_000_000)
WORKERS = 8


def build(rows: int) -> Path:
    langs = "[" + ", ".join(f"'{x}'" for x in LANGS) + "]"
    lics = "[" + ", ".join(f"'{x}'" for x in LICENSES) + "]"
    return metadata_catalog(DATA / f"scale-{rows}", rows, SOURCES, {
        "language": ("VARCHAR", f"{langs}[((hash(i) % {len(LANGS)}) + 1)::BIGINT]"),
        "quality": ("DOUBLE", "(hash(i * 7) % 1000) / 1000.0"),
        "license": ("VARCHAR", f"{lics}[((hash(i * 13) % {len(LICENSES)}) + 1)::BIGINT]"),
    })


# --- measurements, each run in a fresh interpreter (python -c) --------------------------------
_PRELUDE = """
import json, os, sys, time
t0 = time.perf_counter()
from mixsql.stream import MixStream
imported = time.perf_counter() - t0
cat, sql = sys.argv[1], sys.argv[2]
"""

_FIRST_CHUNK = _PRELUDE + """
stream = MixStream.open_cached(cat, sql)
eng = stream.engine(json.loads(sys.argv[3]) if len(sys.argv) > 3 else None)
chunk = eng.next_chunk()
print(json.dumps({"s": time.perf_counter() - t0, "imports_s": imported, "rows": chunk.num_rows, "built": stream.built,
                  "selected": stream.pointers.num_rows}))
"""

_CHUNK_K = _PRELUDE + """
stream = MixStream.open_cached(cat, sql)
ks = json.loads(sys.argv[3])
eng = stream.engine()
times = {k: [] for k in ks}
for _ in range(7):                       # interleaved rounds
    for k in ks:
        t = time.perf_counter()
        eng.chunk(k)
        times[k].append((time.perf_counter() - t) * 1e3)
fresh = []
for _ in range(5):
    e = stream.engine()
    t = time.perf_counter()
    e.chunk(ks[-1])
    fresh.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"times": times, "fresh": fresh}))
"""

_NODE = _PRELUDE + """
import multiprocessing
W = int(sys.argv[3])

def pss_kb(pid):   # [total PSS, anonymous PSS, the row index mapping's PSS, the selection's] in kB
    out, where = [0, 0, 0, 0], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if not head[0].endswith(":"):          # a mapping's header line: range perms ... [path]
                path = head[5] if len(head) > 5 else ""
                where = 2 if "/rowindex/" in path else 3 if "/selections/" in path else None
            elif head[0] == "Pss:":
                out[0] += int(head[1])
                if where is not None:
                    out[where] += int(head[1])
            elif head[0] == "Pss_Anon:":
                out[1] += int(head[1])
    return out

eng = MixStream.open_cached(cat, sql).engine()

def worker(w, ready, go):
    for i in range(64):
        eng.chunk(w + i * W)            # this worker's own chunks, materialised
    ready.put(os.getpid())
    go.wait()

ctx = multiprocessing.get_context("fork")
ready, go = ctx.Queue(), ctx.Event()
procs = [ctx.Process(target=worker, args=(w, ready, go)) for w in range(W)]
for p in procs:
    p.start()
pids = [ready.get(timeout=3600) for _ in procs]
kb = [pss_kb(os.getpid())] + [pss_kb(p) for p in pids]
go.set()
for p in procs:
    p.join()
print(json.dumps({"pss_kb": kb}))
"""


def _py(code: str, *args: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"bench scale step failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _spread(values) -> str:
    vals = sorted(values)
    return f"{statistics.median(vals):.3f} ({vals[0]:.3f}..{vals[-1]:.3f})"


def run(quick: bool = False) -> dict:
    n = 2_000_000 if quick else int(os.environ.get("MIXSQL_BENCH_SCALE_N", "100000000"))
    restarts = 5
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    cat = str(build(n))
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MIXSQL_CACHE_DIR=tmp, PYTHONPATH=os.pathsep.join(sys.path))
        cold = _py(_FIRST_CHUNK, cat, SQL, env=env)
        assert cold["built"] and cold["rows"] == 512
        second = _py(_FIRST_CHUNK, cat, SQL_SECOND, env=env)   # the row index is there now
        assert second["built"]
        # a checkpoint at chunk 1,000,000 (engine state; the stream's own state is O(groups))
        state = _py(_PRELUDE + """
eng = MixStream.open_cached(cat, sql).engine()
eng.seek(1_000_000)
print(json.dumps(eng.state_dict()))""", cat, SQL, env=env)
        warm = [_py(_FIRST_CHUNK, cat, SQL, json.dumps(state), env=env) for _ in range(restarts)]
        assert not any(w["built"] for w in warm)
        ck = _py(_CHUNK_K, cat, SQL, json.dumps(list(KS)), env=env)
        tiny = _py(_FIRST_CHUNK, cat, SQL_TINY, env=env)["selected"]
        nodes = {SQL: [], SQL_TINY: []}
        for _ in range(3):                     # interleaved: the same load hits both
            for sql in nodes:
                nodes[sql].append(_py(_NODE, cat, sql, str(WORKERS), env=env)["pss_kb"])
        file_bytes = max(sum(f.stat().st_size for f in d.iterdir())   # the full statement's selection
                         for d in Path(tmp, "selections").iterdir() if d.is_dir())
        index_bytes = sum(f.stat().st_size for d in Path(tmp, "rowindex").iterdir() if d.is_dir()
                          for f in d.iterdir())
    selected = cold["selected"]
    ms = {f"k={int(k):,}": _spread(v) for k, v in ck["times"].items()}
    med = {k: statistics.median(v) for k, v in ck["times"].items()}
    node_mb, anon_mb, index_mb, sel_mb = (statistics.median(sum(kb[i] for kb in run) for run in nodes[SQL]) / 1024
                                          for i in range(4))
    base_mb, base_anon_mb, base_index_mb, base_sel_mb = (
        statistics.median(sum(kb[i] for kb in run) for run in nodes[SQL_TINY]) / 1024 for i in range(4))
    per_worker = [kb[0] for run in nodes[SQL] for kb in run[1:]]
    # what the selection adds: anonymous memory and the selection file's resident pages (the row
    # index's pages depend on which rows the chunks read, not on the selection's size: apart)
    sel_bytes = ((anon_mb + sel_mb) - (base_anon_mb + base_sel_mb)) * 2**20 / (selected - tiny)
    anon_bytes = (anon_mb - base_anon_mb) * 2**20 / (selected - tiny)
    epoch_bytes = max(anon_bytes, 0) + file_bytes / selected   # every page of the selection resident
    warm_s = [w["s"] for w in warm]
    return {
        "catalog_samples": n,
        "selected_samples": selected,
        "catalog_build_s": round(build_s, 1),
        "statement_to_first_chunk_cold_s": round(cold["s"], 2),
        "statement_to_first_chunk_s_row_index_present": round(second["s"], 2),
        "restart_to_first_chunk_warm_s": _spread(warm_s),
        "restart_python_imports_s": _spread([w["imports_s"] for w in warm]),
        "restart_after_imports_s": _spread([w["s"] - w["imports_s"] for w in warm]),
        "target_restart_warm_s_at_1B": 2,
        "chunk_k_direct_ms": ms,
        "chunk_1e7_fresh_engine_ms": _spread(ck["fresh"]),
        "target_chunk_1e7_ms": 10,
        "chunk_1e7_target_met": statistics.median(ck["fresh"]) < 10,
        "flat_in_k": med[str(KS[-1])] < 3 * max(med[str(KS[0])], 1e-3),
        "node_pss_1rank_8workers_mb": round(node_mb, 1),
        "node_pss_same_statement_1_500th_of_the_rows_mb": round(base_mb, 1),
        "node_pss_row_index_pages_mb": round(index_mb, 1),
        "node_pss_selection_pages_mb": round(sel_mb, 1),
        "target_node_pss_mb_at_1B": 8000,
        "pss_per_worker_mb_median": round(statistics.median(per_worker) / 1024, 1),
        "target_pss_per_worker_mb": 200,
        "selection_ram_bytes_per_sample": round(sel_bytes, 2),
        "selection_anonymous_ram_bytes_per_sample": round(anon_bytes, 2),
        "target_ram_bytes_per_sample": 4,
        "selection_file_bytes_per_sample": round(file_bytes / selected, 1),
        "ram_bytes_per_sample_after_an_epoch_upper_bound": round(epoch_bytes, 1),
        "ram_target_met": epoch_bytes < 4,
        "row_index_bytes_per_catalog_row": round(index_bytes / n, 1),
        "row_index_bytes_per_selected_sample_if_resident": round(index_bytes / selected, 1),
        "load_average_at_start": round(load_start, 1),
        "load_average_at_end": round(os.getloadavg()[0], 1),
        "_notes": (f"metadata-only catalog of {n:,} samples (no data files); statement with WHERE and a nested "
                   f"mixture selecting {selected:,}; fresh processes per measurement; node PSS medians of 3 "
                   "interleaved runs of the statement and of its 1/500 restriction (the baseline); the RAM "
                   "target is judged on the epoch upper bound (anonymous bytes + the packed selection file; the "
                   "catalog's row index, shared by every statement and read per chunk like the data files, "
                   "is reported apart); timings are medians (min..max) on a "
                   f"2-core machine (1-min load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end): "
                   "noisy. The selection file's pages become resident as an epoch reads them (shared page "
                   "cache, counted once per node)."),
    }
