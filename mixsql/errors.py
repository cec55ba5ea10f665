"""PEP 249 exception hierarchy plus mixsql's positioned errors.

Every error mixsql raises on purpose is one of these classes, so callers can catch
``mixsql.Error`` and nothing else escapes as a bare traceback.
"""
from __future__ import annotations


class Warning(Exception):  # noqa: A001 - the name is fixed by PEP 249
    """Important warnings (PEP 249)."""


class ExhaustedWarning(UserWarning):
    """A mixed stream ended short of its LIMIT, or a group ran dry under ``on_exhausted = 'stop'``
    (a Python ``warnings`` category; the message names the groups and counts)."""


class TokenizerMismatchWarning(UserWarning):
    """Token shares were computed from ``n_tokens`` counted with one tokenizer, and the dataset
    tokenizes with another (the message names both and the sources; mixsql.tokenizer_check)."""


class Error(Exception):
    """Base class of every mixsql error (PEP 249)."""


class InterfaceError(Error):
    """Misuse of the driver itself: closed cursors, bad arguments."""


class DatabaseError(Error):
    """Errors related to the catalog database."""


class DataError(DatabaseError):
    """Bad data: malformed records, files changed after registration."""


class OperationalError(DatabaseError):
    """The environment failed: missing files, I/O, a server that went away."""


class IntegrityError(DatabaseError):
    """Catalog integrity would be violated (e.g. a source name already taken)."""


class InternalError(DatabaseError):
    """A bug in mixsql: please report it."""


class ProgrammingError(DatabaseError):
    """The statement is wrong: syntax, unknown names, invalid mixture."""


class NotSupportedError(DatabaseError):
    """A feature that mixsql or the catalog does not support."""


def caret_excerpt(sql: str, line: int, col: int, length: int = 1) -> str:
    """Return the offending SQL line with a caret row under (line, col), both 1-based."""
    lines = sql.splitlines() or [""]
    line = min(max(line, 1), len(lines))
    text = lines[line - 1]
    col = min(max(col, 1), len(text) + 1)
    return f"{text}\n{' ' * (col - 1)}{'^' * max(length, 1)}"


def position_of(sql: str, offset: int) -> tuple[int, int]:
    """Convert a 0-based character offset into 1-based (line, column)."""
    offset = min(max(offset, 0), len(sql))
    before = sql[:offset]
    line = before.count("\n") + 1
    col = offset - (before.rfind("\n") + 1) + 1
    return line, col


class SQLError(ProgrammingError):
    """A statement error anchored at a position in the SQL text.

    ``str(err)`` gives the message, ``line N, column M``, the SQL line with a caret under
    the offending token, and a ``did you mean`` hint when one is known.
    """

    def __init__(
        self,
        message: str,
        sql: str | None = None,
        line: int | None = None,
        col: int | None = None,
        length: int = 1,
        suggestion: str | None = None,
    ):
        self.message = message
        self.sql = sql
        self.line = line
        self.col = col
        self.length = length
        self.suggestion = suggestion
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.message]
        if self.line is not None and self.col is not None:
            parts[0] += f" (line {self.line}, column {self.col})"
            if self.sql is not None:
                parts.append(caret_excerpt(self.sql, self.line, self.col, self.length))
        if self.suggestion:
            parts.append(f"Did you mean {self.suggestion}?")
        return "\n".join(parts)


class RegistrationError(DataError):
    """Registration failed; the catalog is unchanged. Names the file (and line) at fault."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None, hint: str | None = None):
        self.path = path
        self.line = line
        self.hint = hint
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        text = f"{where}{message}"
        if hint:
            text += f". {hint}"
        super().__init__(text)


class StaleFileError(DataError):
    """A data file changed after it was registered; its pointers are no longer valid."""

    def __init__(self, path: str, detail: str):
        self.path = path
        super().__init__(
            f"{path}: file changed since it was registered ({detail}). "
            "Run REFRESH SOURCE <name> to re-index it, then restart the query."
        )


__all__ = [
    "Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
    "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError",
    "SQLError", "RegistrationError", "StaleFileError", "caret_excerpt", "position_of",
    "ExhaustedWarning", "TokenizerMismatchWarning",
]
