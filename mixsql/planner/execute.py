"""Running a plan: ``execute_plan`` runs the query, checks what needs data (a listed value in no
row, an empty OTHER, a nested MIX over an empty group), resolves NATURAL weights and returns the
pointer table in canonical order with the final spec."""
from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from .. import dialect as D
from ..errors import ProgrammingError, SQLError
from ..gctools import without_gc
from ..shuffle import order_key_columns, ordered_permutation, pointer_order
from ..spec import EOS_TOKENS, MIX_COLUMNS, ORDER_COLUMN, Group, MixSpec
from .model import GroupNode, LevelNode, MixPlan
from .values import err

# --------------------------------------------------------------------------- execution
@without_gc
def execute_plan(catalog, plan: MixPlan, user_columns=True, canonical: bool = True):
    """Run the plan's query; validate data-dependent errors; resolve NATURAL weights.

    ``user_columns``: ``True`` (default) returns the user's whole projection (what the DB-API's
    MIX result rows show), ``False`` only the pointer columns (what training reads: the query
    then touches only sample_index's pointer columns and the MIX BY/WHERE/ORDER BY inputs), or a
    sequence of user column names (a subset, in the given order).

    Returns ``(pointers, spec)``: the pointer table (``MIX_COLUMNS`` [+ ``__mix_order``] + the
    requested user columns) in canonical order, by ``__mix_group``, then the ORDER BY keys when
    ordered, then ``(__mix_file_id, __mix_row)`` (whatever order DuckDB produced rows in), and the
    final spec. ``__mix_source`` / ``__mix_file`` are dictionary-encoded strings. When ordered,
    the canonical table carries ``__mix_order`` (int64 rank, ascending = consumption order).
    ``canonical=False`` skips that reordering (rows stay in DuckDB's order, which varies between
    runs): for callers that only hand the table to :class:`~mixsql.engine.MixEngine`, which
    derives its order from the values alone (one sort instead of two); ordered tables then carry
    the raw ORDER BY key columns ``__mix_order_<i>_<asc|desc>_<nf|nl>`` (see
    :func:`mixsql.shuffle.ordered_permutation`) instead of ``__mix_order``.
    """
    sql = plan.statement
    want = wanted_columns(plan, user_columns)
    ordered = plan.spec.ordered
    order_cols = list(plan.order_columns) if ordered else []
    if ordered and not order_cols:   # a MixPlan built by hand / by an older planner
        order_cols = [ORDER_COLUMN]
    internal = [MIX_COLUMNS[0], *plan.entry_columns, *(c for c in MIX_COLUMNS[1:] if c not in FILLED), *order_cols]
    fetch = [c for c in want if c not in plan.shared]
    if want == list(plan.user_columns) and plan.fetch_sql:
        query = plan.fetch_sql
    elif not want and plan.pointer_sql:
        query = plan.pointer_sql
    else:
        cols = ", ".join(f'"{c}"' for c in internal + fetch)
        query = f"SELECT {cols} FROM ({plan.sql})"
    try:
        table = catalog.con.sql(query, params=plan.params).to_arrow_table()
    except duckdb.Error as exc:
        raise SQLError(f"DuckDB failed running the MIX query: {str(exc).splitlines()[0]}", sql) from None
    n_leaves = len(plan.leaves)
    group_ids = to_numpy(table.column("__mix_group"), np.int32)
    leaf_rows = np.bincount(group_ids, minlength=n_leaves) if len(group_ids) else np.zeros(n_leaves, np.int64)
    entry_rows = {}
    for i, name in enumerate(plan.entry_columns, start=1):
        entry_rows[name] = np.bincount(to_numpy(table.column(i).drop_null(), np.int64), minlength=plan.n_entries)
    if plan.entry_columns:
        keep = [0] + list(range(1 + len(plan.entry_columns), table.num_columns))
        table = table.select(keep)
        internal = [c for c in internal if c not in plan.entry_columns]
    table = finish_pointers(catalog, table, group_ids, ordered, internal + fetch, want, plan.shared, canonical)
    group_ids = to_numpy(table.column("__mix_group"), np.int32)
    check_rows(catalog, plan, leaf_rows, entry_rows)

    # -- tokens
    spec = plan.spec
    leaf_tokens = None
    ntok = table.column("__mix_n_tokens")
    if spec.unit == "tokens":
        if ntok.null_count:
            src = table.filter(ntok.is_null()).column("__mix_source")[0].as_py()
            raise null_tokens_error(plan, ntok.null_count, src)
        tok = ntok.to_numpy(zero_copy_only=False).astype(np.float64) + EOS_TOKENS   # as packed
        leaf_tokens = np.bincount(group_ids, weights=tok, minlength=n_leaves) if len(tok) else np.zeros(n_leaves)

    return table, resolve_natural(plan, leaf_rows, leaf_tokens)


def null_tokens_error(plan: MixPlan, count: int, source: str) -> SQLError:
    return err(plan.statement, f"unit = 'tokens' but n_tokens is NULL for {count} selected rows (source "
                               f"{source!r} has no token counts); register it with a tokenizer or use "
                               "unit = 'samples'", plan.unit_node)


def resolve_natural(plan: MixPlan, leaf_rows: np.ndarray, leaf_tokens: np.ndarray | None) -> MixSpec:
    """The plan's final spec: NATURAL weights resolved from rows (or tokens) per leaf."""
    spec = plan.spec
    if plan.natural:
        measure = leaf_tokens if spec.unit == "tokens" else leaf_rows.astype(np.float64)
        weights = np.zeros(len(plan.leaves))
        natural_weights(plan.root, 1.0, measure, weights, force=plan.prior_natural)
        groups = tuple(Group(g.id, g.path, w, g.values) for g, w in zip(spec.groups, weights.tolist()))
        spec = MixSpec(**{**spec.__dict__, "groups": groups})
    return spec


def run_query(catalog, plan: MixPlan, columns: list[str], batch_rows: int = 1 << 20):
    """Record batches of the plan's query projected on ``columns``, streamed (never one table)."""
    cols = ", ".join(f'"{c}"' for c in columns)
    try:
        reader = catalog.con.sql(f"SELECT {cols} FROM ({plan.sql})", params=plan.params).to_arrow_reader(batch_rows)
        yield from reader
    except duckdb.Error as exc:
        raise SQLError(f"DuckDB failed running the MIX query: {str(exc).splitlines()[0]}", plan.statement) from None


FILLED = ("__mix_source", "__mix_file")


def check_rows(catalog, plan: MixPlan, leaf_rows: np.ndarray, entry_rows: dict) -> None:
    """Errors that need data: a listed value in no selected row, an empty OTHER, a nested MIX BY
    over an empty group. ``leaf_rows``: rows per leaf; ``entry_rows``: rows per entry, per depth
    with a multi-value group."""
    sql = plan.statement
    rows: dict = {}

    def count(node: LevelNode) -> int:
        if node.natural:   # discovered groups: leaves only, nothing listed to check
            return int(leaf_rows[node.groups[0].leaf:node.groups[-1].leaf + 1].sum())
        total = 0
        for gr in node.groups:
            rows[id(gr)] = count(gr.child) if gr.child is not None else int(leaf_rows[gr.leaf])
            total += rows[id(gr)]
        return total

    def check(node: LevelNode):
        if node.natural:
            return
        for gr in node.groups:
            n = rows[id(gr)]
            if n == 0 and gr.child is not None:
                raise err(sql, f"group {gr.path!r} has no rows, so its nested MIX BY has nothing to mix",
                           gr.value_nodes[0] if gr.value_nodes else gr.origin)
            if n == 0 and gr.other:
                raise err(sql, "OTHER matches no row: every selected row is in a listed group; remove OTHER",
                           gr.origin)
            if not gr.other and gr.value_nodes:
                per_value = entry_rows.get(f"__mix_e{node.depth}") if len(gr.values) > 1 else None
                for vi, vn in enumerate(gr.value_nodes):
                    if (int(per_value[gr.entries[vi]]) if per_value is not None else n) == 0:
                        raise err(sql, f"group value {gr.values[vi]!r} matches no selected row of MIX BY "
                                        f"{node.key_sql_node.sql('duckdb')}", vn,
                                   value_suggestion(catalog, plan, node, gr.values[vi]))
            if gr.child is not None:
                check(gr.child)

    count(plan.root)
    check(plan.root)


def wanted_columns(plan: MixPlan, user_columns) -> list[str]:
    if user_columns is True:
        return list(plan.user_columns)
    if user_columns is False or user_columns is None:
        return []
    from ..engine import CHUNK_COLUMNS   # always in chunks: asking for them needs nothing extra

    names = [c for c in dict.fromkeys(user_columns) if c in plan.user_columns or c not in CHUNK_COLUMNS]
    unknown = [c for c in names if c not in plan.user_columns]
    if unknown:
        raise ProgrammingError(f"user_columns {unknown} are not in the statement's projection "
                               f"(it selects {plan.user_columns})")
    return names


def to_numpy(col, dtype) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    # without nulls, numbers convert without a copy (and without pyarrow importing pandas)
    plain = col.null_count == 0 and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type))
    return col.to_numpy(zero_copy_only=plain).astype(dtype, copy=False)


def finish_pointers(catalog, table: pa.Table, group: np.ndarray, ordered: bool, names: list[str],
                     want: list[str], shared: dict, canonical: bool = True) -> pa.Table:
    """Canonical row order (group, [order,] file_id, row), __mix_group set to leaf ids,
    __mix_source / __mix_file filled (dictionary-encoded), columns in contract order."""
    fid = to_numpy(table.column("__mix_file_id"), np.int64)
    perm = None
    key_cols = order_key_columns(names) if ordered else []
    order_out = [c for c in names if c == ORDER_COLUMN or c in {k[0] for k in key_cols}]
    if canonical:
        if key_cols:
            keys = [(table.column(names.index(n)), d, f) for n, d, f in key_cols]
            perm = ordered_permutation(group, fid, to_numpy(table.column("__mix_row"), np.int64), keys)
            if len(perm) and (perm == np.arange(len(perm))).all():
                perm = None
        elif ordered:
            perm = pointer_order(group, to_numpy(table.column(ORDER_COLUMN), np.int64))
        else:
            perm = pointer_order(group, (fid << 40) | to_numpy(table.column("__mix_row"), np.int64))

    def reorder(c):
        if perm is None:   # one contiguous chunk: the engine then reads it without copying
            return c.combine_chunks() if isinstance(c, pa.ChunkedArray) and c.num_chunks != 1 else c
        if c.null_count == 0 and (pa.types.is_integer(c.type) or pa.types.is_floating(c.type)):
            return pa.array(to_numpy(c, c.type.to_pandas_dtype())[perm], c.type)
        return (c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c).take(pa.array(perm))

    n_int = len(names) - len([c for c in want if c not in shared])
    cols = {name: reorder(table.column(i)) for i, name in enumerate(names[:n_int])
            if name != "__mix_group" and not (canonical and name in order_out)}
    if canonical and key_cols:   # rows are in consumption order now: the rank is the position
        cols[ORDER_COLUMN] = pa.array(np.arange(len(group), dtype=np.int64))
        order_out = [ORDER_COLUMN]
    elif canonical and ordered:
        cols[ORDER_COLUMN] = reorder(table.column(names.index(ORDER_COLUMN)))
    cols["__mix_group"] = pa.array((group if perm is None else group[perm]).astype(np.int32, copy=False))
    fetched = [reorder(table.column(i)) for i in range(n_int, len(names))]
    if perm is not None:
        fid = fid[perm]
    files = catalog.con.sql(
        "SELECT f.file_id, f.path, s.name FROM files f JOIN sources s USING (source_id) ORDER BY f.file_id"
    ).fetchall()
    ids = np.array([f[0] for f in files], dtype=np.int64)
    if len(ids) and ids.min() >= 0:
        lut = np.full(max(int(ids.max()), int(fid.max(initial=0))) + 1, -1, np.int32)   # file_id -> files row
        lut[ids] = np.arange(len(ids), dtype=np.int32)
        pos = lut[fid]
        if len(pos) and int(pos.min()) < 0:
            raise SQLError("the catalog's sample_index references files missing from its files table; "
                           "refresh the affected source (REFRESH SOURCE name)", "")
    else:
        pos = (np.searchsorted(ids, fid) if len(ids) else np.zeros(len(fid), np.int64)).astype(np.int32)
    snames, sidx = np.unique(np.array([f[2] for f in files], dtype=object), return_inverse=True) \
        if files else (np.zeros(0, object), np.zeros(0, np.int64))
    cols["__mix_file"] = pa.DictionaryArray.from_arrays(pos, pa.array([f[1] for f in files], pa.string()))
    cols["__mix_source"] = pa.DictionaryArray.from_arrays(
        sidx.astype(np.int32)[pos] if len(pos) else np.zeros(0, np.int32), pa.array(list(snames), pa.string()))
    out = [*MIX_COLUMNS, *order_out]
    it = iter(fetched)
    arrays = [cols[c] for c in out] + [cols[shared[c]] if c in shared else next(it) for c in want]
    return pa.Table.from_arrays(arrays, names=out + want)


def leaf_span(g: GroupNode) -> tuple[int, int]:
    """[first, last + 1) of the leaves under ``g`` (leaves are numbered in tree order)."""
    if g.child is None:
        return g.leaf, g.leaf + 1
    return leaf_span(g.child.groups[0])[0], leaf_span(g.child.groups[-1])[1]


def natural_weights(node: LevelNode, scale: float, measure: np.ndarray, out: np.ndarray, force: bool) -> None:
    """Absolute leaf weights under ``node`` (whose own share is ``scale``) into ``out``: shares of
    ``measure`` (per leaf) on natural levels (all levels when ``force``), listed weights elsewhere."""
    if node.natural and all(g.child is None for g in node.groups[:1]):   # discovered: consecutive leaves
        lo, hi = node.groups[0].leaf, node.groups[-1].leaf + 1
        total = float(measure[lo:hi].sum())
        out[lo:hi] = scale * measure[lo:hi] / total if total > 0 else 0.0
        return
    use_data = node.natural or force
    raw = [float(measure[slice(*leaf_span(g))].sum()) if use_data else g.weight for g in node.groups]
    total = sum(raw)
    for g, r in zip(node.groups, raw):
        share = scale * (r / total if total > 0 else 0.0)
        if g.child is not None:
            natural_weights(g.child, share, measure, out, force)
        else:
            out[g.leaf] = share


def value_suggestion(catalog, plan: MixPlan, node: LevelNode, value):
    if not isinstance(value, str):
        return None
    try:
        rows = catalog.con.execute(
            f"SELECT DISTINCT CAST(__k AS VARCHAR) FROM (SELECT {node.key.sql('duckdb')} AS __k FROM "
            f"({plan.base_sql})) WHERE __k IS NOT NULL LIMIT 1000", plan.params).fetchall()
    except duckdb.Error:
        return None
    hit = D.suggest(value, [r[0] for r in rows])
    return repr(hit) if hit else None
