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
"""
from __future__ import annotations

import glob as globmod
import json
import multiprocessing as mp
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import formats, storage
from .catalog import RESERVED_NAMES, Catalog, now, quote_ident, require_writable
from .errors import (IntegrityError, OperationalError, ProgrammingError, RegistrationError,
                     StaleFileError)
from .options import check_matched, property_stats, split_options, strip_optional
from .presets import get_preset
from .progress import ScanProgress

FORMAT_ALIASES = {"jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl", "jsonl.zst": "jsonl",
                  "jsonl.gz": "jsonl", "parquet": "parquet", "pq": "parquet",
                  "webdataset": "webdataset", "wds": "webdataset", "tar": "webdataset"}
PARALLEL_MIN_BYTES = 8 << 20   # below this total size, scan in-process (no pool start-up)
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INT_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"}

__all__ = ["create_source", "refresh_source", "register_source", "drop_source", "show_sources", "show_source",
           "check_file",
           "normalize_options", "list_files"]


# ----------------------------------------------------------------------------- options

def _split_top(s: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([<":
            depth += 1
        elif ch in ")]>":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [x.strip() for x in out if x.strip()]


def _canonical_type(con: duckdb.DuckDBPyConnection, typ: str, prop: str) -> str:
    try:
        return str(con.sql(f"SELECT NULL::{typ} AS x").types[0])
    except duckdb.Error:
        raise ProgrammingError(
            f"property {prop!r}: unknown type {typ!r}; use a DuckDB type such as VARCHAR, BIGINT, "
            "DOUBLE, BOOLEAN or VARCHAR[]") from None


def _as_list(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    return [str(x) for x in v]


def _check_prop_name(name: str, path: str | None = None) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ProgrammingError(f"property name {name!r} is not a plain identifier (letters, digits, _)")
    if name.lower() == "source":
        raise ProgrammingError(
            "property name 'source' is reserved: in samples it is the registered source's name; to keep "
            f"the data's field, map it under another name, e.g. origin = '{path or 'source'}'")
    if name.lower() in RESERVED_NAMES:
        raise ProgrammingError(
            f"property name {name!r} is reserved (reserved: {', '.join(sorted(RESERVED_NAMES))}); "
            f"map the field under another name, e.g. {name}_ = '...' or subset = '...'")


def normalize_options(con: duckdb.DuckDBPyConnection, fmt: str, options: dict | None) -> dict:
    """Validate ``options`` and return the JSON-able form stored in ``sources.options``.

    Result keys: text, tokens, tokenizer, n_tokens, on_error, required, preset, properties
    (name -> path; None = auto-discover), types (name -> canonical DuckDB type).
    """
    options, flat = split_options(dict(options or {}))
    preset_name = options.get("preset")
    base = get_preset(preset_name) if preset_name else {}
    props: dict[str, str] = dict(base.get("properties", {}))
    types: dict[str, str] = dict(base.get("types", {}))
    user_props = dict(options.get("properties") or {})
    user_props.update(flat)
    optional: list[str] = []
    for name, path in user_props.items():
        if not isinstance(path, str) or not path.strip():
            raise ProgrammingError(f"property {name!r}: the mapping must be a non-empty path string, got {path!r}")
        path = path.strip()
        if "::" in path:
            path, typ = (x.strip() for x in path.split("::", 1))
            types[name] = typ
        path, is_optional = strip_optional(path)
        if is_optional:
            optional.append(name)
        _check_prop_name(name, path)
        props[name] = path
    utypes = options.get("types") or {}
    if isinstance(utypes, str):
        parsed = {}
        for item in _split_top(utypes):
            bits = item.split(None, 1)
            if len(bits) != 2:
                raise ProgrammingError(f"types: expected 'name TYPE', got {item!r}")
            parsed[bits[0]] = bits[1]
        utypes = parsed
    types.update(utypes)
    for name in list(props) + list(types):
        _check_prop_name(name)
    auto = not props
    for name in types:
        if name not in props and not auto:
            raise ProgrammingError(f"types: {name!r} is not a mapped property (mapped: {', '.join(props)})")
    types = {n: _canonical_type(con, t, n) for n, t in types.items()}
    on_error = str(options.get("on_error", "fail")).lower()
    if on_error not in ("fail", "skip"):
        raise ProgrammingError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    required = _as_list(options.get("required"))
    for r in required:
        if not auto and r not in props:
            raise ProgrammingError(f"required property {r!r} is not mapped (mapped: {', '.join(props)})")
    text = options.get("text", base.get("text"))
    if text is None:
        text = "txt" if fmt == "webdataset" else "text"
    tokenizer = options.get("tokenizer")
    if isinstance(tokenizer, str) and tokenizer.lower() in ("byte", "bytes"):
        tokenizer = "byte"
        if options.get("tokens"):
            raise ProgrammingError("tokenizer = 'byte' counts the text's bytes; a pre-tokenized source "
                                   "(tokens option) has its counts already: drop one of the two")
    elif tokenizer:
        tp = Path(tokenizer).expanduser().resolve()
        if not tp.is_file():
            raise ProgrammingError(f"tokenizer file {tokenizer!r} not found (expected a HF tokenizer.json)")
        tokenizer = str(tp)
    tokens = options.get("tokens")
    if tokens and fmt != "parquet":
        raise ProgrammingError("the tokens option (pre-tokenized column) is only supported for parquet")
    workers = options.get("workers")
    return {
        "text": str(text),
        "tokens": tokens or None,
        "tokenizer": tokenizer or None,
        "n_tokens": options.get("n_tokens", base.get("n_tokens")) or None,
        "on_error": on_error,
        "required": required,
        "preset": preset_name or None,
        "properties": None if auto else props,
        "optional": optional,
        "types": types,
        **({"workers": int(workers)} if workers else {}),
        **_engine_options(options),
    }


def _engine_options(options: dict) -> dict:
    """``engine`` / ``ray_address`` as stored: nothing for the local pool (the default)."""
    engine = str(options.get("engine") or "local").lower()
    address = options.get("ray_address")
    if engine not in ("local", "ray"):
        raise ProgrammingError(f"engine must be 'local' or 'ray', got {options.get('engine')!r}")
    if engine == "local":
        if address:
            raise ProgrammingError("ray_address is given but engine is not 'ray'; add engine = 'ray'")
        return {}
    from .cluster import require_ray
    require_ray()
    return {"engine": "ray", **({"ray_address": str(address)} if address else {})}


# ----------------------------------------------------------------------------- files

def absolute_pattern(pattern: str) -> str:
    """``pattern`` resolved against the current directory (what the catalog stores: REFRESH never
    depends on where it runs); object-store URIs as given."""
    return str(pattern) if storage.is_remote(pattern) else os.path.abspath(storage.local_path(str(pattern)))


def list_files(pattern: str, fmt: str | None) -> tuple[str, list[tuple[str, str]]]:
    """(format, [(absolute path or object URI, compression)]) matched by ``pattern``; errors when
    nothing matches."""
    if storage.is_remote(pattern):
        pat = str(pattern)
        paths = storage.glob(pat)
        if not any(c in pat for c in "*?[") and paths != [pat]:   # a prefix: the data files below it
            paths = [p for p in paths if _detected(p) is not None and (fmt is None or _detected(p) == fmt)]
        return _typed_files(pattern, pat, paths, fmt)
    pat = absolute_pattern(pattern)
    if os.path.isdir(pat):
        cands = [p for p in globmod.glob(os.path.join(pat, "**", "*"), recursive=True) if os.path.isfile(p)]
        paths = [p for p in cands if _detected(p) is not None and (fmt is None or _detected(p) == fmt)]
    else:
        paths = [p for p in globmod.glob(pat, recursive=True) if os.path.isfile(p)]
    paths = sorted({os.path.abspath(p) for p in paths})
    return _typed_files(pattern, pat, paths, fmt)


def _detected(path: str) -> str | None:
    try:
        return formats.detect(path)[0]
    except ValueError:
        return None


def _typed_files(pattern: str, pat: str, paths: list[str], fmt: str | None) -> tuple[str, list[tuple[str, str]]]:
    if not paths:
        raise RegistrationError(f"pattern {pattern!r} matches no files",
                                hint=f"(resolved to {pat}) check the path; use ** for recursive globs")
    out = []
    seen = set()
    for p in paths:
        if fmt is None:
            try:
                f, comp = formats.detect(p)
            except ValueError:
                raise RegistrationError("cannot tell the file format from the extension", path=p,
                                        hint="give FORMAT jsonl|parquet|webdataset or narrow the glob") from None
            seen.add(f)
        else:
            comp = formats.compression_of(p) if fmt == "jsonl" else "none"
        out.append((p, comp))
    if len(seen) > 1:
        raise RegistrationError(f"pattern {pattern!r} matches files of several formats ({', '.join(sorted(seen))})",
                                hint="register each format as its own source, or give FORMAT")
    return (fmt or seen.pop()), out


def _stat(path: str) -> tuple[int, int, str]:
    """(size, mtime_ns, fingerprint): an object's fingerprint is its ETag, a local file's a hash of
    its head and tail."""
    st = storage.stat(path)
    if st.etag is not None:
        return st.size, st.mtime_ns, "etag:" + st.etag
    return st.size, st.mtime_ns, formats.fingerprint(path, st.size)


def _stats(paths: list[str]) -> list[tuple[int, int, str]]:
    """:func:`_stat` of every path, in order; objects (one request each) and many files in parallel."""
    if len(paths) < 8 and not any(storage.is_remote(p) for p in paths):
        return [_stat(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(32, len(paths)), thread_name_prefix="mixsql-stat") as ex:
        return list(ex.map(_stat, paths))


def check_file(path: str, size: int, mtime_ns: int, fingerprint: str | None = None) -> None:
    """Raise StaleFileError when ``path`` (a file or an object) no longer matches what was registered."""
    try:
        st = storage.stat(path)
    except (FileNotFoundError, storage.StorageError) as exc:
        if isinstance(exc, storage.StorageError) and "no such object" not in str(exc):
            raise
        raise StaleFileError(path, "the file no longer exists") from None
    if st.size != size:
        raise StaleFileError(path, f"size {st.size} != registered {size}")
    if st.mtime_ns != mtime_ns:
        raise StaleFileError(path, f"mtime_ns {st.mtime_ns} != registered {mtime_ns}")
    if fingerprint is None or fingerprint == "test":
        return
    now = "etag:" + st.etag if st.etag is not None else formats.fingerprint(path, size)
    if now != fingerprint:
        raise StaleFileError(path, "content fingerprint differs" if st.etag is None else
                             f"ETag {st.etag} differs from the registered {fingerprint[5:]}")


# ----------------------------------------------------------------------------- scanning

def _mp_context():
    method = os.environ.get("MIXSQL_MP_CONTEXT")
    if not method:
        method = "fork" if sys.platform.startswith("linux") else "spawn"
    return mp.get_context(method)


def _one_tokenizer_thread() -> None:
    """In a scan worker process: one core per process (the pool has one process per core)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _executor(fmt: str, n: int, tokenize: bool = False):
    """Threads for JSONL and Parquet (zstd, DuckDB, numpy and Arrow release the GIL; no worker
    start-up, no pickling of results); processes for WebDataset (Python tar parsing) and when
    counting tokens with a tokenizer (HF ``tokenizers`` serialises the threads of one process,
    and runs on one core under ``TOKENIZERS_PARALLELISM=false``); those start from a fork
    server on Linux, never forked from a process with live DuckDB threads.
    ``MIXSQL_SCAN_POOL=process|thread`` overrides."""
    kind = os.environ.get("MIXSQL_SCAN_POOL") or ("process" if fmt == "webdataset" or tokenize else "thread")
    if kind == "process":
        ctx = _mp_context()
        if tokenize and ctx.get_start_method() == "fork" and "forkserver" in mp.get_all_start_methods():
            ctx = mp.get_context("forkserver")
        init = _one_tokenizer_thread if tokenize else None
        return ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=init)
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="mixsql-scan")


def _scan_all(tasks: list[formats.ScanTask], sizes: list[int], opts: dict, progress: bool,
              label: str) -> list[dict]:
    """Scan every task on the source's engine; results in task order. Raises on the first failed file."""
    bar = ScanProgress(progress, [t.path for t in tasks], label, sizes=sizes)
    results: list[dict | None] = [None] * len(tasks)
    if opts.get("engine") == "ray":
        from . import cluster
        scans = cluster.scan(tasks, sizes, opts.get("ray_address"))
    else:
        scans = _local_scans(tasks, sizes, opts.get("workers"))
    try:
        with closing(scans):
            for i, res in scans:
                if res["error"]:
                    _raise_scan_error(res)
                results[i] = res
                bar.update(res)
    finally:
        bar.close()
    return results  # type: ignore[return-value]


def _local_scans(tasks: list[formats.ScanTask], sizes: list[int], workers: int | None) -> Iterator[tuple[int, dict]]:
    """(index, result) of each task as it finishes: in this process, or a thread / process pool
    when the files (``sizes`` bytes) are worth it."""
    n = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    tokenize = any(t.tokenizer for t in tasks)   # ~100x the work per byte: worth a pool sooner
    if n == 1 or sum(sizes) < (PARALLEL_MIN_BYTES // 32 if tokenize else PARALLEL_MIN_BYTES):
        for i, t in enumerate(tasks):
            t.use_threads = True
            yield i, formats.scan_file(t)
        return
    order = sorted(range(len(tasks)), key=lambda i: -sizes[i])
    with _executor(tasks[0].format, n, tokenize=tokenize) as ex:
        futs = {ex.submit(formats.scan_file, tasks[i]): i for i in order}
        try:
            for fut in as_completed(futs):
                yield futs[fut], fut.result()
        finally:
            for f in futs:
                f.cancel()


def _raise_scan_error(res: dict):
    e = res["error"]
    raise RegistrationError(e["message"], path=res["path"], line=e["line"], hint=e["hint"])


# ----------------------------------------------------------------------------- types

def _arrow_type_of(con, duck_type: str) -> pa.DataType:
    return con.sql(f"SELECT NULL::{duck_type} AS x").to_arrow_table().schema.field(0).type


def _duck_type_of(arrow_type: pa.DataType) -> str:
    if pa.types.is_null(arrow_type):
        return "VARCHAR"
    return str(duckdb.from_arrow(pa.table({"x": pa.array([], arrow_type)})).types[0])


def _plain(col):
    if isinstance(col, pa.ChunkedArray) and pa.types.is_dictionary(col.type):
        return pc.cast(col, col.type.value_type)
    return col


def _compatible(existing: str, new: str) -> bool:
    if existing == new:
        return True
    if new in _INT_TYPES and existing in _INT_TYPES | {"DOUBLE", "HUGEINT"}:
        return True
    return new == "FLOAT" and existing == "DOUBLE"


def _resolve_types(con, results: list[dict], paths: list[str], declared: dict[str, str],
                   prop_names: list[str]) -> dict[str, str]:
    """Property -> DuckDB type: declared, or unified from the per-file Arrow types."""
    out = {}
    for name in prop_names:
        if name in declared:
            out[name] = declared[name]
            continue
        seen: list[tuple[pa.DataType, str]] = []
        for res, path in zip(results, paths):
            t = res["table"]
            if t is None or name not in t.column_names:
                continue
            typ = t.schema.field(name).type
            if pa.types.is_dictionary(typ):
                typ = typ.value_type
            if not pa.types.is_null(typ) and all(typ != s for s, _ in seen):
                seen.append((typ, path))
        if not seen:
            out[name] = None  # only NULLs: adopt the catalog's column type, else VARCHAR
            continue
        try:
            unified = pa.unify_schemas([pa.schema([pa.field(name, s)]) for s, _ in seen],
                                       promote_options="permissive").field(name).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            (t1, p1), (t2, p2) = seen[0], seen[1]
            raise RegistrationError(
                f"property {name!r} is {t1} in {p1} but {t2} in another file", path=p2,
                hint=f"declare its type, e.g. types = {{'{name}': 'VARCHAR'}}") from None
        out[name] = _duck_type_of(unified)
    return out


def _check_against_catalog(existing_columns, types: dict[str, str]) -> None:
    """Adopt existing column types (fill NULL-only properties); raise on a type conflict."""
    existing = {n.lower(): (n, t) for n, t in existing_columns}
    for name, typ in types.items():
        if typ is None:
            typ = types[name] = existing[name.lower()][1] if name.lower() in existing else "VARCHAR"
        if name.lower() in existing:
            ename, etyp = existing[name.lower()]
            if not _compatible(etyp, typ):
                raise RegistrationError(
                    f"property {name!r} would be {typ} but the catalog already has column {ename!r} of type {etyp}",
                    hint=f"declare types = {{'{name}': '{etyp}'}} or map the field under another name")
            types[name] = etyp


def _columns_of_others(catalog: Catalog, source_id: int | None) -> list[tuple[str, str]]:
    """Property columns of every source but ``source_id`` (what a new or replaced source must match)."""
    out: dict[str, tuple[str, str]] = {}
    for s in catalog.manifest.get("sources", []):
        if s["source_id"] != source_id:
            for n, t in s["property_types"]:
                out.setdefault(n.lower(), (n, t))
    return list(out.values())


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


# ----------------------------------------------------------------------------- core

def counting_record(opts: dict) -> dict | None:
    """``{"name", "fingerprint"}`` of the tokenizer that counts ``n_tokens`` (None: no tokenizer)."""
    from .tokenize import ByteTokenizer, hf_record, _hf_name

    tok = opts.get("tokenizer")
    if tok is None:
        return None
    if tok == "byte":
        return ByteTokenizer().record()
    from tokenizers import Tokenizer

    try:
        hf = Tokenizer.from_file(tok)
    except Exception as exc:  # noqa: BLE001 - a file tokenizers cannot read: say which, and why
        raise ProgrammingError(f"tokenizer file {tok!r} is not a readable HF tokenizer.json ({exc})") from None
    return hf_record(hf, _hf_name(hf, tok))


def _byte_counts(results: list[dict]) -> None:
    """``tokenizer = 'byte'``: every sample's n_tokens is its UTF-8 byte count."""
    for r in results:
        t = r["table"]
        if t is not None:
            r["table"] = t.set_column(t.column_names.index("n_tokens"), "n_tokens",
                                      pc.cast(t.column("n_bytes"), pa.int64()))


def _tasks(fmt: str, files: list[tuple[str, str]], opts: dict) -> list[formats.ScanTask]:
    counter = None if opts["tokenizer"] == "byte" else opts["tokenizer"]   # bytes: from n_bytes
    return [formats.ScanTask(path=p, format=fmt, compression=c, text=opts["text"],
                             properties=dict(opts["properties"] or {}), auto=opts["properties"] is None,
                             tokens=opts["tokens"], n_tokens=opts["n_tokens"], tokenizer=counter,
                             on_error=opts["on_error"], required=list(opts["required"]),
                             types=dict(opts["types"])) for p, c in files]


def _index_files(catalog: Catalog, fmt: str, files: list[tuple[str, str]], opts: dict,
                 progress: bool, label: str):
    """Scan ``files``; return (results, stats, types, skipped_columns) without touching the DB."""
    stats = _stats([p for p, _ in files])
    results = _scan_all(_tasks(fmt, files, opts), [st[0] for st in stats], opts, progress, label) if files else []
    if opts["tokenizer"] == "byte":
        _byte_counts(results)
    skipped_cols: list[str] = []
    if opts["properties"] is None:  # auto-discovery: names from the data, in first-seen order
        names: dict[str, None] = {}
        for r in results:
            if r["table"] is not None:
                for c in r["table"].column_names[5:]:
                    names.setdefault(c)
        keep = []
        for c in names:
            if c.lower() in RESERVED_NAMES or not _NAME_RE.match(c):
                skipped_cols.append(c)
            else:
                keep.append(c)
        opts["properties"] = {c: c for c in keep}
        for r in results:
            if r["table"] is not None and skipped_cols:
                t = r["table"]
                r["table"] = t.drop_columns([c for c in skipped_cols if c in t.column_names])
        for c in opts["required"]:
            if c not in opts["properties"]:
                raise RegistrationError(f"required property {c!r} is not present in the data")
    names = list(opts["properties"])
    types = _resolve_types(catalog.con, results, [p for p, _ in files], opts["types"], names)
    return results, stats, types, skipped_cols


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
