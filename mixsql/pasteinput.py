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

from contextlib import AbstractContextManager
from typing import Callable

from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyPress
from prompt_toolkit.keys import Keys

_TAB = {Keys.ControlI: "\t"}   # text inside a run, a key at its end
_ENTER = (Keys.ControlM, Keys.ControlJ)


def _char(key: KeyPress) -> str | None:
    """The text a key press stands for inside a paste (None: a real key, ends the run)."""
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
        if len(keys_of_run) >= 2:
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

    def read_keys(self) -> list[KeyPress]:
        return coalesce_keys(self.inner.read_keys(), self.submits, self.buffer_text())

    def flush_keys(self) -> list[KeyPress]:
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
