"""The interactive shell (``mixsql`` with no arguments), built on prompt-toolkit.

Statements end at ``;`` and may span lines; dot-commands (``.help``) act at once. Results are
aligned rich tables with the row count and elapsed time; errors show the caret line. Ctrl-C
while a statement runs cancels it (DuckDB ``interrupt()``); Ctrl-C at the prompt clears the
input; Ctrl-D or ``.quit`` leaves.

``Repl`` takes prompt-toolkit input/output objects and a text stream for results, so tests
drive it with ``create_pipe_input()`` and ``DummyOutput()``.
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.filters import completion_is_selected
from prompt_toolkit.history import FileHistory, History
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.lexers import PygmentsLexer
from pygments.lexer import inherit, words
from pygments.lexers.sql import SqlLexer
from pygments.token import Keyword
from rich.console import Console
from rich.text import Text

from . import __version__
from .catalog import DEFAULT_CATALOG, quote_ident
from .dbapi import Connection, Cursor, connect, split_statements
from .errors import Error
from .render import print_table

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
DOT_COMMANDS = {
    ".help": "show this help",
    ".sources": "list registered sources (same as SHOW SOURCES)",
    ".tables": "list tables and views",
    ".schema [TABLE]": "columns and types of TABLE (default: every table)",
    ".maxrows N": "rows shown per result (default 100)",
    ".quit": "leave the shell (also .exit, Ctrl-D)",
}
HELP_TEXT = """\
End SQL statements with ';' (they may span lines). Ctrl-C cancels a running statement,
Ctrl-D leaves. Tab completes keywords, tables, columns and group values.

  SELECT language, count(*) FROM samples GROUP BY ALL;
  SELECT * FROM samples MIX BY language WITH (en 0.7, OTHER 0.3) LIMIT 1000 SAMPLES;
  EXPLAIN MIX SELECT * FROM samples MIX BY source WITH NATURAL LIMIT 1e9 TOKENS;
  CREATE SOURCE web FROM 'data/*.jsonl.zst' FORMAT jsonl WITH (language = 'meta.lang');
"""
INTERNAL_TABLES = frozenset({"sample_index", "catalog_meta"})  # queryable, but not offered by completion
GROUP_VALUE_LIMIT = 200   # VARCHAR columns with at most this many distinct values complete as groups


class MixSqlLexer(SqlLexer):
    """Pygments SQL lexer that also knows mixsql's keywords (MIX BY, SETTINGS, ...)."""

    name = "MixSQL"
    aliases = ["mixsql"]
    tokens = {"root": [(words(MIX_KEYWORDS, prefix=r"\b", suffix=r"\b"), Keyword), inherit]}


# ---------------------------------------------------------------------------------------------
# Catalog metadata for completion


class SchemaCache:
    """Tables, columns, functions and low-cardinality VARCHAR values of a catalog, cached."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self._tables: dict[str, list[tuple[str, str]]] | None = None
        self._functions: list[str] | None = None
        self._values: dict[tuple[str, str], list[str]] = {}

    def invalidate(self, values: bool = False) -> None:
        self._tables = None
        if values:
            self._values.clear()

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


def _bare_ok(value: str) -> bool:
    return re.fullmatch(_IDENT, value) is not None and value.upper() not in MIX_KEYWORDS + SQL_KEYWORDS


class MixCompleter(Completer):
    """Completes keywords, tables, columns, functions, dot-commands and group values."""

    def __init__(self, schema: SchemaCache):
        self.schema = schema

    def get_completions(self, document: Document, complete_event):
        try:
            yield from self._complete(document)
        except Exception:  # noqa: BLE001 - a catalog hiccup must not break typing
            return

    def _complete(self, document: Document):
        text = document.text_before_cursor
        stripped = document.text.lstrip()
        if stripped.startswith(".") and "\n" not in text:
            yield from self._dot(text.lstrip())
            return
        # a value after `col =` / `col IN (`: quoted string literal
        m = _COMPARE.search(text)
        if m:
            column = m.group(1) or m.group(2)
            quote, typed = m.group(3), m.group(4)
            vals = self.schema.group_values(column, self._table(text))
            if vals:
                for v in vals:
                    if v.lower().startswith(typed.lower()):
                        yield Completion("'" + v.replace("'", "''") + "'", -(len(typed) + len(quote)),
                                         display=v, display_meta=column)
                return
        word = _WORD.search(text).group(0)
        # a group value inside MIX BY col WITH ( ... )
        mix = None
        for mix in _MIX_BY.finditer(text):
            pass
        if mix is not None:
            after = text[mix.end():]
            if after.count("(") > after.count(")") and not re.search(r"\bMIX\s+BY\s*$", after, re.I):
                column = mix.group(1) or mix.group(2)
                for v in self.schema.group_values(column, self._table(text)):
                    if v.lower().startswith(word.lower()):
                        ins = v if _bare_ok(v) else "'" + v.replace("'", "''") + "'"
                        yield Completion(ins, -len(word), display=v, display_meta="group")
        if not word:
            return
        lw = word.lower()
        tables = sorted(t for t in self.schema.tables() if t not in INTERNAL_TABLES)
        if _AFTER_FROM.search(text):
            for t in tables:
                if t.lower().startswith(lw):
                    yield Completion(t, -len(word), display_meta="table")
            return
        for c in self.schema.columns(self._tables_in(document.text)):
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

    def _dot(self, text: str):
        parts = text.split()
        if len(parts) <= 1 and not text.endswith(" "):
            for cmd in DOT_COMMANDS:
                name = cmd.split()[0]
                if name.startswith(text) or name == ".quit" and ".exit".startswith(text):
                    yield Completion(name, -len(text), display_meta=DOT_COMMANDS[cmd])
            return
        if parts[0] == ".schema":
            word = "" if text.endswith(" ") else parts[-1]
            for t in sorted(self.schema.tables()):
                if t.startswith(word):
                    yield Completion(t, -len(word), display_meta="table")

    @staticmethod
    def _tables_in(text: str) -> list[str]:
        return [m.group(1) or m.group(2) for m in _FROM.finditer(text)]

    def _table(self, text: str) -> str:
        found = [t for t in self._tables_in(text) if t in self.schema.tables()]
        return found[-1] if found else "samples"


# ---------------------------------------------------------------------------------------------
# Statement boundaries


def statement_complete(text: str) -> bool:
    """True when Enter should run the buffer: a dot-command, empty input, or a final ``;``
    outside quotes and comments."""
    s = text.strip()
    if not s or s.startswith(".") or s.lower() in ("exit", "quit", "help"):
        return True
    last = ""
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c in ("'", '"'):
            j = s.find(c, i + 1)
            while j >= 0 and j + 1 < n and s[j + 1] == c:
                j = s.find(c, j + 2)
            if j < 0:
                return False  # unterminated quote: keep reading lines
            last, i = c, j + 1
        elif s.startswith("--", i):
            j = s.find("\n", i)
            i = n if j < 0 else j
        elif s.startswith("/*", i):
            j = s.find("*/", i + 2)
            if j < 0:
                return False
            i = j + 2
        else:
            if not c.isspace():
                last = c
            i += 1
    return last == ";"


# ---------------------------------------------------------------------------------------------
# The shell


def default_history_path(catalog_path: Path | None) -> Path:
    """``$MIXSQL_HISTORY``, else ``<catalog>/.mixsql_history`` when writable, else ``~/.mixsql_history``."""
    env = os.environ.get("MIXSQL_HISTORY")
    if env:
        return Path(env).expanduser()
    if catalog_path is not None and os.access(catalog_path, os.W_OK):
        return Path(catalog_path) / ".mixsql_history"
    return Path.home() / ".mixsql_history"


class Repl:
    """An interactive mixsql session over one catalog connection.

    ``input``/``output`` are prompt-toolkit objects (defaults: the terminal); results and
    messages go to ``stdout`` (default ``sys.stdout``) through a rich console.
    """

    def __init__(self, connection: Connection | None = None, *, catalog: str | os.PathLike = DEFAULT_CATALOG,
                 input: Any = None, output: Any = None, stdout: IO[str] | None = None,
                 history: History | str | os.PathLike | None = None, max_rows: int = 100,
                 color: bool | None = None, width: int | None = None,
                 complete_while_typing: bool = True, cancel_grace_s: float = 5.0):
        self.con = connection if connection is not None else connect(catalog, progress=True)
        self._owns_con = connection is None
        self.cursor: Cursor = self.con.cursor()
        self.schema = SchemaCache(self.con)
        self.max_rows = max_rows
        self.cancel_grace_s = cancel_grace_s
        self.console = Console(file=stdout, force_terminal=color, no_color=color is False,
                               width=width, highlight=False, soft_wrap=False)
        if history is None:
            history = FileHistory(str(default_history_path(self.con.catalog.path)))
        elif isinstance(history, (str, os.PathLike)):
            history = FileHistory(str(history))
        self.history = history
        self.session: PromptSession = PromptSession(
            message="mixsql> ",
            multiline=True,
            prompt_continuation=lambda width, line_number, wrap_count: "   ...> ".rjust(width),
            lexer=PygmentsLexer(MixSqlLexer),
            completer=MixCompleter(self.schema),
            complete_while_typing=complete_while_typing,
            history=history,
            key_bindings=self._key_bindings(),
            input=input,
            output=output,
            enable_history_search=False,
        )
        self.running = True
        self.busy = threading.Event()  # set while a statement runs (tests and signal senders watch it)

    # -- prompt plumbing
    @staticmethod
    def _key_bindings() -> KeyBindings:
        kb = KeyBindings()

        @kb.add("enter", filter=~completion_is_selected)
        @kb.add("c-j", filter=~completion_is_selected)
        def _enter(event):
            buf = event.current_buffer
            if buf.document.is_cursor_at_the_end and statement_complete(buf.text):
                buf.validate_and_handle()
            else:
                buf.insert_text("\n")

        @kb.add("escape", "enter")
        def _run_now(event):  # Alt-Enter runs the buffer even without ';'
            event.current_buffer.validate_and_handle()

        return kb

    def banner(self) -> None:
        try:
            n = len(self.con.catalog.source_names())
        except Exception:  # noqa: BLE001
            n = 0
        self.console.print(
            f"mixsql {__version__} — catalog {self.con.catalog.path} ({n} source{'s' if n != 1 else ''})\n"
            "End statements with ';'. Type .help for help, .quit to leave.", style="dim", highlight=False,
        )

    def run(self, banner: bool = True) -> int:
        """Read-eval-print until ``.quit`` or end of input. Returns the exit code (0)."""
        if banner:
            self.banner()
        try:
            while self.running:
                try:
                    text = self.session.prompt()
                except KeyboardInterrupt:
                    continue  # Ctrl-C at the prompt clears the input
                except EOFError:
                    break
                self.handle(text)
        finally:
            self.close()
        return 0

    def close(self) -> None:
        if self._owns_con:
            self.con.close()

    # -- evaluation
    def handle(self, text: str) -> bool:
        """Run one input (dot-command or SQL statements). Returns False once the shell should quit."""
        s = text.strip()
        if not s:
            return self.running
        if s.startswith("."):
            self.dot_command(s)
        elif s.lower().rstrip(";") in ("exit", "quit"):
            self.running = False
        elif s.lower().rstrip(";") == "help":
            self.dot_command(".help")
        else:
            for stmt in split_statements(s):
                if not self.run_statement(stmt):
                    break
        return self.running

    def error(self, message: str) -> None:
        self.console.print(Text("Error: " + message, style="bold red"))

    def dot_command(self, line: str) -> None:
        parts = line.split()
        cmd, args = parts[0].lower(), parts[1:]
        if cmd in (".quit", ".exit", ".q"):
            self.running = False
        elif cmd == ".help":
            self.console.print(Text(HELP_TEXT))
            for name, text in DOT_COMMANDS.items():
                self.console.print(Text(f"  {name:<18} {text}"))
        elif cmd == ".sources":
            self.run_statement(
                "SELECT name, format, n_files, n_samples, n_bytes, n_tokens, properties, pattern "
                "FROM sources ORDER BY name")
        elif cmd == ".tables":
            names = sorted(self.schema.tables())
            self.console.print(Text("  ".join(names) if names else "(no tables)"))
        elif cmd == ".schema":
            tables = self.schema.tables()
            wanted = args or sorted(tables)
            for t in wanted:
                if t not in tables:
                    near = [x for x in tables if x.lower() == t.lower()]
                    self.error(f"no table named {t!r}" + (f"; did you mean {near[0]!r}?" if near else
                               f". Tables: {', '.join(sorted(tables)) or '(none)'}"))
                    continue
                desc = [("column", "VARCHAR"), ("type", "VARCHAR")]
                print_table(self.console, desc, tables[t], title=t)
        elif cmd == ".maxrows":
            try:
                self.max_rows = max(1, int(args[0]))
                self.console.print(Text(f"showing at most {self.max_rows} rows"))
            except (IndexError, ValueError):
                self.error(".maxrows takes a positive integer, e.g. .maxrows 50")
        else:
            self.error(f"unknown command {cmd}; type .help for the list")

    def run_statement(self, sql: str) -> bool:
        """Execute one statement with Ctrl-C cancellation and print its result. True if it succeeded."""
        cursor = self.cursor
        box: dict[str, Any] = {}

        # The worker signals completion with an Event: Thread.join() interrupted by Ctrl-C can
        # leave Thread.is_alive() reporting False while the thread still runs (CPython 3.11).
        done = threading.Event()

        def work():
            try:
                t0 = time.perf_counter()
                cursor.execute(sql)
                desc = cursor.description
                rows = cursor.fetchmany(self.max_rows + 1) if desc is not None else []
                box["value"] = (desc, rows, time.perf_counter() - t0, cursor.statement_kind)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                box["error"] = exc
            finally:
                done.set()

        worker = threading.Thread(target=work, name="mixsql-statement", daemon=True)
        # Ctrl-C must reach this loop whatever handler is installed (an event loop's left behind
        # by the prompt, or SIG_IGN inherited from a launcher): ours for the statement's duration.
        own_sigint = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.default_int_handler) if own_sigint else None
        try:
            worker.start()
            self.busy.set()
            while not done.wait(0.05):
                pass
            self.busy.clear()
        except KeyboardInterrupt:
            self.busy.clear()
            # An interrupt that lands before DuckDB starts the query is lost: repeat it until the
            # statement has stopped (or the grace period ends).
            deadline = time.monotonic() + self.cancel_grace_s
            while not done.is_set() and time.monotonic() < deadline:
                cursor.cancel()
                done.wait(0.1)
            if not done.is_set():  # stuck outside DuckDB: abandon it, continue on a fresh cursor
                self.cursor = self.con.cursor()
            self.console.print(Text("Cancelled (Ctrl-C).", style="yellow"))
            return False
        finally:
            if own_sigint:
                signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, Error):
                self.error(str(exc))
            elif isinstance(exc, KeyboardInterrupt):
                self.console.print(Text("Cancelled (Ctrl-C).", style="yellow"))
            else:
                self.error(f"internal error ({type(exc).__name__}): {exc}. Please report this bug.")
            return False
        desc, rows, elapsed, kind = box["value"]
        self.schema.invalidate(values=kind in ("create_source", "refresh_source", "drop_source"))
        if desc is None:
            self.console.print(Text(f"OK ({elapsed:.3f} s)", style="dim"))
            return True
        more = len(rows) > self.max_rows
        title = "EXPLAIN MIX" if kind == "explain_mix" else None
        print_table(self.console, desc, rows[: self.max_rows], elapsed=elapsed, more=more, title=title)
        return True


def main(catalog: str | os.PathLike = DEFAULT_CATALOG) -> int:
    """Start the shell on the terminal."""
    return Repl(catalog=catalog).run()
