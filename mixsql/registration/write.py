"""Writing scanned files into a new catalog segment: the ``files``, ``seek_points`` and
``sample_index`` rows (properties cast to their resolved types, required ones checked), inside
one catalog commit whose DuckDB errors become one clear mixsql error."""
from __future__ import annotations

from contextlib import contextmanager

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import formats
from ..catalog import Catalog, quote_ident
from ..errors import OperationalError, RegistrationError


def _arrow_type_of(con, duck_type: str) -> pa.DataType:
    return con.sql(f"SELECT NULL::{duck_type} AS x").to_arrow_table().schema.field(0).type


def _plain(col):
    if isinstance(col, pa.ChunkedArray) and pa.types.is_dictionary(col.type):
        return pc.cast(col, col.type.value_type)
    return col


def _cast_file_table(con, table: pa.Table, file_id: int, path: str, types: dict[str, str],
                     required: list[str], arrow_types: dict[str, pa.DataType]) -> pa.Table:
    n = table.num_rows
    cols = {
        "file_id": formats.np_array(np.full(n, file_id, dtype=np.int32)),
        "row": table.column("row"),
        "loc_offset": table.column("loc_offset"),
        "loc_length": pc.cast(table.column("loc_length"), pa.int32()),
        "n_bytes": pc.cast(table.column("n_bytes"), pa.int64()),
        "n_tokens": pc.cast(table.column("n_tokens"), pa.int64()),
    }
    for name, typ in types.items():
        target = arrow_types[name]
        col = _plain(table.column(name)) if name in table.column_names else pa.nulls(n, target)
        if name in required and col.null_count:
            bad = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
            raise RegistrationError(f"required property {name!r} is missing in sample row {bad}", path=path,
                                    hint="fix the data or drop it from required")
        if col.type != target:
            try:
                col = pc.cast(col, target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise RegistrationError(f"property {name!r} cannot be converted to {typ} ({exc})", path=path,
                                        hint="declare a matching type or fix the data") from None
        cols[name] = col
    return pa.table(cols)


def _write(con, source_id: int, files: list[tuple[str, str]], results, stats,
           types: dict[str, str], required: list[str], next_file_id: int) -> None:
    """Insert files and sample rows into a new segment's connection ``con``."""
    arrow_types = {n: _arrow_type_of(con, t) for n, t in types.items()}
    tables = []
    file_rows, seek_rows = [], []
    for k, ((path, comp), res, (size, mtime, fp)) in enumerate(zip(files, results, stats)):
        fid = next_file_id + k
        t = res["table"]
        ns = t.num_rows if t is not None else 0
        nb = int(pc.sum(t.column("n_bytes")).as_py() or 0) if ns else 0
        if ns:
            tables.append(_cast_file_table(con, t, fid, path, types, required, arrow_types))
        file_rows.append((fid, source_id, path, comp, size, mtime, fp, ns, nb))
        seek_rows.extend((fid, c, d) for c, d in res.get("seek") or ())
    if file_rows:
        con.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", file_rows)
    if seek_rows:
        con.executemany("INSERT INTO seek_points VALUES (?, ?, ?)", seek_rows)
    if tables:
        big = pa.concat_tables(tables)
        names = ", ".join(quote_ident(c) for c in big.column_names)
        con.register("__mixsql_new_rows", big)
        try:
            con.execute(f"INSERT INTO sample_index ({names}) SELECT {names} FROM __mixsql_new_rows")
        finally:
            con.unregister("__mixsql_new_rows")


@contextmanager
def _committing(catalog: Catalog, what: str):
    """catalog.write(what), with a DuckDB error inside turned into one clear mixsql error."""
    try:
        with catalog.write(what) as w:
            yield w
    except duckdb.Error as exc:
        raise OperationalError(f"catalog update failed and was rolled back: {exc}") from exc
