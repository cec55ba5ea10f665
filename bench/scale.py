"""``python -m bench scale [--quick]``: one selection per node at pretraining scale.

A synthetic selection (pointer rows only, no data files: 7 groups of skewed sizes over files of
100,000 rows, token counts) is published once through the node's selection cache
(:mod:`mixsql.selection`), then measured:

* publish time (the stand-in for statement -> selection; planning over a real catalog is not
  part of this bench), restart-to-first-chunk with a warm cache (map + engine + chunk 0);
* time to compute chunk k directly for k = 0, 1e3, 1e5, 1e7 (median of interleaved rounds:
  is the cost flat in k?);
* node memory with 1 rank x 8 DataLoader-like worker processes that each map the selection and
  compose their own chunks: PSS summed over the node's processes (shared pages counted once),
  the PSS each worker adds, and bytes of RAM per selected sample.

Kept out of CI (minutes of CPU, GBs of disk at full size); ``--quick`` uses 2M samples.
"""
from __future__ import annotations

import multiprocessing
import os
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa

from mixsql.engine import MixEngine
from mixsql.selection import cached
from mixsql.spec import Group, MixSpec

WEIGHTS = (0.30, 0.25, 0.15, 0.12, 0.08, 0.06, 0.04)
ROWS_PER_FILE = 100_000


def _spec() -> MixSpec:
    groups = tuple(Group(i, f"g{i}", w, (f"g{i}",)) for i, w in enumerate(WEIGHTS))
    return MixSpec(groups=groups, chunk_size=512, seed=1, on_exhausted="repeat")


def _build(n: int):
    """Pointer table in base order: group g holds a share of n proportional to its weight
    skewed by a WHERE-like filter (every third row dropped), files of ROWS_PER_FILE rows."""
    sizes = np.floor(np.asarray(WEIGHTS) ** 1.3 / np.sum(np.asarray(WEIGHTS) ** 1.3) * n).astype(np.int64)
    sizes[0] += n - sizes.sum()
    gid = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    pos = np.arange(n, dtype=np.int64)
    kept = pos + pos // 2            # the rows a WHERE clause kept (every third one dropped)
    fid = (kept // ROWS_PER_FILE).astype(np.int32)
    row = kept % ROWS_PER_FILE
    nfiles = int(fid.max()) + 1
    paths = pa.array([f"s3://bucket/crawl/shard-{i:06d}.jsonl.zst" for i in range(nfiles)])
    table = pa.table({
        "__mix_group": gid,
        "__mix_source": pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array(["web"])),
        "__mix_file_id": fid,
        "__mix_file": pa.DictionaryArray.from_arrays(fid, paths),
        "__mix_row": row,
        "__mix_offset": row * 2048,
        "__mix_length": np.full(n, 2047, np.int32),
        "__mix_n_bytes": np.full(n, 2047, np.int64),
        "__mix_n_tokens": (row % 997 + 24).astype(np.int64),
    })
    files = pa.table({"file_id": pa.array(np.arange(nfiles, dtype=np.int32)), "path": paths})
    return table, _spec(), files


def _pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def _worker(key_n, w, W, ready, go):
    pointers, spec, _, _ = cached("synthetic://scale", key_n, "bench scale", None, None)
    eng = MixEngine(pointers, spec)
    for i in range(64):
        eng.chunk(w + i * W)
    ready.put(os.getpid())
    go.wait()


def run(quick: bool = False) -> dict:
    n = 2_000_000 if quick else int(os.environ.get("MIXSQL_BENCH_SCALE_N", "100000000"))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MIXSQL_CACHE_DIR"] = tmp
        t0 = time.perf_counter()
        _, _, _, built = cached("synthetic://scale", n, "bench scale", None, lambda: _build(n))
        publish_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pointers, spec, _, _ = cached("synthetic://scale", n, "bench scale", None, None)
        eng = MixEngine(pointers, spec)
        first = eng.chunk(0)
        restart_s = time.perf_counter() - t0
        times = {k: [] for k in (0, 1_000, 100_000, 10_000_000)}
        for _ in range(7):                       # interleaved rounds, medians
            for k in times:
                t = time.perf_counter()
                eng.chunk(k)
                times[k].append(time.perf_counter() - t)
        fresh_s = []
        for _ in range(5):                       # chunk 1e7 on an engine that computed nothing yet
            e = MixEngine(pointers, spec)
            t = time.perf_counter()
            e.chunk(10_000_000)
            fresh_s.append(time.perf_counter() - t)
        ctx = multiprocessing.get_context("fork")
        ready, go = ctx.Queue(), ctx.Event()
        base_kb = _pss_kb(os.getpid())
        procs = [ctx.Process(target=_worker, args=(n, w, 8, ready, go)) for w in range(8)]
        for p in procs:
            p.start()
        pids = [ready.get(timeout=1800) for _ in procs]
        worker_kb = [_pss_kb(pid) for pid in pids]
        node_kb = _pss_kb(os.getpid()) + sum(worker_kb)
        go.set()
        for p in procs:
            p.join()
        disk = sum(f.stat().st_size for f in os.scandir(os.path.join(tmp, "selections", os.listdir(
            os.path.join(tmp, "selections"))[0])) if f.is_file()) if built else None
    ms = {f"k={k:,}": round(statistics.median(v) * 1e3, 3) for k, v in times.items()}
    return {
        "samples": n,
        "publish_selection_s": round(publish_s, 2),
        "restart_to_first_chunk_warm_cache_s": round(restart_s, 3),
        "first_chunk_rows": first.num_rows,
        "chunk_k_direct_ms_median": ms,
        "chunk_1e7_on_fresh_engine_ms_median": round(statistics.median(fresh_s) * 1e3, 3),
        "flat_in_k": ms["k=10,000,000"] < 3 * max(ms["k=0"], 1e-3),
        "node_pss_1rank_8workers_mb": round(node_kb / 1024, 1),
        "pss_added_per_worker_mb_median": round(statistics.median(worker_kb) / 1024, 1),
        "main_process_pss_before_workers_mb": round(base_kb / 1024, 1),
        "ram_bytes_per_selected_sample": round(node_kb * 1024 / n, 2),
        "selection_bytes_on_disk_per_sample": round(disk / n, 1) if disk else None,
        "_notes": ("synthetic selection published directly (no DuckDB planning, no data files); PSS counts "
                   "the memory-mapped selection's pages once per node; shared 2-core machine under load from "
                   "other jobs: timings noisy"),
    }
