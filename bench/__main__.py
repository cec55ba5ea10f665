"""``python -m bench <name> [--quick]``: run one benchmark (or ``all``), print its figures and
append them to ``bench/RESULTS.md``, every section of one invocation under one run id."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback

# ``all`` runs them in this order; compare (hours at full size) goes last so the rest lands first
NAMES = ("corpus", "registration", "cluster", "planner", "engine", "throughput", "server", "storage", "shell",
         "compare", "scale", "ledger")
NOT_IN_ALL = ("corpus", "scale", "ledger")   # scale, ledger: minutes of CPU and GBs at full size


def run_one(name: str, quick: bool, command: str, run_id: str | None = None) -> dict:
    from . import results
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    try:
        mod = importlib.import_module(f"bench.{name}")
    except ImportError as exc:
        print(f"[bench {name}] not available: {exc}", file=sys.stderr)
        results.append(name, command, notes=f"not run: bench/{name}.py is not importable ({exc})", run=run_id)
        return {"error": f"not importable: {exc}"}
    try:
        out = mod.run(quick=quick)
    except Exception as exc:  # one failing bench must not hide the others' figures
        traceback.print_exc()
        results.append(name, command, notes=f"FAILED: {type(exc).__name__}: {exc}", run=run_id)
        return {"error": f"{type(exc).__name__}: {exc}"}
    out = dict(out or {})
    table = out.pop("_table", None)
    notes = out.pop("_notes", None)
    out["bench_seconds"] = round(time.perf_counter() - t0, 1)
    # the machine is shared: say how busy it was, so a reader can weigh wall-clock figures
    out["load_average_1min"] = {"start": round(load_start, 1), "end": round(os.getloadavg()[0], 1),
                                "cores": os.cpu_count()}
    print(f"== {name}")
    if table:
        print(table)
    print(json.dumps(out, indent=1, default=str))
    results.append(name, command, figures=out, table=table, notes=notes, run=run_id)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("name", choices=NAMES + ("all",))
    ap.add_argument("--quick", action="store_true", help="small sizes (every figure still the median of 5 interleaved runs)")
    ap.add_argument("--run", metavar="RUN_ID", help="append under an existing run id: with all, skip the benches it already records (finishes an interrupted run); a named bench runs again and its new section supersedes the old")
    a = ap.parse_args(argv)
    command = f"python -m bench {a.name}" + (" --quick" if a.quick else "")   # --run only resumes it
    names = [n for n in NAMES if n not in NOT_IN_ALL] if a.name == "all" else [a.name]
    from .results import new_run_id, sections
    run_id = a.run or new_run_id()
    print(f"bench run {run_id}")
    t0 = time.perf_counter()
    failed = []
    # resuming ``all`` skips what the run recorded; a bench named on its own runs again (the
    # run's latest section of a bench is the one README cites)
    done = ({n for n, text in sections(run_id).items() if "FAILED:" not in text and "not run:" not in text}
            if a.run and a.name == "all" else set())
    for n in names:
        if n in done:
            print(f"[bench {n}] already recorded under run {run_id}: skipped")
            continue
        out = run_one(n, a.quick, command + (f"  [{n}]" if a.name == "all" else ""), run_id)
        if "error" in out:
            failed.append(n)
    print(f"bench {a.name}: {time.perf_counter() - t0:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
