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

from bench.scale import _build
from mixsql.ledger import Ledger
from mixsql.selection import cached
from mixsql.stream import MixStream

RANKS, WORKERS, BATCH = 8, 4, 64


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
