"""The files of a source: a pattern resolved to data files (with their format and compression),
their (size, mtime, fingerprint) stats, and the readers' check that a file is still what was registered.
"""
from __future__ import annotations

import glob as globmod
import os
from concurrent.futures import ThreadPoolExecutor

from .. import formats, storage
from ..errors import RegistrationError, StaleFileError


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
