"""Collections in an S3 bucket, against a real S3-protocol server (moto's, started by the test on
127.0.0.1): mixed-format registration, REFRESH after adding and rewriting objects, read-time change
detection, a 2 ranks x 2 workers MIX read exactly once, a worker killed mid-fill of the node cache,
a cache filled past its limit, and throttling retried, then reported naming the object."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from bench.s3server import CREDENTIALS, MotoServer, free_port
from s3server import FaultProxy

import s3fs  # noqa: F401 (a test dependency: fail, never skip, when missing)
import boto3

import mixsql  # noqa: E402
from mixsql.cache import NodeCache  # noqa: E402
from mixsql.errors import StaleFileError  # noqa: E402
from mixsql.readers import ChunkReader  # noqa: E402
from mixsql.storage import StorageError  # noqa: E402

BUCKET = "corpus"


def _docs(prefix: str, n: int, width: int = 1) -> list[str]:
    return [f"{prefix} doc {i} " + "lorem " * (i % 40) * width for i in range(n)]


def _jsonl_zst(texts: list[str], lang: str, frames: int = 1) -> bytes:
    blob = b"".join(json.dumps({"text": t, "lang": lang}).encode() + b"\n" for t in texts)
    step = -(-len(blob) // frames)
    return b"".join(zstandard.ZstdCompressor().compress(blob[i:i + step]) for i in range(0, len(blob), step))


def _parquet(texts: list[str]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts, "lang": ["de"] * len(texts)}), buf, row_group_size=50)
    return buf.getvalue()


def _tar(texts: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i, t in enumerate(texts):
            for ext, data in (("txt", t.encode()), ("json", json.dumps({"lang": "fr"}).encode())):
                info = tarfile.TarInfo(f"s{i:05d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto on an ephemeral port, a fault proxy in front, and the bucket's initial objects."""
    server = MotoServer()
    proxy = FaultProxy(server.url)
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": server.url, "MIXSQL_IO_BACKOFF": "0.01", "MIXSQL_IO_RETRIES": "4"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3", endpoint_url=server.url)
    client.create_bucket(Bucket=BUCKET)
    texts = {"web": _docs("web", 300, width=30), "web2": _docs("web2", 200), "books": _docs("book", 150),
             "img": _docs("img", 40)}
    client.put_object(Bucket=BUCKET, Key="c/web/a.jsonl.zst", Body=_jsonl_zst(texts["web"], "en", frames=3))
    client.put_object(Bucket=BUCKET, Key="c/web/b.jsonl.zst", Body=_jsonl_zst(texts["web2"], "en"))
    client.put_object(Bucket=BUCKET, Key="c/books/p.parquet", Body=_parquet(texts["books"]))
    client.put_object(Bucket=BUCKET, Key="c/img/s.tar", Body=_tar(texts["img"]))
    yield {"server": server, "proxy": proxy, "client": client, "texts": texts, "env": env}
    proxy.stop()
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def catalog(s3, tmp_path_factory):
    cat = tmp_path_factory.mktemp("s3cat") / "cat"
    with mixsql.connect(cat) as con:
        cur = con.cursor()
        cur.execute(f"CREATE SOURCE web FROM 's3://{BUCKET}/c/web/*.jsonl.zst' WITH (lang = 'lang')")
        cur.execute(f"CREATE SOURCE books FROM 's3://{BUCKET}/c/books/**/*.parquet' WITH (lang = 'lang')")
        cur.execute(f"CREATE SOURCE img FROM 's3://{BUCKET}/c/img/' FORMAT webdataset WITH (lang = 'lang')")
    return cat


def _all_rows(cat):
    """(files table, every sample's pointers) of the catalog at ``cat``."""
    from mixsql.catalog import Catalog

    c = Catalog(cat, read_only=True)
    try:
        files = c.files_table()
        rows = c.con.sql('SELECT file_id, "row", loc_offset, loc_length FROM sample_index '
                         'ORDER BY file_id, "row"').to_arrow_table()
    finally:
        c.close()
    return files, rows


def _chunk(rows: pa.Table) -> pa.Table:
    n = rows.num_rows
    return rows.append_column("group_id", pa.array([0] * n, pa.int32()))


def test_register_and_read_a_mixed_collection_from_a_bucket(catalog, s3, tmp_path):
    with mixsql.connect(catalog) as con:
        cur = con.cursor()
        got = dict(cur.execute("SELECT source, count(*) FROM samples GROUP BY 1").fetchall())
        assert got == {"web": 500, "books": 150, "img": 40}
        paths = [r[0] for r in cur.execute("SELECT DISTINCT file FROM samples ORDER BY 1").fetchall()]
        assert paths == [f"s3://{BUCKET}/c/books/p.parquet", f"s3://{BUCKET}/c/img/s.tar",
                         f"s3://{BUCKET}/c/web/a.jsonl.zst", f"s3://{BUCKET}/c/web/b.jsonl.zst"]
        assert dict(cur.execute("SELECT lang, count(*) FROM samples GROUP BY 1").fetchall()) == \
            {"en": 500, "de": 150, "fr": 40}
    files, rows = _all_rows(catalog)
    assert all(fp.startswith("etag:") for fp in files.column("fingerprint").to_pylist())
    seeks = dict(zip(files.column("path").to_pylist(), files.column("seek").to_pylist()))
    assert len(seeks[f"s3://{BUCKET}/c/web/a.jsonl.zst"]) == 3   # three frames: ranged reads from a seek point
    assert seeks[f"s3://{BUCKET}/c/web/b.jsonl.zst"] is None   # single frame: read through the cache
    node = NodeCache(tmp_path / "node", limit=1 << 30)
    out = ChunkReader(files, node_cache=node).read(_chunk(rows))
    by_path = dict(zip(files.column("file_id").to_pylist(), files.column("path").to_pylist()))
    want = {"a.jsonl.zst": s3["texts"]["web"], "b.jsonl.zst": s3["texts"]["web2"],
            "p.parquet": s3["texts"]["books"], "s.tar": s3["texts"]["img"]}
    for fid, row, text in zip(out.column("file_id").to_pylist(), out.column("row").to_pylist(),
                              out.column("text").to_pylist()):
        assert text == want[by_path[fid].rsplit("/", 1)[1]][row]
    assert len(os.listdir(node.data_dir)) == 1   # only the single-frame shard was fetched whole


def test_refresh_after_adding_and_rewriting_objects(s3, tmp_path):
    client = s3["client"]
    client.put_object(Bucket=BUCKET, Key="r/x.jsonl.zst", Body=_jsonl_zst(_docs("x", 30), "en"))
    client.put_object(Bucket=BUCKET, Key="r/y.jsonl.zst", Body=_jsonl_zst(_docs("y", 20), "en"))
    cat = tmp_path / "cat"
    with mixsql.connect(cat) as con:
        con.cursor().execute(f"CREATE SOURCE r FROM 's3://{BUCKET}/r/*.jsonl.zst'")
    old_files, old_rows = _all_rows(cat)
    time.sleep(1.1)   # S3's LastModified has one-second resolution; the ETag changes regardless
    client.put_object(Bucket=BUCKET, Key="r/y.jsonl.zst", Body=_jsonl_zst(_docs("y2", 25), "en"))
    client.put_object(Bucket=BUCKET, Key="r/z.jsonl.zst", Body=_jsonl_zst(_docs("z", 5), "en"))
    # a reader planned before the rewrite reports it instead of mixing new bytes into old pointers
    with pytest.raises(StaleFileError, match="y.jsonl.zst"):
        ChunkReader(old_files, node_cache=NodeCache(tmp_path / "node")).read(_chunk(old_rows))
    with mixsql.connect(cat) as con:
        cur = con.cursor()
        cur.execute("REFRESH SOURCE r")
        summary = dict(zip([d[0] for d in cur.description], cur.fetchone()))
        assert (summary["new_files"], summary["changed_files"], summary["unchanged_files"]) == (1, 1, 1)
        assert cur.execute("SELECT count(*) FROM samples").fetchone() == (60,)
        cur.execute("REFRESH SOURCE r")
        summary = dict(zip([d[0] for d in cur.description], cur.fetchone()))
        assert (summary["new_files"], summary["changed_files"], summary["unchanged_files"]) == (0, 0, 3)
    files, rows = _all_rows(cat)
    texts = ChunkReader(files, node_cache=NodeCache(tmp_path / "node")).read(_chunk(rows)).column("text").to_pylist()
    assert sorted(texts) == sorted(_docs("x", 30) + _docs("y2", 25) + _docs("z", 5))


def test_warm_node_cache_serves_the_registered_bytes_without_the_store(s3, tmp_path, monkeypatch):
    client, proxy = s3["client"], s3["proxy"]
    client.put_object(Bucket=BUCKET, Key="w/v.jsonl.zst", Body=_jsonl_zst(_docs("v1", 40), "en"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    cat = tmp_path / "cat"
    with mixsql.connect(cat) as con:
        con.cursor().execute(f"CREATE SOURCE w FROM 's3://{BUCKET}/w/*.jsonl.zst'")
    files, rows = _all_rows(cat)
    node = NodeCache(tmp_path / "node")
    assert ChunkReader(files, node_cache=node).read(_chunk(rows)).column("text").to_pylist() == _docs("v1", 40)
    time.sleep(1.1)   # S3's LastModified has one-second resolution; the ETag changes regardless
    client.put_object(Bucket=BUCKET, Key="w/v.jsonl.zst", Body=_jsonl_zst(_docs("v2", 40), "en"))
    proxy.requests = 0
    # the entry is keyed by the registered ETag: it serves exactly the registered bytes, no request
    assert ChunkReader(files, node_cache=node).read(_chunk(rows)).column("text").to_pylist() == _docs("v1", 40)
    assert proxy.requests == 0
    # without the entry the object is fetched, and the rewrite is reported, never mixed in
    with pytest.raises(StaleFileError, match="v.jsonl.zst"):
        ChunkReader(files, node_cache=NodeCache(tmp_path / "empty")).read(_chunk(rows))
    assert proxy.requests >= 1


MIX_SQL = ("SELECT * FROM samples MIX BY lang WITH (en 0.6, de 0.25, fr 0.15) "
           "SETTINGS (chunk_size = 16, on_exhausted = 'redistribute', seed = 3)")


def _rank_main(rank, world, port, cat, out_dir, env):
    os.environ.update(env)
    import torch.distributed as dist

    from mixsql.torch import MixDataLoader, MixDataset

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = MixDataset(MIX_SQL, catalog=cat, columns=("file", "row"), even_end="off")   # the raw partition
        dl = MixDataLoader(ds, batch_size=4, num_workers=2)
        got = [[f, r, t] for b in dl for f, r, t in zip(b["file"], b["row"], b["text"])]
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(got, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_mix_two_ranks_two_workers_each_sample_once(catalog, s3, tmp_path):
    import torch.multiprocessing as mp

    env = dict(s3["env"], MIXSQL_CACHE_DIR=str(tmp_path / "node"))
    mp.set_forkserver_preload(["torch", "mixsql.torch", "mixsql.stream"])
    mp.start_processes(_rank_main, args=(2, free_port(), str(catalog), str(tmp_path), env), nprocs=2, join=True,
                       start_method="forkserver")
    got = [x for r in range(2) for x in json.load(open(tmp_path / f"rank{r}.json"))]
    keys = [(f, r) for f, r, _ in got]
    assert len(keys) == len(set(keys)) == 690   # every sample exactly once over ranks and workers
    want = {"a.jsonl.zst": s3["texts"]["web"], "b.jsonl.zst": s3["texts"]["web2"],
            "p.parquet": s3["texts"]["books"], "s.tar": s3["texts"]["img"]}
    assert all(t == want[f.rsplit("/", 1)[1]][r] for f, r, t in got)
    by_rank = [{(f, r) for f, r, _ in json.load(open(tmp_path / f"rank{k}.json"))} for k in range(2)]
    assert by_rank[0] and by_rank[1] and not by_rank[0] & by_rank[1]


_READER = """
import json, sys
import pyarrow as pa
from mixsql.catalog import Catalog
from mixsql.readers import ChunkReader
c = Catalog(sys.argv[1], read_only=True)
files = c.files_table()
rows = c.con.sql("SELECT file_id, \\"row\\", loc_offset, loc_length FROM sample_index JOIN files USING (file_id) "
                 "WHERE path LIKE '%b.jsonl.zst' ORDER BY \\"row\\"").to_arrow_table()
c.close()
rows = rows.append_column("group_id", pa.array([0] * rows.num_rows, pa.int32()))
print(json.dumps(ChunkReader(files).read(rows).column("text").to_pylist()))
"""


def test_worker_killed_mid_fill_then_restarted(catalog, s3, tmp_path):
    proxy = s3["proxy"]
    env = {**os.environ, **s3["env"], "AWS_ENDPOINT_URL": proxy.url, "MIXSQL_CACHE_DIR": str(tmp_path / "node"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    proxy.match, proxy.stall, proxy.hits = "b.jsonl.zst", 60.0, 0
    worker = subprocess.Popen([sys.executable, "-c", _READER, str(catalog)], env=env, stdout=subprocess.PIPE)
    tmp_dir = tmp_path / "node" / "objects" / "tmp"
    try:
        deadline = time.time() + 60
        while not (proxy.hits and tmp_dir.exists() and os.listdir(tmp_dir)):   # the fill has begun
            assert worker.poll() is None and time.time() < deadline
            time.sleep(0.05)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    proxy.stall = 0.0
    assert os.listdir(tmp_path / "node" / "objects" / "data") == []   # nothing partial became an entry
    again = subprocess.run([sys.executable, "-c", _READER, str(catalog)], env=env, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert json.loads(again.stdout) == s3["texts"]["web2"]
    assert os.listdir(tmp_dir) == [] and len(os.listdir(tmp_path / "node" / "objects" / "data")) == 1
    proxy.match = None


def test_cache_filled_past_its_limit(s3, tmp_path):
    client = s3["client"]
    texts = {i: _docs(f"L{i}", 400) for i in range(5)}
    bodies = {i: _jsonl_zst(t, "en") for i, t in texts.items()}
    for i, body in bodies.items():
        client.put_object(Bucket=BUCKET, Key=f"lim/{i}.jsonl.zst", Body=body)
    cat = tmp_path / "cat"
    with mixsql.connect(cat) as con:
        con.cursor().execute(f"CREATE SOURCE lim FROM 's3://{BUCKET}/lim/*.jsonl.zst'")
    files, rows = _all_rows(cat)
    one = max(len(zstandard.ZstdDecompressor().decompress(b)) for b in bodies.values()) + 16   # an entry
    node = NodeCache(tmp_path / "node", limit=2 * one)
    for _ in range(2):   # twice: entries evicted in the first pass are fetched again
        reader = ChunkReader(files, node_cache=node)
        for fid in files.column("file_id").to_pylist():
            part = _chunk(rows.filter(pa.compute.equal(rows.column("file_id"), fid)))
            got = reader.read(part).column("text").to_pylist()
            path = files.filter(pa.compute.equal(files.column("file_id"), fid)).column("path")[0].as_py()
            assert got == texts[int(path.rsplit("/", 1)[1][0])]
            assert node.usage() <= node.limit + one
        reader.close()
    assert 1 <= len(os.listdir(node.data_dir)) < 5   # evicted, and what is left is whole:
    for key in os.listdir(node.data_dir):
        f = node.open(key)
        assert f is not None
        f.close()


def test_throttling_is_retried_then_reported_naming_the_object(catalog, s3, tmp_path, monkeypatch):
    proxy = s3["proxy"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    files, rows = _all_rows(catalog)
    tar = files.filter(pa.compute.match_substring(files.column("path"), "s.tar"))
    part = _chunk(rows.filter(pa.compute.equal(rows.column("file_id"), tar.column("file_id")[0])))
    proxy.match, proxy.fail, proxy.hits = "s.tar", 2, 0
    out = ChunkReader(tar, node_cache=NodeCache(tmp_path / "node")).read(part)
    assert out.column("text").to_pylist() == s3["texts"]["img"]
    assert proxy.hits >= 3   # two SlowDown answers, then the retry that worked
    proxy.fail, proxy.hits = -1, 0
    with pytest.raises(StorageError, match=r"s3://corpus/c/img/s\.tar: reading bytes .* failed after 4 attempts"):
        ChunkReader(tar, node_cache=NodeCache(tmp_path / "node")).read(part)
    assert proxy.hits == 4
    proxy.match, proxy.fail = None, 0
