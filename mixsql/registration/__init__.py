"""Register data collections into a catalog: CREATE / REFRESH / DROP / SHOW SOURCES.

Python API (the SQL statements and ``mixsql register`` call these)::

    create_source(catalog, name, pattern, format=None, options=None, progress=True) -> dict
    refresh_source(catalog, name, progress=True, engine=None, ray_address=None) -> dict
    register_source(catalog, name, pattern, format=None, options=None, progress=True) -> dict
        (create, or refresh when the source exists: what ``mixsql register`` does)
    drop_source(catalog, name) -> None
    show_sources(catalog) -> pa.Table
    check_file(path, size, mtime_ns, fingerprint=None) -> None   (readers: raises StaleFileError)

``pattern``: a glob (``**`` recursive), a file or a directory (every recognised data file below
it); relative paths resolve against the CWD, and the pattern and paths are stored absolute. An
object-store URI (``s3://bucket/prefix/**/*.jsonl.zst``, ``gs://``, ``az://``; see
:mod:`mixsql.storage`) works the same way; objects are stored as URIs, with their ETag as the
fingerprint. Multi-frame zstd and multi-member gzip files get a seek table (``seek_points``) so
readers reach a row from the nearest frame. ``format``: ``jsonl``
(``.jsonl``/``.jsonl.zst``/``.jsonl.gz``, compression from the extension), ``parquet`` or
``webdataset`` (``.tar``); detected from the extensions when omitted.

``options`` (all optional; a flat dict as written in ``WITH (...)``):

* property mappings: ``name = 'json.path'`` (jsonl; dotted paths reach nested objects),
  ``name = 'column'`` (parquet; ``col.field`` reaches struct fields), ``name = 'json.path'``
  inside the ``.json`` member (webdataset). A type may be declared inline: ``'meta.score::DOUBLE'``.
  The same mapping may be given as ``properties = {...}``. Without any mapping (and no preset),
  every top-level non-object field / column other than the text and tokens becomes a property
  (reserved names are left out and listed in the summary's ``skipped_columns``).
* ``types``: declared DuckDB types, ``{'quality': 'DOUBLE'}`` or ``'quality DOUBLE, tags VARCHAR[]'``.
  Undeclared types are inferred from the data (VARCHAR, BIGINT, DOUBLE, BOOLEAN, lists, ...).
* ``preset``: ``slimpajama`` | ``pile`` | ``fineweb`` (mixsql.presets); user keys override it.
* ``text``: the text field / column (default ``text``), or the tar member extension (``txt``).
* ``tokens``: parquet ``list<int>`` column of token ids; ``n_tokens`` = its length. Such a
  source needs no text column (its ``n_bytes`` is then 0); readers fetch only the ids.
* ``n_tokens``: a field / column holding a token count (a hint, used when no tokenizer is given).
* ``tokenizer``: path to a HF ``tokenizer.json``, or ``'byte'`` (UTF-8 bytes, the reading side's
  default: ``n_tokens`` = ``n_bytes``); ``n_tokens`` is counted at registration, without the EOS
  the packer appends (the mixture counts that one: ``mixsql.spec.EOS_TOKENS``). The source records
  which tokenizer counted (``sources.tokenizer``: a readable name, ``sources.tokenizer_fingerprint``:
  a hash of its vocabulary and special tokens, :func:`mixsql.tokenize.tokenizer_record`), so
  training with another tokenizer under ``unit = 'tokens'`` is noticed (``mixsql.torch``). Counts
  from a hint or a tokens column, and sources registered before the record existed, have no
  record (unknown tokenizer). A REFRESH that would count new files with a changed tokenizer.json
  is an error (the source's counts would mix two vocabularies).
* ``on_error``: ``fail`` (default) or ``skip`` (skip malformed records, count them in the summary).
* ``required``: properties that must be present in every record (list or ``'a, b'``).
* ``workers``: parallel scans (default: all cores); threads for JSONL and Parquet, processes for
  WebDataset and for token counting with a ``tokenizer`` (``MIXSQL_SCAN_POOL=thread|process``
  overrides).
* ``engine``: ``local`` (default: the pool above) or ``ray``: one Ray task per file on a cluster
  (mixsql.cluster), at ``ray_address`` (``'auto'``, ``'host:port'``; default ``RAY_ADDRESS`` or a
  new local Ray instance). Stored with the source, so ``REFRESH SOURCE`` runs on Ray too;
  ``refresh_source(..., engine=, ray_address=)`` overrides both for one run.

Without a tokenizer, a tokens column or a count hint, ``n_tokens`` is NULL. ``n_bytes`` is the
UTF-8 byte length of the text. Every change is one catalog commit (mixsql.catalog: a new segment
and an atomically published snapshot manifest): a failed or killed registration leaves the
catalog exactly as it was. Changes wait for each other (the writer lock); readers never wait.

Parts: :mod:`.normalize` validates ``options``; :mod:`.files` resolves the pattern to files and
stats them (and :func:`check_file`); :mod:`.scan` scans them into index tables;
:mod:`.property_types` settles the properties' types; :mod:`.write` writes the rows into a new
segment, in one commit. This module runs the statements.
"""
from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.compute as pc

from ..catalog import Catalog, now, quote_ident, require_writable
from ..errors import IntegrityError, OperationalError, ProgrammingError
from ..options import check_matched, property_stats
from .files import absolute_pattern, check_file, list_files, _stats
from .normalize import _NAME_RE, _engine_options, normalize_options
from .property_types import _check_against_catalog, _columns_of_others
from .scan import _index_files, counting_record
from .write import _committing, _write

FORMAT_ALIASES = {"jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl", "jsonl.zst": "jsonl",
                  "jsonl.gz": "jsonl", "parquet": "parquet", "pq": "parquet",
                  "webdataset": "webdataset", "wds": "webdataset", "tar": "webdataset"}

__all__ = ["create_source", "refresh_source", "register_source", "drop_source", "show_sources", "show_source",
           "check_file",
           "normalize_options", "list_files"]


def _summary(name, fmt, results, files, t0, snapshot, types, skipped_cols, **extra) -> dict:
    secs = time.perf_counter() - t0
    samples = sum(r["table"].num_rows for r in results if r["table"] is not None)
    raw = sum(r["raw_bytes"] for r in results)
    nbytes = sum(int(pc.sum(r["table"].column("n_bytes")).as_py() or 0) for r in results
                 if r["table"] is not None and r["table"].num_rows)
    skipped = {r["path"]: r["skipped_lines"] for r in results if r["skipped"]}
    out = {
        "source": name, "format": fmt, "files": len(files), "samples": samples, "bytes": nbytes,
        "raw_bytes": raw, "skipped": sum(r["skipped"] for r in results), "skipped_lines": skipped,
        "properties": types, "skipped_columns": skipped_cols, "snapshot": snapshot,
        "seconds": round(secs, 4), "mb_per_s": round(raw / secs / 1e6, 2) if secs > 0 else None,
        "samples_per_s": round(samples / secs, 1) if secs > 0 else None,
    }
    out.update(extra)
    return out


def _taken_error(src: dict) -> IntegrityError:
    return IntegrityError(f"source {src['name']!r} already exists (from {src['pattern']!r}); run REFRESH SOURCE "
                          f"{src['name']} to index new or changed files, CREATE OR REPLACE SOURCE to replace it, "
                          f"or DROP SOURCE {src['name']} first")


def _engine_summary(opts: dict, results: list[dict]) -> dict:
    """Where the scans ran: ``engine``, and for Ray the number of nodes that ran them."""
    if opts.get("engine") != "ray":
        return {"engine": "local"}
    return {"engine": "ray", "ray_nodes": len({r["node"] for r in results})}


def create_source(catalog: Catalog, name: str, pattern: str, format: str | None = None,
                  options: dict | None = None, progress: bool = True, replace: bool = False,
                  if_not_exists: bool = False) -> dict:
    """Register every file matched by ``pattern`` as source ``name``; returns a summary dict
    (source, format, files, samples, bytes, raw_bytes, skipped, skipped_lines, properties,
    property_stats, skipped_columns, snapshot, seconds, mb_per_s, samples_per_s).

    An existing ``name`` is an IntegrityError unless ``replace`` (CREATE OR REPLACE SOURCE: the
    old source goes in the same commit) or ``if_not_exists`` (nothing changes; the summary says
    ``exists``). Files are scanned before the writer lock is taken, so registrations of
    different sources scan in parallel and commit one after the other."""
    t0 = time.perf_counter()
    require_writable(catalog)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ProgrammingError(f"source name {name!r} must be a plain identifier (letters, digits, _)")
    catalog.sync()
    taken = catalog.source(name)
    if taken and if_not_exists:
        return {"source": taken["name"], "exists": True, "pattern": taken["pattern"], "snapshot": catalog.snapshot}
    if taken and not replace:
        raise _taken_error(taken)
    fmt = None
    format = format or (options or {}).get("format")
    if format:
        fmt = FORMAT_ALIASES.get(str(format).lower())
        if fmt is None:
            raise ProgrammingError(f"unknown format {format!r}; use jsonl, parquet or webdataset")
    fmt, files = list_files(pattern, fmt)
    opts = normalize_options(catalog.con, fmt, options)
    counted_by = counting_record(opts)
    explicit = opts["properties"] is not None
    results, stats, types, skipped_cols = _index_files(catalog, fmt, files, opts, progress, f"registering {name}")
    with _committing(catalog, f"CREATE SOURCE {name}") as w:
        now_taken = catalog.source(name)
        if now_taken and not replace:
            if if_not_exists:
                return {"source": now_taken["name"], "exists": True, "pattern": now_taken["pattern"],
                        "snapshot": catalog.snapshot}
            raise _taken_error(now_taken)
        _check_against_catalog(_columns_of_others(catalog, now_taken and now_taken["source_id"]), types)
        opts["types"] = types
        prop_stats = property_stats(results, types)
        if explicit:
            check_matched(fmt, files, opts["text"], opts["properties"], opts["optional"], prop_stats)
        source_id = w.next_source_id()
        seg = w.segment(list(types.items()))
        _write(seg.con, source_id, files, results, stats, types, opts["required"], w.reserve_file_ids(len(files)))
        if now_taken:
            w.remove_source(now_taken["source_id"])
        w.put_source({"source_id": source_id, "name": name, "format": fmt, "pattern": absolute_pattern(pattern),
                      "options": json.dumps(opts), "property_types": [[n, t] for n, t in types.items()],
                      "tokenizer": counted_by}, seg)
    return _summary(name, fmt, results, files, t0, w.snapshot, types, skipped_cols, property_stats=prop_stats,
                    tokenizer=counted_by and counted_by["name"],
                    new_files=len(files), changed_files=0, removed_files=0, unchanged_files=0,
                    replaced=bool(now_taken), **_engine_summary(opts, results))


def _source(catalog: Catalog, name: str) -> dict:
    src = catalog.source(name)
    if src is None:
        known = catalog.source_names()
        raise ProgrammingError(f"no source named {name!r}" + (f" (sources: {', '.join(known)})" if known else
                                                               " (the catalog has no sources)"))
    return src


def refresh_source(catalog: Catalog, name: str, progress: bool = True, engine: str | None = None,
                   ray_address: str | None = None) -> dict:
    """Re-index new or changed files of source ``name`` and drop vanished ones.

    The source's glob was stored absolute, so this never depends on the current directory.
    Unchanged files keep their file_id and rows (copied into the source's new segment). The
    summary adds new_files, changed_files, removed_files, unchanged_files, samples_before,
    samples_after and ``changes`` (paths added / changed / removed). ``engine`` / ``ray_address``
    override the registered ones for this run (not stored)."""
    t0 = time.perf_counter()
    require_writable(catalog)
    catalog.sync()
    src = _source(catalog, name)
    source_id, sname, fmt, pattern = src["source_id"], src["name"], src["format"], src["pattern"]
    opts = json.loads(src["options"])
    if engine is not None or ray_address is not None:
        opts = {k: v for k, v in opts.items() if k not in ("engine", "ray_address")}
        opts.update(_engine_options({"engine": engine or "ray", "ray_address": ray_address}))
    types = dict(src["property_types"])
    opts["types"] = types
    recorded = src.get("tokenizer")
    _, matched = list_files(pattern, fmt)
    known = {r[1]: r for r in catalog.con.execute(
        "SELECT file_id, path, size, mtime_ns, fingerprint FROM files WHERE source_id = ?", [source_id]).fetchall()}
    todo, gone = [], []
    changes: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
    unchanged = 0
    current = dict(zip((p for p, _ in matched if p in known), _stats([p for p, _ in matched if p in known])))
    for path, comp in matched:
        old = known.get(path)
        if old is not None:
            if (old[2], old[3], old[4]) == current[path]:
                unchanged += 1
                continue
            gone.append(old[0])
            changes["changed"].append(path)
        else:
            changes["added"].append(path)
        todo.append((path, comp))
    matched_paths = {p for p, _ in matched}
    for p, r in known.items():
        if p not in matched_paths:
            gone.append(r[0])
            changes["removed"].append(p)
    if todo and recorded and opts.get("tokenizer"):
        _check_same_counter(sname, recorded, counting_record(opts))
    results, stats, types, _ = _index_files(catalog, fmt, todo, opts, progress, f"refreshing {sname}")
    before = int(src["n_samples"])
    with _committing(catalog, f"REFRESH SOURCE {sname}") as w:
        cur = catalog.source(sname)
        if cur is None or cur["segment"] != src["segment"]:
            raise OperationalError(f"source {sname!r} was changed by another process while refreshing; "
                                   "run REFRESH SOURCE again")
        if todo or gone:
            _check_against_catalog(_columns_of_others(catalog, source_id), types)
            seg = w.segment(list(types.items()))
            seg.copy_from(catalog.path / cur["segment"], gone)
            _write(seg.con, source_id, todo, results, stats, types, opts["required"], w.reserve_file_ids(len(todo)))
            entry = {k: v for k, v in cur.items() if k not in ("n_files", "n_samples", "n_bytes", "n_tokens")}
            w.put_source({**entry, "refreshed_at": now()}, seg)
    after = catalog.source(sname)["n_samples"]
    return _summary(sname, fmt, results, todo, t0, w.snapshot, types, [], new_files=len(changes["added"]),
                    changed_files=len(changes["changed"]), removed_files=len(changes["removed"]),
                    unchanged_files=unchanged, samples_before=before, samples_after=after, changes=changes,
                    **_engine_summary(opts, results))


def _check_same_counter(name: str, recorded: dict, now_: dict) -> None:
    """REFRESH counts new files with the tokenizer that counted the rest, or not at all."""
    if recorded["fingerprint"] != now_["fingerprint"]:
        raise ProgrammingError(
            f"source {name!r}: its n_tokens were counted with {recorded['name']} ({recorded['fingerprint']}), "
            f"but the tokenizer file now holds {now_['name']} ({now_['fingerprint']}); refreshing would mix "
            f"counts of two vocabularies. Recount everything with CREATE OR REPLACE SOURCE {name} ..., or "
            "restore the tokenizer file")


def register_source(catalog: Catalog, name: str, pattern: str, format: str | None = None,
                    options: dict | None = None, progress: bool = True, replace: bool = False) -> dict:
    """``mixsql register``: create the source, or refresh it when it already exists with the same
    pattern (a different pattern is an IntegrityError suggesting ``--replace``). ``replace``
    registers it anew (CREATE OR REPLACE SOURCE). The summary's ``action`` says which happened;
    ``engine`` and ``ray_address`` in ``options`` apply to a refresh too."""
    require_writable(catalog)
    catalog.sync()
    row = catalog.source(name)
    if row is None or replace:
        out = create_source(catalog, name, pattern, format=format, options=options, progress=progress,
                            replace=replace)
        return {**out, "action": "replaced" if row is not None else "registered"}
    if absolute_pattern(pattern) != absolute_pattern(row["pattern"]):
        raise IntegrityError(f"source {row['name']!r} is registered from {row['pattern']!r}, not "
                             f"{absolute_pattern(pattern)!r}; replace it with mixsql register --replace "
                             "(CREATE OR REPLACE SOURCE), or register the new files under another name")
    opts = options or {}
    return {**refresh_source(catalog, name, progress=progress, engine=opts.get("engine"),
                             ray_address=opts.get("ray_address")), "action": "refreshed"}


def drop_source(catalog: Catalog, name: str) -> None:
    """Remove source ``name``, its files and samples; property columns no other source uses go too."""
    require_writable(catalog)
    catalog.sync()
    _source(catalog, name)
    with _committing(catalog, f"DROP SOURCE {name}") as w:
        w.remove_source(_source(catalog, name)["source_id"])


def show_sources(catalog: Catalog) -> pa.Table:
    """One row per source: name, format, pattern, n_files, n_samples, n_bytes, n_tokens, tokenizer
    (what counted n_tokens; NULL: unknown), properties (JSON name -> type), options (JSON),
    registered_at, refreshed_at."""
    return catalog.con.sql(
        "SELECT name, format, pattern, n_files, n_samples, n_bytes, n_tokens, tokenizer, properties, options, "
        "registered_at, refreshed_at FROM sources ORDER BY name").to_arrow_table()


def show_source(catalog: Catalog, name: str) -> pa.Table:
    """``SHOW SOURCE name``: one row per property of the source: property, type, path, optional,
    non_null (samples with a value) and non_null_fraction (of the source's samples)."""
    src = _source(catalog, name)
    opts, types = json.loads(src["options"]), dict(src["property_types"])
    paths, optional = opts.get("properties") or {}, set(opts.get("optional") or [])
    counts = "".join(f", count({quote_ident(p)})" for p in types)
    row = catalog.con.execute(f"SELECT count(*){counts} FROM samples WHERE source = ?", [src["name"]]).fetchall()[0]
    total = row[0]
    return pa.table({
        "property": pa.array(list(types), pa.string()),
        "type": pa.array(list(types.values()), pa.string()),
        "path": pa.array([paths.get(p, p) for p in types], pa.string()),
        "optional": pa.array([p in optional for p in types], pa.bool_()),
        "non_null": pa.array(row[1:], pa.int64()),
        "non_null_fraction": pa.array([round(c / total, 4) if total else None for c in row[1:]], pa.float64()),
    })
