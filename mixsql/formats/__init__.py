"""Per-format file scanners used by registration (run in worker threads, or processes).

One module per format behind one interface: a scanner takes a :class:`~mixsql.formats.task.ScanTask`
and returns the file's index table or raises :class:`~mixsql.formats.task.ScanError`
(:mod:`.jsonl`, :mod:`.parquet`, :mod:`.webdataset`; decompression and line splitting in
:mod:`.compressed`, Arrow helpers in :mod:`.columns`); :func:`scan_file` dispatches on the format.

``scan_file(task)`` indexes one data file and returns a plain dict (picklable, never raises):

* ``table``   pa.Table with ``row, loc_offset, loc_length, n_bytes, n_tokens`` and one column per
              property (named by property), in file order;
* ``skipped`` number of malformed records skipped (``on_error='skip'``), ``skipped_lines`` the
              first few 1-based line numbers (jsonl) or sample keys (webdataset);
* ``raw_bytes`` decompressed bytes read; ``error`` ``None`` or ``{"message", "line", "hint"}``;
* ``seek``    for multi-frame zstd / multi-member gzip JSONL, the seek table: ``[(compressed
              offset, decompressed offset), ...]`` of frame starts (else ``None``).

Files are opened through :mod:`mixsql.storage`, so a path may be an object-store URI.

Location semantics are the catalog's (see mixsql.catalog). JSONL: a zstd frame whose header gives
its size is decompressed into one buffer (else large streamed blocks), cut at newlines; line
offsets come from numpy (or a ``bytes.find`` loop when lines are long). Each block then takes the
fast path when it can (explicit property mapping, no tokenizer): DuckDB's JSON reader (yyjson, GIL
released) over the block's lines, viewed zero-copy as an Arrow string column (UTF-8 checked by
Arrow first), gives ``n_bytes`` (strlen of the decoded text, i.e. its exact UTF-8 byte length with
escapes resolved) and the properties, type-checked against the types seen in the file's first MiB.
Anything unusual in a block (malformed JSON, a type change, a non-string text, a missing required
property) sends that block to the exact path: ``pyarrow.json`` (nested paths by struct field
access), then per-line ``orjson`` to pinpoint or skip a bad line. Known leniency of the fast path:
yyjson also accepts a trailing comma inside an object or array, and NaN/Infinity literals
(pyarrow.json accepts those too), in lines past the first MiB; such lines are indexed rather than
reported.
"""
from __future__ import annotations

import hashlib
import os

import pyarrow as pa

from .. import storage
from .columns import np_array
from .jsonl import JsonlScanner
from .parquet import scan_parquet
from .task import FORMATS, ScanError, ScanTask
from .webdataset import scan_webdataset

__all__ = ["FORMATS", "ScanError", "ScanTask", "compression_of", "detect", "fingerprint", "np_array", "scan_file"]

FINGERPRINT_BYTES = 64 << 10    # head and tail bytes hashed into the fingerprint


def detect(path: str) -> tuple[str, str]:
    """(format, compression) from a file name; raises ValueError for unknown extensions."""
    low = path.lower()
    if low.endswith((".jsonl.zst", ".json.zst", ".jsonl.zstd", ".ndjson.zst")):
        return "jsonl", "zstd"
    if low.endswith((".jsonl.gz", ".json.gz", ".ndjson.gz")):
        return "jsonl", "gzip"
    if low.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl", "none"
    if low.endswith((".parquet", ".pq")):
        return "parquet", "none"
    if low.endswith(".tar"):
        return "webdataset", "none"
    raise ValueError(f"cannot tell the format of {path} from its extension")


def compression_of(path: str) -> str:
    low = path.lower()
    if low.endswith((".zst", ".zstd")):
        return "zstd"
    if low.endswith(".gz"):
        return "gzip"
    return "none"


def fingerprint(path: str, size: int | None = None) -> str:
    """Cheap content fingerprint: blake2b over size, the first and the last 64 KiB."""
    if size is None:
        size = os.path.getsize(path)
    h = hashlib.blake2b(str(size).encode(), digest_size=12)
    with storage.open_input(path, size, buffer_size=FINGERPRINT_BYTES) as fh:
        h.update(fh.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            fh.seek(max(size - FINGERPRINT_BYTES, FINGERPRINT_BYTES))
            h.update(fh.read(FINGERPRINT_BYTES))
    return h.hexdigest()



def scan_file(task: ScanTask) -> dict:
    """Index one file. Never raises: errors come back in ``result['error']``."""
    res = {"path": task.path, "table": None, "skipped": 0, "skipped_lines": [], "raw_bytes": 0,
           "error": None, "seek": None}
    try:
        if task.format == "jsonl":
            sc = JsonlScanner(task)
            res["table"] = sc.scan()
            res["skipped"], res["skipped_lines"], res["raw_bytes"] = sc.skipped, sc.skipped_lines, sc.raw_bytes
            if len(sc.seek) > 1:
                res["seek"] = sc.seek
        elif task.format == "parquet":
            res["table"], res["raw_bytes"], res["skipped"] = scan_parquet(task)
        elif task.format == "webdataset":
            res["table"] = scan_webdataset(task, res)
        else:
            raise ScanError(f"unknown format {task.format!r}; use one of {', '.join(FORMATS)}")
    except ScanError as exc:
        res["error"] = {"message": exc.message, "line": exc.line, "hint": exc.hint}
    except storage.StorageError as exc:
        res["error"] = {"message": f"cannot read object ({exc})", "line": None, "hint": None}
    except (OSError, MemoryError) as exc:
        res["error"] = {"message": f"cannot read file ({exc})", "line": None, "hint": None}
    except (pa.ArrowException, ValueError, TypeError) as exc:  # unexpected data shape
        res["error"] = {"message": f"cannot index file ({type(exc).__name__}: {exc})", "line": None,
                        "hint": None}
    return res
