"""Planner: a MIX statement -> one DuckDB query + a typed :class:`~mixsql.spec.MixSpec`.

``plan()`` parses and validates statically (names, values, weights, settings, schedule,
algorithm) and builds the query with sqlglot expressions. The query returns one row per
selected sample: ``__mix_group`` (the leaf, resolved by lookup joins over the MIX BY tree, see
:mod:`mixsql.groups`: linear in rows plus listed values, whatever the number of groups), the
entry columns ``__mix_e<depth>`` of depths with multi-value groups, the other
``spec.MIX_COLUMNS`` pointer columns, the ORDER BY keys
(``__mix_order_<i>_<asc|desc>_<nf|nl>``, ranked in numpy by
:func:`mixsql.shuffle.ordered_permutation`) when ORDER BY is given, then the user's projection.
``execute_plan()`` runs it, checks what needs data (a listed value in no row, an empty OTHER, a
nested MIX over an empty group) and resolves NATURAL weights; its pointer table drops the entry
columns.

Semantics fixed here:

* ``OTHER`` is every row whose MIX BY value matches no value listed at that level, NULL
  included; rows matching no group are not selected.
* ``MIX BY e`` without ``WITH`` (or ``WITH NATURAL``) makes one group per distinct value of
  ``e`` (found by a DISTINCT query at plan time, ascending, NULLS LAST; at most
  ``SETTINGS (max_discovered_groups = n)``, default :data:`MAX_DISCOVERED_GROUPS`), weighted by its
  available share.
* Plain ``LIMIT n`` in a MIX statement is ``LIMIT n SAMPLES``: a budget on the mixed stream.
* ``ORDER BY`` is the consumption order inside each group (ties broken by file and row).
* ``AT STEP n`` is a training step (``ScheduleStep.step``). With ``SETTINGS (batch_size = b)``
  (samples, or tokens under ``unit = 'tokens'``, per global step) the engine starts it at chunk
  ``ceil(n * b / chunk_size)``, deterministically. Without batch_size the server refuses a
  SCHEDULE; in-process ``mixsql.torch.MixDataset`` maps steps through the training loop's batch
  size (unpacked samples, or packed sequences under ``unit = 'tokens'``) or follows
  ``set_step(step)`` / ``feedback(step, ...)`` when iterated in-process, and otherwise raises
  before any data moves.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from sqlglot import exp

from . import dialect as D
from . import groups as G
from .errors import ProgrammingError, SQLError
from .gctools import without_gc
from .shuffle import order_key_columns, order_key_name, ordered_permutation, pointer_order
from .spec import EOS_TOKENS, MIX_COLUMNS, ORDER_COLUMN, Algorithm, Budget, Group, MixSpec, ScheduleStep, Shuffle
from .source_statements import RegistrationRequest, registration_request  # noqa: F401  (re-exported)

# A chunk is a unit of composition, resume and distribution: 512 samples, or (unit = 'tokens')
# 65,536 tokens, i.e. 32 sequences of 2,048, so per-chunk overhead stays small next to the reading.
DEFAULT_CHUNK_SIZE = {"samples": 512, "tokens": 65536}


SETTINGS = {
    "seed": "int>=0", "chunk_size": "int>0", "unit": ("samples", "tokens"),
    "on_exhausted": ("stop", "redistribute", "repeat"), "max_epochs": "int>0",
    "shuffle_block": "int>0", "shuffle_window": "int>0", "shuffle_shards": "int>=0", "batch_size": "int>0",
    "max_discovered_groups": "int>0",
}
# Most groups one MIX BY level may discover (WITH NATURAL / no WITH list): a guard against
# grouping by a near-unique column by mistake; SETTINGS (max_discovered_groups = n) raises it.
MAX_DISCOVERED_GROUPS = 1_000_000
# samples columns that are pointer columns too: a user column selecting one shares its array
_SHARED = {"source": "__mix_source", "file": "__mix_file", "row": "__mix_row", "n_bytes": "__mix_n_bytes",
           "n_tokens": "__mix_n_tokens", "file_id": "__mix_file_id", "loc_offset": "__mix_offset",
           "loc_length": "__mix_length"}
_SHARED_TYPES = {"__mix_source": "VARCHAR", "__mix_file": "VARCHAR", "__mix_row": "BIGINT",
                 "__mix_n_bytes": "BIGINT", "__mix_n_tokens": "BIGINT", "__mix_file_id": "INTEGER",
                 "__mix_offset": "BIGINT", "__mix_length": "INTEGER"}
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
            "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "REAL")


def known_algorithms() -> list[str]:
    try:
        from .algorithms import ALGORITHMS
        return sorted(ALGORITHMS)
    except Exception:  # noqa: BLE001 - algorithms module optional at plan time
        return ["ado", "loss_average"]


@dataclass(slots=True)
class _Node:
    """One MIX BY level during planning."""

    key: exp.Expr                  # the (alias-resolved) MIX BY expression
    key_sql_node: exp.Expr         # original node, for error positions
    natural: bool                  # weights resolved from data
    groups: list = field(default_factory=list)   # list[_Grp]
    depth: int = 0
    key_col: str = ""              # the query's column of the key (``__mix_k<j>``, shared by equal keys)
    key_type: str = ""             # DuckDB type of the key
    parent: Any = None             # the _Grp this level is nested in (None at the root)
    origin: Any = None             # the MixBy node
    prefix: str = ""               # path prefix of its groups


@dataclass(slots=True)
class _Grp:
    node: _Node
    values: list                   # python values ([] for OTHER)
    value_nodes: list              # sqlglot nodes of the values (positions)
    other: bool
    weight: float                  # raw (un-normalised) weight; 1.0 placeholder for natural
    weight_node: Any
    origin: Any                    # the MixGroup node (or the MixBy for discovered groups)
    path: str
    child: _Node | None = None
    leaf: int | None = None
    gid: int | None = None         # group number in the membership tables
    entries: list | None = None    # entry id per listed value (one for OTHER); None when discovered


@dataclass
class _Membership:
    """The tree as :mod:`mixsql.groups` lookup tables."""

    tables: list                   # list[groups.Table]
    root_other: tuple | None       # (entry, gid, leaf) of the root's OTHER
    entries: dict                  # entry id of a listed value -> (group, value index)
    n_entries: int
    depths: int
    entry_depths: list             # depths with a multi-value group (their entry column is fetched)


@dataclass
class MixPlan:
    sql: str                       # the DuckDB query
    params: Any                    # parameters for the query (as given)
    spec: MixSpec                  # weights final unless NATURAL (resolved by execute_plan)
    statement: str                 # the original statement text
    user_columns: list[str]        # the user's projection output names, in order
    # ``__mix_e<depth>`` columns the query returns after ``__mix_group`` (the entry, i.e. listed
    # value, each row matched at that depth: execute_plan counts rows per value with them)
    entry_columns: list = field(default_factory=list)
    n_entries: int = 0
    root: Any = field(default=None, repr=False)
    leaves: list = field(default_factory=list, repr=False)
    natural: bool = False
    prior_natural: bool = False
    unit_node: Any = field(default=None, repr=False)
    base_sql: str = ""             # user's selection without MIX modifiers (for suggestions)
    # user output columns that are the same value as a pointer column (``SELECT *``'s row,
    # file, ...): not fetched from DuckDB, filled from the pointer column by execute_plan
    shared: dict = field(default_factory=dict, repr=False)   # user column -> MIX column
    fetch_sql: str = ""            # query for the user columns not in ``shared`` (+ pointers)
    pointer_sql: str = ""          # query for the pointer columns only (execute_plan(user_columns=False))
    # ORDER BY: the key columns the query returns (``__mix_order_<i>_<asc|desc>_<nf|nl>``, ranked
    # by execute_plan / the engine), or ``[ORDER_COLUMN]`` when a key's type is ranked by DuckDB
    order_columns: list = field(default_factory=list)


# --------------------------------------------------------------------------- helpers
def _err(sql, message, node, suggestion=None) -> SQLError:
    return D.node_error(sql, message, node, suggestion)


def _did_you_mean(word, choices):
    hit = D.suggest(str(word), [str(c) for c in choices])
    return repr(hit) if hit is not None and isinstance(word, str) else (hit if hit is not None else None)


def _number(sql, node, what) -> float:
    if isinstance(node, exp.Neg):
        return -_number(sql, node.this, what)
    if isinstance(node, exp.Literal) and node.is_number:
        return float(node.this)
    raise _err(sql, f"{what} must be a number", node)


def _pyvalue(node):
    """Python value of a setting/option value node."""
    if isinstance(node, exp.Neg):
        v = _pyvalue(node.this)
        return -v if isinstance(v, (int, float)) else v
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        f = float(node.this)
        return int(f) if f.is_integer() and "." not in node.this and "e" not in node.this.lower() else f
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Var) and node.name.upper() == "NATURAL":
        return "natural"
    return node.name


def _duck_error(sql: str, exc: Exception, select: exp.Expr | None = None) -> SQLError:
    """Turn a DuckDB binder/parser error into a positioned SQLError where possible."""
    import re

    text = str(exc).split("\n")[0]
    m = re.search(r'column "([^"]+)" not found', text) or re.search(r'Referenced column "([^"]+)"', text)
    if m and select is not None:
        for col in select.find_all(exp.Column):
            if col.name == m.group(1):
                return _err(sql, f"unknown column {m.group(1)!r}: {text}", col)
    return SQLError(f"DuckDB rejected the statement: {text}", sql)


def _walk_scope(node):
    """Columns of ``node`` outside nested subqueries (their own scope) and MIX BY clauses."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, exp.Column):
            yield n
            continue
        for child in n.iter_expressions():
            if isinstance(child, (exp.Subquery, exp.Select, exp.Union, D.MixBy)) and child is not node:
                continue
            stack.append(child)


def _mix_levels(mix) -> list:
    """The statement's MIX BY levels, outermost first (nested levels of every SCHEDULE step too),
    found without walking the group lists (which may hold hundreds of thousands of nodes)."""
    out, stack = [], [mix]
    while stack:
        m = stack.pop()
        out.append(m)
        entries = list(m.expressions)
        if m.args.get("schedule"):
            entries += [g for st in m.args["schedule"].expressions for g in st.expressions]
        stack.extend(g.args["mix"] for g in reversed(entries) if g.args.get("mix"))
    return out


def _skeleton(tree, levels):
    """Every node of the statement except those inside MIX BY group lists."""
    yield from tree.walk(prune=lambda n: isinstance(n, D.MixBy))
    for m in levels:
        yield from m.this.walk()


# --------------------------------------------------------------------------- planning
@without_gc   # thousands of groups: the collector's passes would cost more than planning
def plan(catalog, sql: str, params=None) -> MixPlan:
    """Parse and validate a MIX (or EXPLAIN MIX) statement and build its DuckDB query."""
    tree = D.parse(sql)
    if isinstance(tree, D.ExplainMix):
        tree = tree.this
    if not isinstance(tree, exp.Select) or not tree.args.get("mix"):
        nested = tree.find(D.MixBy) if isinstance(tree, exp.Expr) else None
        if nested is not None:
            raise _err(sql, "MIX BY must be in the outermost SELECT (not in a subquery or a set operation)", nested)
        raise SQLError("not a MIX statement: expected SELECT ... FROM samples ... MIX BY <expr> ...", sql)
    mix: D.MixBy = tree.args["mix"]
    levels: list[D.MixBy] = _mix_levels(mix)
    for sub in _skeleton(tree, levels):
        if isinstance(sub, exp.Select) and sub is not tree and sub.args.get("mix"):
            raise _err(sql, "MIX BY must be in the outermost SELECT, not in a subquery", sub.args["mix"])
    con = catalog.con

    # -- shape of the selection
    for key, what in (("group", "GROUP BY"), ("having", "HAVING"), ("distinct", "DISTINCT"),
                      ("qualify", "QUALIFY"), ("offset", "OFFSET"), ("sample", "USING SAMPLE")):
        if tree.args.get(key):
            msg = (f"{what} cannot be combined with MIX BY: MIX needs one row per sample "
                   "(aggregate in a plain query, or move it into a subquery/join)")
            span = D.node_span(tree.args[key])
            if span is None:  # keyword-only nodes carry no position: find the keyword itself
                m = re.search(r"\b" + what.split()[0] + r"\b", sql, re.IGNORECASE)
                span = (m.start(), m.end() - 1) if m else None
            raise D.error_at(sql, msg, span[0] if span else None, span[1] if span else None)
    for proj in tree.expressions:
        agg = next((a for a in proj.find_all(exp.AggFunc) if not a.find_ancestor(exp.Window)), None)
        if agg is not None:
            span = D.node_span(agg)
            m = re.search(r"(\w+)\s*\(\s*$", sql[:span[0]]) if span else None
            start = m.start(1) if m else (span[0] if span else None)
            raise D.error_at(sql, f"aggregate function {agg.sql('duckdb')} cannot be used with MIX BY: "
                                  "MIX needs one row per sample", start, span[1] if span else None)
    sources = [tree.args["from_"].this] if tree.args.get("from_") else []
    sources += [j.this for j in tree.args.get("joins") or []]
    samples_tbl = next((t for t in sources if isinstance(t, exp.Table) and t.name.lower() == "samples"
                        and not t.args.get("db")), None)
    if samples_tbl is None:
        raise _err(sql, "MIX needs the catalog's samples view in FROM: SELECT ... FROM samples [JOIN ...] MIX BY ...",
                   sources[0] if sources else mix)
    qual = samples_tbl.alias_or_name

    # -- columns: unknown names with did-you-mean
    ctes = {c.alias_or_name.lower() for c in (tree.args.get("with_").expressions if tree.args.get("with_") else [])}
    known: dict[str, list[str]] = {}
    all_known = True
    for t in sources:
        if isinstance(t, exp.Table) and t.name.lower() not in ctes and not isinstance(t.this, exp.Func):
            try:
                bare = t.copy()
                bare.set("alias", None)
                desc = con.execute(f"SELECT * FROM {bare.sql('duckdb')} LIMIT 0").description
                known[t.alias_or_name.lower()] = [d[0] for d in desc]
                continue
            except duckdb.Error as exc:
                raise _err(sql, f"unknown table {t.name!r}: {str(exc).splitlines()[0]}", t) from None
        all_known = False
    aliases = {p.alias.lower(): p.this for p in tree.expressions if isinstance(p, exp.Alias)}
    every = sorted({c for cols in known.values() for c in cols})
    lower_every = {c.lower() for c in every}
    for col in [*_walk_scope(tree), *(c for m in levels for c in _walk_scope(m.this))]:
        name = col.name
        if isinstance(col.this, exp.Star) or col.find_ancestor(exp.Lambda):
            continue
        tbl = col.table.lower() if col.table else ""
        if tbl:
            if tbl in known:
                if name.lower() not in {c.lower() for c in known[tbl]}:
                    raise _err(sql, f"unknown column {name!r} in {col.table}", col.this,
                               _did_you_mean(name, known[tbl]))
            elif all_known and tbl not in lower_every:
                raise _err(sql, f"unknown table or alias {col.table!r}", col.args["table"],
                           _did_you_mean(col.table, list(known)))
            continue
        if all_known and name.lower() not in lower_every and name.lower() not in aliases:
            raise _err(sql, f"unknown column {name!r}", col, _did_you_mean(name, every + list(aliases)))

    def resolve(e: exp.Expr) -> exp.Expr:
        """Copy of ``e`` with bare references to projection aliases replaced by their expression."""
        e = e.copy()
        if isinstance(e, exp.Column) and not e.table and e.name.lower() in aliases and e.name.lower() not in lower_every:
            return aliases[e.name.lower()].copy()
        for c in list(e.find_all(exp.Column)):
            if not c.table and c.name.lower() in aliases and c.name.lower() not in lower_every:
                c.replace(aliases[c.name.lower()].copy())
        return e

    # -- base selection (the user's query without MIX modifiers)
    detached = {k: tree.args.get(k) for k in ("mix", "mix_using", "mix_settings", "order", "limit")}
    for k in detached:   # copy the selection without its MIX clauses (thousands of groups)
        tree.set(k, None)
    base = tree.copy()
    for k, v in detached.items():
        tree.set(k, v)
    positional = any(isinstance(p, exp.Placeholder) and not p.name for p in _skeleton(tree, levels))
    if positional:
        for part in [m.this for m in levels] + ([tree.args["order"]] if tree.args.get("order") else []):
            ph = part.find(exp.Placeholder)
            if ph is not None:
                raise _err(sql, "? parameters are not supported in MIX BY or ORDER BY of a MIX statement; "
                                "use $name parameters or literals there", ph)

    # -- settings
    settings: dict[str, Any] = {}
    unit_node = None
    if tree.args.get("mix_settings"):
        for opt in tree.args["mix_settings"].expressions:
            key = opt.this.name.lower()
            if key not in SETTINGS:
                raise _err(sql, f"unknown setting {opt.this.name!r}; settings are {', '.join(SETTINGS)}", opt.this,
                           _did_you_mean(opt.this.name, SETTINGS))
            if key in settings:
                raise _err(sql, f"setting {key!r} is given twice", opt.this)
            val = _pyvalue(opt.expression)
            rule = SETTINGS[key]
            if isinstance(rule, tuple):
                if not isinstance(val, str) or val.lower() not in rule:
                    raise _err(sql, f"bad value for {key}: expected one of {', '.join(rule)}", opt.expression,
                               _did_you_mean(str(val), rule))
                val = val.lower()
            elif key == "max_epochs" and val is None:
                pass
            else:
                ok = isinstance(val, (int, float)) and not isinstance(val, bool) and float(val).is_integer()
                if not ok or (rule == "int>0" and val <= 0) or (rule == "int>=0" and val < 0):
                    bound = "a positive integer" if rule == "int>0" else "a non-negative integer"
                    raise _err(sql, f"bad value for {key}: expected {bound}", opt.expression)
                val = int(val)
            settings[key] = val
            if key == "unit":
                unit_node = opt.expression
    unit = settings.get("unit", "samples")
    chunk_size = settings.get("chunk_size", DEFAULT_CHUNK_SIZE[unit])

    # -- budget
    budget = None
    limit = tree.args.get("limit")
    if limit is not None:
        amount_node = limit.args.get("expression")
        kind = limit.args["unit"].lower() if isinstance(limit, D.MixLimit) else "samples"
        if not isinstance(amount_node, exp.Literal) or not amount_node.is_number:
            raise _err(sql, "LIMIT in a MIX statement must be a number, e.g. LIMIT 2e9 TOKENS", amount_node or limit)
        amount = float(amount_node.this)
        if amount <= 0 or not amount.is_integer():
            raise _err(sql, "LIMIT must be a positive whole number", amount_node)
        budget = Budget(int(amount), kind)

    # -- algorithm
    algorithm = None
    prior_natural = False
    if tree.args.get("mix_using"):
        using = tree.args["mix_using"]
        name = using.this.name.lower()
        algos = known_algorithms()
        if name not in algos:
            raise _err(sql, f"unknown mixing algorithm {using.this.name!r}; known: {', '.join(a.upper() for a in algos)}",
                       using.this, (D.suggest(name, algos) or "").upper() or None)
        args = []
        for opt in using.expressions or []:
            v = _pyvalue(opt.expression)
            if opt.this.name.lower() == "prior" and v == "natural":
                prior_natural = True
            args.append((opt.this.name.lower(), v))
        algorithm = Algorithm(name, tuple(args))

    # -- key types (bind only, no data read): one column per distinct MIX BY expression
    key_index: dict[str, int] = {}
    key_exprs: list[exp.Expr] = []
    level_key: dict[int, int] = {}
    for m in levels:
        key = resolve(m.this)
        if not isinstance(key, (exp.Column, exp.Func, exp.Literal, exp.Paren, exp.Boolean)):
            key = exp.Paren(this=key)
        level_key[id(m)] = key_index.setdefault(key.sql("duckdb"), len(key_exprs))
        if level_key[id(m)] == len(key_exprs):
            key_exprs.append(key)
    key_cols = [f"__mix_k{j}" for j in range(len(key_exprs))]
    probe = base.copy()
    probe.set("expressions", [k.copy().as_(c) for k, c in zip(key_exprs, key_cols)])
    try:
        desc = con.execute(f"SELECT * FROM ({probe.sql('duckdb')}) LIMIT 0", params).description
    except duckdb.Error as exc:
        raise _duck_error(sql, exc, tree) from None
    col_types = [str(d[1]).upper() for d in desc]
    key_types = {mid: col_types[j] for mid, j in level_key.items()}

    def literal(v) -> exp.Expr:
        if v is None:
            return exp.Null()
        if isinstance(v, bool):
            return exp.Boolean(this=v)
        if isinstance(v, (int, float)):
            return exp.Literal.number(repr(v) if isinstance(v, float) else str(v))
        return exp.Literal.string(str(v))

    def coerce(vnode, ktype, mixnode):
        """(python value) of a group value node for a MIX BY key of type ``ktype``."""
        if ktype == "VARCHAR" and (isinstance(vnode, exp.Identifier) or (isinstance(vnode, exp.Literal)
                                                                        and vnode.is_string)):
            return vnode.this   # the common case, first
        if isinstance(vnode, exp.Null):
            return None
        raw = _pyvalue(vnode)
        if isinstance(vnode, exp.Var):
            raise _err(sql, "NATURAL is not a group value (did you mean WITH NATURAL?)", vnode)
        base_t = ktype.split("(")[0]
        if base_t in _NUMERIC:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                try:
                    raw = float(raw)
                    raw = int(raw) if raw.is_integer() and base_t not in ("FLOAT", "DOUBLE", "REAL", "DECIMAL") else raw
                except (TypeError, ValueError):
                    raise _err(sql, f"group value {raw!r} is not a number, but MIX BY {mixnode.this.sql('duckdb')} "
                                    f"is {ktype}", vnode) from None
            return float(raw) if isinstance(raw, float) else raw
        if base_t == "BOOLEAN":
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("true", "false"):
                return str(raw).lower() == "true"
            raise _err(sql, f"group value {raw!r} is not TRUE or FALSE, but MIX BY {mixnode.this.sql('duckdb')} "
                            "is BOOLEAN", vnode, D.suggest(str(raw), ["TRUE", "FALSE"]))
        if isinstance(raw, bool):
            return "true" if raw else "false"
        if isinstance(raw, float) and isinstance(vnode, exp.Literal):
            return vnode.this
        return str(raw)

    # -- the mixture tree: groups numbered in creation order (gid), leaves in tree order
    all_groups: list[_Grp] = []
    discovered: dict[str, _Node] = {}   # path prefix -> natural level (for later SCHEDULE steps)

    def build(m: D.MixBy, parent: _Grp | None, prefix: str, weights_from=None, register=True) -> _Node:
        ktype = key_types[id(m)]
        natural = bool(m.args.get("natural")) or (not m.expressions and not m.args.get("schedule"))
        node = _Node(key=key_exprs[level_key[id(m)]], key_sql_node=m.this, natural=natural,
                     depth=0 if parent is None else parent.node.depth + 1, key_col=key_cols[level_key[id(m)]],
                     key_type=ktype, parent=parent, origin=m, prefix=prefix)
        if m.args.get("schedule") and m is not mix:
            raise _err(sql, "WITH SCHEDULE is only allowed on the outermost MIX BY", m)
        if natural:
            if register:
                discovered[prefix] = node
            elif prefix in discovered:   # a later SCHEDULE step: the groups step 0 discovered
                node.groups = [_Grp(node, list(g.values), [], False, 1.0, None, m, g.path)
                               for g in discovered[prefix].groups]
            return node
        entries = weights_from if weights_from is not None else m.expressions
        seen: dict = {}
        other = None
        for g in entries:
            if g.args.get("other"):
                if other is not None:
                    raise _err(sql, "OTHER is listed twice at this level", g)
                other = g
                vals, vnodes, path = [], [], "OTHER"
            else:
                vals, vnodes = [], []
                for vn in g.expressions:
                    v = coerce(vn, ktype, m)
                    hkey = ("v", v) if not isinstance(v, str) else ("s", v)
                    if hkey in seen:
                        raise _err(sql, f"group value {v!r} is listed twice in MIX BY {m.this.sql('duckdb')}"
                                        " (each row must belong to exactly one group)", vn)
                    seen[hkey] = vn
                    vals.append(v)
                    vnodes.append(vn)
                path = _fmt(vals[0]) if len(vals) == 1 else ",".join(_fmt(v) for v in vals)
            w = _number(sql, g.args["weight"], "a weight")
            if w < 0:
                raise _err(sql, f"weight {w:g} is negative; weights must be >= 0", g.args["weight"])
            gr = _Grp(node, vals, vnodes, bool(g.args.get("other")), w, g.args["weight"], g, prefix + path)
            node.groups.append(gr)
            if register:
                gr.gid = len(all_groups)
                all_groups.append(gr)
        if entries and all(gr.weight == 0 for gr in node.groups):
            raise _err(sql, "all weights are zero; at least one group needs a positive weight",
                       entries[0].args["weight"])
        for gr in node.groups:
            child_mix = gr.origin.args.get("mix") if isinstance(gr.origin, D.MixGroup) else None
            if child_mix is not None:
                gr.child = build(child_mix, gr, gr.path + "/", register=register)
        return node

    schedule_nodes = None
    if mix.args.get("schedule"):
        schedule_nodes = mix.args["schedule"].expressions
        root = build(mix, None, "", weights_from=schedule_nodes[0].expressions)
    else:
        root = build(mix, None, "")
    nodes = _nodes_of(root)
    source_for = lambda projection: _with_projection(base, projection)  # noqa: E731
    key_projection = [k.copy().as_(c) for k, c in zip(key_exprs, key_cols)]
    _discover(con, sql, tree, params, nodes, all_groups, source_for(key_projection).sql("duckdb"),
              settings.get("max_discovered_groups", MAX_DISCOVERED_GROUPS))
    leaves: list[_Grp] = _leaves_of(root)
    for j, g in enumerate(leaves):
        g.leaf = j
    membership = _membership(nodes)
    col_type = dict(zip(key_cols, col_types))
    for t in membership.tables:   # values equal only once cast to the key's type (dates, enums, ...)
        if t.kind == "values" and t.v and col_type[t.key].split("(")[0] not in (*_NUMERIC, "BOOLEAN", "VARCHAR"):
            try:
                dup = con.execute(G.duplicate_entry_sql(t, col_type[t.key])).fetchall()
            except duckdb.Error as exc:
                raise _duck_error(sql, exc, tree) from None
            if dup:
                gr, vi = membership.entries[dup[0][0]]
                raise _err(sql, f"group value {gr.values[vi]!r} is listed twice in MIX BY "
                                f"{gr.node.key_sql_node.sql('duckdb')} (each row must belong to exactly one group)",
                           gr.value_nodes[vi])

    # -- weights, schedule
    def static_weights(node: _Node, scale: float, out: list):
        total = sum(g.weight for g in node.groups)
        for g in node.groups:
            share = scale * (g.weight / total if total > 0 else 0.0)
            if g.child is not None:
                static_weights(g.child, share, out)
            else:
                out[g.leaf] = share

    natural = any(n.natural for n in nodes) or prior_natural
    weights = [0.0] * len(leaves)
    static_weights(root, 1.0, weights)
    schedule = ()
    if schedule_nodes:
        paths = [g.path for g in leaves]
        path_set = set(paths)
        steps = []
        prev = None
        for i, st in enumerate(schedule_nodes):
            step = _number(sql, st.this, "AT STEP")
            if step < 0 or not float(step).is_integer():
                raise _err(sql, "AT STEP needs a non-negative whole number", st.this)
            if i == 0 and step != 0:
                raise _err(sql, "the first SCHEDULE entry must be AT STEP 0 (weights from the start)", st.this)
            if prev is not None and step <= prev:
                raise _err(sql, f"SCHEDULE steps must increase: AT STEP {step:g} comes after AT STEP {prev:g}", st.this)
            prev = step
            sub = build(mix, None, "", weights_from=st.expressions, register=False) if i else root
            sub_leaves = _leaves_of(sub)
            sub_paths = [g.path for g in sub_leaves]
            if len(sub_paths) != len(paths) or set(sub_paths) != path_set:
                missing = sorted(path_set - set(sub_paths))
                extra = sorted(set(sub_paths) - path_set)
                detail = (f"missing {', '.join(missing)}" if missing else "") + ("; " if missing and extra else "") + \
                         (f"unexpected {', '.join(extra)}" if extra else "")
                raise _err(sql, f"AT STEP {step:g} must list the same groups as AT STEP 0 ({detail})", st)
            w = [0.0] * len(sub_paths)
            saved = [g.leaf for g in sub_leaves]
            for j, g in enumerate(sub_leaves):
                g.leaf = j
            static_weights(sub, 1.0, w)
            for g, leaf in zip(sub_leaves, saved):
                g.leaf = leaf
            by_path = {g.path: w[j] for j, g in enumerate(sub_leaves)}
            steps.append(ScheduleStep(int(step), tuple(by_path[p] for p in paths)))
        schedule = tuple(steps)

    weighting = "algorithm" if algorithm else "schedule" if schedule else "natural" if natural else "static"
    spec = MixSpec(
        groups=tuple(Group(g.leaf, g.path, weights[g.leaf], tuple(g.values)) for g in leaves),
        weighting=weighting, unit=unit, chunk_size=chunk_size, seed=settings.get("seed", 0),
        on_exhausted=settings.get("on_exhausted", "stop"), max_epochs=settings.get("max_epochs"),
        budget=budget, ordered=tree.args.get("order") is not None,
        shuffle=Shuffle(block=settings.get("shuffle_block", Shuffle.block),
                        window=settings.get("shuffle_window", Shuffle.window),
                        shards=settings.get("shuffle_shards", Shuffle.shards)),
        schedule=schedule, algorithm=algorithm, batch_size=settings.get("batch_size"),
    )

    # -- the DuckDB query
    q = exp.to_identifier(qual)
    col = lambda name: exp.Column(this=exp.to_identifier(name, quoted=True), table=q.copy())  # noqa: E731
    # __mix_source / __mix_file are filled in from file_id by execute_plan (dictionary-encoded:
    # far cheaper than materialising one string per row in DuckDB)
    internal = [
        col("file_id").as_("__mix_file_id"),
        col("row").as_("__mix_row"),
        col("loc_offset").as_("__mix_offset"),
        col("loc_length").as_("__mix_length"),
        col("n_bytes").as_("__mix_n_bytes"),
        col("n_tokens").as_("__mix_n_tokens"),
    ]
    order_keys = []
    if tree.args.get("order"):
        order_keys = [o.copy() for o in tree.args["order"].expressions]
        for o in order_keys:
            o.set("this", resolve(o.this))
        # the keys themselves: ranked in numpy together with (group, file_id, row), one sort
        # (a DuckDB row_number() window over the whole selection is far slower)
        for i, o in enumerate(order_keys):
            internal.append(o.this.copy().as_(order_key_name(i, bool(o.args.get("desc")),
                                                            bool(o.args.get("nulls_first")))))

    entry_columns = [f"__mix_e{d}" for d in membership.entry_depths]
    n_lead = 1 + len(entry_columns)   # __mix_group and the entry columns come first

    def query_for(projection, frm: exp.Select = base) -> str:
        source = _with_projection(frm, internal + key_projection + list(projection)).sql("duckdb")
        return G.membership_sql(source, key_cols, membership.tables, membership.root_other, membership.depths,
                                membership.entry_depths)

    query = query_for(base.expressions)
    try:
        desc = con.execute(f"SELECT * FROM ({query}) LIMIT 0", params).description
    except duckdb.Error as exc:
        raise _duck_error(sql, exc, tree) from None
    n_internal = n_lead + len(internal)
    n_keys = len(order_keys)
    if n_keys and not all(_rankable(str(d[1])) for d in desc[n_internal - n_keys:n_internal]):
        # a key type numpy cannot rank exactly like DuckDB (nested, interval, enum, ...):
        # DuckDB computes the consumption order itself
        keys = order_keys + [exp.Ordered(this=col("file_id")), exp.Ordered(this=col("row"))]
        internal[len(internal) - n_keys:] = [
            exp.Window(this=exp.RowNumber(), order=exp.Order(expressions=keys)).as_(ORDER_COLUMN)]
        n_internal = n_lead + len(internal)
        query = query_for(base.expressions)
        desc = con.execute(f"SELECT * FROM ({query}) LIMIT 0", params).description
    order_columns = [e.alias for e in internal[len(internal) - (1 if n_keys and internal[-1].alias == ORDER_COLUMN
                                                               else n_keys):]] if n_keys else []
    user_columns = [d[0] for d in desc[n_internal:]]
    # user columns equal to a pointer column are not fetched twice (SELECT * has eight of them)
    single = len(sources) == 1 and qual.lower() in known
    projection = list(base.expressions)
    if single:
        expanded = []
        for p_ in projection:
            star = isinstance(p_, exp.Star) or (isinstance(p_, exp.Column) and isinstance(p_.this, exp.Star)
                                                and p_.table.lower() == qual.lower())
            if star and not any(p_.args.get(k) for k in p_.args if k not in ("this", "table")) and \
                    not (isinstance(p_.this, exp.Star) and any(p_.this.args.values())):
                expanded += [col(c) for c in known[qual.lower()]]
            else:
                expanded.append(p_)
        projection = expanded
    shared: dict = {}
    fetch_sql = query
    if single and len(projection) == len(user_columns) and len(set(user_columns)) == len(user_columns):
        keep = []
        for i, (name, p_) in enumerate(zip(user_columns, projection)):
            e = p_.this if isinstance(p_, exp.Alias) else p_
            target = _SHARED.get(e.name.lower()) if isinstance(e, exp.Column) and not isinstance(e.this, exp.Star) \
                and e.table.lower() in ("", qual.lower()) and e.name.lower() not in aliases else None
            if target is not None and str(desc[n_internal + i][1]).upper() == _SHARED_TYPES[target]:
                shared[name] = target
            else:
                keep.append(p_)
        if shared:
            fetch_sql = query_for(keep)
    # pointers only: straight from sample_index (no joins, so DuckDB keeps (file, row) insertion
    # order) when WHERE / MIX BY / ORDER BY need no view-only column (source, file); else the
    # full query with DuckDB pruning the unused projection
    internal_names = ", ".join(["__mix_group", *entry_columns] + [f'"{e.alias}"' for e in internal])
    pointer_sql = f"SELECT {internal_names} FROM ({query})"
    if len(sources) == 1 and isinstance(tree.args["from_"].this, exp.Table) and tree.args["from_"].this is samples_tbl \
            and "samples" not in ctes:
        lean = base.copy()
        lean.args["from_"].set("this", exp.to_table("sample_index").as_(qual))
        try:
            candidate = query_for([], lean)
            con.execute(f"SELECT * FROM ({candidate}) LIMIT 0", params).fetchall()
            pointer_sql = candidate
        except duckdb.Error:
            pass
    return MixPlan(
        sql=query, params=params, spec=spec, statement=sql, user_columns=user_columns,
        entry_columns=entry_columns, n_entries=membership.n_entries, root=root, leaves=leaves, natural=natural,
        prior_natural=prior_natural, unit_node=unit_node,
        base_sql=base.sql("duckdb"), shared=shared, fetch_sql=fetch_sql, pointer_sql=pointer_sql,
        order_columns=order_columns,
    )


_RANKABLE = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
             "FLOAT", "DOUBLE", "DECIMAL", "BOOLEAN", "DATE", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS",
             "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE", "TIME", "VARCHAR", "BLOB")


def _rankable(type_name: str) -> bool:
    """ORDER BY key types that :func:`mixsql.shuffle.key_rank` orders exactly as DuckDB does."""
    t = type_name.upper()
    if t.startswith("DECIMAL"):
        return True
    return t in _RANKABLE


def _fmt(v) -> str:
    """Display form of a group value in a leaf path."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _leaves_of(node: _Node) -> list:
    out = []
    for g in node.groups:
        out.extend(_leaves_of(g.child) if g.child is not None else [g])
    return out


def _nodes_of(node: _Node) -> list:
    """The MIX BY levels of the tree, parents before children."""
    out = [node]
    for g in node.groups:
        if g.child is not None:
            out.extend(_nodes_of(g.child))
    return out


def _with_projection(select: exp.Select, projection: list) -> exp.Select:
    """Copy of ``select`` projecting ``projection`` (copied)."""
    out = select.copy()
    out.set("expressions", [e.copy() for e in projection])
    return out


def _value_type(key_type: str, values: list) -> str:
    """DuckDB type listed values travel as (then compared with the key as ``key = literal`` is)."""
    base_t = key_type.split("(")[0]
    if base_t == "BOOLEAN":
        return "BOOLEAN"
    if base_t in _NUMERIC:
        ints = [v for v in values if v is not None]
        if all(isinstance(v, int) for v in ints):
            return "BIGINT" if all(-2**63 <= v < 2**63 for v in ints) else "HUGEINT"
        return "DOUBLE"
    return "VARCHAR"


def _membership(nodes: list, below: int | None = None) -> _Membership:
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
            t.vtype = _value_type(t.vtype, t.v)
    return _Membership(list(tables.values()), root_other, entries, count, depths, sorted(multi))


def _discover(con, sql: str, tree, params, nodes: list, all_groups: list, source_sql: str, limit: int) -> None:
    """Give each WITH NATURAL level one group per distinct key value under its parent group
    (ascending, NULLS LAST: the order the query ranks them in), depth by depth."""
    levels: dict = {}
    for n in nodes:
        if n.natural:
            levels.setdefault((n.depth, n.key_col), []).append(n)
    for (depth, key), naturals in sorted(levels.items()):
        above = _membership(nodes, below=depth)
        parents = [n.parent.gid if n.parent is not None else G.ROOT for n in naturals]
        text = G.discovery_sql(source_sql, above.tables, above.root_other, depth, key, parents, limit + 1)
        try:
            rows = con.execute(text, params).fetchall()
        except duckdb.Error as exc:
            raise _duck_error(sql, exc, tree) from None
        if len(rows) > limit:
            first = naturals[0].key_sql_node
            raise _err(sql, f"MIX BY {first.sql('duckdb')} has more than {limit:,} distinct values (the "
                            f"max_discovered_groups setting): list the groups, group by a coarser expression, "
                            f"or raise it with SETTINGS (max_discovered_groups = <n>)", first)
        found: dict = {}
        for p, v in rows:
            found.setdefault(p, []).append(v)
        for n, p in zip(naturals, parents):
            if not found.get(p):
                raise _err(sql, f"MIX BY {n.key_sql_node.sql('duckdb')} selects no rows", n.key_sql_node)
            for v in found[p]:
                g = _Grp(n, [v], [], False, 1.0, None, n.origin, n.prefix + _fmt(v), gid=len(all_groups))
                n.groups.append(g)
                all_groups.append(g)


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
    want = _wanted(plan, user_columns)
    ordered = plan.spec.ordered
    order_cols = list(plan.order_columns) if ordered else []
    if ordered and not order_cols:   # a MixPlan built by hand / by an older planner
        order_cols = [ORDER_COLUMN]
    internal = [MIX_COLUMNS[0], *plan.entry_columns, *(c for c in MIX_COLUMNS[1:] if c not in _FILLED), *order_cols]
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
    group_ids = _np(table.column("__mix_group"), np.int32)
    leaf_rows = np.bincount(group_ids, minlength=n_leaves) if len(group_ids) else np.zeros(n_leaves, np.int64)
    entry_rows = {}
    for i, name in enumerate(plan.entry_columns, start=1):
        entry_rows[name] = np.bincount(_np(table.column(i).drop_null(), np.int64), minlength=plan.n_entries)
    if plan.entry_columns:
        keep = [0] + list(range(1 + len(plan.entry_columns), table.num_columns))
        table = table.select(keep)
        internal = [c for c in internal if c not in plan.entry_columns]
    table = _finish_pointers(catalog, table, group_ids, ordered, internal + fetch, want, plan.shared, canonical)
    group_ids = _np(table.column("__mix_group"), np.int32)
    _check_rows(catalog, plan, leaf_rows, entry_rows)

    # -- tokens
    spec = plan.spec
    leaf_tokens = None
    ntok = table.column("__mix_n_tokens")
    if spec.unit == "tokens":
        if ntok.null_count:
            src = table.filter(ntok.is_null()).column("__mix_source")[0].as_py()
            raise _err(sql, f"unit = 'tokens' but n_tokens is NULL for {ntok.null_count} selected rows "
                            f"(source {src!r} has no token counts); register it with a tokenizer or use "
                            "unit = 'samples'", plan.unit_node)
        tok = ntok.to_numpy(zero_copy_only=False).astype(np.float64) + EOS_TOKENS   # as packed
        leaf_tokens = np.bincount(group_ids, weights=tok, minlength=n_leaves) if len(tok) else np.zeros(n_leaves)

    if plan.natural:
        measure = leaf_tokens if spec.unit == "tokens" else leaf_rows.astype(np.float64)
        weights = np.zeros(n_leaves)
        _natural_weights(plan.root, 1.0, measure, weights, force=plan.prior_natural)
        groups = tuple(Group(g.id, g.path, w, g.values) for g, w in zip(spec.groups, weights.tolist()))
        spec = MixSpec(**{**spec.__dict__, "groups": groups})
    return table, spec


_FILLED = ("__mix_source", "__mix_file")


def _check_rows(catalog, plan: MixPlan, leaf_rows: np.ndarray, entry_rows: dict) -> None:
    """Errors that need data: a listed value in no selected row, an empty OTHER, a nested MIX BY
    over an empty group. ``leaf_rows``: rows per leaf; ``entry_rows``: rows per entry, per depth
    with a multi-value group."""
    sql = plan.statement
    rows: dict = {}

    def count(node: _Node) -> int:
        if node.natural:   # discovered groups: leaves only, nothing listed to check
            return int(leaf_rows[node.groups[0].leaf:node.groups[-1].leaf + 1].sum())
        total = 0
        for gr in node.groups:
            rows[id(gr)] = count(gr.child) if gr.child is not None else int(leaf_rows[gr.leaf])
            total += rows[id(gr)]
        return total

    def check(node: _Node):
        if node.natural:
            return
        for gr in node.groups:
            n = rows[id(gr)]
            if n == 0 and gr.child is not None:
                raise _err(sql, f"group {gr.path!r} has no rows, so its nested MIX BY has nothing to mix",
                           gr.value_nodes[0] if gr.value_nodes else gr.origin)
            if n == 0 and gr.other:
                raise _err(sql, "OTHER matches no row: every selected row is in a listed group; remove OTHER",
                           gr.origin)
            if not gr.other and gr.value_nodes:
                per_value = entry_rows.get(f"__mix_e{node.depth}") if len(gr.values) > 1 else None
                for vi, vn in enumerate(gr.value_nodes):
                    if (int(per_value[gr.entries[vi]]) if per_value is not None else n) == 0:
                        raise _err(sql, f"group value {gr.values[vi]!r} matches no selected row of MIX BY "
                                        f"{node.key_sql_node.sql('duckdb')}", vn,
                                   _value_suggestion(catalog, plan, node, gr.values[vi]))
            if gr.child is not None:
                check(gr.child)

    count(plan.root)
    check(plan.root)


def _wanted(plan: MixPlan, user_columns) -> list[str]:
    if user_columns is True:
        return list(plan.user_columns)
    if user_columns is False or user_columns is None:
        return []
    from .engine import CHUNK_COLUMNS   # always in chunks: asking for them needs nothing extra

    names = [c for c in dict.fromkeys(user_columns) if c in plan.user_columns or c not in CHUNK_COLUMNS]
    unknown = [c for c in names if c not in plan.user_columns]
    if unknown:
        raise ProgrammingError(f"user_columns {unknown} are not in the statement's projection "
                               f"(it selects {plan.user_columns})")
    return names


def _np(col, dtype) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    # without nulls, numbers convert without a copy (and without pyarrow importing pandas)
    plain = col.null_count == 0 and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type))
    return col.to_numpy(zero_copy_only=plain).astype(dtype, copy=False)


def _finish_pointers(catalog, table: pa.Table, group: np.ndarray, ordered: bool, names: list[str],
                     want: list[str], shared: dict, canonical: bool = True) -> pa.Table:
    """Canonical row order (group, [order,] file_id, row), __mix_group set to leaf ids,
    __mix_source / __mix_file filled (dictionary-encoded), columns in contract order."""
    fid = _np(table.column("__mix_file_id"), np.int64)
    perm = None
    key_cols = order_key_columns(names) if ordered else []
    order_out = [c for c in names if c == ORDER_COLUMN or c in {k[0] for k in key_cols}]
    if canonical:
        if key_cols:
            keys = [(table.column(names.index(n)), d, f) for n, d, f in key_cols]
            perm = ordered_permutation(group, fid, _np(table.column("__mix_row"), np.int64), keys)
            if len(perm) and (perm == np.arange(len(perm))).all():
                perm = None
        elif ordered:
            perm = pointer_order(group, _np(table.column(ORDER_COLUMN), np.int64))
        else:
            perm = pointer_order(group, (fid << 40) | _np(table.column("__mix_row"), np.int64))

    def reorder(c):
        if perm is None:   # one contiguous chunk: the engine then reads it without copying
            return c.combine_chunks() if isinstance(c, pa.ChunkedArray) and c.num_chunks != 1 else c
        if c.null_count == 0 and (pa.types.is_integer(c.type) or pa.types.is_floating(c.type)):
            return pa.array(_np(c, c.type.to_pandas_dtype())[perm], c.type)
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


def _leaf_span(g: _Grp) -> tuple[int, int]:
    """[first, last + 1) of the leaves under ``g`` (leaves are numbered in tree order)."""
    if g.child is None:
        return g.leaf, g.leaf + 1
    return _leaf_span(g.child.groups[0])[0], _leaf_span(g.child.groups[-1])[1]


def _natural_weights(node: _Node, scale: float, measure: np.ndarray, out: np.ndarray, force: bool) -> None:
    """Absolute leaf weights under ``node`` (whose own share is ``scale``) into ``out``: shares of
    ``measure`` (per leaf) on natural levels (all levels when ``force``), listed weights elsewhere."""
    if node.natural and all(g.child is None for g in node.groups[:1]):   # discovered: consecutive leaves
        lo, hi = node.groups[0].leaf, node.groups[-1].leaf + 1
        total = float(measure[lo:hi].sum())
        out[lo:hi] = scale * measure[lo:hi] / total if total > 0 else 0.0
        return
    use_data = node.natural or force
    raw = [float(measure[slice(*_leaf_span(g))].sum()) if use_data else g.weight for g in node.groups]
    total = sum(raw)
    for g, r in zip(node.groups, raw):
        share = scale * (r / total if total > 0 else 0.0)
        if g.child is not None:
            _natural_weights(g.child, share, measure, out, force)
        else:
            out[g.leaf] = share


def _value_suggestion(catalog, plan: MixPlan, node: _Node, value):
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


# --------------------------------------------------------------------------- other statements
def explain(catalog, sql: str, params=None) -> pa.Table:
    """EXPLAIN MIX: one row per leaf group (see :mod:`mixsql.explain`)."""
    from .explain import explain_table

    return explain_table(catalog, sql, params)


__all__ = ["MixPlan", "RegistrationRequest", "plan", "execute_plan", "registration_request", "explain",
           "SETTINGS", "known_algorithms"]
