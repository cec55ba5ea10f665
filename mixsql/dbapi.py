"""PEP 249 (DB-API 2.0) driver over a mixsql catalog.

``connect(catalog)`` opens the catalog directory; cursors dispatch each statement with
``dialect.classify``:

* plain SQL goes to DuckDB verbatim (``?`` / ``$1`` / ``$name`` parameters), DuckDB errors are
  re-raised as the matching PEP 249 class with DuckDB's message;
* a MIX statement becomes a lazy result set: one row per sample in training order
  (``chunk, position, group, source, file, row, <selected columns>``); ``Cursor.chunks()``
  yields the same columns as Arrow tables chunk by chunk, ``Cursor.pointer_chunks()`` the
  engine's chunk tables (plus the pointer details readers load samples from);
* ``EXPLAIN MIX``, ``CREATE / REFRESH / DROP SOURCE`` and ``SHOW SOURCES`` return small result sets;
* ``mix_ledger('ckpt')`` in plain SQL is a run's data ledger (:mod:`mixsql.ledger_sql`): computed
  for the steps / sample the ``WHERE`` names, then an ordinary table to DuckDB.

Transactions: statements autocommit unless a cursor issued ``BEGIN``; ``Connection.commit()``
and ``rollback()`` end the open transaction of every cursor of the connection.

Snapshots: each statement reads the newest committed catalog snapshot (other processes may
register meanwhile; nobody waits), or the one it names: ``... FROM samples AT SNAPSHOT 3``, or
every statement with ``connect(dir, snapshot=3)``. Tables a user creates with plain SQL live in
the connection (an in-memory DuckDB over the catalog), not in the catalog directory; ``ATTACH``
a DuckDB file to keep them. A ``read_only`` connection refuses such statements.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from . import ledger_sql
from .dbapi_results import (
    MIX_LEADING_COLUMNS, POINTER_DETAIL_COLUMNS, ArrowResult, MixResult, NoRows, Result, duck_result, summary_table,
)
from .dbapi_types import (
    BINARY, DATETIME, NUMBER, ROWID, STRING, Binary, Date, DateFromTicks, Time, TimeFromTicks, Timestamp,
    TimestampFromTicks, arrow_type_code, describe_arrow, duck_errors, map_duckdb_error,
)
from .catalog import DEFAULT_CATALOG, Catalog
from .source_statements import split_snapshot
from .errors import (
    DatabaseError, DataError, Error, IntegrityError, InterfaceError, InternalError,
    NotSupportedError, OperationalError, ProgrammingError, Warning,
)

apilevel = "2.0"
threadsafety = 1
paramstyle = "qmark"

def split_statements(sql: str) -> list[str]:
    """Split a script on top-level ``;`` (outside quotes and comments); drops empty statements."""
    out: list[str] = []
    buf: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in ("'", '"'):
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # doubled quote escapes itself
                        j += 2
                        continue
                    break
                j += 1
            buf.append(sql[i:j + 1])
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            buf.append(sql[i:j])
            i = j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            buf.append(sql[i:j])
            i = j
        elif c == ";":
            out.append("".join(buf))
            buf = []
            i += 1
        else:
            buf.append(c)
            i += 1
    out.append("".join(buf))
    return [s.strip() for s in out if _has_code(s)]


def _has_code(stmt: str) -> bool:
    """True when a statement holds something besides whitespace and comments."""
    s = stmt.strip()
    while s:
        if s.startswith("--"):
            nl = s.find("\n")
            s = "" if nl < 0 else s[nl + 1:].strip()
        elif s.startswith("/*"):
            end = s.find("*/")
            s = "" if end < 0 else s[end + 2:].strip()
        else:
            return True
    return False


def classify(sql: str) -> str:
    """``dialect.classify`` (imported lazily: the dialect pulls in sqlglot)."""
    from .dialect import classify as _classify

    return _classify(sql)


# ---------------------------------------------------------------------------------------------
# Connection and cursor


class Connection:
    """A PEP 249 connection to one catalog directory."""

    Warning = Warning
    Error = Error
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError

    autocommit = True  # DuckDB semantics: each statement commits unless BEGIN was issued

    def __init__(self, catalog: "str | os.PathLike | Catalog" = DEFAULT_CATALOG,
                 read_only: bool = False, progress: bool = False, snapshot: int | None = None,
                 lock_timeout: float | None = None):
        if isinstance(catalog, Catalog):
            self.catalog = catalog
            self._owns_catalog = False
        else:
            self.catalog = Catalog(catalog, read_only=read_only, snapshot=snapshot, lock_timeout=lock_timeout)
            self._owns_catalog = True
        self.read_only = self.catalog.read_only
        self.progress = progress
        self._cursors: list[Cursor] = []
        self._pinned: dict[int, Catalog] = {}
        self._ledgers: dict[tuple, Any] = {}
        self._closed = False

    def _ledger(self, path: str):
        """The :class:`mixsql.ledger.Ledger` of the loader state in ``path`` over this catalog
        (kept while the file is unchanged: repeated queries reuse the opened run)."""
        from .ledger import Ledger

        try:
            st = os.stat(path)
        except OSError:
            raise ProgrammingError(f"mix_ledger: no checkpoint file {path!r}") from None
        key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
        if key not in self._ledgers:
            if len(self._ledgers) >= 4:
                self._ledgers.pop(next(iter(self._ledgers))).close()
            self._ledgers[key] = Ledger(path, catalog=self.catalog.path)
        return self._ledgers[key]

    def _catalog_at(self, snapshot: int | None) -> Catalog:
        """The catalog a statement reads: the connection's (moved to the newest snapshot unless
        the connection is pinned), or a read-only handle on ``snapshot`` (AT SNAPSHOT n)."""
        if snapshot is None or snapshot == self.catalog.snapshot:
            if snapshot is None:
                self.catalog.sync()
            return self.catalog
        if snapshot not in self._pinned:
            self._pinned[snapshot] = Catalog(self.catalog.path, read_only=True, snapshot=snapshot)
        return self._pinned[snapshot]

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def path(self):
        return self.catalog.path

    def _check(self) -> None:
        if self._closed:
            raise InterfaceError("connection is closed")

    def cursor(self) -> "Cursor":
        self._check()
        cur = Cursor(self)
        self._cursors.append(cur)
        return cur

    def execute(self, operation: str, parameters: Any = None) -> "Cursor":
        """Shortcut (non-standard, like sqlite3): a new cursor that executed ``operation``."""
        return self.cursor().execute(operation, parameters)

    def _each_duck(self):
        for cur in list(self._cursors):
            if not cur._closed and cur._dcur is not None:
                yield cur._dcur
        yield self.catalog.con

    def commit(self) -> None:
        self._check()
        with duck_errors():
            for dcur in self._each_duck():
                dcur.commit()

    def rollback(self) -> None:
        self._check()
        for dcur in self._each_duck():
            try:
                dcur.rollback()
            except duckdb.TransactionException:
                pass  # no transaction active on this cursor
            except duckdb.Error as exc:
                raise map_duckdb_error(exc) from exc

    def interrupt(self) -> None:
        """Cancel whatever statement any cursor of this connection is running."""
        for cur in list(self._cursors):
            cur.cancel()

    def close(self) -> None:
        if self._closed:
            return
        for cur in list(self._cursors):
            cur.close()
        self._cursors.clear()
        for led in self._ledgers.values():
            led.close()
        self._ledgers.clear()
        for cat in self._pinned.values():
            cat.close()
        self._pinned.clear()
        if self._owns_catalog:
            self.catalog.close()
        self._closed = True

    def _forget(self, cur: "Cursor") -> None:
        try:
            self._cursors.remove(cur)
        except ValueError:
            pass

    def __enter__(self) -> "Connection":
        self._check()
        return self

    def __exit__(self, et, ev, tb) -> None:
        if not self._closed:
            if et is None:
                self.commit()
            else:
                self.rollback()
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.read_only else "open")
        return f"<mixsql.Connection {self.catalog.path} {state}>"


class Cursor:
    """A PEP 249 cursor. MIX statements stream lazily; see the module docstring."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.arraysize = 1
        self._dcur: duckdb.DuckDBPyConnection | None = None
        self._result: Result | None = None
        self._ledger_tables: list = []
        self._closed = False
        self.lastrowid = None
        self.statement_kind: str | None = None

    # -- state
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def description(self) -> list[tuple] | None:
        return None if self._result is None else self._result.description

    @property
    def rowcount(self) -> int:
        return -1 if self._result is None else self._result.rowcount

    @property
    def unbounded(self) -> bool:
        """True when the current result is a MIX stream that never ends on its own."""
        return bool(self._result is not None and self._result.unbounded)

    @property
    def mix_stream(self):
        """The current statement's MixStream (None unless a MIX statement ran)."""
        return self._result.stream if isinstance(self._result, MixResult) else None

    def _check(self) -> None:
        if self._closed:
            raise InterfaceError("cursor is closed")
        if self.connection.closed:
            raise InterfaceError("connection is closed")

    def _duck(self) -> duckdb.DuckDBPyConnection:
        if self._dcur is None:
            with duck_errors():
                self._dcur = self.connection.catalog.con.cursor()
        return self._dcur

    def _require_result(self) -> Result:
        self._check()
        if self._result is None:
            raise ProgrammingError("no result set: call execute() with a statement that returns rows first")
        return self._result

    def _reset(self) -> None:
        if self._result is not None:
            self._result.close()
        self._result = None
        self.statement_kind = None
        for dcur, name in self._ledger_tables:
            try:
                dcur.unregister(name)
            except duckdb.Error:
                pass
        self._ledger_tables = []

    # -- execution
    def execute(self, operation: str, parameters: Any = None) -> "Cursor":
        """Run one statement. Returns the cursor (so ``cur.execute(q).fetchall()`` works)."""
        self._check()
        if not isinstance(operation, str):
            raise InterfaceError(f"operation must be a str, not {type(operation).__name__}")
        self._reset()
        operation, pin = split_snapshot(operation)
        cat = self.connection._catalog_at(pin)
        kind = classify(operation)
        self.statement_kind = kind
        if kind == "duckdb":
            if cat.read_only:
                _refuse_changes(operation, cat)
            dcur = self._duck() if cat is self.connection.catalog else cat.con.cursor()
            if ledger_sql.mentions_ledger(operation):
                operation = self._with_ledgers(dcur, operation)
            with duck_errors():
                if parameters is None:
                    dcur.execute(operation)
                else:
                    dcur.execute(operation, parameters)
            self._result = duck_result(operation, dcur)
        elif kind == "mix":
            self._result = self._open_mix(cat, operation, parameters)
        elif kind == "explain_mix":
            from .planner import explain

            with duck_errors():
                self._result = ArrowResult(explain(cat, operation, parameters))
        elif kind in ("create_source", "refresh_source", "drop_source", "show_sources", "show_source"):
            self._result = self._registration(cat, kind, operation)
        else:  # pragma: no cover - classify's contract lists every kind
            raise InternalError(f"unknown statement kind {kind!r} from dialect.classify")
        return self

    def _with_ledgers(self, dcur: duckdb.DuckDBPyConnection, operation: str) -> str:
        """``operation`` with its ``mix_ledger(...)`` calls computed and registered on ``dcur``."""
        operation, tables = ledger_sql.rewrite(operation, self.connection._ledger)
        if tables and hasattr(dcur, "abort"):   # DuckDB >= 2 refuses registering over an unfinished result
            dcur.abort()
        for name, table in tables.items():
            dcur.register(name, table)
            self._ledger_tables.append((dcur, name))
        return operation

    def _open_mix(self, cat: Catalog, operation: str, parameters: Any) -> MixResult:
        from .stream import MixStream

        with duck_errors():
            stream = MixStream.open(cat, operation, parameters)
            return MixResult(stream)

    def _registration(self, cat: Catalog, kind: str, operation: str) -> Result:
        from . import registration

        with duck_errors():
            if kind == "show_sources":
                return ArrowResult(registration.show_sources(cat))
            from .source_statements import registration_request

            req = registration_request(operation)
            if kind == "show_source":
                return ArrowResult(registration.show_source(cat, req.name))
            progress = self.connection.progress
            if kind == "create_source":
                summary = registration.create_source(
                    cat, req.name, req.pattern, format=req.format, options=req.options or None,
                    progress=progress, replace=req.replace, if_not_exists=req.if_not_exists,
                )
            elif kind == "refresh_source":
                summary = registration.refresh_source(cat, req.name, progress=progress)
            else:
                registration.drop_source(cat, req.name)
                summary = {"dropped": req.name}
        return ArrowResult(summary_table(summary))

    def executemany(self, operation: str, seq_of_parameters: Sequence[Any]) -> "Cursor":
        """Run a plain SQL statement once per parameter set (DuckDB's executemany)."""
        self._check()
        self._reset()
        kind = classify(operation)
        if kind != "duckdb":
            raise NotSupportedError(
                f"executemany() runs plain SQL only; run {kind.replace('_', ' ').upper()} statements with execute()"
            )
        self.statement_kind = kind
        seq = list(seq_of_parameters)
        dcur = self._duck()
        with duck_errors():
            if seq:
                dcur.executemany(operation, seq)
                self._result = NoRows(dcur.rowcount if isinstance(dcur.rowcount, int) else -1)
            else:
                self._result = None
        return self

    def callproc(self, procname: str, parameters: Any = None):
        self._check()
        raise NotSupportedError("mixsql has no stored procedures; call execute() with SQL instead")

    def nextset(self):
        self._check()
        raise NotSupportedError("mixsql statements return one result set; nextset() is not supported")

    def setinputsizes(self, sizes: Any) -> None:
        self._check()

    def setoutputsize(self, size: int, column: int | None = None) -> None:
        self._check()

    # -- fetching
    def fetchone(self):
        return self._require_result().fetchone()

    def fetchmany(self, size: int | None = None) -> list[tuple]:
        res = self._require_result()
        n = self.arraysize if size is None else size
        if not isinstance(n, int) or n < 0:
            raise InterfaceError(f"fetchmany size must be a non-negative integer, not {n!r}")
        return res.fetchmany(n)

    def fetchall(self) -> list[tuple]:
        return self._require_result().fetchall()

    def fetch_arrow_table(self) -> pa.Table:
        """The remaining rows as one Arrow table (MIX result columns for MIX statements)."""
        return self._require_result().arrow()

    def chunks(self) -> Iterator[pa.Table]:
        """The remaining rows as Arrow tables with the columns of ``description``: a MIX stream's
        chunks in training order, record batches otherwise."""
        return self._checked(self._require_result().chunks())

    def pointer_chunks(self) -> Iterator[pa.Table]:
        """A MIX stream's engine chunk tables: ``description``'s columns plus the pointer details
        (:data:`POINTER_DETAIL_COLUMNS`) that ``mixsql.readers`` load samples from."""
        res = self._require_result()
        if not isinstance(res, MixResult):
            raise ProgrammingError("pointer_chunks() follows a MIX statement; use chunks() for other results")
        return self._checked(res.pointer_chunks())

    def _checked(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for t in tables:
            self._check()
            yield t

    def cancel(self) -> None:
        """Interrupt the running statement (safe to call from another thread)."""
        if self._dcur is not None:
            try:
                self._dcur.interrupt()
            except duckdb.Error:
                pass
        if self._result is not None:
            self._result.cancel()
        if self.statement_kind in ("mix", "explain_mix", "create_source", "refresh_source"):
            try:
                self.connection.catalog.con.interrupt()
            except duckdb.Error:
                pass

    def query_progress(self) -> float | None:
        """Percent done of the running DuckDB query, as DuckDB estimates it; None when unknown.
        Safe to call from another thread; needs ``SET enable_progress_bar = true`` on this cursor."""
        dcur = self._dcur
        try:
            pct = dcur.query_progress() if dcur is not None else -1.0
        except duckdb.Error:
            return None
        return pct if pct >= 0 else None

    def __iter__(self) -> "Cursor":
        self._require_result()
        return self

    def __next__(self):
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def close(self) -> None:
        if self._closed:
            return
        self._reset()
        if self._dcur is not None:
            try:
                self._dcur.close()
            except duckdb.Error:
                pass
            self._dcur = None
        self._closed = True
        self.connection._forget(self)

    def __enter__(self) -> "Cursor":
        self._check()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mixsql.Cursor {'closed' if self._closed else 'open'}>"


def connect(catalog: "str | os.PathLike | Catalog" = DEFAULT_CATALOG, read_only: bool = False,
            progress: bool = False, snapshot: int | None = None, lock_timeout: float | None = None) -> Connection:
    """Open a catalog directory (created unless ``read_only``) and return a Connection.

    ``snapshot``: read that catalog snapshot (default: the newest, followed statement by
    statement). ``lock_timeout``: seconds a change waits for another process's change
    (default ``MIXSQL_LOCK_TIMEOUT`` or 600)."""
    return Connection(catalog, read_only=read_only, progress=progress, snapshot=snapshot,
                      lock_timeout=lock_timeout)


_READ_ONLY_STATEMENTS = frozenset({"SELECT", "EXPLAIN", "PRAGMA", "SET", "VARIABLE_SET", "TRANSACTION",
                                   "PREPARE", "EXECUTE", "RELATION"})


def _refuse_changes(operation: str, cat: Catalog) -> None:
    """ProgrammingError for a statement that would change anything through a read-only handle."""
    try:
        kinds = [st.type.name for st in duckdb.extract_statements(operation)]
    except duckdb.Error:
        return   # a syntax error: DuckDB reports it when the statement runs
    bad = [k for k in kinds if k not in _READ_ONLY_STATEMENTS]
    if bad:
        raise ProgrammingError(f"catalog {cat.path} is open read-only (or pinned to a snapshot): "
                               f"{bad[0]} statements are refused; connect without read_only to create tables")


__all__ = [
    "apilevel", "threadsafety", "paramstyle", "connect", "Connection", "Cursor",
    "Date", "Time", "Timestamp", "DateFromTicks", "TimeFromTicks", "TimestampFromTicks", "Binary",
    "STRING", "BINARY", "NUMBER", "DATETIME", "ROWID", "Warning", "Error", "InterfaceError",
    "DatabaseError", "DataError", "OperationalError", "IntegrityError", "InternalError",
    "ProgrammingError", "NotSupportedError", "split_statements", "map_duckdb_error",
    "arrow_type_code", "describe_arrow", "MIX_LEADING_COLUMNS", "POINTER_DETAIL_COLUMNS",
]
