"""Terminal input that turns a burst of typed characters into one paste.

A terminal without bracketed-paste mode (or a pipe) delivers pasted text as ordinary key
presses, up to a kilobyte per read. prompt-toolkit handles every key press on its own (key
binding lookup, a buffer edit, completion), a few milliseconds each: a 100 KB paste took many
minutes. Nobody types several characters between two reads of the terminal, so
:class:`PasteCoalescingInput` turns each run of plain characters read at once into a single
``BracketedPaste`` key press, as a bracketed-paste terminal would send it. Enter stays a key
(the shell decides whether it ends a statement, exactly as when typed: a pasted script runs
statement by statement), and so does a Tab at the end of a run (``sel`` + Tab completes); a Tab
inside a run is text.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable

from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyPress
from prompt_toolkit.keys import Keys

_TAB = {Keys.ControlI: "\t"}   # the one control key that is text inside a run


def _char(key: KeyPress) -> str | None:
    """The text a key press stands for inside a paste (None: a real key, ends the run)."""
    if key.key in _TAB:
        return _TAB[key.key]
    if not isinstance(key.key, Keys) and len(key.data) == 1 and key.data.isprintable():
        return key.data
    return None


def coalesce_keys(keys: list[KeyPress]) -> list[KeyPress]:
    """Runs of two or more plain characters become one ``BracketedPaste``; a Tab ending a run
    stays a key."""
    out: list[KeyPress] = []
    run: list[KeyPress] = []

    def flush() -> None:
        tail = []
        while run and run[-1].key in _TAB:   # a trailing Tab: a real key (completion)
            tail.insert(0, run.pop())
        if len(run) >= 2:
            out.append(KeyPress(Keys.BracketedPaste, "".join(_char(k) for k in run)))
        else:
            out.extend(run)
        out.extend(tail)
        run.clear()

    for key in keys:
        if _char(key) is not None:
            run.append(key)
        else:
            flush()
            out.append(key)
    flush()
    return out


class PasteCoalescingInput(Input):
    """Wraps a prompt-toolkit :class:`Input`; see the module docstring."""

    def __init__(self, inner: Input):
        self.inner = inner

    def read_keys(self) -> list[KeyPress]:
        return coalesce_keys(self.inner.read_keys())

    def flush_keys(self) -> list[KeyPress]:
        return coalesce_keys(self.inner.flush_keys())

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
