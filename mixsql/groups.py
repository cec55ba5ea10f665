"""Group membership of a MIX BY tree, evaluated by DuckDB once per row with lookup joins.

The planner projects each distinct MIX BY key expression once per selected row
(``__mix_k<j>``) and numbers every group of the tree (``g``, any order), every value of a
listed group and every OTHER / discovered group (an *entry* ``e``), and every leaf (``l``).
Membership is then resolved depth by depth (``__mix_d<depth>``), each level a LEFT JOIN on
small tables of ``(p, v, e, g, l)``: parent group, key value, entry, group, leaf (NULL for a
group with a nested MIX BY); a row's group at a depth is ``g`` of the table that matched:

* ``values``: the listed values of the levels at that depth sharing a key column, shipped as
  one JSON string literal (DuckDB binds long ``VALUES`` or list literals in quadratic time; one
  JSON string parses in linear time);
* ``natural``: ``WITH NATURAL`` levels, ranked in the query itself: ``row_number()`` over the
  DISTINCT (parent, key) pairs, ordered by key NULLS LAST, exactly the order
  :func:`discovery_sql` lists them in at plan time, so no discovered value travels as text;
* ``other``: OTHER of each level below the root, joined on the parent group only (the
  root's OTHER is a constant).

Keys match with ``IS NOT DISTINCT FROM`` (a listed NULL matches NULL keys, DuckDB casts the
values to the key's type as it does for ``key = 'literal'``). OTHER takes the rows no table
matched, NULL keys included unless NULL is listed. A row's ``__mix_group`` is the leaf of the
deepest level it reached; rows without one are not selected. Cost: O(rows + entries), whatever
the number of groups.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

ROOT = -1   # parent group id of the root level's rows


@dataclass
class Table:
    """One lookup table of a depth: ``kind`` values | natural | other."""

    kind: str
    depth: int
    key: str | None = None        # key column the rows match on (None for other)
    vtype: str = "VARCHAR"        # DuckDB type the listed values are read as (values tables)
    # values / other: one row per entry; natural: one row per level (its first e, g, l)
    p: list = field(default_factory=list)
    v: list = field(default_factory=list)
    e: list = field(default_factory=list)
    g: list = field(default_factory=list)
    l: list = field(default_factory=list)  # noqa: E741 - the leaf column

    def add(self, p: int, e: int, g: int, leaf: int | None, v=None) -> None:
        self.p.append(p)
        self.e.append(e)
        self.g.append(g)
        self.l.append(leaf)
        if self.kind == "values":
            self.v.append(v)


def string_literal(text: str) -> str:
    """SQL string literal (DuckDB: quotes doubled, backslashes literal)."""
    return "'" + text.replace("'", "''") + "'"


def json_rows(columns: dict[str, tuple[str, list]]) -> str:
    """A relation of the given ``{name: (duckdb_type, values)}`` columns, from one JSON literal."""
    doc = json.dumps({n: vals for n, (_, vals) in columns.items()}, separators=(",", ":"))
    shape = json.dumps({n: [typ] for n, (typ, _) in columns.items()}, separators=(",", ":"))
    cols = ", ".join(f"unnest(__j.{n}) AS {n}" for n in columns)
    return f"(SELECT {cols} FROM (SELECT json_transform({string_literal(doc)}, {string_literal(shape)}) AS __j))"


def _parent(depth: int) -> str:
    return f"__mix_s.__mix_g{depth - 1}" if depth else str(ROOT)


def ranking_sql(source: str, depth: int, key: str, parents: str) -> str:
    """(p, v, r): distinct keys of the rows under ``parents`` (a relation of p), ranked per parent."""
    parent = _parent(depth)
    return (f"(SELECT p, v, row_number() OVER (PARTITION BY p ORDER BY v NULLS LAST) - 1 AS r FROM "
            f"(SELECT DISTINCT {parent} AS p, __mix_s.{key} AS v FROM {source} __mix_s "
            f"WHERE {parent} IN (SELECT p FROM {parents})))")


def _relation(t: Table, source: str) -> str:
    ints = "INTEGER"
    if t.kind == "values":
        return json_rows({"p": (ints, t.p), "v": (t.vtype, t.v), "e": (ints, t.e), "g": (ints, t.g), "l": (ints, t.l)})
    base = json_rows({"p": (ints, t.p), "e": (ints, t.e), "g": (ints, t.g), "l": (ints, t.l)})
    if t.kind == "other":
        return base
    return (f"(SELECT __r.p, __r.v, __b.e + __r.r AS e, __b.g + __r.r AS g, __b.l + __r.r AS l "
            f"FROM {ranking_sql(source, t.depth, t.key, base)} __r JOIN {base} __b ON __b.p = __r.p)")


def _ctes(source_sql: str, tables: list[Table], root_other: tuple | None, depths: int) -> list[str]:
    ctes = [f"__mix_src AS ({source_sql})"]
    prev = "__mix_src"
    for d in range(depths):
        parent = _parent(d)
        joins, cols = [], {"g": [], "e": [], "l": []}
        for i, t in enumerate(x for x in tables if x.depth == d):
            alias = f"__mix_t{d}_{i}"
            on = [f"{alias}.p = {parent}"] if d else []
            if t.key is not None:
                on.append(f"{alias}.v IS NOT DISTINCT FROM __mix_s.{t.key}")
            joins.append(f"LEFT JOIN {_relation(t, prev)} {alias} ON {' AND '.join(on) or 'TRUE'}")
            for c in cols:
                cols[c].append(f"{alias}.{c}")
        if d == 0 and root_other is not None:
            for c, value in zip(("e", "g", "l"), root_other):
                cols[c].append("NULL" if value is None else str(int(value)))
        sel = ", ".join(f"{_coalesce(cols[c])} AS __mix_{c}{d}" for c in ("g", "e", "l"))
        ctes.append(f"__mix_d{d} AS (SELECT __mix_s.*, {sel} FROM {prev} __mix_s {' '.join(joins)})")
        prev = f"__mix_d{d}"
    return ctes


def _coalesce(parts: list[str]) -> str:
    if not parts:
        return "CAST(NULL AS INTEGER)"
    return parts[0] if len(parts) == 1 else f"coalesce({', '.join(parts)})"


def membership_sql(source_sql: str, keys: list[str], tables: list[Table], root_other: tuple | None,
                   depths: int, entry_depths: list[int]) -> str:
    """The selection with ``__mix_group`` (leaf id) first, then ``__mix_e<d>`` for each depth of
    ``entry_depths``, then ``source_sql``'s columns without the key columns ``keys``; rows in
    no leaf are left out. ``root_other``: (e, g, leaf) of the root's OTHER, or None."""
    ctes = _ctes(source_sql, tables, root_other, depths)
    leaf = _coalesce([f"__mix_l{d}" for d in reversed(range(depths))])
    internal = [f"__mix_{c}{d}" for d in range(depths) for c in ("g", "e", "l")]
    entries = "".join(f"__mix_e{d}, " for d in entry_depths)
    exclude = ", ".join(keys + internal)
    return (f"WITH {', '.join(ctes)} SELECT * FROM (SELECT {leaf} AS __mix_group, {entries}* EXCLUDE ({exclude}) "
            f"FROM __mix_d{depths - 1}) WHERE __mix_group IS NOT NULL")


def discovery_sql(source_sql: str, tables: list[Table], root_other: tuple | None, depth: int, key: str,
                  parents: list[int], limit: int) -> str:
    """(p, v) of the distinct keys under each of ``parents`` at ``depth``, in ranking order (at
    most ``limit`` rows); ``tables``: the listed levels above ``depth``."""
    ctes = _ctes(source_sql, [t for t in tables if t.depth < depth], root_other, depth)
    prev = f"__mix_d{depth - 1}" if depth else "__mix_src"
    ranked = ranking_sql(prev, depth, key, json_rows({"p": ("INTEGER", parents)}))
    return f"WITH {', '.join(ctes)} SELECT p, v FROM {ranked} ORDER BY p, r LIMIT {int(limit)}"


def duplicate_entry_sql(t: Table, key_type: str) -> str:
    """The second of two listed values equal once cast to ``key_type`` (entry id), if any."""
    rel = json_rows({"p": ("INTEGER", t.p), "v": (t.vtype, t.v), "e": ("INTEGER", t.e)})
    return (f"SELECT max(e) FROM {rel} GROUP BY p, CAST(v AS {key_type}) HAVING count(*) > 1 "
            "ORDER BY 1 LIMIT 1")


__all__ = ["Table", "ROOT", "membership_sql", "discovery_sql", "duplicate_entry_sql", "json_rows",
           "string_literal"]
