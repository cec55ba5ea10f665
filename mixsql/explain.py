"""EXPLAIN MIX: what a MIX statement will draw from each leaf group, before training starts.

One row per leaf group (nested groups flattened into their path): rows, tokens and bytes
available, target weight, the samples / tokens the budget needs from the group, the epochs
(passes over its data) that takes, and the chunk at which it runs dry under the statement's
``on_exhausted`` policy. The forecast itself is :func:`mixsql.engine.forecast`.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from .planner import execute_plan, plan

SCHEMA = pa.schema([
    ("group_id", pa.int32()), ("group", pa.string()), ("rows", pa.int64()), ("tokens", pa.int64()),
    ("bytes", pa.int64()), ("weight", pa.float64()), ("samples_needed", pa.int64()),
    ("tokens_needed", pa.int64()), ("epochs_needed", pa.float64()), ("dry_at_chunk", pa.int64()),
])


def _int(v):
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f or f in (float("inf"), float("-inf")) else int(round(f))


def explain_table(catalog, sql: str, params=None) -> pa.Table:
    """Plan + execute the statement (``EXPLAIN MIX`` prefix optional) and forecast each group."""
    p = plan(catalog, sql, params)
    table, spec = execute_plan(catalog, p)
    n = len(spec.groups)
    gid = table.column("__mix_group").to_numpy(zero_copy_only=False)
    rows = np.bincount(gid, minlength=n) if len(gid) else np.zeros(n, np.int64)
    nb = table.column("__mix_n_bytes").to_numpy(zero_copy_only=False).astype(np.float64)
    bytes_ = np.bincount(gid, weights=nb, minlength=n) if len(gid) else np.zeros(n)
    ntok = table.column("__mix_n_tokens")
    tok = np.nan_to_num(ntok.to_numpy(zero_copy_only=False).astype(np.float64), nan=0.0)
    tok_sum = np.bincount(gid, weights=tok, minlength=n) if len(gid) else np.zeros(n)
    if ntok.null_count:
        nulls = np.bincount(gid[np.asarray(ntok.is_null())], minlength=n)
        tokens = [None if nulls[i] else int(tok_sum[i]) for i in range(n)]
    else:
        tokens = [int(x) for x in tok_sum]
    samples = [int(x) for x in rows]
    try:
        from .engine import forecast
        fc = forecast(spec, samples, tokens, table)
    except ImportError:  # engine not available: counts and weights only
        fc = [{} for _ in range(n)]
    cols = {name: [] for name in SCHEMA.names}
    for g, f in zip(spec.groups, fc):
        cols["group_id"].append(g.id)
        cols["group"].append(g.path)
        cols["rows"].append(samples[g.id])
        cols["tokens"].append(tokens[g.id])
        cols["bytes"].append(int(bytes_[g.id]))
        cols["weight"].append(float(g.weight))
        cols["samples_needed"].append(_int(f.get("samples_needed")))
        cols["tokens_needed"].append(_int(f.get("tokens_needed")))
        e = f.get("epochs_needed")
        cols["epochs_needed"].append(None if e is None else float(e))
        cols["dry_at_chunk"].append(_int(f.get("dry_at_chunk")))
    return pa.table(cols, schema=SCHEMA)


__all__ = ["explain_table", "SCHEMA"]
