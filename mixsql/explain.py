"""EXPLAIN MIX: what a MIX statement will draw from each leaf group, before training starts.

One row per leaf group (nested groups flattened into their path): rows, tokens (as packed:
``n_tokens`` plus one EOS per sample, :data:`mixsql.spec.EOS_TOKENS`) and bytes available, target weight, the samples / tokens the budget needs from the group, the epochs
(passes over its data) that takes, and the chunk at which it runs dry under the statement's
``on_exhausted`` policy. The forecast itself is :func:`mixsql.engine.forecast`.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from .engine import forecast
from .planner import execute_plan, plan
from .spec import EOS_TOKENS

SCHEMA = pa.schema([
    ("group_id", pa.int32()), ("group", pa.string()), ("rows", pa.int64()), ("tokens", pa.int64()),
    ("bytes", pa.int64()), ("weight", pa.float64()), ("samples_needed", pa.int64()),
    ("tokens_needed", pa.int64()), ("epochs_needed", pa.float64()), ("dry_at_chunk", pa.int64()),
])


def _ints(values) -> pa.Array:
    """int64 column of forecast figures (None, NaN and infinities -> null)."""
    f = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    ok = np.isfinite(f)
    return pa.array(np.where(ok, np.round(np.where(ok, f, 0)), 0).astype(np.int64), pa.int64(), mask=~ok)


def explain_table(catalog, sql: str, params=None) -> pa.Table:
    """Plan + execute the statement (``EXPLAIN MIX`` prefix optional) and forecast each group:
    per-group figures are numpy arrays over the group axis (bincounts of the pointer table)."""
    p = plan(catalog, sql, params)
    table, spec = execute_plan(catalog, p, user_columns=False, canonical=False)   # pointers suffice
    n = len(spec.groups)
    gid = table.column("__mix_group").to_numpy()
    rows = np.bincount(gid, minlength=n)
    bytes_ = np.bincount(gid, weights=table.column("__mix_n_bytes").to_numpy(zero_copy_only=False), minlength=n)
    ntok = table.column("__mix_n_tokens")
    # tokens as packed: each sample's n_tokens plus the EOS the packer appends (spec.EOS_TOKENS)
    tok_sum = np.bincount(gid, weights=np.nan_to_num(ntok.to_numpy(zero_copy_only=False).astype(np.float64)),
                          minlength=n) + EOS_TOKENS * rows
    unknown = np.bincount(gid[np.asarray(ntok.is_null())], minlength=n) > 0 if ntok.null_count else np.zeros(n, bool)
    tokens = pa.array(tok_sum.astype(np.int64), pa.int64(), mask=unknown)
    fc = forecast(spec, rows.tolist(), tokens.to_pylist(), table)
    epochs = [f.get("epochs_needed") for f in fc]
    return pa.table({
        "group_id": pa.array(np.arange(n, dtype=np.int32)),
        "group": pa.array([g.path for g in spec.groups], pa.string()),
        "rows": pa.array(rows.astype(np.int64)),
        "tokens": tokens,
        "bytes": pa.array(bytes_.astype(np.int64)),
        "weight": pa.array(np.array(spec.weights(), dtype=np.float64)),
        "samples_needed": _ints(f.get("samples_needed") for f in fc),
        "tokens_needed": _ints(f.get("tokens_needed") for f in fc),
        "epochs_needed": pa.array([None if e is None else float(e) for e in epochs], pa.float64()),
        "dry_at_chunk": _ints(f.get("dry_at_chunk") for f in fc),
    }, schema=SCHEMA)


__all__ = ["explain_table", "SCHEMA"]
