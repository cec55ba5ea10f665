"""Values in a MIX statement, in one place: errors positioned at a node, did-you-mean
suggestions, numbers and setting values, group values coerced to the MIX BY key's type, and how
values are displayed in leaf paths and typed in lookup tables."""
from __future__ import annotations

import re

from sqlglot import exp

from .. import dialect as D
from ..errors import SQLError
from .model import NUMERIC


def err(sql, message, node, suggestion=None) -> SQLError:
    """A SQLError pointing at ``node``'s position in ``sql``."""
    return D.node_error(sql, message, node, suggestion)


def did_you_mean(word, choices):
    """The closest of ``choices`` to ``word`` (quoted when ``word`` is a string), or None."""
    hit = D.suggest(str(word), [str(c) for c in choices])
    return repr(hit) if hit is not None and isinstance(word, str) else (hit if hit is not None else None)


def duck_error(sql: str, exc: Exception, select: exp.Expr | None = None) -> SQLError:
    """Turn a DuckDB binder/parser error into a positioned SQLError where possible."""
    text = str(exc).split("\n")[0]
    m = re.search(r'column "([^"]+)" not found', text) or re.search(r'Referenced column "([^"]+)"', text)
    if m and select is not None:
        for col in select.find_all(exp.Column):
            if col.name == m.group(1):
                return err(sql, f"unknown column {m.group(1)!r}: {text}", col)
    return SQLError(f"DuckDB rejected the statement: {text}", sql)


def number(sql, node, what) -> float:
    """A numeric literal (optionally negated); an error naming ``what`` otherwise."""
    if isinstance(node, exp.Neg):
        return -number(sql, node.this, what)
    if isinstance(node, exp.Literal) and node.is_number:
        return float(node.this)
    raise err(sql, f"{what} must be a number", node)


def pyvalue(node):
    """Python value of a setting/option value node."""
    if isinstance(node, exp.Neg):
        v = pyvalue(node.this)
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


def coerce_value(sql, vnode, ktype, mixnode):
    """Python value of a group value node for a MIX BY key of DuckDB type ``ktype``."""
    if ktype == "VARCHAR" and (isinstance(vnode, exp.Identifier) or (isinstance(vnode, exp.Literal)
                                                                    and vnode.is_string)):
        return vnode.this   # the common case, first
    if isinstance(vnode, exp.Null):
        return None
    raw = pyvalue(vnode)
    if isinstance(vnode, exp.Var):
        raise err(sql, "NATURAL is not a group value (did you mean WITH NATURAL?)", vnode)
    base_t = ktype.split("(")[0]
    if base_t in NUMERIC:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            try:
                raw = float(raw)
                raw = int(raw) if raw.is_integer() and base_t not in ("FLOAT", "DOUBLE", "REAL", "DECIMAL") else raw
            except (TypeError, ValueError):
                raise err(sql, f"group value {raw!r} is not a number, but MIX BY {mixnode.this.sql('duckdb')} "
                               f"is {ktype}", vnode) from None
        return float(raw) if isinstance(raw, float) else raw
    if base_t == "BOOLEAN":
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("true", "false"):
            return str(raw).lower() == "true"
        raise err(sql, f"group value {raw!r} is not TRUE or FALSE, but MIX BY {mixnode.this.sql('duckdb')} "
                       "is BOOLEAN", vnode, D.suggest(str(raw), ["TRUE", "FALSE"]))
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and isinstance(vnode, exp.Literal):
        return vnode.this
    return str(raw)


def fmt_value(v) -> str:
    """Display form of a group value in a leaf path."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def value_type(key_type: str, values: list) -> str:
    """DuckDB type listed values travel as (then compared with the key as ``key = literal`` is)."""
    base_t = key_type.split("(")[0]
    if base_t == "BOOLEAN":
        return "BOOLEAN"
    if base_t in NUMERIC:
        ints = [v for v in values if v is not None]
        if all(isinstance(v, int) for v in ints):
            return "BIGINT" if all(-2**63 <= v < 2**63 for v in ints) else "HUGEINT"
        return "DOUBLE"
    return "VARCHAR"
