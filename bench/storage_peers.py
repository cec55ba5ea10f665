"""Mosaic Streaming and LitData reading the bench corpus from the same S3 bucket as mixsql.

Each peer gets the same documents (the text of every line of the ``.jsonl.zst`` shards) written
the way its documentation recommends for remote data, uploaded to the moto bucket, and streamed
back with shuffling on, in one process, from an empty local cache (cold) and from the cache the
cold pass left (warm):

* Mosaic Streaming: ``MDSWriter(out=(local, 's3://bucket/mds'), columns={'text': 'str'},
  compression='zstd')`` (default 64 MB shards, uploaded by the writer);
  ``StreamingDataset(remote='s3://bucket/mds', local=cache, shuffle=True, batch_size=64)``. The
  endpoint comes from ``S3_ENDPOINT_URL`` (Mosaic's documented variable for S3-compatible stores).
* LitData: ``optimize(fn, inputs=shards, output_dir=local, chunk_bytes='64MB', compression='zstd')``,
  the directory uploaded to ``s3://bucket/litdata`` (LitData's own upload goes through obstore, which
  refuses the plain-http endpoint); ``StreamingDataset('s3://bucket/litdata', cache_dir=cache,
  shuffle=True, storage_options={'endpoint_url': ...})``, with ``allow_http`` added to the obstore
  client options LitData fixes in its module (the one change made to a peer).

``python -m bench.storage_peers read mosaic|litdata REMOTE CACHE`` prints one JSON line (text MB/s,
first-sample seconds, peak RSS); the parent (:mod:`bench.storage`) runs it in a fresh process.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

PEERS = {"mosaic_streaming": "streaming", "litdata": "litdata"}


def _texts(path: str):
    """The text of every line of one ``.jsonl.zst`` shard (LitData ``optimize`` worker fn)."""
    import io

    import orjson
    import zstandard

    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
        for line in io.BufferedReader(r, 1 << 20):
            if line.strip():
                yield {"text": orjson.loads(line)["text"]}


def convert_mosaic(shards: list[Path], work: Path, remote: str) -> float:
    from bench.peers._compat import stub_torchvision
    stub_torchvision()
    from streaming import MDSWriter

    local = work / "mds-out"
    shutil.rmtree(local, ignore_errors=True)
    t0 = time.perf_counter()
    with MDSWriter(out=(str(local), remote), columns={"text": "str"}, compression="zstd", progress_bar=False) as w:
        for p in shards:
            for item in _texts(str(p)):
                w.write(item)
    return time.perf_counter() - t0


def convert_litdata(shards: list[Path], work: Path, remote: str, endpoint: str) -> float:
    """``optimize`` into a local directory, then the directory uploaded as is (LitData's own
    ``output_dir='s3://...'`` upload goes through obstore, which refuses the plain-http endpoint)."""
    import boto3
    from litdata import optimize

    local = work / "litdata-out"
    shutil.rmtree(local, ignore_errors=True)
    t0 = time.perf_counter()
    optimize(fn=_texts, inputs=[str(p) for p in shards], output_dir=str(local), chunk_bytes="64MB",
             compression="zstd", num_workers=1, verbose=False, start_method="fork")
    bucket, prefix = remote[len("s3://"):].split("/", 1)
    client = boto3.client("s3", endpoint_url=endpoint)
    for f in sorted(local.iterdir()):
        client.upload_file(str(f), bucket, f"{prefix}/{f.name}")
    return time.perf_counter() - t0


def read(peer: str, remote: str, cache: str) -> dict:
    """Stream every sample's text once (shuffled); text MB/s from the dataset's construction
    (imports excluded, as for mixsql's figures, which start after planning)."""
    if peer == "mosaic_streaming":
        from bench.peers._compat import stub_torchvision
        stub_torchvision()
        from streaming import StreamingDataset
        from streaming.base.util import clean_stale_shared_memory
        clean_stale_shared_memory()
        t0 = time.perf_counter()
        # batch_size: the per-device batch Mosaic partitions and prefetches by (8 x batch_size ahead);
        # 64, the batches mixsql's torch figure reads (batch_size=1 leaves its reader waiting on ticks)
        ds = StreamingDataset(remote=remote, local=cache, shuffle=True, shuffle_seed=1, batch_size=64)
    else:
        from litdata import StreamingDataset
        from litdata.streaming import downloader
        # LitData fetches chunks with obstore, whose client options are fixed in the module and
        # refuse a plain-http endpoint (real S3 is https): allow http, nothing else changes.
        downloader._OBSTORE_CLIENT_OPTIONS = {**downloader._OBSTORE_CLIENT_OPTIONS, "allow_http": "true"}
        t0 = time.perf_counter()
        ds = StreamingDataset(remote, cache_dir=cache, shuffle=True, seed=1,
                              storage_options={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    n, first = 0, None
    for ex in ds:
        n += len(ex["text"])
        if first is None:
            first = time.perf_counter() - t0
    dt = time.perf_counter() - t0
    return {"mb_s": n / dt / 1e6, "first_sample_s": first, "chars": n}


def convert_all(shards: list[Path], work: Path, bucket: str, endpoint: str) -> dict:
    """Both peers' datasets in the bucket; ``{peer: remote or 'not run: why'}`` and their times."""
    out: dict = {}
    for peer, module in PEERS.items():
        try:
            __import__(module) if peer != "mosaic_streaming" else _import_mosaic()
        except Exception as exc:  # noqa: BLE001 - a peer that does not import is reported, not fatal
            out[peer] = {"status": f"not run: {module} does not import ({type(exc).__name__}: {exc})"}
            continue
        remote = f"s3://{bucket}/{peer}"
        try:
            if peer == "mosaic_streaming":
                secs = convert_mosaic(shards, work, remote)
            else:
                secs = convert_litdata(shards, work, remote, endpoint)
        except Exception as exc:  # noqa: BLE001 - reported next to the figures
            out[peer] = {"status": f"not run: conversion failed ({type(exc).__name__}: {exc})"}
            continue
        out[peer] = {"status": "ok", "remote": remote, "convert_s": round(secs, 2)}
    return out


def _import_mosaic() -> None:
    from bench.peers._compat import stub_torchvision
    stub_torchvision()
    import streaming  # noqa: F401


def version(peer: str) -> str:
    from importlib.metadata import version as v
    return v({"mosaic_streaming": "mosaicml-streaming", "litdata": "litdata"}[peer])


if __name__ == "__main__":
    kind, peer, remote, cache = sys.argv[1:5]
    if kind != "read":
        raise SystemExit(f"unknown measurement {kind!r}")
    try:
        got = read(peer, remote, cache)
    except Exception as exc:  # noqa: BLE001 - a failed peer read is a reported figure, not the bench's end
        got = {"mb_s": float("nan"), "first_sample_s": float("nan"), "error": f"{type(exc).__name__}: {exc}"}
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    print(json.dumps({**got, "max_rss_mb": rss}))
