"""Render result sets: aligned rich tables (REPL, ``--format table``), CSV, JSON and Markdown,
and EXPLAIN MIX as a compact table with a small plot of each group's share over the run.

All functions take a PEP 249 ``description`` plus rows (tuples), so they work for DuckDB
results, MIX streams and EXPLAIN MIX alike.
"""
from __future__ import annotations

import base64
import csv
import datetime
import decimal
import math
import uuid
from collections.abc import Iterable
from typing import IO, Any

import orjson
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .dbapi import NUMBER

NULL_TEXT = "NULL"
MAX_CELL = 80   # characters shown per cell in tables (full values go to csv/json)


def format_value(value: Any, max_width: int | None = MAX_CELL) -> str:
    """One cell as text: NULL for None, short floats, hex for bytes, truncated long strings."""
    if value is None:
        return NULL_TEXT
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            text = str(value)
        else:
            text = f"{value:.6g}" if (abs(value) >= 1e15 or (0 < abs(value) < 1e-4)) else f"{value:.6f}".rstrip("0").rstrip(".")
            if text in ("", "-"):
                text = "0"
    elif isinstance(value, (bytes, bytearray, memoryview)):
        text = "\\x" + bytes(value).hex()
    else:
        text = str(value)
    text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if max_width is not None and len(text) > max_width:
        text = text[: max_width - 1] + "…"
    return text


def result_table(description: list[tuple], rows: Iterable[tuple], title: str | None = None) -> Table:
    """A rich Table: header with column names and types, numbers right-aligned, NULL dimmed."""
    rows = [tuple(r) for r in rows]
    table = Table(box=box.SIMPLE_HEAD, title=title, show_edge=False, pad_edge=False,
                  header_style="bold")
    numeric = []
    for i, d in enumerate(description):
        is_num = isinstance(d[1], str) and d[1] == NUMBER
        numeric.append(is_num)
        natural = max([len(str(d[0]))] + [len(format_value(r[i])) for r in rows[:200] if i < len(r)])
        header = Text(str(d[0]), style="bold")
        if d[1] is not None:
            header.append("\n" + str(d[1]).lower(), style="dim")
        table.add_column(header, justify="right" if is_num else "left", overflow="ellipsis",
                         no_wrap=True, min_width=min(natural, 16))
    for row in rows:
        cells = []
        for v in row:
            cells.append(Text(NULL_TEXT, style="dim") if v is None else Text(format_value(v)))
        table.add_row(*cells)
    return table


def footer(n_rows: int, elapsed: float | None = None, more: bool = False) -> str:
    """``3 rows (0.012 s)``; ``more`` marks a truncated display."""
    text = f"{n_rows} row{'s' if n_rows != 1 else ''}"
    if more:
        text = f"first {text} shown (more available: add LIMIT, or use mixsql sql --format csv)"
    if elapsed is not None:
        text += f" ({elapsed:.3f} s)"
    return text


def print_table(console: Console, description: list[tuple], rows: list[tuple],
                elapsed: float | None = None, more: bool = False, title: str | None = None) -> None:
    """Print a result table followed by its row count and elapsed time."""
    console.print(result_table(description, rows, title=title))
    console.print(footer(len(rows), elapsed, more), style="dim")


def write_csv(out: IO[str], description: list[tuple], rows: Iterable[tuple]) -> int:
    """Write a header and the rows as CSV; returns the number of rows written."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow([d[0] for d in description])
    n = 0
    for row in rows:
        w.writerow(["" if v is None else format_value(v, None) if isinstance(v, (bytes, float)) else v
                    for v in row])
        n += 1
    return n


def _json_default(v: Any) -> Any:
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, (datetime.date, datetime.time, datetime.datetime)):
        return v.isoformat()
    if isinstance(v, datetime.timedelta):
        return v.total_seconds()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode()
    if isinstance(v, uuid.UUID):
        return str(v)
    return str(v)


def json_row(names: list[str], row: tuple) -> bytes:
    return orjson.dumps(dict(zip(names, row)), default=_json_default,
                        option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def write_json(out: IO[str], description: list[tuple], rows: Iterable[tuple]) -> int:
    """Write a JSON array of row objects, one per line (streams; valid JSON at the end)."""
    names = [d[0] for d in description]
    n = 0
    out.write("[")
    for row in rows:
        out.write(("\n" if n == 0 else ",\n") + json_row(names, row).decode())
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def _markdown_cell(v: Any) -> str:
    return format_value(v, None).replace("|", "\\|")


def write_markdown(out: IO[str], description: list[tuple], rows: Iterable[tuple]) -> int:
    """Write a GitHub-flavoured Markdown table (numbers right-aligned); returns the row count."""
    names = [str(d[0]).replace("|", "\\|") for d in description]
    out.write("| " + " | ".join(names) + " |\n")
    out.write("|" + "|".join("---:" if d[1] == NUMBER else "---" for d in description) + "|\n")
    n = 0
    for row in rows:
        out.write("| " + " | ".join(_markdown_cell(v) for v in row) + " |\n")
        n += 1
    return n


WRITERS = {"csv": write_csv, "json": write_json, "markdown": write_markdown}


# ----------------------------------------------------------------------------- EXPLAIN MIX

PLOT_WIDTH = 24          # characters of the share-over-the-run plot
PLOT_MIN_WIDTH = 100     # console columns needed to show the plot
_BLOCKS = " ▁▂▃▄▅▆▇█"


def compact_count(n: Any) -> str:
    """``12.3K`` / ``4.5M`` / ``1.2B``; ``—`` for None."""
    if n is None:
        return "—"
    n = float(n)
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def _size(n: Any) -> str:
    from .progress import human_bytes

    return "—" if n is None else human_bytes(float(n))


def share_timeline(weights: list[float], dry_at: list[int | None], width: int = PLOT_WIDTH) -> list[list[float]]:
    """Each group's share of the stream at ``width`` points of the run (chunk 0 to a little past
    the last group running dry): a dry group's share goes to the others in proportion to their
    weights, as ``on_exhausted = 'redistribute'`` does."""
    ends = [d for d in dry_at if d is not None]
    horizon = max(ends) * 1.25 if ends else 1.0
    out = [[0.0] * width for _ in weights]
    for x in range(width):
        chunk = horizon * (x + 0.5) / width
        live = [i for i, d in enumerate(dry_at) if d is None or chunk < d]
        total = sum(weights[i] for i in live) or 1.0
        for i in live:
            out[i][x] = weights[i] / total
    return out


def print_explain(console: Console, description: list[tuple], rows: list[tuple]) -> None:
    """EXPLAIN MIX as a compact table (human-sized numbers) with a bar of each group's share
    over the run when the console is wide enough."""
    names = [d[0] for d in description]
    if not {"group", "weight", "rows"} <= set(names):
        print_table(console, description, rows, title="EXPLAIN MIX")
        return
    recs = [dict(zip(names, r)) for r in rows]
    table = Table(box=box.SIMPLE_HEAD, title="EXPLAIN MIX", show_edge=False, pad_edge=False,
                  header_style="bold")
    for header in ("group", "weight", "rows", "tokens", "size", "needed", "epochs", "dry at chunk"):
        table.add_column(header, justify="left" if header == "group" else "right", no_wrap=True,
                         overflow="ellipsis", max_width=40 if header == "group" else None)
    plot = console.width >= PLOT_MIN_WIDTH and recs
    if plot:
        weights = [float(r["weight"] or 0.0) for r in recs]
        dry = [r.get("dry_at_chunk") for r in recs]
        timeline = share_timeline(weights, dry)
        peak = max((v for line in timeline for v in line), default=0.0) or 1.0
        ends = [d for d in dry if d is not None]
        table.add_column("share over the run" + (f" (0 … {compact_count(max(ends) * 1.25)} chunks)"
                                                 if ends else ""), no_wrap=True)
    for i, r in enumerate(recs):
        unit_tokens = r.get("tokens_needed") is not None and r.get("samples_needed") is None
        needed = r.get("tokens_needed") if unit_tokens else r.get("samples_needed")
        epochs = r.get("epochs_needed")
        cells = [
            Text(str(r["group"])), f"{100 * float(r['weight'] or 0):.1f}%", compact_count(r.get("rows")),
            compact_count(r.get("tokens")), _size(r.get("bytes")),
            compact_count(needed) + (" tok" if unit_tokens and needed is not None else ""),
            "—" if epochs is None else f"{epochs:.2f}",
            Text("—", style="dim") if r.get("dry_at_chunk") is None else
            Text(f"{r['dry_at_chunk']:,}", style="yellow"),
        ]
        if plot:
            cells.append(Text("".join(_BLOCKS[min(8, round(8 * v / peak))] for v in timeline[i]), style="cyan"))
        table.add_row(*cells)
    console.print(table)
