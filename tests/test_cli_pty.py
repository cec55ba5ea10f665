"""End to end: the real ``mixsql`` console script in a pseudo-terminal (pexpect)."""
from __future__ import annotations

import os
import shutil
import sys

import pytest

import pexpect


def _command() -> list[str]:
    script = shutil.which("mixsql")
    return [script] if script else [sys.executable, "-m", "mixsql"]


def test_repl_in_a_terminal(langs_catalog, tmp_path):
    cmd = _command() + ["--catalog", str(langs_catalog)]
    env = dict(os.environ, MIXSQL_HISTORY=str(tmp_path / "history"), PROMPT_TOOLKIT_NO_CPR="1",
               TERM="xterm", COLUMNS="160", LINES="40")
    child = pexpect.spawn(cmd[0], cmd[1:], env=env, cwd=str(tmp_path), encoding="utf-8",
                          dimensions=(40, 160), timeout=60)
    try:
        child.expect("mixsql>")
        # a multi-line statement: Enter inside it continues, the ';' line runs it
        child.send("SELECT language, count(*) AS n\r")
        child.send("FROM samples GROUP BY 1 ORDER BY 1;\r")
        child.expect("JavaScript")
        child.expect(r"3 rows \(")
        # a MIX statement shows its stream as a table
        child.send("SELECT * FROM samples MIX BY language WITH (JavaScript 0.5, HTML 0.3, Python 0.2) "
                   "SETTINGS (chunk_size = 10);\r")
        child.expect("position")
        child.expect(r"100 rows \(")
        # errors show the caret, and the shell stays up
        child.send("SELECT * FROM samples MIX BY langauge WITH (Python 1);\r")
        child.expect(r"Error:")
        child.expect(r"\^")
        # a slow statement shows its progress line; Ctrl-C cancels it without leaving the shell
        child.send("SELECT count(*) FROM range(1000000000000) a, range(10) b WHERE a.range % 7 = b.range;\r")
        child.expect(r"running \d+\.\d s")
        child.expect(r"running \d+\.\d s")                  # redrawn: the elapsed time moves on
        child.sendintr()
        child.expect("Cancelled")
        child.send("SELECT 'still' || ' here' AS s;\r")
        child.expect("still here")
        child.send(".quit\r")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    assert "still' || ' here" in (tmp_path / "history").read_text()


def test_sql_shows_progress_and_ctrl_c_cancels(langs_catalog, tmp_path):
    """``mixsql sql`` on a terminal: a status line for a slow query, Ctrl-C stops it (exit 130)."""
    cmd = _command() + ["sql", "SELECT count(*) FROM range(1000000000000) a, range(10) b WHERE a.range % 7 = b.range",
                        "--catalog", str(langs_catalog)]
    child = pexpect.spawn(cmd[0], cmd[1:], env=dict(os.environ, TERM="xterm"), cwd=str(tmp_path),
                          encoding="utf-8", dimensions=(40, 160), timeout=60)
    try:
        child.expect(r"running \d+\.\d s")
        child.expect(r"running \d+\.\d s")
        child.sendintr()
        child.expect("mixsql: interrupted")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 130
