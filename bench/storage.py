"""Storage: streaming from local .jsonl.zst and from an S3 bucket, the node cache cold and warm.

``python -m bench storage [--quick]`` generates a SlimPajama-shaped corpus (16 single-frame
``.jsonl.zst`` shards; 60 MB of text with --quick, else 500 MB), starts moto's S3 server on
127.0.0.1 (:mod:`bench.s3server`), uploads the shards and reports, as medians of interleaved
rounds (min-max in brackets; the machine is shared, so absolute figures are noisy):

* ``sequential_mb_s``      a plain sequential decompress + JSON parse of the shards (text MB/s)
* ``local_warm_mb_s`` / ``local_cold_mb_s``   a shuffled mixture (``MIX BY`` domain ``WITH NATURAL``)
  streamed as sample text by one process (``ChunkReader`` with prefetch over ``MixStream``) from
  the local shards, with the node cache warm / empty, after the first chunk (steady state);
  ``*_vs_sequential`` = ratio (target >= 0.7); ``end_to_end_mb_s`` includes the first chunk
* ``first_sample_s``       seconds from the end of planning to the first chunk's text
* ``max_rss_mb``           peak RSS of the streaming process, local / from the bucket (target < 512)
* ``s3_cold_mb_s`` / ``s3_warm_mb_s``  the same stream from the bucket (objects through the node
  cache); ``s3_warm_vs_local`` (target >= 0.9)
* ``register_local_mb_s`` / ``register_s3_mb_s``  registration throughput (decompressed MB/s)
* ``random_row_cold_s`` / ``random_row_cached_s``  one random row of a large single-frame shard in
  the bucket (1 GB, or 100 MB with --quick): fetched and decompressed into the cache vs. cached,
  timed after the process' first request to the store (client start-up)
* Mosaic Streaming and LitData over the same bucket: reported as not run when not installed.

Text MB/s are millions of characters per second (the corpus is ASCII: byte-level tokens/s / 1e6). Each streaming
measurement runs in its own process (``python -m bench.storage stream ...``).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import corpus as corpus_mod

ROOT = Path(os.environ.get("MIXSQL_BENCH_DIR", "/tmp/mixsql_bench")) / "storage"
BUCKET = "bench"
MIX = ("SELECT * FROM samples MIX BY domain WITH NATURAL SETTINGS (seed = 1, on_exhausted = 'stop')")


# ----------------------------------------------------------------------------- measured in a child

def stream(catalog: str, cache_dir: str) -> dict:
    """Stream the mixture's sample text once; text MB/s after planning, first-sample latency."""
    os.environ["MIXSQL_CACHE_DIR"] = cache_dir
    import pyarrow.compute as pc

    from mixsql.readers import ChunkReader
    from mixsql.stream import MixStream

    t0 = time.perf_counter()
    st = MixStream.open(catalog, MIX, user_columns=False)
    t1 = time.perf_counter()
    reader = ChunkReader(st.files)
    n, first, n_first = 0, None, 0
    for _, data in reader.prefetch(st.chunks(), depth=4):
        n += int(pc.sum(pc.utf8_length(data.column("text"))).as_py() or 0)
        if first is None:
            first, n_first = time.perf_counter() - t1, n
    reader.close()
    dt = time.perf_counter() - t1
    return {"mb_s": n / dt / 1e6, "steady_mb_s": (n - n_first) / max(dt - first, 1e-9) / 1e6,
            "first_sample_s": first, "plan_s": t1 - t0, "bytes": n}


def random_row(catalog: str, cache_dir: str, fraction: float) -> dict:
    """Seconds to read the row at ``fraction`` of the (single) file, through a fresh reader."""
    os.environ["MIXSQL_CACHE_DIR"] = cache_dir
    import pyarrow as pa

    from mixsql import storage
    from mixsql.catalog import Catalog
    from mixsql.readers import ChunkReader

    cat = Catalog(catalog, read_only=True)
    files = cat.files_table()
    storage.stat(files.column("path")[0].as_py())   # first contact with the store: client start-up
    ptr = cat.con.sql(f'SELECT file_id, "row", loc_offset, loc_length FROM sample_index WHERE "row" = '
                      f'(SELECT CAST(floor(count(*) * {fraction}) AS BIGINT) FROM sample_index)').to_arrow_table()
    cat.close()
    ptr = ptr.append_column("group_id", pa.array([0], pa.int32()))
    t0 = time.perf_counter()
    text = ChunkReader(files).read(ptr).column("text")[0].as_py()
    return {"seconds": time.perf_counter() - t0, "chars": len(text)}


def _peak_rss_mb() -> float:
    """This process' peak RSS (VmHWM: since its exec, unlike ru_maxrss, which keeps the forking
    parent's size)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(kind: str, *args, env: dict | None = None) -> dict:
    """Run ``kind`` in a fresh process; its figures, with ``max_rss_mb`` of that process."""
    proc = subprocess.run([sys.executable, "-m", "bench.storage", kind, *map(str, args)], stdout=subprocess.PIPE,
                          env={**os.environ, **(env or {})}, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode:
        raise RuntimeError(f"bench.storage {kind} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the parent

def sequential(files: list[Path]) -> float:
    """Text MB/s of a plain sequential decompress + JSON parse of ``files``."""
    import orjson
    import zstandard

    t0 = time.perf_counter()
    n = 0
    for p in files:
        data = zstandard.ZstdDecompressor().decompress(p.read_bytes(), max_output_size=1 << 34)
        for line in data.splitlines():
            if line:
                n += len(orjson.loads(line)["text"])
    return n / (time.perf_counter() - t0) / 1e6


def _median(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def _register(catalog: Path, pattern: str, env: dict) -> float:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from mixsql.catalog import Catalog
        from mixsql.registration import create_source

        shutil.rmtree(catalog, ignore_errors=True)
        with Catalog(catalog) as cat:
            s = create_source(cat, "web", pattern, options={"domain": "meta.redpajama_set_name"}, progress=False)
        return s["raw_bytes"] / s["seconds"] / 1e6
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _big_shard(path: Path, mb: float) -> None:
    """One single-frame .jsonl.zst of about ``mb`` MB of text (lines of the bench corpus, repeated)."""
    import zstandard

    if path.exists():
        return
    src = ROOT / "big-src"
    if not (src / "manifest.json").exists():
        corpus_mod.generate(src, mb=min(mb, 50), seed=3, parquet=False, shard_mb=min(mb, 50))
    base = b"".join(zstandard.ZstdDecompressor().decompress(p.read_bytes(), max_output_size=1 << 34)
                    for p in sorted((src / "jsonl").glob("*.zst")))
    cctx = zstandard.ZstdCompressor(level=3)
    with open(path, "wb") as out, cctx.stream_writer(out, size=-1) as w:   # one frame
        left = int(mb * 1e6)
        while left > 0:
            part = base if left >= len(base) else base[:base.rfind(b"\n", 0, left) + 1]
            w.write(part)
            left -= max(len(part), 1)


def run(quick: bool = False) -> dict:
    import boto3

    from .s3server import CREDENTIALS, MotoServer

    mb, big_mb, rounds = (60, 100, 3) if quick else (500, 1000, 3)
    data = ROOT / f"corpus-{mb}mb"
    if not (data / "manifest.json").exists():
        corpus_mod.generate(data, mb=mb, seed=0, parquet=False, shard_mb=mb / 16)
    shards = sorted((data / "jsonl").glob("*.jsonl.zst"))
    server = MotoServer()
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": server.url}
    try:
        client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET)
        for p in shards:
            client.upload_file(str(p), BUCKET, f"web/{p.name}")
        big = ROOT / f"big-{big_mb}mb.jsonl.zst"
        _big_shard(big, big_mb)
        client.upload_file(str(big), BUCKET, f"big/{big.name}")

        cats = {"local": ROOT / "cat-local", "s3": ROOT / "cat-s3", "big": ROOT / "cat-big"}
        reg = {"local": [], "s3": []}
        for _ in range(rounds):
            reg["local"].append(_register(cats["local"], str(data / "jsonl" / "*.jsonl.zst"), env))
            reg["s3"].append(_register(cats["s3"], f"s3://{BUCKET}/web/*.jsonl.zst", env))
        _register(cats["big"], f"s3://{BUCKET}/big/*.jsonl.zst", env)

        runs: dict = {k: [] for k in ("seq", "local_cold", "local_warm", "s3_cold", "s3_warm")}
        for r in range(rounds):
            runs["seq"].append({"mb_s": sequential(shards)})
            for where in ("local", "s3"):
                cache = ROOT / f"cache-{where}"
                shutil.rmtree(cache, ignore_errors=True)
                runs[f"{where}_cold"].append(_child("stream", cats[where], cache, env=env))
                runs[f"{where}_warm"].append(_child("stream", cats[where], cache, env=env))
        cache = ROOT / "cache-big"
        cold, cached = [], []
        for r in range(rounds):
            shutil.rmtree(cache, ignore_errors=True)
            where = (0.37, 0.71, 0.93, 0.5, 0.2)[r % 5]
            cold.append(_child("random_row", cats["big"], cache, where, env=env)["seconds"])
            cached.append(_child("random_row", cats["big"], cache, where / 2, env=env)["seconds"])
    finally:
        server.stop()

    def med(key, field="steady_mb_s"):
        return _median([x[field] for x in runs[key]])

    seq = _median([x["mb_s"] for x in runs["seq"]])["median"]
    out = {
        "corpus_mb": mb, "shards": len(shards), "rounds": rounds,
        "sequential_mb_s": med("seq", "mb_s"),
        "local_warm_mb_s": med("local_warm"), "local_cold_mb_s": med("local_cold"),
        "local_warm_vs_sequential": round(med("local_warm")["median"] / seq, 3),
        "local_cold_vs_sequential": round(med("local_cold")["median"] / seq, 3),
        "first_sample_s": {"local_warm": med("local_warm", "first_sample_s"),
                           "local_cold": med("local_cold", "first_sample_s")},
        "end_to_end_mb_s": {k: med(k, "mb_s") for k in ("local_warm", "local_cold", "s3_warm", "s3_cold")},
        "plan_s": med("local_warm", "plan_s"),
        "max_rss_mb": {w: round(max(x["max_rss_mb"] for k in runs if k.startswith(w) for x in runs[k]), 1)
                       for w in ("local", "s3")},
        "s3_cold_mb_s": med("s3_cold"), "s3_warm_mb_s": med("s3_warm"),
        "s3_warm_vs_local": round(med("s3_warm")["median"] / med("local_warm")["median"], 3),
        "register_local_mb_s": _median(reg["local"]), "register_s3_mb_s": _median(reg["s3"]),
        f"random_row_{big_mb}mb_cold_s": _median(cold), f"random_row_{big_mb}mb_cached_s": _median(cached),
        "peers": _peers(),
    }
    out["_notes"] = ("Shared 2-core machine under other helpers' load: absolute figures are noisy; medians "
                     "[min, max] of interleaved rounds. Text MB/s = millions of characters/s (ASCII corpus).")
    return out


def _peers() -> dict:
    """Mosaic Streaming / LitData over the same bucket, when installed."""
    out = {}
    for name, module in (("mosaic_streaming", "streaming"), ("litdata", "litdata")):
        try:
            __import__(module)
        except Exception as exc:  # noqa: BLE001 - a peer that does not import is reported, not fatal
            out[name] = f"not run: {module} does not import ({type(exc).__name__})"
        else:
            out[name] = "not run: the side-by-side bucket read is not implemented yet"
    return out


def main(argv: list[str]) -> None:
    kind, args = argv[0], argv[1:]
    if kind == "stream":
        out = stream(*args)
    elif kind == "random_row":
        out = random_row(args[0], args[1], float(args[2]))
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    print(json.dumps({**out, "max_rss_mb": _peak_rss_mb()}))


if __name__ == "__main__":
    main(sys.argv[1:])
