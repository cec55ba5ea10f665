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

import datetime
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from . import ledger_sql
from .catalog import DEFAULT_CATALOG, Catalog
from .source_statements import split_snapshot
from .errors import (
    DatabaseError, DataError, Error, IntegrityError, InterfaceError, InternalError,
    NotSupportedError, OperationalError, ProgrammingError, Warning,
)

apilevel = "2.0"
threadsafety = 1
paramstyle = "qmark"

# Trailing pointer-detail columns of an engine chunk table (not part of the MIX result rows).
POINTER_DETAIL_COLUMNS = ("group_id", "file_id", "loc_offset", "loc_length", "n_bytes", "n_tokens", "epoch")
MIX_LEADING_COLUMNS = ("chunk", "position", "group", "source", "file", "row")

# ---------------------------------------------------------------------------------------------
# Type objects and constructors (PEP 249). ``description`` type codes are DuckDB type names.


class DBAPITypeObject:
    """Compares equal to every DuckDB type name of its family (``STRING == 'VARCHAR'``)."""

    def __init__(self, name: str, *values: str):
        self.name = name
        self.values = frozenset(values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DBAPITypeObject):
            return self is other
        if isinstance(other, str):
            base = other.upper().split("(", 1)[0].strip()
            return base in self.values
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<mixsql type {self.name}>"


STRING = DBAPITypeObject("STRING", "VARCHAR", "CHAR", "TEXT", "STRING", "UUID", "JSON", "ENUM")
BINARY = DBAPITypeObject("BINARY", "BLOB", "BYTEA", "VARBINARY", "BIT")
NUMBER = DBAPITypeObject(
    "NUMBER", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
    "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL", "BOOLEAN", "VARINT",
    "BIGNUM",
)
DATETIME = DBAPITypeObject(
    "DATETIME", "DATE", "TIME", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ",
    "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "INTERVAL", "TIME WITH TIME ZONE",
)
ROWID = DBAPITypeObject("ROWID", "ROWID")

Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> datetime.date:  # noqa: N802 - PEP 249 name
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:  # noqa: N802
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:  # noqa: N802
    return Timestamp(*time.localtime(ticks)[:6])


# ---------------------------------------------------------------------------------------------
# DuckDB error mapping

_DUCKDB_TO_PEP249: list[tuple[type, type]] = [
    (duckdb.InterruptException, OperationalError),
    (duckdb.DependencyException, IntegrityError),
    (duckdb.SequenceException, DataError),
    (duckdb.PermissionException, OperationalError),
    (duckdb.FatalException, OperationalError),
    (duckdb.NotSupportedError, NotSupportedError),
    (duckdb.IntegrityError, IntegrityError),
    (duckdb.DataError, DataError),
    (duckdb.OperationalError, OperationalError),
    (duckdb.InternalError, InternalError),
    (duckdb.ProgrammingError, ProgrammingError),
    (duckdb.DatabaseError, DatabaseError),
    (duckdb.Error, DatabaseError),
]


def map_duckdb_error(exc: BaseException) -> Error:
    """The PEP 249 mixsql exception for a DuckDB exception, keeping DuckDB's message."""
    for dtype, ours in _DUCKDB_TO_PEP249:
        if isinstance(exc, dtype):
            err = ours(str(exc))
            err.duckdb_error = exc  # type: ignore[attr-defined]
            return err
    return DatabaseError(str(exc))


class _duck_errors:
    """Context manager re-raising DuckDB exceptions as mixsql (PEP 249) ones."""

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if ev is not None and isinstance(ev, duckdb.Error) and not isinstance(ev, Error):
            raise map_duckdb_error(ev) from ev
        return False


# ---------------------------------------------------------------------------------------------
# Helpers

_ARROW_TO_DUCK = [
    (pa.types.is_boolean, "BOOLEAN"), (pa.types.is_int8, "TINYINT"), (pa.types.is_int16, "SMALLINT"),
    (pa.types.is_int32, "INTEGER"), (pa.types.is_int64, "BIGINT"), (pa.types.is_uint8, "UTINYINT"),
    (pa.types.is_uint16, "USMALLINT"), (pa.types.is_uint32, "UINTEGER"), (pa.types.is_uint64, "UBIGINT"),
    (pa.types.is_float32, "FLOAT"), (pa.types.is_float64, "DOUBLE"), (pa.types.is_string, "VARCHAR"),
    (pa.types.is_large_string, "VARCHAR"), (pa.types.is_string_view, "VARCHAR"),
    (pa.types.is_binary, "BLOB"), (pa.types.is_large_binary, "BLOB"), (pa.types.is_date, "DATE"),
    (pa.types.is_time, "TIME"), (pa.types.is_timestamp, "TIMESTAMP"), (pa.types.is_decimal, "DECIMAL"),
    (pa.types.is_dictionary, "VARCHAR"), (pa.types.is_null, "NULL"),
]


def arrow_type_code(t: pa.DataType) -> str:
    """DuckDB-style type name for an Arrow type (the ``description`` type code)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return arrow_type_code(t.value_type) + "[]"
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision},{t.scale})"
    for pred, name in _ARROW_TO_DUCK:
        if pred(t):
            return name
    return str(t).upper()


def _precision_scale(type_code: str) -> tuple[int | None, int | None]:
    if type_code.upper().startswith("DECIMAL(") and type_code.endswith(")"):
        try:
            p, s = type_code[8:-1].split(",")
            return int(p), int(s)
        except ValueError:
            pass
    return None, None


def _describe(name: str, type_code: str) -> tuple:
    p, s = _precision_scale(type_code)
    return (name, type_code, None, None, p, s, None)


def describe_arrow(schema: pa.Schema) -> list[tuple]:
    """PEP 249 ``description`` for an Arrow schema."""
    return [_describe(f.name, arrow_type_code(f.type)) for f in schema]


def table_rows(table: pa.Table) -> list[tuple]:
    """Python row tuples of an Arrow table (column-wise conversion, fast)."""
    if table.num_columns == 0:
        return [()] * table.num_rows
    return list(zip(*(col.to_pylist() for col in table.columns)))


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


def _summary_table(summary: Any) -> pa.Table:
    """A registration summary (dict or Arrow table) as a one-row Arrow table."""
    if isinstance(summary, pa.Table):
        return summary
    if isinstance(summary, dict):
        cols = {}
        for k, v in summary.items():
            if isinstance(v, (list, dict, tuple)):
                import json

                v = json.dumps(v, default=str)
            cols[str(k)] = [v]
        return pa.table(cols)
    return pa.table({"result": [None if summary is None else str(summary)]})


# ---------------------------------------------------------------------------------------------
# Result sets


class _Result:
    """What a cursor fetches from. Subclasses: DuckDB results, Arrow tables, MIX streams."""

    description: list[tuple] | None = None
    rowcount: int = -1
    unbounded: bool = False

    def fetchone(self):
        raise NotImplementedError

    def fetchmany(self, n: int) -> list[tuple]:
        raise NotImplementedError

    def fetchall(self) -> list[tuple]:
        raise NotImplementedError

    def arrow(self) -> pa.Table:
        raise NotImplementedError

    def chunks(self) -> Iterator[pa.Table]:
        raise NotImplementedError

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


# DuckDB answers statements that return no rows with one status column; PEP 249 wants
# ``description = None`` for them (and ``rowcount`` = rows changed, when DuckDB counts them).
_STATUS_COLUMNS = ((("Count", "BIGINT"),), (("Success", "BOOLEAN"),))
_ROW_RETURNING = {"SELECT", "EXPLAIN", "PRAGMA", "CALL", "EXECUTE", "RELATION", "LOGICAL_PLAN"}


def _returns_no_rows(operation: str, dcur: duckdb.DuckDBPyConnection) -> bool:
    """True when the last statement of ``operation`` is DDL/DML (its DuckDB result is a status)."""
    desc = dcur.description
    if desc is None:
        return True
    if tuple((d[0], str(d[1])) for d in desc) not in _STATUS_COLUMNS:
        return False
    try:
        last = duckdb.extract_statements(operation)[-1]
    except (duckdb.Error, IndexError):
        return False
    return last.type.name not in _ROW_RETURNING


class _NoRows(_Result):
    """The result of a statement that returns no rows (DDL, DML): PEP 249 ``description`` is
    None, ``rowcount`` the rows changed (-1 when not counted), and fetching raises."""

    def __init__(self, rowcount: int = -1):
        self.rowcount = rowcount

    def _refuse(self):
        raise ProgrammingError("the last statement returned no rows (DDL or DML); fetch after a "
                               "statement that returns rows, such as SELECT")

    def fetchone(self):
        self._refuse()

    def fetchmany(self, n: int) -> list[tuple]:
        self._refuse()

    def fetchall(self) -> list[tuple]:
        self._refuse()

    def arrow(self) -> pa.Table:
        self._refuse()

    def chunks(self) -> Iterator[pa.Table]:
        self._refuse()


def _duck_result(operation: str, dcur: duckdb.DuckDBPyConnection) -> _Result:
    """The cursor's result after DuckDB ran ``operation``."""
    if not _returns_no_rows(operation, dcur):
        return _DuckResult(dcur)
    changed = -1
    if dcur.description is not None and dcur.description[0][0] == "Count":
        with _duck_errors():
            row = dcur.fetchone()
        changed = int(row[0]) if row and row[0] is not None else -1
    return _NoRows(changed)


class _DuckResult(_Result):
    """A DuckDB result on the cursor's own DuckDB connection (streams from DuckDB)."""

    def __init__(self, dcur: duckdb.DuckDBPyConnection):
        self.dcur = dcur
        desc = dcur.description
        self.description = (
            None if desc is None else [_describe(d[0], str(d[1])) for d in desc]
        )
        rc = dcur.rowcount
        self.rowcount = rc if isinstance(rc, int) else -1

    def fetchone(self):
        with _duck_errors():
            return self.dcur.fetchone()

    def fetchmany(self, n: int) -> list[tuple]:
        with _duck_errors():
            return self.dcur.fetchmany(n)

    def fetchall(self) -> list[tuple]:
        with _duck_errors():
            return self.dcur.fetchall()

    def arrow(self) -> pa.Table:
        with _duck_errors(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.dcur.to_arrow_table()

    def chunks(self, rows: int = 65536) -> Iterator[pa.Table]:
        with _duck_errors(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = self.dcur.to_arrow_reader(rows)
        for batch in reader:
            yield pa.Table.from_batches([batch])

    def cancel(self) -> None:
        try:
            self.dcur.interrupt()
        except duckdb.Error:
            pass


class _ArrowResult(_Result):
    """A materialised Arrow table (EXPLAIN MIX, SHOW SOURCES, registration summaries)."""

    def __init__(self, table: pa.Table):
        self.table = table
        self.pos = 0
        self.description = describe_arrow(table.schema)
        self.rowcount = table.num_rows

    def _take(self, n: int | None) -> pa.Table:
        end = self.table.num_rows if n is None else min(self.pos + max(n, 0), self.table.num_rows)
        part = self.table.slice(self.pos, end - self.pos)
        self.pos = end
        return part

    def fetchone(self):
        rows = table_rows(self._take(1))
        return rows[0] if rows else None

    def fetchmany(self, n: int) -> list[tuple]:
        return table_rows(self._take(n))

    def fetchall(self) -> list[tuple]:
        return table_rows(self._take(None))

    def arrow(self) -> pa.Table:
        return self._take(None)

    def chunks(self) -> Iterator[pa.Table]:
        rest = self._take(None)
        if rest.num_rows:
            yield rest


class _MixResult(_Result):
    """A MIX statement's stream: rows in training order, pulled chunk by chunk on demand."""

    def __init__(self, stream: Any):
        self.stream = stream
        spec = stream.spec
        self.spec = spec
        self.unbounded = (
            spec.on_exhausted == "repeat" and spec.budget is None and spec.max_epochs is None
        )
        self._iter = iter(stream.chunks())
        self._cancelled = False
        self._chunk: pa.Table | None = None   # current engine chunk (full columns)
        self._rows: list[tuple] = []          # its result rows
        self._pos = 0                          # next row inside the current chunk
        self._done = False
        self._delivered = 0
        first = self._next_chunk()
        if first is not None:
            self._set_chunk(first)
            self.description = describe_arrow(self._lead(first).schema)
        else:
            self.description = self._empty_description()
        self.rowcount = -1

    # -- chunk plumbing
    def _next_chunk(self) -> pa.Table | None:
        if self._done:
            return None
        if self._cancelled:
            self._done = True
            raise OperationalError("MIX stream cancelled")
        with _duck_errors():
            try:
                return next(self._iter)
            except StopIteration:
                self._done = True
                return None

    @staticmethod
    def _lead(chunk: pa.Table) -> pa.Table:
        """The MIX result columns: the chunk table minus its trailing pointer-detail columns."""
        names = chunk.column_names
        k = len(POINTER_DETAIL_COLUMNS)
        if len(names) >= k and tuple(names[-k:]) == POINTER_DETAIL_COLUMNS:
            return chunk.select(list(range(len(names) - k)))
        return chunk.select([i for i, n in enumerate(names) if n not in POINTER_DETAIL_COLUMNS])

    def _empty_description(self) -> list[tuple]:
        desc = [_describe("chunk", "BIGINT"), _describe("position", "INTEGER"),
                _describe("group", "VARCHAR"), _describe("source", "VARCHAR"),
                _describe("file", "VARCHAR"), _describe("row", "BIGINT")]
        pointers = getattr(self.stream, "pointers", None)
        plan = getattr(self.stream, "plan", None)
        user = list(getattr(plan, "user_columns", None) or [])
        if pointers is not None and not user:
            user = [n for n in pointers.column_names if not n.startswith("__mix_")]
        schema = pointers.schema if pointers is not None else None
        for name in user:
            if name in MIX_LEADING_COLUMNS:
                continue
            typ = "VARCHAR"
            if schema is not None and schema.get_field_index(name) >= 0:
                typ = arrow_type_code(schema.field(name).type)
            desc.append(_describe(name, typ))
        return desc

    def _set_chunk(self, chunk: pa.Table) -> None:
        self._chunk = chunk
        self._rows = table_rows(self._lead(chunk))
        self._pos = 0

    def _advance(self) -> bool:
        """Make sure the current chunk has an unread row; False at the end of the stream."""
        while self._chunk is None or self._pos >= len(self._rows):
            nxt = self._next_chunk()
            if nxt is None:
                self._chunk, self._rows, self._pos = None, [], 0
                return False
            self._set_chunk(nxt)
        return True

    # -- fetching
    def fetchone(self):
        if not self._advance():
            return None
        row = self._rows[self._pos]
        self._pos += 1
        self._delivered += 1
        return row

    def fetchmany(self, n: int) -> list[tuple]:
        out: list[tuple] = []
        while len(out) < n and self._advance():
            take = self._rows[self._pos:self._pos + (n - len(out))]
            self._pos += len(take)
            out.extend(take)
        self._delivered += len(out)
        return out

    def _refuse_unbounded(self, what: str) -> None:
        if self.unbounded:
            raise ProgrammingError(
                f"{what}() on an unbounded MIX stream: on_exhausted = 'repeat' with no LIMIT budget "
                "and no max_epochs never ends. Add a budget (LIMIT n SAMPLES|TOKENS|CHUNKS) or "
                "SETTINGS (max_epochs = n), or read it incrementally with fetchmany() / chunks()."
            )

    def fetchall(self) -> list[tuple]:
        self._refuse_unbounded("fetchall")
        out: list[tuple] = []
        while self._advance():
            out.extend(self._rows[self._pos:])
            self._pos = len(self._rows)
        self._delivered += len(out)
        return out

    def arrow(self) -> pa.Table:
        self._refuse_unbounded("fetch_arrow_table")
        parts = list(self.chunks())
        if not parts:
            names = [d[0] for d in self.description or []]
            return pa.table({n: pa.array([], type=pa.null()) for n in names}) if names else pa.table({})
        return pa.concat_tables(parts)

    def chunks(self) -> Iterator[pa.Table]:
        """The remaining rows chunk by chunk, with the result's columns (``description``)."""
        for chunk in self.pointer_chunks():
            yield self._lead(chunk)

    def pointer_chunks(self) -> Iterator[pa.Table]:
        """The engine's chunk tables: the result's columns plus the pointer details a reader
        needs to load each sample (:data:`POINTER_DETAIL_COLUMNS`)."""
        if self._chunk is not None and self._pos < len(self._rows):
            rest = self._chunk.slice(self._pos)
            self._delivered += rest.num_rows
            self._chunk, self._rows, self._pos = None, [], 0
            yield rest
        else:
            self._chunk, self._rows, self._pos = None, [], 0
        while True:
            nxt = self._next_chunk()
            if nxt is None:
                return
            self._delivered += nxt.num_rows
            yield nxt

    def cancel(self) -> None:
        self._cancelled = True

    def close(self) -> None:
        self._done = True
        self._chunk, self._rows = None, []
        close = getattr(self._iter, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - closing a generator must not mask the caller's error
                pass


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
        with _duck_errors():
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
        self._result: _Result | None = None
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
        return self._result.stream if isinstance(self._result, _MixResult) else None

    def _check(self) -> None:
        if self._closed:
            raise InterfaceError("cursor is closed")
        if self.connection.closed:
            raise InterfaceError("connection is closed")

    def _duck(self) -> duckdb.DuckDBPyConnection:
        if self._dcur is None:
            with _duck_errors():
                self._dcur = self.connection.catalog.con.cursor()
        return self._dcur

    def _require_result(self) -> _Result:
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
            with _duck_errors():
                if parameters is None:
                    dcur.execute(operation)
                else:
                    dcur.execute(operation, parameters)
            self._result = _duck_result(operation, dcur)
        elif kind == "mix":
            self._result = self._open_mix(cat, operation, parameters)
        elif kind == "explain_mix":
            from .planner import explain

            with _duck_errors():
                self._result = _ArrowResult(explain(cat, operation, parameters))
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

    def _open_mix(self, cat: Catalog, operation: str, parameters: Any) -> _MixResult:
        from .stream import MixStream

        with _duck_errors():
            stream = MixStream.open(cat, operation, parameters)
            return _MixResult(stream)

    def _registration(self, cat: Catalog, kind: str, operation: str) -> _Result:
        from . import registration

        with _duck_errors():
            if kind == "show_sources":
                return _ArrowResult(registration.show_sources(cat))
            from .source_statements import registration_request

            req = registration_request(operation)
            if kind == "show_source":
                return _ArrowResult(registration.show_source(cat, req.name))
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
        return _ArrowResult(_summary_table(summary))

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
        with _duck_errors():
            if seq:
                dcur.executemany(operation, seq)
                self._result = _NoRows(dcur.rowcount if isinstance(dcur.rowcount, int) else -1)
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
        if not isinstance(res, _MixResult):
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
]
