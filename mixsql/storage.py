"""Where data files live: local paths and object-store URIs behind one small interface.

A location is a local path or a URI: ``s3://bucket/key``, ``gs://``/``gcs://``, ``az://``/``abfs://``
or ``https://`` (read-only; no listing). Object stores are reached through fsspec (s3fs, gcsfs,
adlfs: ``pip install 'mixsql[s3]'`` / ``[gcs]`` / ``[azure]``), configured the ecosystem's standard
way: environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_NAME`` ...), profiles and instance
roles. No secret is ever stored in the catalog: it stores the URI. A missing client package is
an error naming the extra to install; a client that rejects its settings, one naming the URI and
the settings its client reads (:data:`CLIENT_SETTINGS`). ``gs://`` / ``az://`` are tested only
against an in-memory stand-in with gcsfs' / adlfs' metadata shapes, not against a server.

* :func:`glob` lists the objects a pattern matches (``**`` recursive).
* :func:`stat` gives an :class:`ObjectStat` (size, mtime_ns, ETag): REFRESH and read-time change
  detection compare all three.
* :func:`read_range` reads ``[start, end)``; :func:`open_input` gives a seekable, buffered file
  whose reads are ranged requests (Parquet footers, tar members, streamed decompression).

Every remote call is retried with exponential backoff and jitter on throttling and transient
errors (HTTP 429/5xx, SlowDown, timeouts, dropped connections): ``MIXSQL_IO_RETRIES`` attempts
(default 8), first delay ``MIXSQL_IO_BACKOFF`` seconds (default 0.2, capped at 10 s). A
permanent error, or a transient one that outlasts the retries, raises :class:`StorageError`
naming the object.
"""
from __future__ import annotations

import io
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .errors import OperationalError

# scheme -> (fsspec protocol, package that provides it, extra to install)
SCHEMES = {
    "s3": ("s3", "s3fs", "s3"),
    "s3a": ("s3", "s3fs", "s3"),
    "gs": ("gcs", "gcsfs", "gcs"),
    "gcs": ("gcs", "gcsfs", "gcs"),
    "az": ("abfs", "adlfs", "azure"),
    "abfs": ("abfs", "adlfs", "azure"),
    "abfss": ("abfs", "adlfs", "azure"),
    "http": ("http", "aiohttp", "http"),
    "https": ("http", "aiohttp", "http"),
}
# fsspec protocol -> the settings its client reads (named in errors about an unusable client)
CLIENT_SETTINGS = {
    "s3": "AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (AWS_ENDPOINT_URL for S3-compatible stores)",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS (or `gcloud auth application-default login`)",
    "abfs": "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN or "
            "AZURE_STORAGE_CLIENT_ID/CLIENT_SECRET/TENANT_ID; or AZURE_STORAGE_CONNECTION_STRING",
    "http": "nothing (public URLs)",
}
_URI_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_TRANSIENT_RE = re.compile(
    r"SlowDown|Throttl|TooManyRequests|RequestLimitExceeded|ServiceUnavailable|InternalError|"
    r"RequestTimeout|timed? ?out|Timeout|Connection (reset|aborted|refused)|ConnectionError|"
    r"EndpointConnectionError|IncompleteRead|Broken pipe|\b(429|500|502|503|504)\b", re.I)
READ_BUFFER = 8 << 20   # bytes per ranged request of open_input()


class StorageError(OperationalError):
    """An object could not be listed, stat'ed or read (after retries, when the error was transient)."""

    def __init__(self, uri: str, message: str, hint: str | None = None):
        self.uri = uri
        super().__init__(f"{uri}: {message}" + (f"; {hint}" if hint else ""))


@dataclass(frozen=True)
class ObjectStat:
    size: int
    mtime_ns: int
    etag: str | None = None   # None for local files


def scheme(location: str) -> str | None:
    """The URI scheme (``'s3'``...), or None for a local path."""
    m = _URI_RE.match(str(location))
    if m is None or m.group(1).lower() == "file":
        return None
    return m.group(1).lower()


def is_remote(location: str) -> bool:
    return scheme(location) is not None


def local_path(location: str) -> str:
    """A local location as an absolute path (``file://`` stripped, ``~`` expanded)."""
    loc = str(location)
    if loc.startswith("file://"):
        loc = loc[len("file://"):]
    loc = os.path.expanduser(loc)
    return loc if os.path.isabs(loc) else os.path.join(os.getcwd(), loc)


# ----------------------------------------------------------------------------- filesystems

_FS: dict = {}
_FS_LOCK = threading.Lock()


def _filesystem(uri: str):
    """The fsspec filesystem for ``uri``'s scheme (one per process, scheme and configuration;
    re-made after fork)."""
    sch = scheme(uri)
    entry = SCHEMES.get(sch)
    if entry is None:
        raise StorageError(uri, f"unsupported scheme {sch!r}",
                           hint=f"use a local path or one of {', '.join(sorted(SCHEMES))}://")
    proto, package, extra = entry
    options = _fs_options(proto)
    key = (proto, os.getpid(), repr(sorted(options.items())))
    fs = _FS.get(key)
    if fs is not None:
        return fs
    with _FS_LOCK:
        fs = _FS.get(key)
        if fs is None:
            try:
                import fsspec

                fs = fsspec.filesystem(proto, skip_instance_cache=True, **options)
                if hasattr(fs, "retries"):   # s3fs' own retry loop: once per call
                    fs.retries = 1
            except ImportError:
                raise StorageError(uri, f"reading {sch}:// needs the {package} package",
                                   hint=f"pip install 'mixsql[{extra}]'") from None
            except Exception as exc:  # noqa: BLE001 - each client rejects its settings its own way
                raise StorageError(uri, f"cannot set up the {package} client ({type(exc).__name__}: {exc})",
                                   hint=f"set {CLIENT_SETTINGS[proto]}") from None
            _FS[key] = fs
    return fs


def _fs_options(proto: str) -> dict:
    """Client options: this module owns the retries, so the client tries once per call."""
    if proto == "s3":
        opts: dict = {"config_kwargs": {"retries": {"total_max_attempts": 1, "mode": "standard"}}}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
        return opts
    return {}


def _strip(uri: str) -> str:
    """``s3://bucket/key`` -> ``bucket/key`` (fsspec paths); http URLs stay whole."""
    sch = scheme(uri)
    if sch in ("http", "https"):
        return uri
    return uri.split("://", 1)[1]


def _as_uri(uri_like: str, path: str) -> str:
    sch = scheme(uri_like)
    return path if sch in ("http", "https") else f"{sch}://{path}"


# ----------------------------------------------------------------------------- retries

def _retry_settings() -> tuple[int, float]:
    return (max(1, int(os.environ.get("MIXSQL_IO_RETRIES", "8"))),
            float(os.environ.get("MIXSQL_IO_BACKOFF", "0.2")))


def is_transient(exc: BaseException) -> bool:
    """Throttling, a 5xx, a timeout or a dropped connection: worth another try."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        text += f" {type(cause).__name__}: {cause}"
    return bool(_TRANSIENT_RE.search(text))


def call(uri: str, what: str, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` retried with backoff on transient errors; StorageError otherwise."""
    attempts, delay = _retry_settings()
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except StorageError:
            raise
        except FileNotFoundError:
            raise StorageError(uri, f"{what} failed: no such object",
                               hint="check the URI, or REFRESH the source if it was removed") from None
        except PermissionError as exc:
            raise StorageError(uri, f"{what} failed: access denied ({exc})",
                               hint="check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...) "
                                    "and the bucket policy") from None
        except Exception as exc:  # noqa: BLE001 - clients raise many types; classified below
            if not is_transient(exc):
                raise StorageError(uri, f"{what} failed ({type(exc).__name__}: {exc})") from None
            if attempt == attempts:
                raise StorageError(uri, f"{what} failed after {attempts} attempts, the last with "
                                        f"{type(exc).__name__}: {exc}",
                                   hint="the store is throttling or unavailable; retry later, or raise "
                                        "MIXSQL_IO_RETRIES") from None
            time.sleep(min(10.0, delay * 2 ** (attempt - 1)) * (0.5 + random.random()))


# ----------------------------------------------------------------------------- operations

def glob(pattern: str) -> list[str]:
    """Objects (URIs) matched by a remote pattern: a glob (``**`` recursive), one object, or a
    prefix ("directory") whose every object is returned."""
    fs = _filesystem(pattern)
    if scheme(pattern) in ("http", "https"):
        return [pattern]
    path = _strip(pattern)
    if any(c in path for c in "*?["):
        found = call(pattern, "listing", fs.glob, path, detail=True)
        return sorted(_as_uri(pattern, p) for p, info in found.items() if info.get("type") != "directory")
    info = call(pattern, "listing", _info_or_none, fs, path)
    if info is not None and info.get("type") != "directory":
        return [pattern]
    found = call(pattern, "listing", fs.find, path.rstrip("/"))
    return sorted(_as_uri(pattern, p) for p in found)


def _info_or_none(fs, path: str):
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None


def stat(location: str) -> ObjectStat:
    """Size, mtime_ns and (objects) ETag of a local file or an object."""
    if not is_remote(location):
        st = os.stat(local_path(location))
        return ObjectStat(st.st_size, st.st_mtime_ns, None)
    fs = _filesystem(location)
    fs.invalidate_cache(_strip(location))
    info = call(location, "stat", fs.info, _strip(location))
    return ObjectStat(int(info.get("size") or 0), _mtime_ns(info), _etag(info))


def _etag(info: dict) -> str | None:
    for key in ("ETag", "etag", "generation", "md5Hash"):
        if info.get(key):
            return str(info[key]).strip('"')
    return None


def _mtime_ns(info: dict) -> int:
    for key in ("LastModified", "mtime", "updated", "last_modified", "last-modified"):
        v = info.get(key)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return int(round(v.timestamp() * 1e9))
        if isinstance(v, (int, float)):
            return int(v * 1e9)
        try:
            from datetime import datetime

            return int(round(datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp() * 1e9))
        except ValueError:
            continue
    return 0


def read_range(location: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a local file or an object (short only at the end of the data)."""
    if end <= start:
        return b""
    if not is_remote(location):
        with open(local_path(location), "rb") as f:
            return os.pread(f.fileno(), end - start, start)
    fs = _filesystem(location)
    return call(location, f"reading bytes {start}-{end}", fs.cat_file, _strip(location), start=start, end=end)


class _RangedRaw(io.RawIOBase):
    """A seekable raw file over an object: every read is one retried ranged request."""

    def __init__(self, uri: str, size: int):
        self.uri, self.size, self.pos = uri, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, b) -> int:
        end = min(self.size, self.pos + len(b))
        if end <= self.pos:
            return 0
        data = read_range(self.uri, self.pos, end)
        n = len(data)
        b[:n] = data
        self.pos += n
        return n


def open_input(location: str, size: int | None = None, buffer_size: int = READ_BUFFER):
    """A seekable binary file for reading: the local file, or an object read by ranged requests
    of ``buffer_size`` bytes (the caller closes it)."""
    if not is_remote(location):
        return open(local_path(location), "rb")
    if size is None:
        size = stat(location).size
    return io.BufferedReader(_RangedRaw(location, size), buffer_size=buffer_size)


__all__ = ["CLIENT_SETTINGS", "ObjectStat", "StorageError", "SCHEMES", "call", "glob", "is_remote", "is_transient", "local_path",
           "open_input", "read_range", "scheme", "stat"]
