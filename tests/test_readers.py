"""ChunkReader on real files of every format: plain/zst/gz JSONL, Parquet (text and tokens), tar."""
from __future__ import annotations

import gzip
import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mixsql.errors import StaleFileError
from mixsql.readers import ChunkReader

DOCS = [f"document {i} " + "é" * (i % 5) + "z" * (i % 11) for i in range(60)]


def _files_row(fid, path, fmt, compression="none", options=None):
    st = os.stat(path)
    return {"file_id": fid, "path": str(path), "compression": compression, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "fingerprint": "x", "source": "s", "format": fmt,
            "options": json.dumps(options or {})}


def _chunk(fids, offs, lens, rows=None):
    n = len(fids)
    return pa.table({"chunk": pa.array([0] * n, pa.int64()), "position": pa.array(range(n), pa.int32()),
                     "row": pa.array(rows if rows is not None else range(n), pa.int64()),
                     "group_id": pa.array([0] * n, pa.int32()), "file_id": pa.array(fids, pa.int32()),
                     "loc_offset": pa.array(offs, pa.int64()), "loc_length": pa.array(lens, pa.int32())})


def _jsonl(docs, nested=False):
    blob, locs, off = bytearray(), [], 0
    for d in docs:
        line = json.dumps({"meta": {"body": d}} if nested else {"text": d, "x": 1}).encode()
        locs.append((off, len(line)))
        blob += line + b"\n"
        off += len(line) + 1
    return bytes(blob), locs


@pytest.mark.parametrize("compression", ["none", "zstd", "gzip"])
def test_jsonl_plain_and_compressed(tmp_path, compression):
    blob_a, locs_a = _jsonl(DOCS[:30])
    blob_b, locs_b = _jsonl(DOCS[30:], nested=True)
    enc = {"none": lambda b: b, "zstd": lambda b: zstandard.ZstdCompressor().compress(b), "gzip": gzip.compress}
    pa_, pb = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    pa_.write_bytes(enc[compression](blob_a))
    pb.write_bytes(enc[compression](blob_b))
    files = pa.Table.from_pylist([_files_row(1, pa_, "jsonl", compression),
                                  _files_row(2, pb, "jsonl", compression, {"text": "meta.body"})])
    rng = np.random.Generator(np.random.PCG64(3))
    picks = [(1 + int(i >= 30), i) for i in rng.permutation(60)[:25]]
    offs = [(locs_a if f == 1 else locs_b)[i % 30][0] for f, i in picks]
    lens = [(locs_a if f == 1 else locs_b)[i % 30][1] for f, i in picks]
    reader = ChunkReader(files, cache_bytes=1 << 20)
    out = reader.read(_chunk([f for f, _ in picks], offs, lens))
    assert out.column("text").to_pylist() == [DOCS[i] for _, i in picks]
    assert out.column("position").to_pylist() == list(range(25))
    # second read of the same chunk works from the cache
    assert reader.read(_chunk([f for f, _ in picks], offs, lens)).column("text").to_pylist() == [DOCS[i] for _, i in picks]


def test_parquet_text_and_tokens(tmp_path):
    path = tmp_path / "p.parquet"
    toks = [[i, i + 1, i + 2] for i in range(60)]
    pq.write_table(pa.table({"content": DOCS, "ids": pa.array(toks, pa.list_(pa.int32()))}), path, row_group_size=16)
    files = pa.Table.from_pylist([_files_row(1, path, "parquet", options={"text": "content"}),
                                  _files_row(2, path, "parquet", options={"tokens": "ids"})])
    sel = [50, 3, 17, 16, 40]
    offs, lens = [i // 16 for i in sel], [i % 16 for i in sel]
    reader = ChunkReader(files)
    out = reader.read(_chunk([1] * 5, offs, lens))
    assert out.column("text").to_pylist() == [DOCS[i] for i in sel]
    out = reader.read(_chunk([2] * 5, offs, lens))
    assert "text" not in out.column_names
    assert out.column("tokens").to_pylist() == [toks[i] for i in sel]
    assert out.schema.field("tokens").type == pa.list_(pa.int32())


def test_webdataset_tar(tmp_path):
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tf:
        for i, d in enumerate(DOCS[:10]):
            for ext, data in (("json", b"{}"), ("txt", d.encode())):
                ti = tarfile.TarInfo(f"{i:05d}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    locs = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            if m.name.endswith(".txt"):
                locs[int(m.name[:5])] = (m.offset_data, m.size)
    files = pa.Table.from_pylist([_files_row(7, path, "webdataset")])
    sel = [9, 0, 4]
    out = ChunkReader(files).read(_chunk([7] * 3, [locs[i][0] for i in sel], [locs[i][1] for i in sel]))
    assert out.column("text").to_pylist() == [DOCS[i] for i in sel]


def test_stale_file_detected(tmp_path):
    blob, locs = _jsonl(DOCS[:5])
    path = tmp_path / "a.jsonl"
    path.write_bytes(blob)
    files = pa.Table.from_pylist([_files_row(1, path, "jsonl")])
    path.write_bytes(blob + b'{"text": "appended"}\n')
    with pytest.raises(StaleFileError, match="a.jsonl.*REFRESH SOURCE"):
        ChunkReader(files).read(_chunk([1], [locs[0][0]], [locs[0][1]]))
    path.unlink()
    with pytest.raises(StaleFileError, match="no longer exists"):
        ChunkReader(files).read(_chunk([1], [locs[0][0]], [locs[0][1]]))


def test_prefetch_yields_in_order(tmp_path):
    blob, locs = _jsonl(DOCS)
    path = tmp_path / "a.jsonl"
    path.write_bytes(blob)
    reader = ChunkReader(pa.Table.from_pylist([_files_row(1, path, "jsonl")]))
    chunks = [_chunk([1] * 6, [o for o, _ in locs[i:i + 6]], [n for _, n in locs[i:i + 6]]) for i in range(0, 60, 6)]
    got = [t.column("text").to_pylist() for _, t in reader.prefetch(iter(chunks), depth=3)]
    reader.close()
    assert got == [DOCS[i:i + 6] for i in range(0, 60, 6)]


def _fills_done(reader):
    """Wait for the node-cache fills the reader started."""
    for fut in list(reader._fills.values()):
        fut.result()


def _register(tmp_path, name, blob_file):
    from mixsql.catalog import Catalog
    from mixsql.registration import create_source

    cat = Catalog(tmp_path / "cat")
    create_source(cat, name, str(blob_file), progress=False)
    return cat


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_seek_table_reaches_rows_from_the_nearest_frame(tmp_path, compression):
    docs = [f"row {i} " + "q" * (i % 300) for i in range(12_000)]
    blob, _ = _jsonl(docs)
    step = 70_001   # frames / members cut mid-line
    enc = (lambda b: zstandard.ZstdCompressor().compress(b)) if compression == "zstd" else gzip.compress
    path = tmp_path / f"multi.jsonl.{'zst' if compression == 'zstd' else 'gz'}"
    path.write_bytes(b"".join(enc(blob[i:i + step]) for i in range(0, len(blob), step)))
    cat = _register(tmp_path, "m", path)
    files = cat.files_table()
    seek = files.column("seek")[0].as_py()
    assert len(seek) > 5 and seek[0] == [0, 0]
    assert all(b[1] - a[1] >= 256 << 10 for a, b in zip(seek, seek[1:]))
    rows = cat.con.sql('SELECT file_id, "row", loc_offset, loc_length FROM sample_index '
                       'WHERE "row" IN (11990, 11999, 7000) ORDER BY "row" DESC').to_arrow_table()
    reader = ChunkReader(files)
    out = reader.read(_chunk(rows.column("file_id").to_pylist(), rows.column("loc_offset").to_pylist(),
                             rows.column("loc_length").to_pylist(), rows.column("row").to_pylist()))
    assert out.column("text").to_pylist() == [docs[11999], docs[11990], docs[7000]]
    segs = sorted(k[2] for k in reader.cache._d if k[0] == "seg")
    assert 0 not in segs and len(segs) <= 4   # decompressed from the nearest points only, not from byte 0
    assert not os.path.exists(os.path.join(os.environ["MIXSQL_CACHE_DIR"], "objects", "data",
                                           reader.files[rows.column("file_id")[0].as_py()].entry_key()))
    assert cat.con.execute("SELECT count(*) FROM seek_points").fetchall()[0][0] == len(seek)
    from mixsql.registration import drop_source

    drop_source(cat, "m")
    assert cat.con.execute("SELECT count(*) FROM seek_points").fetchall()[0][0] == 0


def test_single_frame_zstd_reads_through_the_node_cache(tmp_path):
    from mixsql.cache import NodeCache, payload_size

    docs = [f"doc {i} " + "w" * (i % 97) for i in range(3000)]
    blob, locs = _jsonl(docs)
    path = tmp_path / "one.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(blob))
    cat = _register(tmp_path, "one", path)
    files = cat.files_table()
    assert files.column("seek")[0].as_py() is None
    node = NodeCache(tmp_path / "node", limit=1 << 30)
    picks = [2999, 5, 1500]
    reader = ChunkReader(files, node_cache=node)
    out = reader.read(_chunk([1] * 3, [locs[i][0] for i in picks], [locs[i][1] for i in picks], picks))
    assert out.column("text").to_pylist() == [docs[i] for i in picks]
    _fills_done(reader)   # rows may be served before the fill ends; the entry appears when whole
    entry = reader.files[1].entry_key()
    with node.open(entry) as f:
        assert f.read()[:payload_size(f)] == blob   # the decompressed shard, on disk
    assert not reader.cache._d   # no decompressed bytes in this process' RAM
    reader.close()
    again = ChunkReader(files, node_cache=NodeCache(tmp_path / "node", limit=1 << 30))
    again._fill = lambda *a: pytest.fail("a warm entry was filled again")
    again.warm_files([1])
    out2 = again.read(_chunk([1], [locs[7][0]], [locs[7][1]], [7]))
    assert out2.column("text").to_pylist() == [docs[7]]


def test_prefetch_ahead_fills_the_node_cache_for_chunks_further_ahead(tmp_path):
    """``prefetch(ahead=...)`` starts node-cache fills for files ``ahead_by`` chunks in front of
    the queue, while the yielded chunks stay exactly those of the stream."""
    from mixsql.cache import NodeCache

    node = NodeCache(tmp_path / "node", limit=1 << 30)
    rows, chunks = [], []
    for fid in range(1, 7):   # six single-frame shards, one chunk each
        docs = [f"shard {fid} doc {i}" for i in range(40)]
        blob, locs = _jsonl(docs)
        path = tmp_path / f"s{fid}.jsonl.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress(blob))
        rows.append(_files_row(fid, path, "jsonl", "zstd"))
        chunks.append((docs[:5], _chunk([fid] * 5, [o for o, _ in locs[:5]], [n for _, n in locs[:5]])))
    reader = ChunkReader(pa.Table.from_pylist(rows), node_cache=node)
    keys = {fid: reader.files[fid].entry_key() for fid in range(1, 7)}
    stream = reader.prefetch((t for _, t in chunks), depth=1, ahead=(t for _, t in chunks), ahead_by=4)
    _, first = next(stream)
    assert first.column("text").to_pylist() == chunks[0][0]
    _fills_done(reader)   # the fills started so far
    # one chunk queued (depth 1): the ahead iterator, two steps per queued chunk, has reached chunk 1
    assert node.contains(keys[2]) and not node.contains(keys[6])
    got = [t.column("text").to_pylist() for _, t in stream]
    assert got == [d for d, _ in chunks[1:]]
    reader.close()


class _GatedSource(io.BytesIO):
    """A compressed object whose bytes past ``open_bytes`` arrive only once ``gate`` is set (then
    normally, or as ``error`` when one is given): a fill that stalls halfway."""

    def __init__(self, data: bytes, open_bytes: int, gate, error=None):
        super().__init__(data)
        self.open_bytes, self.gate, self.error = open_bytes, gate, error

    def read(self, n=-1):
        if self.tell() >= self.open_bytes:
            assert self.gate.wait(60), "the test never opened the gate"
            if self.error is not None:
                raise self.error
            return super().read(n)
        end = self.open_bytes if n is None or n < 0 else min(self.tell() + n, self.open_bytes)
        return super().read(end - self.tell())


def _stalling_shard(tmp_path, monkeypatch, error=None):
    """A registered single-frame .jsonl.zst whose fill stalls after half its compressed bytes."""
    import threading

    from mixsql import storage

    docs = [f"doc {i} " + "v" * (i % 89) + str(i * 7919 % 1000) for i in range(20_000)]
    blob, locs = _jsonl(docs)
    path = tmp_path / "one.jsonl.zst"
    packed = zstandard.ZstdCompressor().compress(blob)
    path.write_bytes(packed)
    cat = _register(tmp_path, "one", path)
    gate = threading.Event()
    monkeypatch.setattr(storage, "open_input",
                        lambda *a, **k: _GatedSource(packed, len(packed) // 2, gate, error))
    return cat.files_table(), docs, locs, gate


def test_first_rows_served_while_the_fill_runs_and_the_entry_appears_whole(tmp_path, monkeypatch):
    """Rows in the part of a single-frame shard decompressed so far are read from the fill's
    temporary file before the fill ends; the cache entry appears only when whole."""
    from mixsql.cache import NodeCache, payload_size

    files, docs, locs, gate = _stalling_shard(tmp_path, monkeypatch)
    node = NodeCache(tmp_path / "node", limit=1 << 30)
    reader = ChunkReader(files, node_cache=node)
    key = reader.files[1].entry_key()
    early = [4000, 17, 2500, 0]   # within the first quarter of the decompressed bytes
    out = reader.read(_chunk([1] * 4, [locs[i][0] for i in early], [locs[i][1] for i in early], early))
    assert out.column("text").to_pylist() == [docs[i] for i in early]
    fill = reader._fills[1]
    assert not fill.done() and not node.contains(key)   # served mid-fill; no partial entry visible
    gate.set()
    _fills_done(reader)
    late = [19_999, 4001, 12_000]
    out = reader.read(_chunk([1] * 3, [locs[i][0] for i in late], [locs[i][1] for i in late], late))
    assert out.column("text").to_pylist() == [docs[i] for i in late]
    with node.open(key) as f:
        blob = b"".join(json.dumps({"text": d, "x": 1}).encode() + b"\n" for d in docs)
        assert f.read()[:payload_size(f)] == blob
    reader.close()


def test_fill_failing_after_early_rows_leaves_no_entry(tmp_path, monkeypatch):
    """A fill that fails after serving early rows: rows past what it wrote raise its error
    (naming the object), and neither an entry nor a temporary file is left behind."""
    from mixsql import storage
    from mixsql.cache import NodeCache

    files, docs, locs, gate = _stalling_shard(
        tmp_path, monkeypatch, error=storage.StorageError("s3://b/one.jsonl.zst", "reading bytes failed"))
    node = NodeCache(tmp_path / "node", limit=1 << 30)
    reader = ChunkReader(files, node_cache=node)
    out = reader.read(_chunk([1], [locs[3][0]], [locs[3][1]], [3]))
    assert out.column("text").to_pylist() == [docs[3]]
    gate.set()
    with pytest.raises(storage.StorageError, match="one.jsonl.zst"):
        reader.read(_chunk([1], [locs[19_990][0]], [locs[19_990][1]], [19_990]))
    assert not node.contains(reader.files[1].entry_key())
    assert os.listdir(node.tmp_dir) == []
    reader.close()


def test_mixdataset_warms_its_future_chunks_files_without_changing_the_stream(tmp_path, monkeypatch):
    """``MixDataset(prefetch_ahead=N)`` starts node-cache fills for the files of chunks beyond
    those queued for reading (one shard per two chunks here) while the first is read; the samples
    delivered are those of ``prefetch_ahead=0``, each once."""
    import mixsql
    from mixsql import readers, torch as mtorch
    from mixsql.torch import dataset as mdataset   # where MixDataset looks up ChunkReader

    docs = {}
    for s in range(6):
        docs[s] = [f"shard {s} doc {i} " + "t" * (i % 13) for i in range(40)]
        blob = b"".join(json.dumps({"text": d, "lang": "en"}).encode() + b"\n" for d in docs[s])
        (tmp_path / f"s{s}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(blob))
    with mixsql.connect(tmp_path / "cat") as con:
        con.cursor().execute(f"CREATE SOURCE web FROM '{tmp_path}/s*.jsonl.zst' WITH (lang = 'lang')")
    sql = ("SELECT * FROM samples MIX BY lang WITH (en 1.0) "
           "SETTINGS (seed = 5, chunk_size = 20, shuffle_shards = 1)")
    made = []

    class Recording(readers.ChunkReader):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(mdataset, "ChunkReader", Recording)
    streams, warmed = {}, {}
    for ahead in (0, 64):
        monkeypatch.setenv("MIXSQL_CACHE_DIR", str(tmp_path / f"cache{ahead}"))
        it = iter(mtorch.MixDataset(sql, catalog=tmp_path / "cat", prefetch_ahead=ahead))
        first = next(it)
        reader = made[-1]
        _fills_done(reader)   # the fills started while the first chunk was read
        node = reader._cache()
        warmed[ahead] = sum(node.contains(info.entry_key()) for info in reader.files.values())
        streams[ahead] = [first["text"]] + [x["text"] for x in it]
    assert warmed[0] < warmed[64]
    assert streams[64] == streams[0]
    assert sorted(streams[64]) == sorted(d for s in docs.values() for d in s)
