"""The catalog: a directory holding one DuckDB database with the sample index.

Physical layout (``<dir>/catalog.duckdb``):

* ``sources``      one row per registered source (name, format, pattern, options, property types)
* ``files``        one row per data file (absolute path, compression, size, mtime_ns, fingerprint)
* ``sample_index`` one row per sample: pointer columns + every registered property
* ``samples``      the public VIEW: ``source, file, row, n_bytes, n_tokens, <properties...>,
                   file_id, loc_offset, loc_length``
* ``seek_points``  per multi-frame zstd / multi-member gzip file: ``(c_offset, d_offset)`` of
                   frame starts (compressed and decompressed byte offsets), for random access
* ``catalog_meta`` key/value: ``format_version``, ``snapshot`` (bumped by every change)

Location columns, per format (SAMPLE_INDEX_DOC):

* jsonl (plain/zst/gz): ``loc_offset``/``loc_length`` = byte offset and length of the line
  (without the newline) in the *decompressed* stream.
* parquet: ``loc_offset`` = row group index, ``loc_length`` = row inside that row group.
* webdataset: ``loc_offset``/``loc_length`` = byte offset and size of the text member's data
  inside the tar file.

``row`` is always the 0-based sample number inside its file.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import duckdb

from .errors import OperationalError, ProgrammingError

DEFAULT_CATALOG = "./mixsql_catalog"
DB_FILENAME = "catalog.duckdb"
FORMAT_VERSION = "1"

# Columns of sample_index that are not user properties (also reserved as property names).
POINTER_COLUMNS = ("file_id", "row", "loc_offset", "loc_length", "n_bytes", "n_tokens")
RESERVED_NAMES = frozenset(POINTER_COLUMNS) | {"source", "file", "chunk", "position", "group"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS catalog_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    source_id    INTEGER PRIMARY KEY,
    name         VARCHAR NOT NULL UNIQUE,
    format       VARCHAR NOT NULL,
    pattern      VARCHAR NOT NULL,   -- the glob given at registration
    options      VARCHAR NOT NULL,   -- JSON object: text field, mapping, tokenizer, on_error ...
    properties   VARCHAR NOT NULL,   -- JSON object: property name -> DuckDB type
    n_files      BIGINT NOT NULL DEFAULT 0,
    n_samples    BIGINT NOT NULL DEFAULT 0,
    n_bytes      BIGINT NOT NULL DEFAULT 0,
    n_tokens     BIGINT,
    registered_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    refreshed_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);
CREATE TABLE IF NOT EXISTS files (
    file_id      INTEGER PRIMARY KEY,
    source_id    INTEGER NOT NULL,
    path         VARCHAR NOT NULL,
    compression  VARCHAR NOT NULL,   -- none | zstd | gzip
    size         BIGINT NOT NULL,
    mtime_ns     BIGINT NOT NULL,
    fingerprint  VARCHAR NOT NULL,   -- cheap content hash (head + tail + size)
    n_samples    BIGINT NOT NULL,
    n_bytes      BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS seek_points (
    file_id      INTEGER NOT NULL,
    c_offset     BIGINT NOT NULL,
    d_offset     BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS sample_index (
    file_id      INTEGER NOT NULL,
    "row"        BIGINT NOT NULL,
    loc_offset   BIGINT NOT NULL,
    loc_length   INTEGER NOT NULL,
    n_bytes      BIGINT NOT NULL,
    n_tokens     BIGINT
);
"""


def property_columns(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(name, type) of every user property column of sample_index, in table order."""
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'sample_index' ORDER BY ordinal_position"
    ).fetchall()
    return [(n, t) for n, t in rows if n not in POINTER_COLUMNS]


def fetch_one(result):
    """First row of an executed statement, or None; always drains the result.

    DuckDB 2.0 refuses further work on a connection whose ``execute()`` result was not read to
    its end, so ``fetchone()`` on a multi-row (or later reused) result is unsafe.
    """
    rows = result.fetchall()
    return rows[0] if rows else None


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_samples_view(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create the public ``samples`` view over sample_index, files and sources."""
    props = "".join(f", s.{quote_ident(n)}" for n, _ in property_columns(con))
    con.execute(
        "CREATE OR REPLACE VIEW samples AS SELECT src.name AS source, f.path AS file, s.\"row\", "
        f"s.n_bytes, s.n_tokens{props}, s.file_id, s.loc_offset, s.loc_length "
        "FROM sample_index s JOIN files f ON s.file_id = f.file_id "
        "JOIN sources src ON f.source_id = src.source_id"
    )


def bump_snapshot(con: duckdb.DuckDBPyConnection) -> int:
    """Advance the catalog snapshot counter (call inside the changing transaction)."""
    cur = fetch_one(con.execute("SELECT value FROM catalog_meta WHERE key = 'snapshot'"))
    nxt = int(cur[0]) + 1 if cur else 1
    con.execute("INSERT OR REPLACE INTO catalog_meta VALUES ('snapshot', ?)", [str(nxt)])
    return nxt


class Catalog:
    """A catalog directory. Opens (creating if needed) ``<dir>/catalog.duckdb``.

    ``read_only=True`` lets many processes (DataLoader workers, ranks) share one catalog.
    The DuckDB connection is ``self.con``; use ``self.lock`` around multi-statement work that
    other threads could interleave with.
    """

    def __init__(self, path: str | os.PathLike = DEFAULT_CATALOG, read_only: bool = False):
        self.path = Path(path).expanduser().resolve()
        self.read_only = read_only
        self.lock = threading.RLock()
        db = self.path / DB_FILENAME
        if read_only and not db.exists():
            raise OperationalError(
                f"no mixsql catalog at {self.path} (missing {DB_FILENAME}); "
                "register a source first: mixsql register NAME GLOB --catalog DIR"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.con = duckdb.connect(str(db), read_only=read_only)
        except duckdb.Error as exc:
            raise OperationalError(f"cannot open catalog {db}: {exc}") from exc
        if not read_only:
            self._ensure_schema()

    def _ensure_schema(self) -> None:
        with self.lock:
            self.con.execute("BEGIN")
            try:
                self.con.execute(SCHEMA)
                have = fetch_one(self.con.execute(
                    "SELECT value FROM catalog_meta WHERE key='format_version'"
                ))
                if have is None:
                    self.con.execute("INSERT INTO catalog_meta VALUES ('format_version', ?)", [FORMAT_VERSION])
                    self.con.execute("INSERT INTO catalog_meta VALUES ('snapshot', '0')")
                elif have[0] != FORMAT_VERSION:
                    raise OperationalError(
                        f"catalog {self.path} has format {have[0]}, this mixsql reads {FORMAT_VERSION}"
                    )
                create_samples_view(self.con)
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise

    @property
    def snapshot(self) -> int:
        row = fetch_one(self.con.execute("SELECT value FROM catalog_meta WHERE key='snapshot'"))
        return int(row[0]) if row else 0

    def properties(self) -> list[tuple[str, str]]:
        return property_columns(self.con)

    def source_names(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT name FROM sources ORDER BY name").fetchall()]

    def files_table(self, file_ids=None):
        """Arrow table of files joined with their source's format and options (for readers), and
        ``seek``: the file's seek table as a list of ``[c_offset, d_offset]`` (NULL when none)."""
        has_seek = fetch_one(self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'seek_points'"))[0]
        seek = ("(SELECT list([p.c_offset, p.d_offset] ORDER BY p.d_offset) FROM seek_points p "
                "WHERE p.file_id = f.file_id)" if has_seek else "NULL::BIGINT[][]")
        sql = (
            "SELECT f.file_id, f.path, f.compression, f.size, f.mtime_ns, f.fingerprint, "
            f"s.name AS source, s.format, s.options, {seek} AS seek FROM files f JOIN sources s USING (source_id)"
        )
        if file_ids is not None:
            ids = sorted({int(i) for i in file_ids})
            if not ids:
                ids = [-1]
            sql += f" WHERE f.file_id IN ({','.join(map(str, ids))})"
        return self.con.sql(sql + " ORDER BY f.file_id").to_arrow_table()

    def close(self) -> None:
        try:
            self.con.close()
        except duckdb.Error:  # already closed
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def require_writable(catalog: Catalog) -> None:
    if catalog.read_only:
        raise ProgrammingError(f"catalog {catalog.path} is open read-only; reopen it writable to change it")
