"""The first planner passes, over the parsed statement: its shape, its names, the user's base
selection, the settings, the LIMIT budget, the mixing algorithm and the types of the MIX BY keys.
Each pass reads the statement and returns what it found, or raises a positioned SQLError."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import duckdb
from sqlglot import exp

from .. import dialect as D
from ..errors import SQLError
from ..spec import Algorithm, Budget
from .model import SETTINGS, known_algorithms
from .values import did_you_mean, duck_error, err, pyvalue


@dataclass
class Statement:
    """A parsed MIX statement: the outermost SELECT, its MIX BY and every nested level."""

    sql: str
    tree: exp.Select
    mix: D.MixBy
    levels: list           # MIX BY levels, outermost first (SCHEDULE steps' nested levels too)
    con: Any               # the catalog's DuckDB connection
    params: Any = None


def parse_statement(catalog, sql: str, params=None) -> Statement:
    """Parse a MIX (or EXPLAIN MIX) statement; MIX BY must be in the outermost SELECT."""
    tree = D.parse(sql)
    if isinstance(tree, D.ExplainMix):
        tree = tree.this
    if not isinstance(tree, exp.Select) or not tree.args.get("mix"):
        nested = tree.find(D.MixBy) if isinstance(tree, exp.Expr) else None
        if nested is not None:
            raise err(sql, "MIX BY must be in the outermost SELECT (not in a subquery or a set operation)", nested)
        raise SQLError("not a MIX statement: expected SELECT ... FROM samples ... MIX BY <expr> ...", sql)
    mix: D.MixBy = tree.args["mix"]
    levels = mix_levels(mix)
    for sub in skeleton(tree, levels):
        if isinstance(sub, exp.Select) and sub is not tree and sub.args.get("mix"):
            raise err(sql, "MIX BY must be in the outermost SELECT, not in a subquery", sub.args["mix"])
    return Statement(sql, tree, mix, levels, catalog.con, params)


def mix_levels(mix) -> list:
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


def skeleton(tree, levels):
    """Every node of the statement except those inside MIX BY group lists."""
    yield from tree.walk(prune=lambda n: isinstance(n, D.MixBy))
    for m in levels:
        yield from m.this.walk()


def walk_scope(node):
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


# --------------------------------------------------------------------------- shape
@dataclass
class Sources:
    """The tables in FROM / JOIN and the catalog's ``samples`` among them."""

    tables: list
    samples: exp.Table
    qual: str              # how the statement names samples (its alias or name)


def check_shape(st: Statement) -> Sources:
    """One row per sample: no GROUP BY / HAVING / DISTINCT / ... and no aggregates; ``samples``
    in FROM."""
    sql, tree = st.sql, st.tree
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
        raise err(sql, "MIX needs the catalog's samples view in FROM: SELECT ... FROM samples [JOIN ...] MIX BY ...",
                  sources[0] if sources else st.mix)
    return Sources(sources, samples_tbl, samples_tbl.alias_or_name)


# --------------------------------------------------------------------------- names
@dataclass
class Names:
    """What the statement's names refer to: each known table's columns, projection aliases."""

    known: dict                    # table alias/name (lower) -> its columns
    aliases: dict                  # projection alias (lower) -> its expression
    ctes: set
    every: list = field(default_factory=list)
    lower_every: set = field(default_factory=set)

    def resolve(self, e: exp.Expr) -> exp.Expr:
        """Copy of ``e`` with bare references to projection aliases replaced by their expression."""
        e = e.copy()
        if isinstance(e, exp.Column) and not e.table and self._alias(e):
            return self.aliases[e.name.lower()].copy()
        for c in list(e.find_all(exp.Column)):
            if not c.table and self._alias(c):
                c.replace(self.aliases[c.name.lower()].copy())
        return e

    def _alias(self, c: exp.Column) -> bool:
        return c.name.lower() in self.aliases and c.name.lower() not in self.lower_every


def resolve_names(st: Statement, sources: Sources) -> Names:
    """Columns of every table in FROM (bound by DuckDB, no data read); an unknown table, alias or
    column is an error with a did-you-mean."""
    sql, tree = st.sql, st.tree
    ctes = {c.alias_or_name.lower() for c in (tree.args.get("with_").expressions if tree.args.get("with_") else [])}
    known: dict[str, list[str]] = {}
    all_known = True
    for t in sources.tables:
        if isinstance(t, exp.Table) and t.name.lower() not in ctes and not isinstance(t.this, exp.Func):
            try:
                bare = t.copy()
                bare.set("alias", None)
                desc = st.con.execute(f"SELECT * FROM {bare.sql('duckdb')} LIMIT 0").description
                known[t.alias_or_name.lower()] = [d[0] for d in desc]
                continue
            except duckdb.Error as exc:
                raise err(sql, f"unknown table {t.name!r}: {str(exc).splitlines()[0]}", t) from None
        all_known = False
    aliases = {p.alias.lower(): p.this for p in tree.expressions if isinstance(p, exp.Alias)}
    every = sorted({c for cols in known.values() for c in cols})
    names = Names(known, aliases, ctes, every, {c.lower() for c in every})
    for col in [*walk_scope(tree), *(c for m in st.levels for c in walk_scope(m.this))]:
        _check_column(sql, col, names, all_known)
    return names


def _check_column(sql: str, col: exp.Column, names: Names, all_known: bool) -> None:
    name = col.name
    if isinstance(col.this, exp.Star) or col.find_ancestor(exp.Lambda):
        return
    tbl = col.table.lower() if col.table else ""
    if tbl:
        if tbl in names.known:
            if name.lower() not in {c.lower() for c in names.known[tbl]}:
                raise err(sql, f"unknown column {name!r} in {col.table}", col.this,
                          did_you_mean(name, names.known[tbl]))
        elif all_known and tbl not in names.lower_every:
            raise err(sql, f"unknown table or alias {col.table!r}", col.args["table"],
                      did_you_mean(col.table, list(names.known)))
        return
    if all_known and name.lower() not in names.lower_every and name.lower() not in names.aliases:
        raise err(sql, f"unknown column {name!r}", col, did_you_mean(name, names.every + list(names.aliases)))


def base_selection(st: Statement) -> exp.Select:
    """The user's selection without its MIX clauses (copied without the group lists, which may
    hold thousands of groups); ``?`` parameters are refused in MIX BY and ORDER BY."""
    tree = st.tree
    detached = {k: tree.args.get(k) for k in ("mix", "mix_using", "mix_settings", "order", "limit")}
    for k in detached:
        tree.set(k, None)
    base = tree.copy()
    for k, v in detached.items():
        tree.set(k, v)
    if any(isinstance(p, exp.Placeholder) and not p.name for p in skeleton(tree, st.levels)):
        for part in [m.this for m in st.levels] + ([tree.args["order"]] if tree.args.get("order") else []):
            ph = part.find(exp.Placeholder)
            if ph is not None:
                raise err(st.sql, "? parameters are not supported in MIX BY or ORDER BY of a MIX statement; "
                                  "use $name parameters or literals there", ph)
    return base


# --------------------------------------------------------------------------- settings, budget, algorithm
def read_settings(st: Statement) -> tuple[dict, Any]:
    """``SETTINGS (...)`` checked against :data:`SETTINGS`: (values by key, the ``unit`` node)."""
    sql = st.sql
    settings: dict[str, Any] = {}
    unit_node = None
    if not st.tree.args.get("mix_settings"):
        return settings, unit_node
    for opt in st.tree.args["mix_settings"].expressions:
        key = opt.this.name.lower()
        if key not in SETTINGS:
            raise err(sql, f"unknown setting {opt.this.name!r}; settings are {', '.join(SETTINGS)}", opt.this,
                      did_you_mean(opt.this.name, SETTINGS))
        if key in settings:
            raise err(sql, f"setting {key!r} is given twice", opt.this)
        settings[key] = _setting_value(sql, key, opt.expression)
        if key == "unit":
            unit_node = opt.expression
    return settings, unit_node


def _setting_value(sql: str, key: str, node) -> Any:
    val = pyvalue(node)
    rule = SETTINGS[key]
    if isinstance(rule, tuple):
        if not isinstance(val, str) or val.lower() not in rule:
            raise err(sql, f"bad value for {key}: expected one of {', '.join(rule)}", node,
                      did_you_mean(str(val), rule))
        return val.lower()
    if key == "max_epochs" and val is None:
        return None
    ok = isinstance(val, (int, float)) and not isinstance(val, bool) and float(val).is_integer()
    if not ok or (rule == "int>0" and val <= 0) or (rule == "int>=0" and val < 0):
        bound = "a positive integer" if rule == "int>0" else "a non-negative integer"
        raise err(sql, f"bad value for {key}: expected {bound}", node)
    return int(val)


def read_budget(st: Statement) -> Budget | None:
    """``LIMIT n [SAMPLES | TOKENS]``: a budget on the mixed stream (plain LIMIT counts samples)."""
    limit = st.tree.args.get("limit")
    if limit is None:
        return None
    amount_node = limit.args.get("expression")
    kind = limit.args["unit"].lower() if isinstance(limit, D.MixLimit) else "samples"
    if not isinstance(amount_node, exp.Literal) or not amount_node.is_number:
        raise err(st.sql, "LIMIT in a MIX statement must be a number, e.g. LIMIT 2e9 TOKENS", amount_node or limit)
    amount = float(amount_node.this)
    if amount <= 0 or not amount.is_integer():
        raise err(st.sql, "LIMIT must be a positive whole number", amount_node)
    return Budget(int(amount), kind)


def read_algorithm(st: Statement) -> tuple[Algorithm | None, bool]:
    """``USING name (args)``: (the algorithm, whether its prior is NATURAL)."""
    using = st.tree.args.get("mix_using")
    if not using:
        return None, False
    name = using.this.name.lower()
    algos = known_algorithms()
    if name not in algos:
        raise err(st.sql, f"unknown mixing algorithm {using.this.name!r}; known: {', '.join(a.upper() for a in algos)}",
                  using.this, (D.suggest(name, algos) or "").upper() or None)
    args, prior_natural = [], False
    for opt in using.expressions or []:
        v = pyvalue(opt.expression)
        if opt.this.name.lower() == "prior" and v == "natural":
            prior_natural = True
        args.append((opt.this.name.lower(), v))
    return Algorithm(name, tuple(args)), prior_natural


# --------------------------------------------------------------------------- key types
@dataclass
class Keys:
    """One query column per distinct MIX BY expression, with its DuckDB type."""

    exprs: list            # the (alias-resolved) key expressions
    cols: list             # their column names ``__mix_k<j>``
    level_key: dict        # id(MixBy level) -> index into exprs
    col_types: list        # DuckDB type of each key column

    def of(self, level) -> tuple[exp.Expr, str, str]:
        """(expression, column, type) of a MIX BY level's key."""
        j = self.level_key[id(level)]
        return self.exprs[j], self.cols[j], self.col_types[j]

    def projection(self) -> list:
        return [k.copy().as_(c) for k, c in zip(self.exprs, self.cols)]


def bind_keys(st: Statement, names: Names, base: exp.Select) -> Keys:
    """Bind the MIX BY expressions over the base selection (DuckDB binds, reads no data)."""
    key_index: dict[str, int] = {}
    exprs: list[exp.Expr] = []
    level_key: dict[int, int] = {}
    for m in st.levels:
        key = names.resolve(m.this)
        if not isinstance(key, (exp.Column, exp.Func, exp.Literal, exp.Paren, exp.Boolean)):
            key = exp.Paren(this=key)
        level_key[id(m)] = key_index.setdefault(key.sql("duckdb"), len(exprs))
        if level_key[id(m)] == len(exprs):
            exprs.append(key)
    cols = [f"__mix_k{j}" for j in range(len(exprs))]
    probe = base.copy()
    probe.set("expressions", [k.copy().as_(c) for k, c in zip(exprs, cols)])
    try:
        desc = st.con.execute(f"SELECT * FROM ({probe.sql('duckdb')}) LIMIT 0", st.params).description
    except duckdb.Error as exc:
        raise duck_error(st.sql, exc, st.tree) from None
    return Keys(exprs, cols, level_key, [str(d[1]).upper() for d in desc])
