"""Tab completion for the shell: keywords, tables (and ``mix_ledger``), columns, functions, dot-commands, group
values after ``col =`` and inside ``MIX BY col WITH (``, setting names and values inside
``SETTINGS (``, source names after ``REFRESH SOURCE`` / ``DROP SOURCE``, and file paths inside
``CREATE SOURCE ... FROM '``.

Only the statement under the cursor is looked at (text after the last complete statement), and
patterns anchored at the cursor only see its last :data:`TAIL_CHARS` characters, so completing
in a 100 KB buffer costs about as much as in a short one.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.document import Document

from .catalog import quote_ident
from .dbapi import Connection
from .planner import SETTINGS
from .script import split_script

# mixsql's own table functions (computed by mixsql before DuckDB sees the statement)
TABLE_FUNCTIONS = {"mix_ledger": "run ledger: mix_ledger('ckpt')"}
MIX_KEYWORDS = (
    "MIX", "NATURAL", "SCHEDULE", "STEP", "SETTINGS", "TOKENS", "SAMPLES", "CHUNKS", "OTHER",
    "SOURCE", "SOURCES", "REFRESH", "FORMAT", "ADO", "EXPLAIN", "USING", "AT",
)
SQL_KEYWORDS = (
    "SELECT", "FROM", "WHERE", "GROUP", "BY", "HAVING", "ORDER", "LIMIT", "OFFSET", "WITH", "AS",
    "AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "ILIKE", "BETWEEN", "CASE", "WHEN", "THEN",
    "ELSE", "END", "DISTINCT", "JOIN", "LEFT", "RIGHT", "INNER", "OUTER", "FULL", "CROSS", "ON",
    "UNION", "ALL", "EXCEPT", "INTERSECT", "ASC", "DESC", "CREATE", "TABLE", "VIEW", "DROP",
    "INSERT", "INTO", "VALUES", "UPDATE", "SET", "DELETE", "DESCRIBE", "SHOW", "TABLES", "COPY",
    "TO", "BEGIN", "COMMIT", "ROLLBACK", "TRUE", "FALSE", "CAST", "COUNT", "SUM", "AVG", "MIN",
    "MAX", "SUMMARIZE", "PRAGMA", "QUALIFY", "WINDOW", "OVER", "PARTITION", "FILTER", "REPLACE",
)
INTERNAL_TABLES = frozenset({"sample_index", "catalog_meta"})  # queryable, but not offered by completion
GROUP_VALUE_LIMIT = 200   # VARCHAR columns with at most this many distinct values complete as groups
TAIL_CHARS = 4000         # how far back cursor-anchored contexts (col = 'x, SETTINGS (...) look


class SchemaCache:
    """Tables, columns, functions and low-cardinality VARCHAR values of a catalog, cached."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self._tables: dict[str, list[tuple[str, str]]] | None = None
        self._functions: list[str] | None = None
        self._values: dict[tuple[str, str], list[str]] = {}
        self._sources: list[str] | None = None

    def invalidate(self, values: bool = False) -> None:
        self._tables = None
        if values:
            self._values.clear()
            self._sources = None

    def sources(self) -> list[str]:
        """Names of the registered sources."""
        if self._sources is None:
            try:
                self._sources = [r[0] for r in self._query("SELECT name FROM sources ORDER BY name")]
            except Exception:  # noqa: BLE001 - completion must never break the prompt
                self._sources = []
        return self._sources

    def _query(self, sql: str, params: Any = None) -> list[tuple]:
        cur = self.connection.catalog.con.cursor()
        try:
            return cur.execute(sql, params).fetchall() if params is not None else cur.execute(sql).fetchall()
        finally:
            cur.close()

    def tables(self) -> dict[str, list[tuple[str, str]]]:
        if self._tables is None:
            rows = self._query(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
            )
            out: dict[str, list[tuple[str, str]]] = {}
            for t, c, typ in rows:
                out.setdefault(t, []).append((c, typ))
            self._tables = out
        return self._tables

    def columns(self, tables: Iterable[str] | None = None) -> list[str]:
        all_tables = self.tables()
        names = [t for t in (tables or []) if t in all_tables] or (["samples"] if "samples" in all_tables else list(all_tables))
        seen: dict[str, None] = {}
        for t in names:
            for c, _ in all_tables.get(t, []):
                seen.setdefault(c, None)
        return list(seen)

    def functions(self) -> list[str]:
        if self._functions is None:
            try:
                self._functions = [r[0] for r in self._query(
                    "SELECT DISTINCT function_name FROM duckdb_functions() "
                    "WHERE function_type IN ('scalar', 'aggregate') AND function_name NOT LIKE '%\\_%' ESCAPE '\\' "
                    "OR function_name IN ('approx_count_distinct', 'string_agg', 'regexp_matches')"
                )]
            except Exception:  # noqa: BLE001 - completion must never break the prompt
                self._functions = []
        return self._functions

    def group_values(self, column: str, table: str = "samples") -> list[str]:
        """Distinct values of a low-cardinality VARCHAR column (empty list otherwise)."""
        key = (table, column)
        if key not in self._values:
            vals: list[str] = []
            cols = dict(self.tables().get(table, []))
            col = next((c for c in cols if c.lower() == column.lower()), None)
            if col is not None and cols[col].upper().startswith("VARCHAR"):
                q = quote_ident(col)
                try:
                    rows = self._query(
                        f"SELECT DISTINCT {q} FROM {quote_ident(table)} WHERE {q} IS NOT NULL "
                        f"ORDER BY 1 LIMIT {GROUP_VALUE_LIMIT + 1}"
                    )
                    if len(rows) <= GROUP_VALUE_LIMIT:
                        vals = [r[0] for r in rows]
                except Exception:  # noqa: BLE001
                    vals = []
            self._values[key] = vals
        return self._values[key]


_IDENT = r"[A-Za-z_][\w$]*"
_MIX_BY = re.compile(rf"\bMIX\s+BY\s+(?:\"([^\"]+)\"|({_IDENT}))\s+WITH\b", re.I)
_COMPARE = re.compile(rf"(?:\"([^\"]+)\"|({_IDENT}))\s*(?:=|!=|<>|\bIN\s*\((?:\s*'[^']*'\s*,)*)\s*('?)([^'\s,()]*)$", re.I)
_FROM = re.compile(rf"\b(?:FROM|JOIN)\s+(?:\"([^\"]+)\"|({_IDENT}))", re.I)
_AFTER_FROM = re.compile(rf"\b(?:FROM|JOIN|DESCRIBE|SUMMARIZE|TABLE)\s+({_IDENT})?$", re.I)
_WORD = re.compile(r"[\w$]*$")
_IN_SETTINGS = re.compile(r"\bSETTINGS\s*\(([^()]*)$", re.I)
_SETTING_VALUE = re.compile(r"\s*(\w+)\s*=\s*('?)(\w*)")
_SOURCE_NAME = re.compile(r"\b(?:REFRESH|DROP)\s+SOURCE\s+(?:IF\s+EXISTS\s+)?(\w*)$", re.I)
_SOURCE_PATH = re.compile(r"\bCREATE\s+SOURCE\s+(?:IF\s+NOT\s+EXISTS\s+)?\S+\s+FROM\s+'([^']*)$", re.I)


def _list_open(after_with: str) -> bool:
    """Whether the parenthesised list that follows ``WITH`` is still open at the end."""
    depth = 0
    for m in re.finditer(r"[()]", after_with):
        depth += 1 if m.group(0) == "(" else -1
        if depth == 0:
            return False
    return depth > 0


def _bare_ok(value: str) -> bool:
    return re.fullmatch(_IDENT, value) is not None and value.upper() not in MIX_KEYWORDS + SQL_KEYWORDS


class MixCompleter(Completer):
    """Completes keywords, tables, columns, functions, dot-commands, group values, settings,
    source names and paths (see the module docstring)."""

    def __init__(self, schema: SchemaCache, dot_commands: dict[str, str] | None = None,
                 dot_arguments: dict[str, Iterable[str]] | None = None):
        self.schema = schema
        self.dot_commands = dot_commands or {}     # ".name ARGS" -> help text
        self.dot_arguments = dot_arguments or {}   # ".name" -> the words its argument may be

    def get_completions(self, document: Document, complete_event):
        try:
            yield from self._complete(document)
        except Exception:  # noqa: BLE001 - a catalog hiccup must not break typing
            return

    def _complete(self, document: Document):
        full = document.text_before_cursor
        if document.text.lstrip().startswith(".") and "\n" not in full:
            yield from self._dot(full.lstrip())
            return
        text = split_script(full)[1] or full[len(full.rstrip()):]   # the statement being typed
        tail = text[-TAIL_CHARS:]
        for context in (self._settings, self._source_name, self._path, self._compared_value):
            found = context(text, tail)
            if found is not None:   # the cursor is in this context (perhaps with nothing to offer)
                yield from found
                return
        word = _WORD.search(tail).group(0)
        yield from self._group_values(text, word)
        if not word:
            return
        lw = word.lower()
        tables = sorted(t for t in self.schema.tables() if t not in INTERNAL_TABLES)
        if _AFTER_FROM.search(tail):
            for t in tables:
                if t.lower().startswith(lw):
                    yield Completion(t, -len(word), display_meta="table")
            for f, meta in TABLE_FUNCTIONS.items():
                if f.startswith(lw):
                    yield Completion(f, -len(word), display_meta=meta)
            return
        for c in self.schema.columns(self._tables_in(text)):
            if c.lower().startswith(lw):
                yield Completion(c if re.fullmatch(_IDENT, c) else quote_ident(c), -len(word),
                                 display_meta="column")
        for t in tables:
            if t.lower().startswith(lw):
                yield Completion(t, -len(word), display_meta="table")
        upper = word.isupper() or not word.islower()
        for k in sorted(set(SQL_KEYWORDS + MIX_KEYWORDS)):
            if k.lower().startswith(lw):
                yield Completion(k if upper else k.lower(), -len(word), display_meta="keyword")
        if len(word) >= 2:
            for f in self.schema.functions():
                if f.lower().startswith(lw):
                    yield Completion(f, -len(word), display_meta="function")

    def _compared_value(self, text: str, tail: str) -> list[Completion] | None:
        """A quoted value after ``col =`` / ``col IN (`` (None: not there, or no known values)."""
        m = _COMPARE.search(tail)
        if not m:
            return None
        column = m.group(1) or m.group(2)
        quote, typed = m.group(3), m.group(4)
        return [Completion("'" + v.replace("'", "''") + "'", -(len(typed) + len(quote)), display=v, display_meta=column)
                for v in self.schema.group_values(column, self._table(text))
                if v.lower().startswith(typed.lower())] or None

    def _group_values(self, text: str, word: str):
        """A group value inside ``MIX BY col WITH ( ... )``."""
        mix = None
        for mix in _MIX_BY.finditer(text):
            pass
        if mix is None:
            return
        after = text[mix.end():]
        if _list_open(after) and not re.search(r"\bMIX\s+BY\s*$", after[-200:], re.I):
            column = mix.group(1) or mix.group(2)
            for v in self.schema.group_values(column, self._table(text)):
                if v.lower().startswith(word.lower()):
                    ins = v if _bare_ok(v) else "'" + v.replace("'", "''") + "'"
                    yield Completion(ins, -len(word), display=v, display_meta="group")

    @staticmethod
    def _settings(text: str, tail: str) -> list[Completion] | None:
        """Setting names inside ``SETTINGS (``, and the allowed values after ``name =``."""
        m = _IN_SETTINGS.search(tail)
        if not m:
            return None
        option = m.group(1).rsplit(",", 1)[-1]
        value = _SETTING_VALUE.fullmatch(option)
        if value:
            name, quote, typed = value.group(1).lower(), value.group(2), value.group(3)
            allowed = SETTINGS.get(name)
            return [Completion(f"'{v}'", -(len(typed) + len(quote)), display=v, display_meta=name)
                    for v in (allowed if isinstance(allowed, tuple) else ()) if v.startswith(typed.lower())]
        typed = _WORD.search(option).group(0)
        if option.strip() not in ("", typed):
            return []
        return [Completion(f"{name} = ", -len(typed), display=name,
                           display_meta=" | ".join(allowed) if isinstance(allowed, tuple) else allowed)
                for name, allowed in SETTINGS.items() if name.startswith(typed.lower())]

    def _source_name(self, text: str, tail: str) -> list[Completion] | None:
        m = _SOURCE_NAME.search(tail)
        if not m:
            return None
        typed = m.group(1)
        return [Completion(name, -len(typed), display_meta="source")
                for name in self.schema.sources() if name.lower().startswith(typed.lower())]

    @staticmethod
    def _path(text: str, tail: str) -> list[Completion] | None:
        """Files and directories inside ``CREATE SOURCE name FROM '``."""
        m = _SOURCE_PATH.search(tail)
        return list(path_completions(m.group(1))) if m else None

    def _dot(self, text: str):
        parts = text.split()
        if len(parts) <= 1 and not text.endswith(" "):
            for cmd, help_text in self.dot_commands.items():
                name = cmd.split()[0]
                if name.startswith(text) or name == ".quit" and ".exit".startswith(text):
                    yield Completion(name, -len(text), display_meta=help_text)
            return
        word = "" if text.endswith(" ") else parts[-1]
        if parts[0] == ".schema":
            for t in sorted(self.schema.tables()):
                if t.startswith(word):
                    yield Completion(t, -len(word), display_meta="table")
        elif parts[0] in self.dot_arguments:
            for choice in self.dot_arguments[parts[0]]:
                if choice.startswith(word):
                    yield Completion(choice, -len(word))
        elif parts[0] in (".read", ".output", ".once"):
            yield from path_completions(word)

    @staticmethod
    def _tables_in(text: str) -> list[str]:
        return [m.group(1) or m.group(2) for m in _FROM.finditer(text)]

    def _table(self, text: str) -> str:
        found = [t for t in self._tables_in(text) if t in self.schema.tables()]
        return found[-1] if found else "samples"


def path_completions(typed: str):
    """Entries of the directory ``typed`` names, whose names start with its last part."""
    folder, base = os.path.split(typed)
    try:
        entries = sorted(os.scandir(os.path.expanduser(folder) or "."), key=lambda e: e.name)
    except OSError:
        return
    for e in entries:
        if e.name.startswith(base) and (base.startswith(".") or not e.name.startswith(".")):
            is_dir = e.is_dir()
            yield Completion(e.name + ("/" if is_dir else ""), -len(base),
                             display_meta="directory" if is_dir else "file")
