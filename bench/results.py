"""The results log ``bench/RESULTS.md``: one section per run (machine, date, command, run id,
figures), plus the summary every repeated figure uses: median with its min..max.

A run id (``YYYY-MM-DDTHH:MMZ`` of the invocation's start) ties together the sections one
``python -m bench ...`` invocation appends, so README can cite one run (tests/test_readme_figures.py).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = ("# mixsql benchmark results\n\nAppended by `python -m bench <name>` (see bench/README.md). Every "
          "section names the machine, the date and the command. Compare ratios, not absolute times: the "
          "machines are shared and noisy.\n")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{platform.node() or 'host'}: {os.cpu_count()} cores {cpu}{mem}, Python {platform.python_version()}"


def _cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A Markdown table of dict rows (columns: the union of keys, in first-seen order)."""
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(out)


def flat_figures(figures: dict, prefix: str = "") -> list[dict]:
    """Nested dict of figures -> rows of {figure, value}."""
    rows = []
    for k, v in figures.items():
        if isinstance(v, dict):
            rows += flat_figures(v, f"{prefix}{k}.")
        else:
            rows.append({"figure": prefix + k, "value": v})
    return rows


def spread(values) -> dict:
    """Median, min, max and count of repeated measurements (never a best-of)."""
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def fmt_num(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def fmt_spread(s: dict) -> str:
    """``median (min..max)``; a single run says so."""
    if s["n"] == 1:
        return f"{fmt_num(s['median'])} (1 run)"
    return f"{fmt_num(s['median'])} ({fmt_num(s['min'])}..{fmt_num(s['max'])})"


def code_version() -> str:
    """The commit the benches ran at (``+changes`` when mixsql/ or bench/ differ from it), or ``?``."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mixsql", "bench", ":!bench/RESULTS.md"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (sha or "?") + ("+changes" if dirty else "")


def new_run_id(when: _dt.datetime | None = None) -> str:
    when = when or _dt.datetime.now(_dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%MZ")


def sections(run_id: str, path: Path = RESULTS) -> dict[str, str]:
    """The sections of one run: bench name -> section text (a bench recorded twice: its latest)."""
    out = {}
    for part in re.split(r"\n(?=## )", Path(path).read_text()):
        if f"\n- run: {run_id}\n" in part + "\n":
            out[part.split("\n", 1)[0][3:].split(" — ")[0]] = part
    return out


def append(name: str, command: str, figures: dict | None = None, table: str | None = None,
           notes: str | None = None, path: Path = RESULTS, when: _dt.datetime | None = None,
           run: str | None = None) -> str:
    """Append one section to the results file; returns the section's text."""
    when = when or _dt.datetime.now(_dt.timezone.utc)
    parts = [f"\n## {name} — {when.strftime('%Y-%m-%d %H:%M UTC')}\n",
             f"- machine: {machine()}", f"- command: `{command}`", f"- run: {run or new_run_id(when)}",
             f"- code: {code_version()}", ""]
    if table:
        parts += [table, ""]
    if figures:
        parts += [markdown_table(flat_figures(figures), ["figure", "value"]), ""]
    if notes:
        parts += [notes.rstrip(), ""]
    text = "\n".join(parts)
    path = Path(path)
    if not path.exists():
        path.write_text(HEADER)
    with open(path, "a") as fh:
        fh.write(text)
    return text
