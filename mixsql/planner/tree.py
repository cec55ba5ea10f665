"""The mixture tree passes: MIX BY levels and their groups (listed values checked and coerced to
the key's type, weights, OTHER, nested levels), groups discovered from data for NATURAL levels,
the tree as lookup tables for :mod:`mixsql.groups`, and static weights and SCHEDULE steps."""
from __future__ import annotations

import duckdb

from .. import dialect as D
from .. import groups as G
from ..spec import ScheduleStep
from .model import NUMERIC, GroupNode, LevelNode, Membership, leaves_of, nodes_of
from .statement import Keys, Statement
from .values import coerce_value, duck_error, err, fmt_value, number, value_type


class TreeBuilder:
    """Builds the MIX BY tree of a statement: groups numbered in creation order (``gid``), leaves
    in tree order; levels without a list are *discovered* (their groups come from the data)."""

    def __init__(self, st: Statement, keys: Keys):
        self.st, self.keys = st, keys
        self.all_groups: list[GroupNode] = []
        self.discovered: dict[str, LevelNode] = {}   # path prefix -> natural level (for later SCHEDULE steps)

    def build(self, m: D.MixBy, parent: GroupNode | None, prefix: str, weights_from=None,
              register: bool = True) -> LevelNode:
        """The level ``m`` under ``parent``; ``weights_from``: the entries to read (a SCHEDULE
        step's); ``register=False`` builds a step's tree without numbering its groups."""
        sql = self.st.sql
        key, key_col, ktype = self.keys.of(m)
        natural = bool(m.args.get("natural")) or (not m.expressions and not m.args.get("schedule"))
        node = LevelNode(key=key, key_sql_node=m.this, natural=natural,
                         depth=0 if parent is None else parent.node.depth + 1, key_col=key_col,
                         key_type=ktype, parent=parent, origin=m, prefix=prefix)
        if m.args.get("schedule") and m is not self.st.mix:
            raise err(sql, "WITH SCHEDULE is only allowed on the outermost MIX BY", m)
        if natural:
            if register:
                self.discovered[prefix] = node
            elif prefix in self.discovered:   # a later SCHEDULE step: the groups step 0 discovered
                node.groups = [GroupNode(node, list(g.values), [], False, 1.0, None, m, g.path)
                               for g in self.discovered[prefix].groups]
            return node
        entries = weights_from if weights_from is not None else m.expressions
        seen: dict = {}
        other = None
        for g in entries:
            if g.args.get("other"):
                if other is not None:
                    raise err(sql, "OTHER is listed twice at this level", g)
                other = g
                vals, vnodes, path = [], [], "OTHER"
            else:
                vals, vnodes = self._values(g, m, ktype, seen)
                path = fmt_value(vals[0]) if len(vals) == 1 else ",".join(fmt_value(v) for v in vals)
            w = number(sql, g.args["weight"], "a weight")
            if w < 0:
                raise err(sql, f"weight {w:g} is negative; weights must be >= 0", g.args["weight"])
            gr = GroupNode(node, vals, vnodes, bool(g.args.get("other")), w, g.args["weight"], g, prefix + path)
            node.groups.append(gr)
            if register:
                gr.gid = len(self.all_groups)
                self.all_groups.append(gr)
        if entries and all(gr.weight == 0 for gr in node.groups):
            raise err(sql, "all weights are zero; at least one group needs a positive weight",
                      entries[0].args["weight"])
        for gr in node.groups:
            child_mix = gr.origin.args.get("mix") if isinstance(gr.origin, D.MixGroup) else None
            if child_mix is not None:
                gr.child = self.build(child_mix, gr, gr.path + "/", register=register)
        return node

    def _values(self, g, m, ktype: str, seen: dict) -> tuple[list, list]:
        """A group's listed values coerced to the key's type; a value listed twice is an error."""
        vals, vnodes = [], []
        for vn in g.expressions:
            v = coerce_value(self.st.sql, vn, ktype, m)
            hkey = ("v", v) if not isinstance(v, str) else ("s", v)
            if hkey in seen:
                raise err(self.st.sql, f"group value {v!r} is listed twice in MIX BY {m.this.sql('duckdb')}"
                                       " (each row must belong to exactly one group)", vn)
            seen[hkey] = vn
            vals.append(v)
            vnodes.append(vn)
        return vals, vnodes


def membership(nodes: list, below: int | None = None) -> Membership:
    """Number the entries of ``nodes`` and lay them out as lookup tables; ``below``: only the
    listed levels above that depth (what discovering that depth's groups needs)."""
    tables: dict = {}
    entries: dict = {}
    count = 0   # entries numbered so far
    root_other = None
    multi: set = set()
    depths = 0
    for node in nodes:
        if below is not None and (node.depth >= below or node.natural):
            continue
        depths = max(depths, node.depth + 1)
        parent = node.parent.gid if node.parent is not None else G.ROOT
        if node.natural:   # one entry per discovered group, numbered like the groups
            if node.groups:
                first = node.groups[0]
                t = tables.setdefault(("natural", node.depth, node.key_col), G.Table("natural", node.depth, node.key_col))
                t.add(parent, count, first.gid, first.leaf)
            count += len(node.groups)
            continue
        for g in node.groups:
            leaf = g.leaf if g.child is None else None
            if g.other:
                g.entries = [count]
                if node.depth == 0:
                    root_other = (count, g.gid, leaf)
                else:
                    t = tables.setdefault(("other", node.depth), G.Table("other", node.depth))
                    t.add(parent, count, g.gid, leaf)
                count += 1
                continue
            t = tables.setdefault(("values", node.depth, node.key_col),
                                  G.Table("values", node.depth, node.key_col, node.key_type))
            g.entries = list(range(count, count + len(g.values)))
            for vi, v in enumerate(g.values):
                t.add(parent, count, g.gid, leaf, v)
                entries[count] = (g, vi)
                count += 1
            if len(g.values) > 1:
                multi.add(node.depth)
    for t in tables.values():
        if t.kind == "values":
            t.vtype = value_type(t.vtype, t.v)
    return Membership(list(tables.values()), root_other, entries, count, depths, sorted(multi))


def discover(st: Statement, nodes: list, all_groups: list, source_sql: str, limit: int) -> None:
    """Give each WITH NATURAL level one group per distinct key value under its parent group
    (ascending, NULLS LAST: the order the query ranks them in), depth by depth."""
    sql = st.sql
    levels: dict = {}
    for n in nodes:
        if n.natural:
            levels.setdefault((n.depth, n.key_col), []).append(n)
    for (depth, key), naturals in sorted(levels.items()):
        above = membership(nodes, below=depth)
        parents = [n.parent.gid if n.parent is not None else G.ROOT for n in naturals]
        text = G.discovery_sql(source_sql, above.tables, above.root_other, depth, key, parents, limit + 1)
        try:
            rows = st.con.execute(text, st.params).fetchall()
        except duckdb.Error as exc:
            raise duck_error(sql, exc, st.tree) from None
        if len(rows) > limit:
            first = naturals[0].key_sql_node
            raise err(sql, f"MIX BY {first.sql('duckdb')} has more than {limit:,} distinct values (the "
                           f"max_discovered_groups setting): list the groups, group by a coarser expression, "
                           f"or raise it with SETTINGS (max_discovered_groups = <n>)", first)
        found: dict = {}
        for p, v in rows:
            found.setdefault(p, []).append(v)
        for n, p in zip(naturals, parents):
            if not found.get(p):
                raise err(sql, f"MIX BY {n.key_sql_node.sql('duckdb')} selects no rows", n.key_sql_node)
            for v in found[p]:
                g = GroupNode(n, [v], [], False, 1.0, None, n.origin, n.prefix + fmt_value(v), gid=len(all_groups))
                n.groups.append(g)
                all_groups.append(g)


def check_cast_duplicates(st: Statement, members: Membership, keys: Keys) -> None:
    """Listed values that are equal only once cast to the key's type (dates, enums, ...)."""
    col_type = dict(zip(keys.cols, keys.col_types))
    for t in members.tables:
        if t.kind == "values" and t.v and col_type[t.key].split("(")[0] not in (*NUMERIC, "BOOLEAN", "VARCHAR"):
            try:
                dup = st.con.execute(G.duplicate_entry_sql(t, col_type[t.key])).fetchall()
            except duckdb.Error as exc:
                raise duck_error(st.sql, exc, st.tree) from None
            if dup:
                gr, vi = members.entries[dup[0][0]]
                raise err(st.sql, f"group value {gr.values[vi]!r} is listed twice in MIX BY "
                                  f"{gr.node.key_sql_node.sql('duckdb')} (each row must belong to exactly one group)",
                          gr.value_nodes[vi])


def static_weights(node: LevelNode, scale: float, out: list) -> None:
    """Absolute leaf weights under ``node`` (whose own share is ``scale``) from listed weights."""
    total = sum(g.weight for g in node.groups)
    for g in node.groups:
        share = scale * (g.weight / total if total > 0 else 0.0)
        if g.child is not None:
            static_weights(g.child, share, out)
        else:
            out[g.leaf] = share


def read_schedule(st: Statement, builder: TreeBuilder, root: LevelNode, leaves: list) -> tuple:
    """``WITH SCHEDULE (AT STEP n (...), ...)``: one ScheduleStep per step, weights per leaf; every
    step lists the same groups as step 0, steps increase from 0."""
    sql = st.sql
    schedule_nodes = st.mix.args["schedule"].expressions
    paths = [g.path for g in leaves]
    path_set = set(paths)
    steps = []
    prev = None
    for i, sn in enumerate(schedule_nodes):
        step = number(sql, sn.this, "AT STEP")
        if step < 0 or not float(step).is_integer():
            raise err(sql, "AT STEP needs a non-negative whole number", sn.this)
        if i == 0 and step != 0:
            raise err(sql, "the first SCHEDULE entry must be AT STEP 0 (weights from the start)", sn.this)
        if prev is not None and step <= prev:
            raise err(sql, f"SCHEDULE steps must increase: AT STEP {step:g} comes after AT STEP {prev:g}", sn.this)
        prev = step
        sub = builder.build(st.mix, None, "", weights_from=sn.expressions, register=False) if i else root
        sub_leaves = leaves_of(sub)
        sub_paths = [g.path for g in sub_leaves]
        if len(sub_paths) != len(paths) or set(sub_paths) != path_set:
            missing = sorted(path_set - set(sub_paths))
            extra = sorted(set(sub_paths) - path_set)
            detail = (f"missing {', '.join(missing)}" if missing else "") + ("; " if missing and extra else "") + \
                     (f"unexpected {', '.join(extra)}" if extra else "")
            raise err(sql, f"AT STEP {step:g} must list the same groups as AT STEP 0 ({detail})", sn)
        steps.append(ScheduleStep(int(step), _step_weights(sub, sub_leaves, paths)))
    return tuple(steps)


def _step_weights(sub: LevelNode, sub_leaves: list, paths: list) -> tuple:
    """A step tree's leaf weights, in the order of step 0's leaf ``paths``."""
    w = [0.0] * len(sub_leaves)
    saved = [g.leaf for g in sub_leaves]
    for j, g in enumerate(sub_leaves):
        g.leaf = j
    static_weights(sub, 1.0, w)
    for g, leaf in zip(sub_leaves, saved):
        g.leaf = leaf
    by_path = {g.path: w[j] for j, g in enumerate(sub_leaves)}
    return tuple(by_path[p] for p in paths)


__all__ = ["TreeBuilder", "membership", "discover", "check_cast_duplicates", "static_weights", "read_schedule",
           "nodes_of", "leaves_of"]
