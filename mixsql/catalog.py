"""The catalog: a directory of immutable per-source DuckDB segments and numbered snapshots.

Why this storage. A single DuckDB file admits one read-write process and excludes every other
(readers got DuckDB's raw "Could not set lock" while anyone registered). Here every commit
writes *new* files and publishes them by renaming one small manifest (mixsql.snapshots):

* a source's index lives in its own segment file (``files`` + ``sample_index`` tables), written
  once and then only ever opened read-only, by any number of processes at once;
* ``snapshots/<n>.json`` lists the sources of snapshot n and their segments; the newest one is
  the catalog. A commit is one atomic ``rename``: readers see the old snapshot or the new one,
  never a half; a writer killed at any point leaves the catalog as it was;
* writers queue on ``writer.lock`` (``flock``), printing who they wait for; the wait is bounded
  by ``lock_timeout`` (``MIXSQL_LOCK_TIMEOUT``, default 600 s), then a clear error.

Segments are native DuckDB storage, so queries scan what they scanned before. ``python -m
bench.ab`` (bench/RESULTS.md, section "ab") measured, medians of 3 interleaved runs on the shared
2-core machine (noisy: single runs varied by +-25%): query to first chunk over 2M samples 4.93 s
vs 4.94 s before; registering 1M documents 18.4 vs 20.7 MB/s (the commit now includes the
segment's checkpoint and fsync, which the single file deferred to close); index 7.35 vs 8.93
bytes per sample. A REFRESH rewrites its source's segment (unchanged rows are copied inside
DuckDB, no re-parsing); a CREATE writes one segment; nothing else is touched.
Alternatives considered: Parquet index files read through views (one more decode per query;
no typed writes), and a staging database copied over the live one at commit (a full copy of
the catalog per commit, and readers of the old file still block the swap).

Reading. ``Catalog(dir)`` opens an in-memory DuckDB, ATTACHes the snapshot's segments
read-only and defines these views (the same names as before):

* ``sources``      one row per registered source (name, format, pattern, options, property types,
                   counts, and ``tokenizer`` / ``tokenizer_fingerprint``: what counted its
                   ``n_tokens``, NULL when unknown; mixsql.registration)
* ``files``        one row per data file (absolute path, compression, size, mtime_ns, fingerprint)
* ``sample_index`` one row per sample: pointer columns + every registered property
* ``seek_points``  per multi-frame zstd / multi-member gzip file: ``(c_offset, d_offset)`` of
                   frame starts (compressed and decompressed byte offsets), for random access
* ``samples``      the public view: ``source, file, row, n_bytes, n_tokens, <properties...>,
                   file_id, loc_offset, loc_length``
* ``catalog_meta`` key/value: ``format_version``, ``snapshot``

An unpinned Catalog follows new commits (``sync()``, called before each DB-API statement);
``Catalog(dir, snapshot=n)`` (``... FROM samples AT SNAPSHOT n``) stays on snapshot n. A
Catalog holds a lease on the snapshot it reads (mixsql.snapshots: garbage collection keeps every
leased snapshot), so a stream, job or REPL keeps reading the files it planned on after later
REFRESHes; opening a snapshot that was collected is a clear error.

Location columns, per format (SAMPLE_INDEX_DOC):

* jsonl (plain/zst/gz): ``loc_offset``/``loc_length`` = byte offset and length of the line
  (without the newline) in the *decompressed* stream.
* parquet: ``loc_offset`` = row group index, ``loc_length`` = row inside that row group.
* webdataset: ``loc_offset``/``loc_length`` = byte offset and size of the text member's data
  inside the tar file.

``row`` is always the 0-based sample number inside its file.
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import duckdb

from .errors import OperationalError, ProgrammingError
from .snapshots import FORMAT_VERSION, Lease, Store

DEFAULT_CATALOG = "./mixsql_catalog"
OPEN_RETRIES = 5

# Columns of sample_index that are not user properties (also reserved as property names).
POINTER_COLUMNS = ("file_id", "row", "loc_offset", "loc_length", "n_bytes", "n_tokens")
RESERVED_NAMES = frozenset(POINTER_COLUMNS) | {"source", "file", "chunk", "position", "group"}

FILES_COLUMNS = (("file_id", "INTEGER"), ("source_id", "INTEGER"), ("path", "VARCHAR"),
                 ("compression", "VARCHAR"), ("size", "BIGINT"), ("mtime_ns", "BIGINT"),
                 ("fingerprint", "VARCHAR"), ("n_samples", "BIGINT"), ("n_bytes", "BIGINT"))
POINTER_TYPES = (("file_id", "INTEGER"), ("row", "BIGINT"), ("loc_offset", "BIGINT"),
                 ("loc_length", "INTEGER"), ("n_bytes", "BIGINT"), ("n_tokens", "BIGINT"))
SEEK_COLUMNS = (("file_id", "INTEGER"), ("c_offset", "BIGINT"), ("d_offset", "BIGINT"))
SOURCES_COLUMNS = (("source_id", "INTEGER"), ("name", "VARCHAR"), ("format", "VARCHAR"), ("pattern", "VARCHAR"),
                   ("options", "VARCHAR"), ("properties", "VARCHAR"), ("n_files", "BIGINT"),
                   ("n_samples", "BIGINT"), ("n_bytes", "BIGINT"), ("n_tokens", "BIGINT"),
                   ("tokenizer", "VARCHAR"), ("tokenizer_fingerprint", "VARCHAR"),
                   ("registered_at", "TIMESTAMP"), ("refreshed_at", "TIMESTAMP"))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_str(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _columns_sql(cols) -> str:
    return ", ".join(f"{quote_ident(n)} {t}" for n, t in cols)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None).isoformat(sep=" ")


class Catalog:
    """A catalog directory (created unless ``read_only``).

    ``snapshot=n`` pins snapshot n (default: the newest, followed by ``sync()``). The DuckDB
    connection is ``self.con`` (in-memory: views over the snapshot's segments); use
    ``self.lock`` around multi-statement work other threads could interleave with.
    ``read_only`` forbids changes through this handle; readers and writers never block each
    other either way. ``lock_timeout``: how long a change waits for another writer.
    ``duckdb_config``: settings of the in-memory DuckDB (e.g. the server's sandbox limits).
    """

    def __init__(self, path: str | os.PathLike = DEFAULT_CATALOG, read_only: bool = False,
                 snapshot: int | None = None, lock_timeout: float | None = None,
                 duckdb_config: dict | None = None):
        self.path = Path(path).expanduser().resolve()
        self.read_only = read_only
        self.pinned = snapshot is not None
        self.lock_timeout = lock_timeout
        self.duckdb_config = dict(duckdb_config or {})
        self.lock = threading.RLock()
        self.store = Store(self.path)
        self.con: duckdb.DuckDBPyConnection | None = None
        self._lease: Path | None = None
        self._owner = os.getpid()
        self.manifest: dict = {}
        if not self.store.exists():
            if read_only or self.pinned:
                hint = (" (it has the single-file format of an older mixsql; register its sources again)"
                        if (self.path / "catalog.duckdb").exists() else "")
                raise OperationalError(
                    f"no mixsql catalog at {self.path}{hint}; register a source first: "
                    "mixsql register NAME GLOB --catalog DIR")
            try:
                self.store.create()
            except OSError as exc:
                raise OperationalError(f"cannot create catalog {self.path}: {exc}") from exc
        self._open(snapshot)

    # -- opening a snapshot
    def _open(self, snapshot: int | None) -> None:
        """Lease + load snapshot ``snapshot`` (None: the newest), retrying when a concurrent
        garbage collection removed what we were about to read."""
        last = None
        for _ in range(OPEN_RETRIES):
            n = snapshot if snapshot is not None else self.store.latest()
            lease = self.store.lease(n)
            doc = self.store.read(n)
            if doc is None:
                _drop_lease(lease)
                if snapshot is not None:
                    raise _collected(self.store, n)
                continue
            if self.con is None:
                self.con = duckdb.connect(":memory:", config=self.duckdb_config)
            try:
                _attach(self.con, self.path, doc)
            except duckdb.IOException as exc:   # a segment was collected under us: retry
                _drop_lease(lease)
                last = exc
                continue
            _define_views(self.con, doc)
            _detach_unused(self.con, doc)
            old_lease, self.manifest, self._lease = self._lease, doc, lease
            if old_lease is not None and self._owner == os.getpid():
                _drop_lease(old_lease)
            return
        raise OperationalError(f"cannot open catalog {self.path}: it kept changing while opening ({last}); retry")

    def sync(self) -> bool:
        """Move to the newest snapshot (unless pinned); True when it changed."""
        if self.pinned or self.con is None:
            return False
        if self.store.latest() == self.snapshot:
            return False
        with self.lock:
            try:
                self._open(None)
            except duckdb.Error:   # e.g. a transaction of this connection is open: stay on the snapshot
                return False
        return True

    # -- reading
    @property
    def snapshot(self) -> int:
        return int(self.manifest.get("snapshot", 0))

    def properties(self) -> list[tuple[str, str]]:
        """(name, type) of every property column of ``samples``, in column order."""
        return [(n, t) for n, t in self.manifest.get("columns", [])]

    def source_names(self) -> list[str]:
        return sorted(s["name"] for s in self.manifest.get("sources", []))

    def source(self, name: str) -> dict | None:
        """The manifest entry of source ``name`` (case-insensitive), or None."""
        return next((s for s in self.manifest.get("sources", []) if s["name"].lower() == str(name).lower()), None)

    def files_table(self, file_ids=None):
        """Arrow table of files joined with their source's format and options (for readers), and
        ``seek``: the file's seek table as a list of ``[c_offset, d_offset]`` (NULL when none)."""
        seek = ("(SELECT list([p.c_offset, p.d_offset] ORDER BY p.d_offset) FROM seek_points p "
                "WHERE p.file_id = f.file_id)")
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

    # -- writing
    @contextmanager
    def write(self, what: str):
        """A change: waits for the writer lock, moves this handle to the newest snapshot and
        yields a :class:`Writer`; leaving the block without an exception commits snapshot n+1
        (nothing when the Writer changed nothing)."""
        require_writable(self)
        with self.store.writer_lock(what, self.lock_timeout), self.lock:
            if not self.pinned:
                self._open(None)
            elif self.snapshot != self.store.latest():
                raise ProgrammingError(f"catalog handle is pinned to snapshot {self.snapshot}; changes need the "
                                       "newest snapshot: open the catalog without snapshot=")
            w = Writer(self)
            try:
                yield w
            except BaseException:
                w.abort()
                raise
            w.commit()

    def close(self) -> None:
        if self.con is not None:
            try:
                self.con.close()
            except duckdb.Error:  # already closed
                pass
        if self._lease is not None and self._owner == os.getpid():
            _drop_lease(self._lease)
            self._lease = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        lease = getattr(self, "_lease", None)
        if lease is not None and getattr(self, "_owner", None) == os.getpid():
            _drop_lease(lease)


class Segment:
    """A new segment being written: a DuckDB file with ``files``, ``seek_points`` and
    ``sample_index`` tables."""

    def __init__(self, path: Path, properties: list[tuple[str, str]]):
        self.path = path
        self.properties = list(properties)
        self.closed = False
        self.con = duckdb.connect(str(path))
        self.con.execute(f"CREATE TABLE files ({_columns_sql(FILES_COLUMNS)})")
        self.con.execute(f"CREATE TABLE seek_points ({_columns_sql(SEEK_COLUMNS)})")
        self.con.execute(f"CREATE TABLE sample_index ({_columns_sql(POINTER_TYPES + tuple(self.properties))})")

    def copy_from(self, old: Path, drop_file_ids) -> None:
        """Copy the rows of segment ``old`` except those of ``drop_file_ids`` (a REFRESH)."""
        ids = ",".join(str(int(i)) for i in drop_file_ids)
        where = f" WHERE file_id NOT IN ({ids})" if ids else ""
        self.con.execute(f"ATTACH {_sql_str(old)} AS __old (READ_ONLY)")
        try:
            old_cols = {r[0] for r in self.con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = '__old' "
                "AND table_name = 'sample_index'").fetchall()}
            cols = [n for n, _ in POINTER_TYPES] + [n for n, _ in self.properties]
            sel = ", ".join(quote_ident(c) if c in old_cols else "NULL" for c in cols)
            self.con.execute(f"INSERT INTO files SELECT * FROM __old.files{where}")
            self.con.execute(f"INSERT INTO seek_points SELECT * FROM __old.seek_points{where}")
            self.con.execute(f"INSERT INTO sample_index SELECT {sel} FROM __old.sample_index{where}")
        finally:
            self.con.execute("DETACH __old")

    def totals(self) -> tuple[int, int, int, int | None]:
        """(n_files, n_samples, n_bytes, n_tokens or None when any sample's count is unknown)."""
        nf = self.con.execute("SELECT count(*) FROM files").fetchall()[0][0]
        ns, nb, nt = self.con.execute(
            "SELECT count(*), coalesce(sum(n_bytes), 0), "
            "CASE WHEN count(n_tokens) = count(*) THEN coalesce(sum(n_tokens), 0) END FROM sample_index"
        ).fetchall()[0]
        return int(nf), int(ns), int(nb), (None if nt is None else int(nt))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.con.execute("CHECKPOINT")
        self.con.close()
        _fsync(self.path)


class Writer:
    """One change to a catalog (see :meth:`Catalog.write`): new segments plus a new manifest."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.doc = copy.deepcopy(catalog.manifest)
        self.doc.setdefault("sources", [])
        self.segments: list[Segment] = []
        self.changed = False
        self.snapshot = catalog.snapshot

    def next_source_id(self) -> int:
        sid = int(self.doc.get("next_source_id", 1))
        self.doc["next_source_id"] = sid + 1
        return sid

    def reserve_file_ids(self, n: int) -> int:
        """The first of ``n`` fresh file ids."""
        first = int(self.doc.get("next_file_id", 1))
        self.doc["next_file_id"] = first + n
        return first

    def segment(self, properties: list[tuple[str, str]]) -> Segment:
        seg = Segment(self.catalog.store.new_segment_path(), properties)
        self.segments.append(seg)
        return seg

    def put_source(self, entry: dict, segment: Segment) -> None:
        """Add (or, same source_id, replace) a source: ``entry`` has source_id, name, format,
        pattern, options (JSON text) and property_types ([[name, type], ...]); counts come from
        the segment."""
        nf, ns, nb, nt = segment.totals()
        segment.close()
        entry = {**entry, "segment": f"segments/{segment.path.name}", "n_files": nf, "n_samples": ns,
                 "n_bytes": nb, "n_tokens": nt}
        entry.setdefault("registered_at", now())
        entry.setdefault("refreshed_at", entry["registered_at"])
        self.doc["sources"] = [s for s in self.doc["sources"] if s["source_id"] != entry["source_id"]] + [entry]
        self.changed = True

    def remove_source(self, source_id: int) -> None:
        self.doc["sources"] = [s for s in self.doc["sources"] if s["source_id"] != source_id]
        self.changed = True

    def _columns(self) -> list[list[str]]:
        """Catalog-wide property columns: existing order kept, new ones appended, unused dropped."""
        used: dict[str, str] = {}
        for s in sorted(self.doc["sources"], key=lambda s: s["source_id"]):
            for n, t in s["property_types"]:
                used.setdefault(n.lower(), [n, t])
        out = [[n, t] for n, t in self.doc.get("columns", []) if n.lower() in used]
        have = {n.lower() for n, _ in out}
        out += [v for k, v in used.items() if k not in have]
        return out

    def commit(self) -> None:
        for seg in self.segments:
            seg.close()
        if not self.changed:
            return
        store = self.catalog.store
        self.doc["snapshot"] = store.latest() + 1
        self.doc["committed_at"] = now()
        self.doc["format_version"] = FORMAT_VERSION
        self.doc["columns"] = self._columns()
        store.write(self.doc)
        self.snapshot = self.doc["snapshot"]
        store.collect()
        if not self.catalog.pinned:
            self.catalog._open(None)

    def abort(self) -> None:
        for seg in self.segments:
            try:
                seg.con.close()
            except duckdb.Error:
                pass
            for p in (seg.path, Path(str(seg.path) + ".wal")):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass


def _attach(con, root: Path, doc: dict) -> None:
    """ATTACH the snapshot's segments not attached yet (all or none)."""
    have = {r[0] for r in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()}
    added = []
    try:
        for s in doc.get("sources", []):
            if _alias(s) not in have:
                con.execute(f"ATTACH {_sql_str(root / s['segment'])} AS {_alias(s)} (READ_ONLY)")
                added.append(_alias(s))
    except duckdb.Error:
        for a in added:
            con.execute(f"DETACH {a}")
        raise


def _detach_unused(con, doc: dict) -> None:
    want = {_alias(s) for s in doc.get("sources", [])}
    for (name,) in con.execute("SELECT database_name FROM duckdb_databases() "
                               "WHERE database_name LIKE 'seg\\_%' ESCAPE '\\'").fetchall():
        if name not in want:
            try:
                con.execute(f"DETACH {name}")
            except duckdb.Error:   # still in use by an open result: detached with the connection
                pass


def _define_views(con, doc: dict) -> None:
    """(Re)define sources, catalog_meta, files, sample_index and samples for snapshot ``doc``."""
    sources = sorted(doc.get("sources", []), key=lambda s: s["source_id"])
    columns = [(n, t) for n, t in doc.get("columns", [])]
    con.execute(f"CREATE OR REPLACE TABLE sources ({_columns_sql(SOURCES_COLUMNS)})")
    if sources:
        con.executemany(f"INSERT INTO sources VALUES ({', '.join('?' * len(SOURCES_COLUMNS))})",
                        [[s["source_id"], s["name"], s["format"], s["pattern"], s["options"],
                          json.dumps(dict(s["property_types"])), s["n_files"], s["n_samples"], s["n_bytes"],
                          s["n_tokens"], *_counted_by(s), s["registered_at"], s["refreshed_at"]] for s in sources])
    con.execute("CREATE OR REPLACE TABLE catalog_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
    con.execute("INSERT INTO catalog_meta VALUES ('format_version', ?), ('snapshot', ?)",
                [FORMAT_VERSION, str(doc.get("snapshot", 0))])
    files_cols = ", ".join(quote_ident(n) for n, _ in FILES_COLUMNS)
    con.execute("CREATE OR REPLACE VIEW files AS " + _union(
        [f"SELECT {files_cols} FROM {_alias(s)}.files" for s in sources], FILES_COLUMNS))
    con.execute("CREATE OR REPLACE VIEW seek_points AS " + _union(
        [f"SELECT file_id, c_offset, d_offset FROM {_alias(s)}.seek_points" for s in sources], SEEK_COLUMNS))
    index_branches, sample_branches = [], []
    for s in sources:
        own = {n.lower(): t for n, t in s["property_types"]}
        props = [f"CAST(s.{quote_ident(n)} AS {t})" if own.get(n.lower()) not in (None, t) else
                 (f"s.{quote_ident(n)}" if n.lower() in own else f"NULL::{t}") for n, t in columns]
        tail = "".join(f", {p} AS {quote_ident(n)}" for p, (n, _) in zip(props, columns))
        a = _alias(s)
        index_branches.append(f"SELECT s.file_id, s.\"row\", s.loc_offset, s.loc_length, s.n_bytes, "
                              f"s.n_tokens{tail} FROM {a}.sample_index s")
        sample_branches.append(f"SELECT {_sql_str(s['name'])} AS source, f.path AS file, s.\"row\", s.n_bytes, "
                               f"s.n_tokens{tail}, s.file_id, s.loc_offset, s.loc_length "
                               f"FROM {a}.sample_index s JOIN {a}.files f ON s.file_id = f.file_id")
    con.execute("CREATE OR REPLACE VIEW sample_index AS " + _union(index_branches, POINTER_TYPES + tuple(columns)))
    con.execute("CREATE OR REPLACE VIEW samples AS " + _union(
        sample_branches, (("source", "VARCHAR"), ("file", "VARCHAR"), ("row", "BIGINT"), ("n_bytes", "BIGINT"),
                          ("n_tokens", "BIGINT"), *columns, ("file_id", "INTEGER"), ("loc_offset", "BIGINT"),
                          ("loc_length", "INTEGER"))))


def _counted_by(source: dict) -> tuple[str | None, str | None]:
    """(tokenizer name, fingerprint) that counted the source's n_tokens; (None, None): unknown
    (no tokenizer, a count hint or tokens column, or a catalog older than the record)."""
    rec = source.get("tokenizer") or {}
    return rec.get("name"), rec.get("fingerprint")


def _alias(source: dict) -> str:
    return "seg_" + Path(source["segment"]).stem


def _union(branches: list[str], empty_columns) -> str:
    if branches:
        return " UNION ALL ".join(branches)
    return "SELECT " + ", ".join(f"NULL::{t} AS {quote_ident(n)}" for n, t in empty_columns) + " WHERE false"


def _drop_lease(path: Path | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hold_snapshot(path: str | os.PathLike, snapshot: int | None = None) -> Lease:
    """Hold snapshot ``snapshot`` (default: the newest) of catalog ``path`` for this process:
    a :class:`~mixsql.snapshots.Lease` whose ``.snapshot`` says which. Opens no DuckDB (safe
    before DataLoader workers fork); a collected snapshot is a clear OperationalError."""
    store = Store(Path(path).expanduser().resolve())
    if not store.exists():
        raise OperationalError(f"no mixsql catalog at {store.root}; register a source first: "
                               "mixsql register NAME GLOB --catalog DIR")
    for _ in range(OPEN_RETRIES):
        lease = Lease(store, store.latest() if snapshot is None else snapshot)
        if store.read(lease.snapshot) is not None:
            return lease
        lease.release()
        if snapshot is not None:
            raise _collected(store, snapshot)
    raise OperationalError(f"catalog {store.root} kept changing while reading its newest snapshot; retry")


def _collected(store: Store, n: int) -> OperationalError:
    kept = store.snapshot_numbers()
    return OperationalError(
        f"catalog snapshot {n} of {store.root} no longer exists (garbage-collected after later changes; "
        f"kept: {', '.join(map(str, kept)) or 'none'}); a stream or checkpoint pinned to it cannot resume: "
        "plan the statement again on the current snapshot")


def require_writable(catalog: Catalog) -> None:
    if catalog.read_only:
        raise ProgrammingError(f"catalog {catalog.path} is open read-only; reopen it writable to change it")
