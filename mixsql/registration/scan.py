"""Scanning a source's files into index tables, before any catalog write.

:func:`_index_files` stats and scans the files (in this process, a thread or process pool, or
one Ray task per file: :mod:`mixsql.cluster`), applies ``tokenizer = 'byte'`` counts, discovers
property names when none are mapped, and resolves the properties' types
(:mod:`.property_types`). :func:`counting_record` names the tokenizer that counts ``n_tokens``.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from contextlib import closing

import pyarrow as pa
import pyarrow.compute as pc

from .. import formats
from ..catalog import RESERVED_NAMES, Catalog
from ..errors import ProgrammingError, RegistrationError
from ..progress import ScanProgress
from .files import _stats
from .normalize import _NAME_RE
from .property_types import _resolve_types

PARALLEL_MIN_BYTES = 8 << 20   # below this total size, scan in-process (no pool start-up)


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
        from .. import cluster
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


def counting_record(opts: dict) -> dict | None:
    """``{"name", "fingerprint"}`` of the tokenizer that counts ``n_tokens`` (None: no tokenizer)."""
    from ..tokenize import ByteTokenizer, hf_record, _hf_name

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
