"""Shell input on a large paste: a ``MIX BY name WITH (<thousands of groups>)`` statement of about
100 KB typed into the shell through prompt-toolkit's pipe input (every character a key press, as a
terminal without bracketed paste sends a paste), against ``mixsql sql -f`` on the same file, both
in this process. Figures: seconds of each (median of interleaved runs) and their ratio.
"""
from __future__ import annotations

import io
import json
import statistics
import threading
import time
from pathlib import Path

GROUPS_FULL = 4400      # ~100 KB statement
GROUPS_QUICK = 2000     # ~45 KB


def make_case(root: Path, n_groups: int) -> tuple[Path, Path]:
    """A catalog whose ``name`` property has ``n_groups`` values, and a file with one MIX
    statement naming every value (lines of ~90 characters, as a formatted query has)."""
    from mixsql.catalog import Catalog
    from mixsql.registration import create_source

    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "names.jsonl", "w") as fh:
        for i in range(n_groups):
            for j in range(2):
                fh.write(json.dumps({"text": f"sample {i} {j}", "name": f"group_{i:06d}"}) + "\n")
    catalog = root / "catalog"
    with Catalog(catalog) as cat:
        create_source(cat, "names", str(data / "*.jsonl"), options={"properties": {"name": "name"}},
                      progress=False)
    lines, line = [], ""
    for i in range(n_groups):
        line += f"group_{i:06d} {1 / n_groups:.8f}, "
        if len(line) > 90:
            lines.append(line.rstrip())
            line = ""
    lines.append(line)
    body = "\n".join(lines).rstrip().rstrip(",")
    query = root / "mix.sql"
    query.write_text(f"SELECT * FROM samples\nMIX BY name WITH (\n{body}\n)\nLIMIT 100 SAMPLES;\n")
    return catalog, query


def time_sql_file(catalog: Path, query: Path) -> float:
    """Seconds of ``mixsql sql -f QUERY`` (in this process, output discarded)."""
    import contextlib

    from mixsql import cli

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = cli.main(["sql", "-f", str(query), "--catalog", str(catalog)])
    assert code == 0 and "100 rows" in out.getvalue(), out.getvalue()[-500:]
    return time.perf_counter() - t0


def time_paste(catalog: Path, query: Path) -> float:
    """Seconds from the first key of the pasted statement to the shell's exit after running it."""
    from prompt_toolkit.history import InMemoryHistory
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from mixsql.repl import Repl

    keys = query.read_text().replace("\n", "\r") + ".quit\r"
    out = io.StringIO()
    with create_pipe_input() as inp:
        repl = Repl(catalog=catalog, input=inp, output=DummyOutput(), stdout=out, history=InMemoryHistory(),
                    width=160, progress=False)
        t0 = time.perf_counter()
        # a pipe holds 64 KB: the keys go in from a thread while the shell reads them
        threading.Thread(target=inp.send_text, args=(keys,), daemon=True).start()
        repl.run(banner=False)
        seconds = time.perf_counter() - t0
    assert "100 rows" in out.getvalue(), out.getvalue()[-500:]
    return seconds


def measure(root: Path, n_groups: int, repeats: int = 3) -> dict:
    catalog, query = make_case(root, n_groups)
    sql_f, paste = [], []
    for _ in range(repeats):   # interleaved: both see the same machine load
        sql_f.append(time_sql_file(catalog, query))
        paste.append(time_paste(catalog, query))
    sf, ps = statistics.median(sql_f), statistics.median(paste)
    return {"statement_kb": round(query.stat().st_size / 1000, 1), "groups": n_groups,
            "sql_f_s": round(sf, 3), "paste_s": round(ps, 3), "paste_over_sql_f": round(ps / sf, 2)}


def run(quick: bool = False) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mixsql-bench-shell-") as tmp:
        out = measure(Path(tmp), GROUPS_QUICK if quick else GROUPS_FULL, repeats=3)
    out["_notes"] = ("median of 3 interleaved runs; pasted without bracketed paste through prompt-toolkit's "
                     "pipe input; shared machine, timings noisy")
    return out
