"""The result sets a DB-API cursor fetches from: DuckDB results, Arrow tables, statements without
rows, and the lazy MIX result (one row per sample in training order, read chunk by chunk)."""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa

from .dbapi_types import arrow_type_code, describe_arrow, describe_column, duck_errors, table_rows
from .errors import OperationalError, ProgrammingError

# Trailing pointer-detail columns of an engine chunk table (not part of the MIX result rows).
POINTER_DETAIL_COLUMNS = ("group_id", "file_id", "loc_offset", "loc_length", "n_bytes", "n_tokens", "epoch")
MIX_LEADING_COLUMNS = ("chunk", "position", "group", "source", "file", "row")


def summary_table(summary: Any) -> pa.Table:
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


class Result:
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


class NoRows(Result):
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


def duck_result(operation: str, dcur: duckdb.DuckDBPyConnection) -> Result:
    """The cursor's result after DuckDB ran ``operation``."""
    if not _returns_no_rows(operation, dcur):
        return DuckResult(dcur)
    changed = -1
    if dcur.description is not None and dcur.description[0][0] == "Count":
        with duck_errors():
            row = dcur.fetchone()
        changed = int(row[0]) if row and row[0] is not None else -1
    return NoRows(changed)


class DuckResult(Result):
    """A DuckDB result on the cursor's own DuckDB connection (streams from DuckDB)."""

    def __init__(self, dcur: duckdb.DuckDBPyConnection):
        self.dcur = dcur
        desc = dcur.description
        self.description = (
            None if desc is None else [describe_column(d[0], str(d[1])) for d in desc]
        )
        rc = dcur.rowcount
        self.rowcount = rc if isinstance(rc, int) else -1

    def fetchone(self):
        with duck_errors():
            return self.dcur.fetchone()

    def fetchmany(self, n: int) -> list[tuple]:
        with duck_errors():
            return self.dcur.fetchmany(n)

    def fetchall(self) -> list[tuple]:
        with duck_errors():
            return self.dcur.fetchall()

    def arrow(self) -> pa.Table:
        with duck_errors(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.dcur.to_arrow_table()

    def chunks(self, rows: int = 65536) -> Iterator[pa.Table]:
        with duck_errors(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = self.dcur.to_arrow_reader(rows)
        for batch in reader:
            yield pa.Table.from_batches([batch])

    def cancel(self) -> None:
        try:
            self.dcur.interrupt()
        except duckdb.Error:
            pass


class ArrowResult(Result):
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


class MixResult(Result):
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
        with duck_errors():
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
        desc = [describe_column("chunk", "BIGINT"), describe_column("position", "INTEGER"),
                describe_column("group", "VARCHAR"), describe_column("source", "VARCHAR"),
                describe_column("file", "VARCHAR"), describe_column("row", "BIGINT")]
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
            desc.append(describe_column(name, typ))
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
