"""The interactive shell (``mixsql`` with no arguments), built on prompt-toolkit.

Input is a script (see :mod:`mixsql.script`): statements end at ``;`` and may span lines;
dot-commands (``.help``) act at once. Results print as aligned tables (or csv / json / markdown,
``.mode``) with the row count and elapsed time, to the terminal or a file (``.output``); errors
show the caret line. A statement running longer than half a second shows a status line (elapsed
time, DuckDB's progress) on a terminal. Ctrl-C while a statement runs cancels it (DuckDB
``interrupt()``); Ctrl-C at the prompt clears the input; Ctrl-D or ``.quit`` leaves.

Large pastes stay fast: bursts of characters become one paste (:mod:`mixsql.pasteinput`),
Enter scans the buffer only on a line that can end a statement, large buffers are not
highlighted and complete only on Tab, and completion looks at the statement under the cursor.

``Repl`` takes prompt-toolkit input/output objects and a text stream for results, so tests
drive it with ``create_pipe_input()`` and ``DummyOutput()``.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from prompt_toolkit import PromptSession
from prompt_toolkit.filters import Condition, completion_is_selected
from prompt_toolkit.history import FileHistory, History
from prompt_toolkit.input import create_input
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.lexers import DynamicLexer, PygmentsLexer
from pygments.lexer import inherit, words
from pygments.lexers.sql import SqlLexer
from pygments.token import Keyword
from rich.console import Console
from rich.text import Text

from . import __version__, render
from .catalog import DEFAULT_CATALOG
from .completion import MIX_KEYWORDS, SQL_KEYWORDS, MixCompleter, SchemaCache  # noqa: F401 - re-exported
from .dbapi import Connection, Cursor, connect, split_statements
from .errors import Error
from .pasteinput import PasteCoalescingInput
from .progress import Interrupted, QueryProgress, StatusLine, run_interruptibly, track_progress
from .script import Item, split_script, statement_complete  # noqa: F401 - re-exported

OUTPUT_MODES = ("table", "csv", "json", "markdown")
DOT_COMMANDS = {
    ".help": "show this help",
    ".sources": "list registered sources (same as SHOW SOURCES)",
    ".tables": "list tables and views",
    ".schema [TABLE]": "columns and types of TABLE (default: every table)",
    ".mode table|csv|json|markdown": "how results print (default table)",
    ".output [FILE]": "write results to FILE (no FILE: back to the terminal)",
    ".read FILE": "run the statements and dot-commands in FILE",
    ".timer on|off": "show the elapsed time of each statement (default on)",
    ".edit": "open the last statement in $EDITOR, then edit or run it at the prompt (also \\e)",
    ".maxrows N": "rows shown per result in table mode (default 100)",
    ".quit": "leave the shell (also .exit, Ctrl-D)",
}
DOT_ARGUMENTS = {".mode": OUTPUT_MODES, ".timer": ("on", "off")}
ALIASES = {".exit": ".quit", ".q": ".quit", "\\e": ".edit", "\\q": ".quit", "\\?": ".help"}
HELP_TEXT = """\
End SQL statements with ';' (they may span lines). Ctrl-C cancels a running statement,
Ctrl-D leaves. Tab completes keywords, tables, columns, group values, settings, sources and paths.

  SELECT language, count(*) FROM samples GROUP BY ALL;
  SELECT * FROM samples MIX BY language WITH (en 0.7, OTHER 0.3) LIMIT 1000 SAMPLES;
  EXPLAIN MIX SELECT * FROM samples MIX BY source WITH NATURAL LIMIT 1e9 TOKENS;
  CREATE SOURCE web FROM 'data/*.jsonl.zst' FORMAT jsonl WITH (language = 'meta.lang');
"""
LARGE_BUFFER = 20_000      # characters: beyond this, no completion while typing and no highlighting
REDRAW_INTERVAL_S = 0.1    # at most ten redraws a second while input pours in
PROGRESS_AFTER_S = 0.5     # a running statement shows its status line after this long


class MixSqlLexer(SqlLexer):
    """Pygments SQL lexer that also knows mixsql's keywords (MIX BY, SETTINGS, ...)."""

    name = "MixSQL"
    aliases = ["mixsql"]
    tokens = {"root": [(words(MIX_KEYWORDS, prefix=r"\b", suffix=r"\b"), Keyword), inherit]}


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


def enter_submits(text: str) -> bool:
    """Whether Enter at the end of ``text`` runs it. Only a line that can end a statement (a
    ``;``, a quote or comment end, a command) needs the scan of the whole text."""
    line = text[text.rfind("\n") + 1:].strip()
    if not line:
        return not text or text.isspace()
    if not any(c in line for c in ";'\"*") and not line.startswith((".", "\\")) \
            and line.lower() not in ("exit", "quit", "help"):
        return False
    return statement_complete(text)


class Repl:
    """An interactive mixsql session over one catalog connection.

    ``input``/``output`` are prompt-toolkit objects (defaults: the terminal); results and
    messages go to ``stdout`` (default ``sys.stdout``) through a rich console. ``progress``:
    show the status line of running statements (default: when ``stdout`` is a terminal).
    """

    def __init__(self, connection: Connection | None = None, *, catalog: str | os.PathLike = DEFAULT_CATALOG,
                 input: Any = None, output: Any = None, stdout: IO[str] | None = None,
                 history: History | str | os.PathLike | None = None, max_rows: int = 100,
                 color: bool | None = None, width: int | None = None,
                 complete_while_typing: bool = True, cancel_grace_s: float = 5.0,
                 progress: bool | None = None):
        self.con = connection if connection is not None else connect(catalog, progress=True)
        self._owns_con = connection is None
        self.cursor: Cursor = self._new_cursor()
        self.schema = SchemaCache(self.con)
        self.max_rows = max_rows
        self.cancel_grace_s = cancel_grace_s
        self.stdout = stdout if stdout is not None else sys.stdout
        self.console = Console(file=stdout, force_terminal=color, no_color=color is False,
                               width=width, highlight=False, soft_wrap=False)
        self.progress = self.console.is_terminal if progress is None else progress
        self.mode = "table"
        self.timer = True
        self.output_path: str | None = None   # .output FILE: results go there
        self._output: IO[str] | None = None
        self._result_console = self.console
        self.last_statement = ""
        self._next_default = ""               # .edit puts the edited statement here
        if history is None:
            history = FileHistory(str(default_history_path(self.con.catalog.path)))
        elif isinstance(history, (str, os.PathLike)):
            history = FileHistory(str(history))
        self.history = history
        highlighter = PygmentsLexer(MixSqlLexer)
        self.session: PromptSession = PromptSession(
            message="mixsql> ",
            multiline=True,
            prompt_continuation=lambda width, line_number, wrap_count: "   ...> ".rjust(width),
            lexer=DynamicLexer(lambda: None if self._large_buffer() else highlighter),
            completer=MixCompleter(self.schema, DOT_COMMANDS, DOT_ARGUMENTS),
            complete_while_typing=Condition(lambda: complete_while_typing and not self._large_buffer()),
            history=self.history,
            key_bindings=self._key_bindings(),
            input=PasteCoalescingInput(input if input is not None else create_input(), submits=enter_submits,
                                       buffer_text=lambda: self.session.default_buffer.text),
            output=output,
            enable_history_search=False,
        )
        self.session.app.min_redraw_interval = REDRAW_INTERVAL_S   # one redraw per burst of input, not per read
        self.running = True
        self.busy = threading.Event()  # set while a statement runs (tests and signal senders watch it)

    def _new_cursor(self) -> Cursor:
        return track_progress(self.con.cursor())

    def _large_buffer(self) -> bool:
        return len(self.session.default_buffer.text) > LARGE_BUFFER

    # -- prompt plumbing
    @staticmethod
    def _key_bindings() -> KeyBindings:
        kb = KeyBindings()

        @kb.add("enter", filter=~completion_is_selected)
        @kb.add("c-j", filter=~completion_is_selected)
        def _enter(event):
            buf = event.current_buffer
            if buf.document.is_cursor_at_the_end and enter_submits(buf.text):
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
                default, self._next_default = self._next_default, ""
                try:
                    text = self.session.prompt(default=default)
                except KeyboardInterrupt:
                    continue  # Ctrl-C at the prompt clears the input
                except EOFError:
                    break
                try:
                    self.handle(text)
                except KeyboardInterrupt:   # between statements of a script or a .read file
                    self.console.print(Text("Cancelled (Ctrl-C).", style="yellow"))
        finally:
            self.close()
        return 0

    def close(self) -> None:
        self._set_output(None)
        if self._owns_con:
            self.con.close()

    # -- evaluation
    def handle(self, text: str) -> bool:
        """Run one input: its statements and dot-commands in order (an unfinished last statement
        runs too: Alt-Enter). Returns False once the shell should quit."""
        items, rest = split_script(text)
        if rest.strip():
            items.append(Item("sql", rest))
        for item in items:
            if not self.running:
                break
            if item.kind == "dot":
                self.dot_command(item.text)
                continue
            for stmt in split_statements(item.text):
                self.last_statement = stmt.strip()
                if self.run_statement(stmt) is None:   # cancelled: the rest of the input is dropped
                    return self.running
        return self.running

    def error(self, message: str) -> None:
        self.console.print(Text("Error: " + message, style="bold red"))

    def info(self, message: str) -> None:
        self.console.print(Text(message))

    def dot_command(self, line: str) -> None:
        parts = line.split()
        cmd, args = parts[0].lower(), parts[1:]
        cmd = ALIASES.get(cmd, cmd)
        handler = getattr(self, "_dot_" + cmd[1:], None) if cmd.startswith(".") and cmd[1:].isidentifier() else None
        if handler is None:
            self.error(f"unknown command {cmd}; type .help for the list")
            return
        handler(args)

    def _dot_quit(self, args: list[str]) -> None:
        self.running = False

    def _dot_help(self, args: list[str]) -> None:
        self.console.print(Text(HELP_TEXT))
        for name, text in DOT_COMMANDS.items():
            self.console.print(Text(f"  {name:<32} {text}"))

    def _dot_sources(self, args: list[str]) -> None:
        self.run_statement("SELECT name, format, n_files, n_samples, n_bytes, n_tokens, properties, pattern "
                           "FROM sources ORDER BY name")

    def _dot_tables(self, args: list[str]) -> None:
        names = sorted(self.schema.tables())
        self.info("  ".join(names) if names else "(no tables)")

    def _dot_schema(self, args: list[str]) -> None:
        tables = self.schema.tables()
        for t in args or sorted(tables):
            if t not in tables:
                near = [x for x in tables if x.lower() == t.lower()]
                self.error(f"no table named {t!r}" + (f"; did you mean {near[0]!r}?" if near else
                           f". Tables: {', '.join(sorted(tables)) or '(none)'}"))
                continue
            render.print_table(self.console, [("column", "VARCHAR"), ("type", "VARCHAR")], tables[t], title=t)

    def _dot_maxrows(self, args: list[str]) -> None:
        try:
            self.max_rows = max(1, int(args[0]))
            self.info(f"showing at most {self.max_rows} rows")
        except (IndexError, ValueError):
            self.error(".maxrows takes a positive integer, e.g. .maxrows 50")

    def _dot_mode(self, args: list[str]) -> None:
        if len(args) != 1 or args[0].lower() not in OUTPUT_MODES:
            self.error(f".mode takes one of {', '.join(OUTPUT_MODES)} (now: {self.mode})")
            return
        self.mode = args[0].lower()

    def _dot_timer(self, args: list[str]) -> None:
        if len(args) != 1 or args[0].lower() not in ("on", "off"):
            self.error(f".timer takes on or off (now: {'on' if self.timer else 'off'})")
            return
        self.timer = args[0].lower() == "on"

    def _dot_output(self, args: list[str]) -> None:
        if len(args) > 1:
            self.error(".output takes one file name (none: back to the terminal)")
            return
        try:
            self._set_output(args[0] if args else None)
        except OSError as exc:
            self.error(f"cannot write {args[0]}: {exc.strerror or exc}")
            return
        if args:
            self.info(f"results go to {args[0]} (.output alone: back to the terminal)")

    def _set_output(self, path: str | None) -> None:
        stream = open(os.path.expanduser(path), "w", encoding="utf-8") if path else None  # noqa: SIM115
        if self._output is not None:
            self._output.close()
        self._output, self.output_path = stream, path
        self._result_console = (self.console if stream is None else
                                Console(file=stream, no_color=True, width=100_000, highlight=False, soft_wrap=False))

    def _dot_read(self, args: list[str]) -> None:
        if len(args) != 1:
            self.error(".read takes one file name, e.g. .read setup.sql")
            return
        try:
            text = Path(os.path.expanduser(args[0])).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.error(f"cannot read {args[0]}: {getattr(exc, 'strerror', None) or exc}")
            return
        self.handle(text)

    def _dot_edit(self, args: list[str]) -> None:
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False, encoding="utf-8") as fh:
            fh.write(self.last_statement.rstrip().rstrip(";") + ";\n" if self.last_statement else "")
        try:
            code = subprocess.call([*shlex.split(editor), fh.name])
            edited = Path(fh.name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            self.error(f"cannot start the editor {editor!r} ({exc}); set $EDITOR")
            return
        finally:
            Path(fh.name).unlink(missing_ok=True)
        if code != 0:
            self.error(f"the editor {editor!r} exited with status {code}; nothing changed")
            return
        self._next_default = edited   # shown at the next prompt: Enter runs it

    # -- statements
    def run_statement(self, sql: str) -> bool | None:
        """Execute one statement with Ctrl-C cancellation and print its result. True if it
        succeeded, False on an error, None when cancelled."""
        cursor = self.cursor

        def work():
            t0 = time.perf_counter()
            cursor.execute(sql)
            desc = cursor.description
            if desc is None:
                rows = [] if cursor.rowcount < 0 else [(cursor.rowcount,)]
            elif self.mode == "table":
                rows = cursor.fetchmany(self.max_rows + 1)
            elif cursor.unbounded:
                rows = cursor.fetchmany(self.max_rows)
            else:
                rows = cursor.fetchall()
            return desc, rows, time.perf_counter() - t0, cursor.statement_kind

        status = StatusLine(self.console.file, tty=True) if self.progress else None
        try:
            with QueryProgress(cursor, status, after=PROGRESS_AFTER_S):
                desc, rows, elapsed, kind = run_interruptibly(work, cursor.cancel, self.cancel_grace_s, self.busy)
        except KeyboardInterrupt as exc:
            if isinstance(exc, Interrupted) and not exc.stopped:   # stuck outside DuckDB: a fresh cursor
                self.cursor = self._new_cursor()
            self.console.print(Text("Cancelled (Ctrl-C).", style="yellow"))
            return None
        except Error as exc:
            self.error(str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - the shell survives every statement
            self.error(f"internal error ({type(exc).__name__}): {exc}. Please report this bug.")
            return False
        self.schema.invalidate(values=kind in ("create_source", "refresh_source", "drop_source"))
        self.print_result(desc, rows, elapsed if self.timer else None, kind)
        return True

    def print_result(self, desc: list[tuple] | None, rows: list[tuple], elapsed: float | None, kind: str | None) -> None:
        """A result in the current ``.mode`` to the terminal or the ``.output`` file; the summary
        line (rows, time) goes to the terminal."""
        if desc is None:   # DDL/DML: rows holds the number of rows changed, when counted
            changed = f", {rows[0][0]} row{'s' if rows[0][0] != 1 else ''} changed" if rows else ""
            self.console.print(Text("OK" + changed + (f" ({elapsed:.3f} s)" if elapsed is not None else ""),
                                    style="dim"))
            return
        if self.mode == "table":
            more = len(rows) > self.max_rows
            rows = rows[: self.max_rows]
            if kind == "explain_mix":
                render.print_explain(self._result_console, desc, rows)
            else:
                self._result_console.print(render.result_table(desc, rows))
        else:
            more = False
            out = self._output or self.stdout
            render.WRITERS[self.mode](out, desc, rows)
            out.flush()
        if self._output is not None or self.mode == "table":
            self.console.print(render.footer(len(rows), elapsed, more), style="dim")


def main(catalog: str | os.PathLike = DEFAULT_CATALOG) -> int:
    """Start the shell on the terminal."""
    return Repl(catalog=catalog).run()
