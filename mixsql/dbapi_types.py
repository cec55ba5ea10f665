"""PEP 249 type objects and constructors, DuckDB errors mapped to PEP 249 classes, and Arrow
schemas as ``description`` tuples (type codes are DuckDB type names)."""
from __future__ import annotations

import datetime
import time

import duckdb
import pyarrow as pa

from .errors import (
    DatabaseError, DataError, Error, IntegrityError, InternalError, NotSupportedError,
    OperationalError, ProgrammingError,
)

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


class duck_errors:
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


def describe_column(name: str, type_code: str) -> tuple:
    p, s = _precision_scale(type_code)
    return (name, type_code, None, None, p, s, None)


def describe_arrow(schema: pa.Schema) -> list[tuple]:
    """PEP 249 ``description`` for an Arrow schema."""
    return [describe_column(f.name, arrow_type_code(f.type)) for f in schema]


def table_rows(table: pa.Table) -> list[tuple]:
    """Python row tuples of an Arrow table (column-wise conversion, fast)."""
    if table.num_columns == 0:
        return [()] * table.num_rows
    return list(zip(*(col.to_pylist() for col in table.columns)))
