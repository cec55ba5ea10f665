"""``python -m bench ledger [--quick]``: the data ledger's inverse lookup at scale.

The synthetic selection of ``bench scale`` (7 skewed groups, seeded block/window shuffle,
``on_exhausted = 'repeat'``; 100M samples, ``--quick`` 2M) published through the node's selection
cache, and the state of a run that consumed one pass of it: 8 data-parallel ranks x 4 DataLoader
workers, 64 samples per rank and step. Measured (medians over interleaved rounds, each on a sample
drawn at random from the selection):

* ``sample_lookup_s``: :meth:`mixsql.ledger.Ledger.sample` -- every step and epoch at which one
  (file, row) is consumed, by inverting its group's permutation and the composition;
* ``step_rows_s``: :meth:`~mixsql.ledger.Ledger.steps` for one step of all ranks at a random
  point of the run;
* ``ledger_open_s``: mapping the selection and building the engine (once per process).

Target: an inverse lookup under 1 s at 100M samples.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa

from mixsql.ledger import Ledger
from mixsql.selection import cached
from mixsql.spec import Group, MixSpec
from mixsql.stream import MixStream

RANKS, WORKERS, BATCH = 8, 4, 64
WEIGHTS = (0.30, 0.25, 0.15, 0.12, 0.08, 0.06, 0.04)
ROWS_PER_FILE = 100_000


def _spec() -> MixSpec:
    groups = tuple(Group(i, f"g{i}", w, (f"g{i}",)) for i, w in enumerate(WEIGHTS))
    return MixSpec(groups=groups, chunk_size=512, seed=1, on_exhausted="repeat")


def _build(n: int):
    """The synthetic selection (pointers, spec, files): pointer table in base order: group g holds a share of n proportional to its weight
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



def _state(n: int) -> dict:
    steps = n // (RANKS * BATCH)   # one pass over the selection
    run = {"sql": "bench ledger", "catalog": None, "dp_world": RANKS, "workers": WORKERS, "batch_size": BATCH,
           "drop_last": False, "steps": steps, "seq_len": None}
    return {"mixsql": {"version": 1, "dp_rank": 0, "dp_world": RANKS}, "snapshot": None, "run": run}


def run(quick: bool = False) -> dict:
    n = 2_000_000 if quick else int(os.environ.get("MIXSQL_BENCH_LEDGER_N", "100000000"))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MIXSQL_CACHE_DIR"] = tmp
        cached("synthetic://ledger", n, "bench ledger", None, lambda: _build(n))
        t0 = time.perf_counter()
        pointers, spec, files, _ = cached("synthetic://ledger", n, "bench ledger", None, None)
        led = Ledger(_state(n), stream=MixStream(pointers, spec, files))
        open_s = time.perf_counter() - t0
        rng = np.random.Generator(np.random.PCG64(11))
        fcol = pointers.column("__mix_file").combine_chunks()
        rcol = pointers.column("__mix_row").combine_chunks()
        lookup, steps, found = [], [], []
        for _ in range(7):
            i = int(rng.integers(n))
            f, r = fcol[i].as_py(), rcol[i].as_py()
            t = time.perf_counter()
            got = led.sample(f, r)
            lookup.append(time.perf_counter() - t)
            found.append(got.num_rows)
            s = int(rng.integers(led.run.steps))
            t = time.perf_counter()
            rows = led.steps(s, s)
            steps.append(time.perf_counter() - t)
            assert rows.num_rows == RANKS * BATCH
    return {
        "samples": n, "ranks": RANKS, "workers": WORKERS, "batch_size": BATCH, "run_steps": led.run.steps,
        "ledger_open_s": round(open_s, 3),
        "sample_lookup_s_median": round(statistics.median(lookup), 4),
        "sample_lookup_s_max": round(max(lookup), 4),
        "occurrences_per_sample": found,
        "step_rows_s_median": round(statistics.median(steps), 4),
        "_notes": "medians of 7 interleaved rounds on a machine shared with other jobs (noisy); "
                  "each round a sample and a step drawn at random",
    }
