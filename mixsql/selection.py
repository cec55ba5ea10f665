"""One planned selection per node: built once, memory-mapped by every process.

``cached(catalog_path, snapshot, sql, params, build)`` returns ``(pointers, spec, files, built)``
for a MIX statement. The selection lives in ``$MIXSQL_CACHE_DIR/selections/<key>`` (default
``~/.cache/mixsql``), ``key = sha256(catalog path, catalog snapshot, statement, parameters)``:

A statement without ORDER BY is stored *packed* (:mod:`mixsql.packed`: each group's sorted
catalog row numbers, block-coded, about a byte a sample, plus token counts when it is composed
in tokens, over the node's row index of the catalog snapshot, :mod:`mixsql.rowindex`);
``meta.json`` then says ``"kind": "packed"``. An ORDER BY statement is stored as a table:

* ``pointers.arrow``: the selection in the engine's base order (by group, then ORDER BY rank or
  (file, row)), one uncompressed Arrow IPC record batch, so opening it is a memory map: every
  process on the node shares the same page-cache pages and no process copies the selection.
  ORDER BY selections carry their stored order as the row order itself. Compact form
  (:func:`compact`): only what a chunk or the shuffle reads per sample (file code, file id, row,
  offset, length, bytes, tokens; narrow integer types where the values fit, 36 bytes a sample at
  most); what is
  per group or per file (group sizes, each file's id and source) is in the schema metadata, so
  opening a selection touches O(groups + files) bytes, never a column, and a chunk touches only
  its own rows' pages.
* ``files.arrow``: the files the selection points into; ``meta.json``: spec and provenance.

Concurrency: the first opener takes an exclusive ``flock`` on ``<key>.lock``, builds into
``<key>.tmp-<pid>`` and publishes it with one atomic ``rename``; the others block on the lock and
then map the published directory. A builder killed mid-way leaves only a ``.tmp-`` directory,
which is never read and is removed by the next builder. A published directory is immutable.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from .spec import MixSpec

SELECTION_VERSION = 4   # 4: packed selections (mixsql.packed); 3: NATURAL token weights count EOS
SORTED_KEY = b"mixsql.base_order"
COMPACT_KEY = b"mixsql.compact"     # JSON: group_sizes, file_ids and file_source per file code, sources
COMPACT_DERIVED = ("__mix_group", "__mix_source")   # recovered from COMPACT_KEY


def cache_root() -> Path:
    return Path(os.environ.get("MIXSQL_CACHE_DIR") or Path.home() / ".cache" / "mixsql") / "selections"


def selection_key(catalog_path: str, snapshot: int, sql: str, params) -> str:
    text = json.dumps([SELECTION_VERSION, os.path.abspath(catalog_path), int(snapshot), sql, repr(params)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _read_arrow(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def _write_arrow(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table, max_chunksize=max(1, table.num_rows))


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _narrow(arr: pa.Array) -> pa.Array:
    """``arr`` as uint32 when its values fit (no nulls), else unchanged."""
    if arr.null_count or not len(arr):
        return arr
    x = arr.to_numpy(zero_copy_only=False)
    return pa.array(x.astype(np.uint32), pa.uint32()) if 0 <= x.min() and x.max() < 2**32 else arr


def compact(pointers: pa.Table, n_groups: int) -> pa.Table:
    """The stored form of a selection in base order (see the module docstring)."""
    gid = _column(pointers, "__mix_group").to_numpy(zero_copy_only=False)
    if len(gid) and (np.diff(gid) < 0).any():
        raise ValueError("a selection is stored in base order: rows sorted by group")
    fcol, scol = _column(pointers, "__mix_file"), _column(pointers, "__mix_source")
    if not pa.types.is_dictionary(fcol.type):
        fcol = fcol.dictionary_encode()
    if not pa.types.is_dictionary(scol.type):
        scol = scol.dictionary_encode()
    codes = fcol.indices.to_numpy(zero_copy_only=False)
    file_ids = np.zeros(len(fcol.dictionary), np.int64)
    file_source = np.zeros(len(fcol.dictionary), np.int64)
    file_ids[codes] = _column(pointers, "__mix_file_id").to_numpy(zero_copy_only=False)
    file_source[codes] = scol.indices.to_numpy(zero_copy_only=False)
    meta = {"group_sizes": np.bincount(gid, minlength=n_groups).tolist(), "file_ids": file_ids.tolist(),
            "file_source": file_source.tolist(), "sources": scol.dictionary.cast(pa.string()).to_pylist()}
    cols = {"__mix_file": pa.DictionaryArray.from_arrays(fcol.indices.cast(pa.int32()), fcol.dictionary),
            "__mix_file_id": _column(pointers, "__mix_file_id").cast(pa.int32()),   # the shuffle's shards
            "__mix_row": _narrow(_column(pointers, "__mix_row")),
            "__mix_offset": _column(pointers, "__mix_offset"),
            "__mix_length": _column(pointers, "__mix_length"),
            "__mix_n_bytes": _narrow(_column(pointers, "__mix_n_bytes")),
            "__mix_n_tokens": _column(pointers, "__mix_n_tokens")}
    cols.update({c: _column(pointers, c) for c in pointers.column_names if not c.startswith("__mix_")})
    return pa.table(cols).replace_schema_metadata({SORTED_KEY: b"1", COMPACT_KEY: json.dumps(meta).encode()})


def _load(d: Path):
    meta = json.loads((d / "meta.json").read_text())
    if meta.get("kind") == "packed":
        from .packed import PackedSelection
        sel = PackedSelection.open(d)
        return sel, sel.spec, sel.used_files()
    return _read_arrow(d / "pointers.arrow"), MixSpec.from_json(meta["spec"]), _read_arrow(d / "files.arrow")


def publish_once(root: Path, key: str, build: Callable[[Path], Any]) -> tuple[Path, Any, bool]:
    """The published directory ``root/key``, built once per node: ``(directory, build's result
    or None, built)``. The first caller takes ``flock(<key>.lock)``, runs ``build(tmp)`` into
    ``<key>.tmp-<pid>`` and publishes it with one atomic ``rename``; concurrent callers wait on
    the lock and then use the published directory. A build that raises removes its directory; a
    builder that is killed leaves only a ``.tmp-`` directory, never read and removed by the next
    builder."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    if final.is_dir():
        return final, None, False
    with open(root / f"{key}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if final.is_dir():   # another process published it while we waited
                return final, None, False
            for stale in root.glob(f"{key}.tmp-*"):   # left by a builder that died
                shutil.rmtree(stale, ignore_errors=True)
            tmp = root / f"{key}.tmp-{os.getpid()}"
            tmp.mkdir()
            try:
                result = build(tmp)
            except BaseException:   # a failed build (a data error, Ctrl-C) leaves nothing behind
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            delay = float(os.environ.get("MIXSQL_SELECTION_PUBLISH_DELAY", "0") or 0)
            if delay:   # lets tests kill a builder between writing and publishing
                time.sleep(delay)
            for p in tmp.iterdir():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            os.rename(tmp, final)
            return final, result, True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached(catalog_path: str, snapshot: int, sql: str, params, build):
    """The node's selection for ``sql``: mapped when published, else built once under the lock.

    ``build(directory)`` either writes a packed selection into ``directory`` itself
    (:mod:`mixsql.packed`) and returns ``None``, or returns ``(pointers in base order, spec,
    files)`` to be stored here in the table form. Returns ``(pointers, spec, files, built)``
    where ``built`` tells whether this call planned the statement; ``pointers`` is a
    :class:`~mixsql.packed.PackedSelection` for a packed selection."""
    key = selection_key(catalog_path, snapshot, sql, params)

    def write(tmp: Path):
        out = build(tmp)
        if out is None:
            return
        pointers, spec, files = out
        _write_arrow(tmp / "pointers.arrow", compact(pointers, len(spec.groups)))
        _write_arrow(tmp / "files.arrow", files)
        (tmp / "meta.json").write_text(json.dumps({"version": SELECTION_VERSION, "spec": spec.to_json(),
                                                   "snapshot": int(snapshot), "statement": sql,
                                                   "rows": pointers.num_rows}))

    final, _, built = publish_once(cache_root(), key, write)
    return (*_load(final), built)
