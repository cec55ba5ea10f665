"""The REPL driven through prompt-toolkit's pipe input (real key sequences, real catalog)."""
from __future__ import annotations

import io
import os
import signal
import threading
import time

import pytest
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from pygments.token import Keyword

import mixsql
from mixsql.repl import (DOT_ARGUMENTS, DOT_COMMANDS, MixCompleter, MixSqlLexer, Repl, SchemaCache,
                         default_history_path, statement_complete)

UP = "\x1b[A"
CTRL_C = "\x03"


def run_repl(catalog, keys: str | list[str], history=None, on_start=None, pace: float = 0.3, **kw) -> str:
    """Run a Repl on piped keys. A list of pieces is typed piece by piece, ``pace`` seconds
    apart, and after a piece ending in Tab until the completion has replaced what it typed (at
    most 10 s), like a person waiting for Tab completion to appear."""
    out = io.StringIO()
    with create_pipe_input() as inp:
        repl = Repl(catalog=catalog, input=inp, output=DummyOutput(), stdout=out,
                    history=history if history is not None else InMemoryHistory(),
                    width=160, complete_while_typing=False, **kw)
        if isinstance(keys, str):
            inp.send_text(keys)
        else:
            def feed():
                buffer = repl.session.default_buffer
                for piece in keys:
                    inp.send_text(piece)
                    time.sleep(pace)
                    if piece.endswith("\t"):   # a person waits until the completion appears
                        typed = piece[:-1]
                        deadline = time.monotonic() + 10
                        while buffer.text.endswith(typed) and time.monotonic() < deadline:
                            time.sleep(0.02)
            threading.Thread(target=feed, daemon=True).start()
        if on_start:
            on_start(repl)
        assert repl.run(banner=False) == 0
    return out.getvalue()


def test_multiline_statement_and_result_table(langs_catalog):
    out = run_repl(langs_catalog, "SELECT language,\n  count(*) AS n\nFROM samples\n"
                                  "GROUP BY 1 ORDER BY 1\n;\n.quit\n")
    assert "language" in out and "JavaScript" in out and "50" in out
    assert "3 rows (" in out and " s)" in out


def test_several_statements_on_one_line(langs_catalog):
    out = run_repl(langs_catalog, "SELECT 1 AS one; SELECT 2 AS two;\n.quit\n")
    assert "one" in out and "two" in out


def test_error_display_with_caret_and_shell_survives(langs_catalog):
    out = run_repl(langs_catalog, "SELEC 1;\nSELECT 5 AS five;\n.quit\n")
    assert "Error:" in out and "SELEC 1\n" in out and "^^^^^" in out
    assert "five" in out


def test_completion_of_keyword_column_and_group_value(langs_catalog):
    keys = ["sel\t", " langu\t", ", count(*) AS n FROM samp\t", " WHERE language = 'Pyt\t",
            " GROUP BY 1;\n", ".quit\n"]
    out = run_repl(langs_catalog, keys)
    assert "Python" in out and "20" in out and "1 row" in out


def test_completer_contexts(langs_catalog):
    with mixsql.connect(langs_catalog) as con:
        comp = MixCompleter(SchemaCache(con), DOT_COMMANDS, DOT_ARGUMENTS)

        def texts(text):
            return [c.text for c in comp.get_completions(Document(text), None)]

        assert "samples" in texts("SELECT * FROM sa")
        assert "language" in texts("SELECT lang")
        assert "SELECT" in texts("SEL") and "select" in texts("sel")
        assert "MIX" in texts("SELECT * FROM samples MI")
        values = texts("SELECT * FROM samples MIX BY language WITH (")
        assert set(values) >= {"JavaScript", "HTML", "Python"}
        assert texts("SELECT * FROM samples MIX BY language WITH (JavaScript 0.5, Py") == ["Python"]
        assert texts("SELECT * FROM samples WHERE license IN ('MIT', 'C") == ["'CC'"]
        assert ".schema" in texts(".sc")
        assert "samples" in texts(".schema sam")
        assert texts("SELECT * FROM samples MIX BY quality WITH (") == []  # not VARCHAR: no values


def test_history_persists_across_sessions(langs_catalog, tmp_path):
    hist = tmp_path / "hist"
    run_repl(langs_catalog, "SELECT 41 + 1 AS answer;\n.quit\n", history=FileHistory(str(hist)))
    assert "SELECT 41 + 1 AS answer;" in hist.read_text()
    out = run_repl(langs_catalog, UP + UP + "\n.quit\n", history=FileHistory(str(hist)))
    assert "answer" in out and "42" in out


def test_default_history_path(tmp_path, monkeypatch):
    monkeypatch.delenv("MIXSQL_HISTORY", raising=False)
    assert default_history_path(tmp_path) == tmp_path / ".mixsql_history"
    monkeypatch.setenv("MIXSQL_HISTORY", str(tmp_path / "h"))
    assert default_history_path(tmp_path) == tmp_path / "h"


def test_ctrl_c_at_prompt_clears_input(langs_catalog):
    out = run_repl(langs_catalog, "SELECT 'never' AS x" + CTRL_C + "SELECT 7 AS seven;\n.quit\n")
    assert "seven" in out and "never" not in out


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_ctrl_c_cancels_running_statement(langs_catalog, inherited):
    """Also when the process inherited SIGINT as ignored (a launcher) or an event loop's handler."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGINT is delivered to the main thread only")
    before = signal.signal(signal.SIGINT, signal.SIG_IGN if inherited == "ignored" else signal.default_int_handler)

    def interrupt_when_busy(repl):
        def fire():
            if repl.busy.wait(20):
                os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=fire, daemon=True).start()

    slow = ("SELECT count(*) FROM range(1000000000000) a, range(10) b "
            "WHERE a.range % 7 = b.range;\n")
    try:
        out = run_repl(langs_catalog, slow + "SELECT 'alive' AS status;\n.quit\n", on_start=interrupt_when_busy)
        assert signal.getsignal(signal.SIGINT) is (signal.SIG_IGN if inherited == "ignored"
                                                  else signal.default_int_handler)   # restored
    finally:
        signal.signal(signal.SIGINT, before)
    assert "Cancelled" in out
    assert "alive" in out


def test_dot_commands(langs_catalog):
    out = run_repl(langs_catalog, ".help\n.tables\n.schema samples\n.schema nope\n.maxrows 2\n"
                                  "SELECT * FROM range(5);\n.bogus\n.quit\nSELECT 'after quit';\n")
    assert ".sources" in out and ".schema" in out           # help
    assert "samples" in out and "sources" in out            # tables
    assert "language" in out and "VARCHAR" in out           # schema samples
    assert "no table named 'nope'" in out
    assert "first 2 rows shown" in out
    assert "unknown command .bogus" in out
    assert "after quit" not in out


def test_dot_sources(langs_catalog):
    out = run_repl(langs_catalog, ".sources\n.quit\n")
    assert "corpus" in out and "1 row" in out


def test_explain_mix_rendered_as_table(langs_catalog):
    out = run_repl(langs_catalog, "EXPLAIN MIX SELECT * FROM samples\n"
                                  "MIX BY language WITH (JavaScript 0.5, HTML 0.3, Python 0.2);\n.quit\n")
    assert "EXPLAIN MIX" in out and "Python" in out and "rows (" in out
    assert "share over the run" in out and "50.0%" in out


def test_mix_statement_in_repl(langs_catalog):
    out = run_repl(langs_catalog, "SELECT language FROM samples MIX BY language WITH "
                                  "(JavaScript 0.5, HTML 0.3, Python 0.2) SETTINGS (chunk_size = 10);\n.quit\n",
                   max_rows=20)
    assert "chunk" in out and "position" in out and "first 20 rows shown" in out


def test_mix_error_shows_caret(langs_catalog):
    out = run_repl(langs_catalog, "SELECT * FROM samples MIX BY langauge WITH (Python 1);\n.quit\n")
    assert "Error:" in out and "^" in out and "language" in out


def test_statement_complete():
    assert statement_complete("SELECT 1;")
    assert statement_complete("SELECT 1; -- trailing comment")
    assert not statement_complete("SELECT 1")
    assert not statement_complete("SELECT ';'")
    assert not statement_complete("SELECT 1 /* ; */")
    assert statement_complete(".tables") and statement_complete("") and statement_complete("quit")


def test_lexer_highlights_mix_keywords():
    toks = [(t, v) for t, v in MixSqlLexer().get_tokens("SELECT * FROM samples MIX BY source WITH NATURAL "
                                                        "SETTINGS (seed = 1)")]
    kinds = {v.upper(): t for t, v in toks if v.strip()}
    for word in ("SELECT", "MIX", "NATURAL", "SETTINGS"):
        assert kinds[word] in Keyword, word


def test_completion_of_settings_sources_and_paths(langs_catalog, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text("{}\n")
    with mixsql.connect(langs_catalog) as con:
        comp = MixCompleter(SchemaCache(con), DOT_COMMANDS, DOT_ARGUMENTS)

        def texts(text):
            return [c.text for c in comp.get_completions(Document(text), None)]

        mix = "SELECT * FROM samples MIX BY language WITH (Python 1) SETTINGS ("
        assert {"seed = ", "chunk_size = ", "on_exhausted = ", "unit = "} <= set(texts(mix))
        assert texts(mix + "seed = 3, on_ex") == ["on_exhausted = "]
        assert texts(mix + "on_exhausted = ") == ["'stop'", "'redistribute'", "'repeat'"]
        assert texts(mix + "unit = 'to") == ["'tokens'"]
        assert texts(mix + "seed = ") == []                      # an integer: nothing to offer
        assert texts("REFRESH SOURCE ") == ["corpus"]
        assert texts("DROP SOURCE IF EXISTS co") == ["corpus"]
        assert texts(f"CREATE SOURCE web FROM '{tmp_path}/da") == ["data/"]
        assert texts(f"CREATE SOURCE web FROM '{tmp_path}/data/") == ["a.jsonl"]
        assert texts(".mode c") == ["csv"]
        # only the statement under the cursor counts: an earlier statement's SETTINGS ( is closed
        assert "seed = " not in texts(mix + "seed = 1);\nSELECT se")


def test_completion_in_a_large_buffer_looks_only_at_the_cursor_tail(langs_catalog, monkeypatch):
    """Cursor-anchored contexts see at most TAIL_CHARS characters, however large the buffer."""
    from mixsql import completion
    seen = []
    for name in ("_settings", "_path"):
        original = getattr(MixCompleter, name)
        monkeypatch.setattr(MixCompleter, name, staticmethod(
            lambda text, tail, _f=original: seen.append(len(tail)) or _f(text, tail)))
    with mixsql.connect(langs_catalog) as con:
        comp = MixCompleter(SchemaCache(con), DOT_COMMANDS, DOT_ARGUMENTS)
        big = "SELECT * FROM samples MIX BY language WITH (\n" + "JavaScript 0.5,\n" * 6000 + "Py"
        assert [c.text for c in comp.get_completions(Document(big), None)] == ["Python"]
    assert len(big) > 20 * completion.TAIL_CHARS and seen and max(seen) == completion.TAIL_CHARS


def test_mode_csv_json_markdown_and_timer(langs_catalog):
    q = "SELECT language, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1;\n"
    out = run_repl(langs_catalog, ".mode csv\n" + q + ".mode json\n" + q + ".mode markdown\n" + q
                   + ".mode xml\n.mode table\n.timer off\n" + q + ".quit\n")
    assert "language,n\nHTML,30\nJavaScript,50\nPython,20\n" in out
    assert '{"language":"HTML","n":30}' in out
    assert "| language | n |\n|---|---:|\n| HTML | 30 |" in out
    assert ".mode takes one of table, csv, json, markdown" in out
    assert out.rstrip().endswith("3 rows")                   # timer off: no elapsed time


def test_output_file_and_read_file(langs_catalog, tmp_path):
    script = tmp_path / "setup.sql"
    script.write_text("CREATE TABLE t AS SELECT 42 AS answer;\n.mode csv\n-- a comment\nSELECT answer\n"
                      "FROM t;\n")
    result = tmp_path / "out.csv"
    out = run_repl(langs_catalog, f".output {result}\n.read {script}\n.output\nSELECT 'back' AS here;\n"
                                  f".read {tmp_path / 'missing.sql'}\n.quit\n")
    assert result.read_text().endswith("answer\n42\n")
    assert "back" in out and "answer\n42" not in out
    assert "cannot read" in out and "missing.sql" in out


def test_edit_opens_last_statement_in_editor(langs_catalog, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITOR", "sed -i s/41/99/")
    monkeypatch.delenv("VISUAL", raising=False)
    out = run_repl(langs_catalog, "SELECT 41 AS x;\n\\e\n\n.quit\n")
    assert "41" in out and "99" in out


def test_large_paste_without_bracketed_paste_is_quick(tmp_path):
    """A ~45 KB MIX statement typed key by key (a paste without bracketed-paste mode) runs in
    a small multiple of ``mixsql sql -f`` on the same file. Loose on purpose (shared, loaded
    machines): bench/shell.py measures the ratio at 100 KB; key-by-key handling took minutes."""
    from bench import shell

    catalog, query = shell.make_case(tmp_path, 2000)
    sql_f = shell.time_sql_file(catalog, query)
    paste = shell.time_paste(catalog, query)
    assert paste < 4 * sql_f + 15.0, (paste, sql_f)


def test_split_script_and_paste_coalescing():
    from prompt_toolkit.key_binding import KeyPress
    from prompt_toolkit.keys import Keys

    from mixsql.pasteinput import coalesce_keys
    from mixsql.script import split_script

    items, rest = split_script("SELECT ';' AS a; -- c\n.mode csv\nexit\nSELECT 2\n;\nSELECT 'open")
    assert [(i.kind, i.text) for i in items] == [("sql", "SELECT ';' AS a;"), ("dot", ".mode csv"),
                                                 ("dot", ".exit"), ("sql", "SELECT 2\n;")]
    assert rest == "SELECT 'open"
    keys = [KeyPress(c, c) for c in "SELECT 1"] + [KeyPress(Keys.ControlM, "\r")] + \
        [KeyPress(c, c) for c in "se"] + [KeyPress(Keys.ControlI, "\t")]
    out = coalesce_keys(keys)
    assert [(k.key, k.data) for k in out] == [(Keys.BracketedPaste, "SELECT 1"), (Keys.ControlM, "\r"),
                                              (Keys.BracketedPaste, "se"), (Keys.ControlI, "\t")]
    assert [k.key for k in coalesce_keys([KeyPress("a", "a")])] == ["a"]
