"""mixsql: a SQL-first data plane for training foundation models.

``mixsql.connect(catalog)`` returns a PEP 249 connection over a catalog directory; MIX
statements on its cursors stream training data in mixture order. See README.md.
"""
from __future__ import annotations

from .catalog import DEFAULT_CATALOG
from .errors import (
    DatabaseError, DataError, Error, IntegrityError, InterfaceError, InternalError,
    NotSupportedError, OperationalError, ProgrammingError, RegistrationError, SQLError,
    StaleFileError, Warning,
)

__version__ = "0.1.0"

apilevel = "2.0"
threadsafety = 1          # threads may share the module, not connections
paramstyle = "qmark"      # DuckDB's: ``?`` (``$1`` and ``$name`` work too)

_DBAPI_NAMES = {
    "connect", "Connection", "Cursor", "Date", "Time", "Timestamp", "DateFromTicks",
    "TimeFromTicks", "TimestampFromTicks", "Binary", "STRING", "BINARY", "NUMBER",
    "DATETIME", "ROWID",
}


def __getattr__(name: str):
    # The DB-API layer imports the planner and engine; load it on first use only.
    if name in _DBAPI_NAMES:
        from . import dbapi

        return getattr(dbapi, name)
    raise AttributeError(f"module 'mixsql' has no attribute {name!r}")
