"""``mix_ledger('ckpt')`` in SQL: the ledger of a run (:mod:`mixsql.ledger`) as a table function.

Every ``mix_ledger('<state file>')`` in a plain SQL statement is computed as an Arrow table,
registered with the statement's DuckDB cursor and put in the function's place; the rest of the
statement (joins with ``samples``, ``GROUP BY``, ``ORDER BY``) is DuckDB's. Literal filters of
the enclosing ``SELECT``'s ``WHERE`` (top-level ``AND`` terms on the function's columns) say
what to compute; DuckDB still applies the whole ``WHERE``, so they only narrow the work:

* ``file = '...' AND row = n``: the sample's occurrences (the inverse, no scan of the history);
* ``step = n``, ``step BETWEEN a AND b``, ``step >= a``, ``step < b``, ``step IN (...)``: those
  steps only;
* ``rank = r`` / ``rank IN (...)``: those ranks only.

Without a step bound the steps the run has taken so far (the state's ``steps``) are computed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa

FUNCTION = "mix_ledger"


def mentions_ledger(sql: str) -> bool:
    return FUNCTION in sql.lower()


@dataclass
class Pushdown:
    """What the WHERE clause says about the ledger's rows."""

    lo: int | None = None
    hi: int | None = None
    steps: set | None = None
    ranks: set | None = None
    file: str | None = None
    row: int | None = None

    def step_range(self, taken: int) -> list[int]:
        if self.steps is not None:
            return sorted(s for s in self.steps if (self.lo is None or s >= self.lo) and (self.hi is None or s <= self.hi))
        lo = 0 if self.lo is None else max(0, self.lo)
        hi = taken - 1 if self.hi is None else self.hi
        return list(range(lo, hi + 1))


def rewrite(sql: str, open_ledger) -> tuple[str, dict[str, pa.Table]]:
    """``sql`` with every ``mix_ledger(...)`` replaced by a registered table name, and those
    tables. ``open_ledger(path)`` returns a :class:`mixsql.ledger.Ledger`."""
    import sqlglot
    from sqlglot import exp

    from .errors import ProgrammingError

    try:
        trees = sqlglot.parse(sql, read="duckdb")
    except sqlglot.errors.ParseError as e:
        raise ProgrammingError(f"mix_ledger: cannot parse the statement: {str(e).splitlines()[0]}") from None
    tables: dict[str, pa.Table] = {}
    for tree in trees:
        if tree is None:
            continue
        for node in list(tree.find_all(exp.Table)):
            fn = node.this
            if not (isinstance(fn, exp.Anonymous) and str(fn.this).lower() == FUNCTION):
                continue
            args = fn.expressions
            if len(args) != 1 or not (isinstance(args[0], exp.Literal) and args[0].is_string):
                raise ProgrammingError("mix_ledger takes one string literal: the path of a loader state "
                                       "(JSON or torch checkpoint), e.g. mix_ledger('ckpt.pt')")
            alias = node.alias_or_name if node.alias else FUNCTION
            select = node.find_ancestor(exp.Select)
            push = _pushdown(select.args.get("where") if select is not None else None, alias)
            name = f"__mix_ledger_{len(tables)}_{os.getpid()}"
            tables[name] = _compute(open_ledger(args[0].this), push)
            node.replace(exp.Table(this=exp.to_identifier(name), alias=exp.TableAlias(this=exp.to_identifier(alias))))
    if not tables:   # the name only appears in a string or comment: DuckDB gets the statement as written
        return sql, tables
    return ";\n".join(t.sql("duckdb") for t in trees if t is not None), tables


def _compute(led, push: Pushdown) -> pa.Table:
    from .ledger import LEDGER_SCHEMA

    if push.file is not None and push.row is not None:
        return led.sample(push.file, push.row, until_step=push.hi)
    steps = push.step_range(led.run.steps)
    ranks = sorted(push.ranks) if push.ranks is not None else None
    if not steps:
        return LEDGER_SCHEMA.empty_table()
    runs, parts = [], []
    for s in steps:   # consecutive steps in one call
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    for a, b in runs:
        parts.append(led.steps(a, b, ranks))
    return pa.concat_tables(parts)


def _pushdown(where, alias: str) -> Pushdown:
    from sqlglot import exp

    push = Pushdown()
    if where is None:
        return push
    terms, todo = [], [where.this]
    while todo:
        t = todo.pop()
        if isinstance(t, exp.And):
            todo += [t.left, t.right]
        elif isinstance(t, exp.Paren):
            todo.append(t.this)
        else:
            terms.append(t)

    def col(e) -> str | None:
        if isinstance(e, exp.Column) and (not e.table or e.table == alias):
            return e.name.lower()
        return None

    def lit(e):
        if isinstance(e, exp.Literal):
            if e.is_string:
                return e.this
            try:
                return int(e.this)
            except ValueError:
                return None
        if isinstance(e, exp.Neg) and isinstance(e.this, exp.Literal) and not e.this.is_string:
            v = lit(e.this)
            return -v if isinstance(v, int) else None
        return None

    flip = {exp.GT: exp.LT, exp.GTE: exp.LTE, exp.LT: exp.GT, exp.LTE: exp.GTE, exp.EQ: exp.EQ}
    for t in terms:
        if isinstance(t, exp.Between) and col(t.this) == "step":
            lo, hi = lit(t.args["low"]), lit(t.args["high"])
            if isinstance(lo, int):
                push.lo = lo if push.lo is None else max(push.lo, lo)
            if isinstance(hi, int):
                push.hi = hi if push.hi is None else min(push.hi, hi)
            continue
        if isinstance(t, exp.In) and col(t.this) in ("step", "rank") and not t.args.get("query"):
            vals = [lit(v) for v in t.expressions]
            if all(isinstance(v, int) for v in vals):
                name = col(t.this)
                cur = getattr(push, "steps" if name == "step" else "ranks")
                new = set(vals) if cur is None else cur & set(vals)
                setattr(push, "steps" if name == "step" else "ranks", new)
            continue
        op = type(t)
        if op not in flip:
            continue
        c, v = col(t.left), lit(t.right)
        if c is None:
            c, v, op = col(t.right), lit(t.left), flip[op]
        if c is None or v is None:
            continue
        if c == "file" and op is exp.EQ and isinstance(v, str):
            push.file = v
        elif c == "row" and op is exp.EQ and isinstance(v, int):
            push.row = v
        elif c == "rank" and op is exp.EQ and isinstance(v, int):
            push.ranks = {v} if push.ranks is None else push.ranks & {v}
        elif c == "step" and isinstance(v, int):
            if op is exp.EQ:
                push.steps = {v} if push.steps is None else push.steps & {v}
            elif op in (exp.GT, exp.GTE):
                lo = v + (op is exp.GT)
                push.lo = lo if push.lo is None else max(push.lo, lo)
            else:
                hi = v - (op is exp.LT)
                push.hi = hi if push.hi is None else min(push.hi, hi)
    return push


__all__ = ["rewrite", "mentions_ledger", "Pushdown", "FUNCTION"]
