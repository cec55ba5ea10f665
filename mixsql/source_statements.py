"""CREATE / REFRESH / DROP SOURCE, SHOW SOURCES and SHOW SOURCE as plain requests.

``registration_request(sql)`` parses one source statement (mixsql.dialect) into a
:class:`RegistrationRequest` that mixsql.registration executes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from . import dialect as D
from .errors import ProgrammingError


@dataclass
class RegistrationRequest:
    kind: str                      # create_source | refresh_source | drop_source | show_sources | show_source
    name: str | None = None
    pattern: str | None = None
    format: str | None = None
    options: dict = field(default_factory=dict)
    if_exists: bool = False        # DROP SOURCE IF EXISTS
    replace: bool = False          # CREATE OR REPLACE SOURCE
    if_not_exists: bool = False    # CREATE SOURCE IF NOT EXISTS


def option_value(node):
    """Python value of a ``WITH (...)`` option: the planner's literals, plus ``{'k': 'v'}`` maps."""
    if isinstance(node, exp.Struct):
        return {item.this.name: option_value(item.expression) for item in node.expressions}
    from .planner.values import pyvalue as _pyvalue   # lazily: the planner imports this module

    return _pyvalue(node)


def registration_request(sql: str) -> RegistrationRequest:
    """CREATE/REFRESH/DROP SOURCE, SHOW SOURCES and SHOW SOURCE -> a RegistrationRequest."""
    tree = D.parse(sql)
    if isinstance(tree, D.CreateSource):
        opts = {o.this.name: option_value(o.expression) for o in tree.expressions or []}
        fmt = tree.args.get("format")
        return RegistrationRequest("create_source", tree.this.name, tree.args["pattern"].this,
                                   fmt.name if fmt is not None else None, opts,
                                   replace=bool(tree.args.get("replace")),
                                   if_not_exists=bool(tree.args.get("exists")))
    if isinstance(tree, D.RefreshSource):
        return RegistrationRequest("refresh_source", tree.this.name)
    if isinstance(tree, D.DropSource):
        return RegistrationRequest("drop_source", tree.this.name, if_exists=bool(tree.args.get("exists")))
    if isinstance(tree, D.ShowSources):
        return RegistrationRequest("show_sources")
    if isinstance(tree, D.ShowSource):
        return RegistrationRequest("show_source", tree.this.name)
    raise ProgrammingError("not a source statement (CREATE SOURCE, REFRESH SOURCE, DROP SOURCE, SHOW SOURCES, "
                           "SHOW SOURCE)")


def split_snapshot(sql: str) -> tuple[str, int | None]:
    """``(sql without 'AT SNAPSHOT n', n)``; ``(sql, None)`` when the statement pins no snapshot.

    ``SELECT ... FROM samples AT SNAPSHOT 3 ...`` reads catalog snapshot 3 (every table of the
    statement: the pin is per statement). Two different pins in one statement are an error."""
    if not isinstance(sql, str) or "snapshot" not in sql.lower():
        return sql, None
    try:
        tokens = D.MixSQL().tokenize(sql)
    except Exception:   # not tokenizable: the statement's own parser reports it
        return sql, None
    spans, pins = [], set()
    for i, (a, b, c) in enumerate(zip(tokens, tokens[1:], tokens[2:])):
        if a.text.upper() == "AT" and b.text.upper() == "SNAPSHOT" and b.token_type != D.TokenType.STRING:
            if c.token_type != D.TokenType.NUMBER or not c.text.isdigit():
                raise D.error_at(sql, "AT SNAPSHOT needs a snapshot number, e.g. AT SNAPSHOT 3", c.start, c.end)
            spans.append((tokens[i - 1].end + 1 if i else a.start, c.end + 1))   # with the space before it
            pins.add(int(c.text))
    if not spans:
        return sql, None
    if len(pins) > 1:
        raise D.error_at(sql, f"one statement reads one snapshot; it names {sorted(pins)}", spans[1][0], spans[1][1])
    for start, end in reversed(spans):
        sql = sql[:start] + sql[end:]
    return sql, pins.pop()
