"""Statement boundaries of shell input: what the shell runs when Enter is pressed or a file is read.

Input is a script, as in the SQLite and DuckDB shells: SQL statements end at a top-level ``;``
(outside quotes and comments) and may span lines; a line starting with ``.`` between statements
is a dot-command (or a backslash command, ``\\e``); ``exit``, ``quit`` and ``help`` alone on a line act like ``.quit`` / ``.help``.
One regular-expression pass per call (no per-character Python loop), so pressing Enter on a
100 KB buffer costs about a millisecond.
"""
from __future__ import annotations

import re
from typing import NamedTuple

# One token of SQL that matters for boundaries: a complete quoted string or identifier, a comment,
# a ';', or the opening of an unterminated quote / block comment.
_TOKEN = re.compile(r"""'[^']*(?:''[^']*)*'|"[^"]*(?:""[^"]*)*"|--[^\n]*|/\*.*?\*/|;|'|"|/\*""", re.S)
_BLANK = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*\Z", re.S)   # nothing but space and comments
_SPACE = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.S)   # space and comments between statements
_WORD_COMMANDS = ("exit", "quit", "help")


class Item(NamedTuple):
    kind: str   # "sql" (one or more statements up to and including a ';') or "dot" (a command line)
    text: str


def _statement_end(text: str, start: int) -> int:
    """Index just after the first top-level ``;`` at or after ``start``; -1 when there is none
    (or a quote / block comment is still open)."""
    for m in _TOKEN.finditer(text, start):
        tok = m.group(0)
        if tok == ";":
            return m.end()
        if tok in ("'", '"', "/*"):
            return -1
    return -1


def split_script(text: str) -> tuple[list[Item], str]:
    """Split input into complete items and the unfinished rest (a statement still being typed)."""
    items: list[Item] = []
    pos, n = 0, len(text)
    while pos < n:
        pos = _SPACE.match(text, pos).end()
        if pos >= n:
            break
        eol = text.find("\n", pos)
        eol = n if eol < 0 else eol
        line = text[pos:eol].strip()
        if line.startswith((".", "\\")):
            items.append(Item("dot", line))
            pos = eol + 1
            continue
        if line.rstrip(";").strip().lower() in _WORD_COMMANDS:
            items.append(Item("dot", "." + line.rstrip(";").strip().lower()))
            pos = eol + 1
            continue
        end = _statement_end(text, pos)
        if end < 0:
            rest = text[pos:]
            return items, ("" if _BLANK.match(rest) else rest)
        items.append(Item("sql", text[pos:end]))
        pos = end
    return items, ""


def statement_complete(text: str) -> bool:
    """True when Enter should run the buffer: nothing is left unfinished (every statement ended
    by ``;``, dot-commands on their own lines), or the buffer is empty."""
    return split_script(text)[1] == ""
