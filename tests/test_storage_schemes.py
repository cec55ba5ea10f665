"""gs:// and az:// go through the same fsspec path as s3:// (glob, stat with the store's change
token, ranged reads, the node cache), and a missing client package or unusable client settings
stop with an error naming the URI and what to install or set.

No GCS or Azure emulator is available to the suite: the stores are stood in for by an in-memory
fsspec filesystem registered under the ``gcs`` / ``abfs`` protocols whose ``info`` has the shape
gcsfs and adlfs return (``generation``/``etag`` + ``updated``; ``etag`` + ``last_modified``).
The real gcsfs / adlfs clients are not exercised against a server here."""
from __future__ import annotations

import datetime as dt
import importlib
import json
import sys

import pytest
import zstandard
from fsspec.implementations.memory import MemoryFileSystem

import mixsql
from mixsql import storage
from mixsql.errors import StaleFileError
from mixsql.storage import StorageError

_REGISTRY = importlib.import_module("fsspec.registry")._registry   # protocol -> loaded class


class _StandIn(MemoryFileSystem):
    """An in-memory store; each write bumps the object's version (its change token)."""

    store: dict = {}
    pseudo_dirs = [""]
    versions: dict = {}
    root_marker = ""   # paths "bucket/key", as gcsfs and adlfs give them

    @classmethod
    def _strip_protocol(cls, path):
        for p in cls.protocol:
            if path.startswith(f"{p}://"):
                path = path[len(p) + 3:]
        return path.strip("/")

    def _shape(self, info: dict, version: int) -> dict:
        raise NotImplementedError

    def info(self, path, **kwargs):
        info = super().info(path, **kwargs)
        if info.get("type") == "file":
            info = self._shape(dict(info), self.versions.get(self._strip_protocol(path), 0))
        return info

    def pipe_file(self, path, value, **kwargs):
        super().pipe_file(path, value, **kwargs)
        key = self._strip_protocol(path)
        self.versions[key] = self.versions.get(key, 0) + 1


class _GCSShape(_StandIn):
    protocol = ("gcs", "gs")
    store: dict = {}
    versions: dict = {}

    def _shape(self, info, version):   # gcsfs: generation, etag, "updated" as an ISO string
        t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=version)
        return {**info, "generation": str(1000 + version), "etag": f"CK{version}E=",
                "updated": t.isoformat().replace("+00:00", "Z")}


class _AzureShape(_StandIn):
    protocol = ("abfs", "az")
    store: dict = {}
    versions: dict = {}

    def _shape(self, info, version):   # adlfs: quoted etag, last_modified as a datetime
        t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=version)
        return {**info, "etag": f'"0x8DC{version:04d}"', "last_modified": t}


@pytest.fixture
def stores(monkeypatch):
    """The stand-ins registered for gcs / abfs (restored afterwards), with fresh contents."""
    for proto, cls in (("gcs", _GCSShape), ("abfs", _AzureShape)):
        cls.store.clear()
        cls.versions.clear()
        monkeypatch.setitem(_REGISTRY, proto, cls)
    monkeypatch.setattr(storage, "_FS", {})
    return {"gs": _GCSShape(), "az": _AzureShape()}


def _shard(texts, lang):
    blob = b"".join(json.dumps({"text": t, "lang": lang}).encode() + b"\n" for t in texts)
    return zstandard.ZstdCompressor().compress(blob)


@pytest.mark.parametrize("scheme", ["gs", "az"])
def test_register_read_and_detect_a_rewrite(stores, scheme, tmp_path, monkeypatch):
    monkeypatch.setenv("MIXSQL_CACHE_DIR", str(tmp_path / "cache"))
    fs = stores[scheme]
    texts = {f"b/c/{name}.jsonl.zst": [f"{name} doc {i} " + "x" * i for i in range(40)] for name in ("p", "q")}
    for key, docs in texts.items():
        fs.pipe_file(key, _shard(docs, "en"))
    fs.pipe_file("b/c/skip.txt", b"not a shard")
    with mixsql.connect(tmp_path / "cat") as con:
        cur = con.cursor()
        cur.execute(f"CREATE SOURCE web FROM '{scheme}://b/**/*.jsonl.zst' WITH (lang = 'lang')")
        files = [r[0] for r in cur.execute("SELECT DISTINCT file FROM samples ORDER BY 1").fetchall()]
        assert files == [f"{scheme}://b/c/p.jsonl.zst", f"{scheme}://b/c/q.jsonl.zst"]
        rows = cur.execute("SELECT * FROM samples MIX BY lang WITH (en 1.0) SETTINGS (seed = 3)").fetchall()
        names = [d[0] for d in cur.description]
    got = sorted((r[names.index("file")], r[names.index("row")]) for r in rows)
    assert got == sorted((f"{scheme}://{k}", i) for k in texts for i in range(40))

    from mixsql.torch import MixDataset

    ds = MixDataset("SELECT * FROM samples MIX BY lang WITH (en 1.0) SETTINGS (seed = 3)", catalog=tmp_path / "cat")
    assert sorted(item["text"] for item in ds) == sorted(t for docs in texts.values() for t in docs)

    with mixsql.connect(tmp_path / "cat") as con:   # the store's change token and time, as recorded
        rec = con.cursor().execute("SELECT fingerprint, mtime_ns FROM files ORDER BY path").fetchall()
    version_one = {"gs": ("etag:CK1E=", 1767225601), "az": ("etag:0x8DC0001", 1767225601)}[scheme]
    assert rec == [(version_one[0], version_one[1] * 10 ** 9)] * 2
    fs.pipe_file("b/c/q.jsonl.zst", fs.cat_file("b/c/q.jsonl.zst"))   # rewritten: same bytes, new version
    sql = "SELECT * FROM samples MIX BY lang WITH (en 1.0) SETTINGS (seed = 4)"
    # the node cache's entries hold the registered versions' bytes: served without asking the store
    assert len(list(MixDataset(sql, catalog=tmp_path / "cat", prefetch_ahead=0))) == 80
    monkeypatch.setenv("MIXSQL_CACHE_DIR", str(tmp_path / "empty-cache"))   # the object is fetched again
    with pytest.raises(StaleFileError, match=f"{scheme}://b/c/q.jsonl.zst"):
        list(MixDataset(sql, catalog=tmp_path / "cat", prefetch_ahead=0))


@pytest.mark.parametrize("scheme,package,extra", [("gs", "gcsfs", "gcs"), ("az", "adlfs", "azure")])
def test_missing_client_package_names_the_extra(scheme, package, extra, monkeypatch, tmp_path):
    proto = storage.SCHEMES[scheme][0]
    monkeypatch.delitem(_REGISTRY, proto, raising=False)   # not loaded yet ...
    monkeypatch.setitem(sys.modules, package, None)                         # ... and not importable
    monkeypatch.setattr(storage, "_FS", {})
    with pytest.raises(StorageError, match=rf"{scheme}://b/x\.jsonl: reading {scheme}:// needs the {package} "
                                           rf"package; pip install 'mixsql\[{extra}\]'"):
        storage.stat(f"{scheme}://b/x.jsonl")
    with mixsql.connect(tmp_path / "cat") as con, pytest.raises(mixsql.OperationalError, match=package):
        con.cursor().execute(f"CREATE SOURCE web FROM '{scheme}://b/*.jsonl'")
    with mixsql.connect(tmp_path / "cat") as con:   # nothing half-registered
        assert con.cursor().execute("SELECT count(*) FROM sources").fetchall() == [(0,)]


def test_client_settings_error_names_the_uri_and_the_settings(monkeypatch):
    class NoAccount(_AzureShape):
        def __init__(self, *a, **k):   # what adlfs raises without an account or connection string
            raise ValueError("Must provide either a connection_string or account_name with credentials!!")

    monkeypatch.setitem(_REGISTRY, "abfs", NoAccount)
    monkeypatch.setattr(storage, "_FS", {})
    with pytest.raises(StorageError, match=r"az://c/x\.jsonl: cannot set up the adlfs client .*account_name.*"
                                           r"AZURE_STORAGE_ACCOUNT_NAME"):
        storage.glob("az://c/x.jsonl")
