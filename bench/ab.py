"""A/B of two checkouts: registration throughput and query-to-first-chunk, interleaved runs.

``python -m bench.ab --base /path/to/other/checkout [--runs 3] [--rows 2000000]`` runs, in
alternating order (base, this tree, this tree, base, ...), each in a fresh process with that
tree on ``PYTHONPATH``:

* ``bench.registration``: register the 1M-document ``.jsonl.zst`` corpus (``mb_per_s``);
* ``bench.engine.first_chunk``: statement -> first chunk over an ``--rows`` metadata catalog
  (``first_chunk_s``, catalog open included).

Medians per tree and the ratio this/base go to ``bench/RESULTS.md``. Both trees use the same
generated corpus (this tree's ``bench/.data``); each builds its own catalogs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
CHILD = r'''
import json, sys
from pathlib import Path
import bench.registration as R, bench.engine as E
if sys.argv[1] == "registration":
    corpus = Path(sys.argv[2])
    r = R._register(R.DATA / "catalogs" / "ab", "slim", str(corpus / "**" / "*.jsonl.zst"), {"preset": "slimpajama"})
    print(json.dumps({"registration_mb_per_s": r["mb_per_s"], "index_bytes_per_sample": r["index_bytes_per_sample"]}))
else:
    out, _ = E.first_chunk(int(sys.argv[2]))
    print(json.dumps({k: v for k, v in out.items() if k.startswith(("first_chunk_s", "plan_execute_s"))}))
'''


def _run(tree: Path, args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    p = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=tree, env=env, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{tree}: {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from . import registration, results

    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the other checkout (e.g. `git archive main | tar -x -C DIR`)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rows", type=int, default=2_000_000)
    a = ap.parse_args(argv)
    trees = {"base": Path(a.base).resolve(), "this": HERE}
    corpus = registration.generate(1_000_000, 16)
    got: dict[str, dict[str, list]] = {k: {} for k in trees}
    for k in range(a.runs):
        order = list(trees.items()) if k % 2 == 0 else list(trees.items())[::-1]
        for name, tree in order:
            for args in (["registration", str(corpus)], ["first_chunk", str(a.rows)]):
                for key, val in _run(tree, args).items():
                    got[name].setdefault(key, []).append(val)
            print(k, name, {key: v[-1] for key, v in got[name].items()}, flush=True)
    med = {name: {key: statistics.median(v) for key, v in d.items()} for name, d in got.items()}
    rows = [{"figure": key, "base": med["base"].get(key), "this": med["this"][key],
             "this / base": round(med["this"][key] / med["base"][key], 3) if med["base"].get(key) else None}
            for key in med["this"]]
    command = "python -m bench.ab " + " ".join(argv if argv is not None else sys.argv[1:])
    results.append("ab", command, figures={"runs": a.runs, "rows": a.rows, "base": str(trees["base"])},
                   table=results.markdown_table(rows),
                   notes=f"medians of {a.runs} interleaved runs per tree, each in a fresh process; the machine "
                         "is shared by several sessions, so single figures are noisy")
    print(results.markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
