"""Terminal input that turns a burst of typed characters into one paste.

A terminal without bracketed-paste mode (or a pipe) delivers pasted text as ordinary key
presses, up to a kilobyte per read. prompt-toolkit handles every key press on its own (key
binding lookup, a buffer edit, completion), a few milliseconds each: a 100 KB paste took many
minutes. Nobody types several characters between two reads of the terminal, so
:class:`PasteCoalescingInput` turns each run of plain characters read at once into a single
``BracketedPaste`` key press, as a bracketed-paste terminal would send it. An Enter inside the
run is text when it would only start a new line, and stays a key where it would submit the input
(``submits(text)`` says, given the buffer's text plus the run so far), so a pasted script runs
statement by statement exactly as if typed; a Tab ending a run stays a key (``sel`` + Tab
completes), a Tab inside a run is text.
"""
from __future__ import annotations

import re
from contextlib import AbstractContextManager
from typing import Callable

from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyPress
from prompt_toolkit.keys import Keys

_TAB = {Keys.ControlI: "\t"}   # text inside a run, a key at its end
_ENTER = (Keys.ControlM, Keys.ControlJ)


_PLAIN = re.compile(r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*")   # text, newlines and tabs: no keys to parse
_PIECES = re.compile(r"[^\r\n\t]+|[\r\n\t]")
_CONTROL_OF = {"\r": Keys.ControlM, "\n": Keys.ControlJ, "\t": Keys.ControlI}


def plain_keys(data: str) -> list[KeyPress]:
    """Key presses of input without escape sequences or control keys other than Enter and Tab,
    text runs already joined: what the VT100 parser would produce, without its per-character loop."""
    keys = []
    for m in _PIECES.finditer(data):
        piece = m.group(0)
        if piece in _CONTROL_OF:
            keys.append(KeyPress(_CONTROL_OF[piece], piece))
        else:
            keys.append(KeyPress(Keys.BracketedPaste, piece) if len(piece) > 1 else KeyPress(piece, piece))
    return keys


def _char(key: KeyPress) -> str | None:
    """The text a key press stands for inside a paste (None: a real key, ends the run)."""
    if key.key == Keys.BracketedPaste:
        return key.data
    if key.key in _TAB:
        return _TAB[key.key]
    if not isinstance(key.key, Keys) and len(key.data) == 1 and key.data.isprintable():
        return key.data
    return None


def coalesce_keys(keys: list[KeyPress], submits: Callable[[str], bool] | None = None,
                  before: str = "") -> list[KeyPress]:
    """Runs of two or more plain characters become one ``BracketedPaste``. An Enter continues
    the run as a newline unless ``submits(before + run)`` (no ``submits``: every Enter is a key);
    a Tab ending a run stays a key."""
    out: list[KeyPress] = []
    run: list[str] = []
    keys_of_run: list[KeyPress] = []

    def flush() -> None:
        tail = []
        while keys_of_run and keys_of_run[-1].key in _TAB:   # a trailing Tab: a real key (completion)
            tail.insert(0, keys_of_run.pop())
            run.pop()
        if len(keys_of_run) >= 2 or keys_of_run and keys_of_run[0].key == Keys.BracketedPaste:
            out.append(KeyPress(Keys.BracketedPaste, "".join(run)))
        else:
            out.extend(keys_of_run)
        out.extend(tail)
        run.clear()
        keys_of_run.clear()

    for i, key in enumerate(keys):
        char = _char(key)
        if char is None and key.key in _ENTER and submits is not None and i + 1 < len(keys) \
                and not submits(before + "".join(run)):
            char = "\n"
        if char is not None:
            run.append(char)
            keys_of_run.append(key)
            continue
        flush()
        out.append(key)
        if key.key in _ENTER:
            before = ""   # the input was submitted: the next prompt starts empty
    flush()
    return out


class PasteCoalescingInput(Input):
    """Wraps a prompt-toolkit :class:`Input`; see the module docstring."""

    def __init__(self, inner: Input, submits: Callable[[str], bool] | None = None,
                 buffer_text: Callable[[], str] = lambda: ""):
        self.inner = inner
        self.submits = submits
        self.buffer_text = buffer_text
        self._parser_idle = True   # the VT100 parser holds no partial escape sequence

    def _read(self) -> list[KeyPress]:
        """Plain text skips the VT100 parser (a Python step per character) when the parser is
        idle; anything else goes through it."""
        reader = getattr(self.inner, "stdin_reader", None)
        parser = getattr(self.inner, "vt100_parser", None)
        if reader is None or parser is None or not isinstance(getattr(self.inner, "_buffer", None), list):
            return self.inner.read_keys()
        data = reader.read()
        if self._parser_idle and not getattr(parser, "_in_bracketed_paste", True) and _PLAIN.fullmatch(data):
            return plain_keys(data)
        parser.feed(data)
        keys, self.inner._buffer = self.inner._buffer, []
        self._parser_idle = "\x1b" not in data[-32:]
        return keys

    def read_keys(self) -> list[KeyPress]:
        return coalesce_keys(self._read(), self.submits, self.buffer_text())

    def flush_keys(self) -> list[KeyPress]:
        self._parser_idle = True
        return coalesce_keys(self.inner.flush_keys(), self.submits, self.buffer_text())

    def fileno(self) -> int:
        return self.inner.fileno()

    def typeahead_hash(self) -> str:
        return self.inner.typeahead_hash()

    @property
    def closed(self) -> bool:
        return self.inner.closed

    def flush(self) -> None:
        self.inner.flush()

    def raw_mode(self) -> AbstractContextManager[None]:
        return self.inner.raw_mode()

    def cooked_mode(self) -> AbstractContextManager[None]:
        return self.inner.cooked_mode()

    def attach(self, input_ready_callback: Callable[[], None]) -> AbstractContextManager[None]:
        return self.inner.attach(input_ready_callback)

    def detach(self) -> AbstractContextManager[None]:
        return self.inner.detach()

    def close(self) -> None:
        self.inner.close()
