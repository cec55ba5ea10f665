"""Storage: streaming from local .jsonl.zst and from an S3 bucket, the node cache cold and warm.

``python -m bench storage [--quick]`` generates a SlimPajama-shaped corpus (16 single-frame
``.jsonl.zst`` shards, every shard holding every domain; 60 MB of text with --quick, else 500 MB),
starts moto's S3 server on 127.0.0.1 (:mod:`bench.s3server`), uploads the shards and reports, as
medians of 5 interleaved rounds (min-max; the machine is shared, so absolute figures are noisy; the
1-minute load average at the start of each round is recorded):

* ``sequential_mb_s``      a plain sequential decompress + JSON parse of the shards (text MB/s)
* ``local_cold_mb_s`` / ``local_warm_mb_s``   a shuffled mixture (``MIX BY`` domain ``WITH NATURAL``)
  streamed as sample text by one process (``ChunkReader.prefetch`` over ``MixStream.chunks()``,
  node-cache fills started 64 chunks ahead with ``ahead=``) from
  the local shards, with the node cache empty (every shard decompressed once, as in a first epoch)
  / filled, from the end of planning to the last sample; ``*_vs_sequential`` = ratio (target
  >= 0.7); ``steady_mb_s`` excludes the first chunk
* ``cpu_s`` / ``*_vs_sequential_cpu``  CPU seconds of the sequential pass (its one thread) and of
  each stream (all its threads: reading, node-cache fills, composing chunks), and the ratio of
  CPU seconds per text byte, sequential / stream: the work each costs, which the machine's load
  does not change (wall-clock ratios under load depend on how many threads each one runs)
* ``local_cold_unbounded_mb_s``  the cold stream with ``shuffle_shards = 0`` (a chunk's blocks from
  anywhere in the group: the permutation before shard windows), for comparison
* ``first_sample_s``       seconds from the end of planning to the first chunk's text (cold: rows are
  served from the node-cache fills' temporary files as soon as the bytes they need are written)
* ``files_per_chunk``      distinct files a 512-sample chunk reads (mean, max), default shard window
  vs ``shuffle_shards = 0``
* ``torch``                the same stream through ``MixDataset`` and a ``DataLoader`` with 2 workers
  (warm cache; batches of 64 samples as lists): text MB/s, first sample after iteration starts (workers start and plan), and each
  worker's peak RSS (``VmHWM``, which counts the pages shared with the parent) and its private
  memory at the end (``Private_*`` of ``smaps_rollup``); target < 512 MB. ``torch_cold``: the same
  with an empty node cache (each worker starts fills for its next 64 chunks: ``prefetch_ahead``)
* ``max_rss_mb``           peak RSS of the single-process streams, local / from the bucket
* ``s3_cold_mb_s`` / ``s3_warm_mb_s``  the same stream from the bucket (objects through the node
  cache); ``s3_warm_vs_local`` (target >= 0.9)
* ``register_local_mb_s`` / ``register_s3_mb_s``  registration throughput (decompressed MB/s)
* ``random_row_*_cold_s`` / ``random_row_*_cached_s``  one random row of a large single-frame
  shard in the bucket (1 GB, or 100 MB with --quick): fetched and decompressed into the cache vs.
  cached, timed after the process' first request to the store (client start-up)
* ``shuffle_quality``      the permutation itself (no I/O), on a group of 64 files x 2,000 rows for
  shard windows of 1, 2, 4, 8 and all files, against a uniform permutation: median distance in the
  stream between samples that were neighbours in their file (as a fraction of the group; uniform:
  0.293; the blocks of 16 keep most neighbours within one sub-window, whatever the shard window),
  the share of such neighbours less than one chunk (512) apart (uniform: ~0.008), the median span
  of a file's samples in the stream (fraction of the group; uniform: ~1; a shard window bounds it
  near shards / files) and files per 512-sample chunk (the batch's diversity; uniform: all 64)
* ``peers``                Mosaic Streaming and LitData reading the same documents from the same
  bucket, cold and warm (:mod:`bench.storage_peers`), with ``mixsql_s3_*`` end to end beside them

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
ROUNDS = 5
MIX = ("SELECT * FROM samples MIX BY domain WITH NATURAL "
       "SETTINGS (seed = {seed}, on_exhausted = 'stop', shuffle_shards = {shards})")
DEFAULT_SHARDS = 4
# issue 13's read-path targets: stream >= 70% of a sequential decompress + parse, first sample within
# 0.2 s of the plan, each worker's RSS under 512 MB, a warm bucket >= 90% of local disk
TARGETS = {"stream_vs_sequential": 0.7, "first_sample_s": 0.2, "worker_rss_mb": 512, "s3_warm_vs_local": 0.9}


def mix_sql(seed: int = 1, shards: int = DEFAULT_SHARDS) -> str:
    return MIX.format(seed=seed, shards=shards)


# ----------------------------------------------------------------------------- measured in a child

def stream(catalog: str, cache_dir: str, sql: str) -> dict:
    """Stream the mixture's sample text once; text MB/s after planning, first-sample latency,
    files per chunk."""
    os.environ["MIXSQL_CACHE_DIR"] = cache_dir
    import numpy as np
    import pyarrow.compute as pc

    from mixsql.readers import ChunkReader
    from mixsql.stream import MixStream

    t0 = time.perf_counter()
    st = MixStream.open(catalog, sql, user_columns=False)
    t1, c1 = time.perf_counter(), time.process_time()
    reader = ChunkReader(st.files)
    n, first, n_first, files = 0, None, 0, []
    for chunk, data in reader.prefetch(st.chunks(), depth=4, ahead=st.chunks()):
        n += int(pc.sum(pc.binary_length(data.column("text"))).as_py() or 0)   # = characters (ASCII)
        files.append(len(np.unique(chunk.column("file_id").to_numpy(zero_copy_only=False))))
        if first is None:
            first, n_first = time.perf_counter() - t1, n
    reader.close()
    dt, cpu = time.perf_counter() - t1, time.process_time() - c1
    return {"mb_s": n / dt / 1e6, "steady_mb_s": (n - n_first) / max(dt - first, 1e-9) / 1e6,
            "first_sample_s": first, "plan_s": t1 - t0, "bytes": n, "cpu_s": cpu,
            "files_per_chunk_mean": float(np.mean(files)), "files_per_chunk_max": int(max(files))}


def _memory_report() -> dict:
    """This process' peak RSS and private memory now (MB)."""
    out = {"peak_rss_mb": _peak_rss_mb()}
    with open("/proc/self/smaps_rollup") as f:
        out["private_mb"] = sum(int(line.split()[1]) for line in f if line.startswith("Private_")) / 1024
    return out


def stream_torch(catalog: str, cache_dir: str, sql: str, workers: str) -> dict:
    """The stream through ``MixDataset`` + ``DataLoader(num_workers=workers)``: text MB/s from the
    start of iteration, first sample, and each worker's memory at its end."""
    os.environ["MIXSQL_CACHE_DIR"] = cache_dir
    import torch.utils.data as tud

    from mixsql.torch import MixDataset

    class Reporting(tud.IterableDataset):
        """The dataset's samples, then one memory report of the worker that read them."""

        def __init__(self, inner):
            self.inner = inner

        def __iter__(self):
            yield from self.inner
            yield {"worker_memory": _memory_report()}

    ds = Reporting(MixDataset(sql, catalog=catalog))
    t0 = time.perf_counter()
    n, first, workers_mem = 0, None, []
    for batch in tud.DataLoader(ds, batch_size=64, num_workers=int(workers), collate_fn=list):
        for item in batch:
            if "worker_memory" in item:
                workers_mem.append(item["worker_memory"])
                continue
            n += len(item["text"])
        if first is None:
            first = time.perf_counter() - t0
    dt = time.perf_counter() - t0
    return {"mb_s": n / dt / 1e6, "first_sample_s": first, "bytes": n,
            "worker_peak_rss_mb": max(w["peak_rss_mb"] for w in workers_mem),
            "worker_private_mb": max(w["private_mb"] for w in workers_mem)}


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
    return _child_module("bench.storage", kind, *args, env=env)


def _child_module(module: str, *args, env: dict | None = None) -> dict:
    """``python -m module args...`` in a fresh process; the JSON of its last stdout line."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], stdout=subprocess.PIPE,
                          env={**os.environ, **(env or {})}, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode:
        raise RuntimeError(f"{module} {' '.join(map(str, args[:1]))} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the parent

def sequential(files: list[Path]) -> dict:
    """Text MB/s of a plain sequential decompress + JSON parse of ``files`` (one thread), and the
    CPU seconds it took."""
    import orjson
    import zstandard

    t0, c0 = time.perf_counter(), time.thread_time()
    n = 0
    for p in files:
        data = zstandard.ZstdDecompressor().decompress(p.read_bytes(), max_output_size=1 << 34)
        for line in data.splitlines():
            if line:
                n += len(orjson.loads(line)["text"])
    return {"mb_s": n / (time.perf_counter() - t0) / 1e6, "cpu_s": time.thread_time() - c0, "bytes": n}


def _cpu_ratio(seq: list[dict], streams: list[dict]) -> float:
    """Median over rounds of (sequential CPU s per byte) / (stream CPU s per byte)."""
    def per_byte(xs):
        return statistics.median(x["cpu_s"] / x["bytes"] for x in xs)

    return round(per_byte(seq) / per_byte(streams), 3)


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


def shuffle_quality(n_files: int = 64, rows: int = 2000, chunk: int = 512) -> dict:
    """The permutation alone: neighbour distances and files per chunk, per shard window, vs uniform."""
    import numpy as np

    from mixsql.shuffle import GroupSequence
    from mixsql.spec import Shuffle

    n = n_files * rows
    files = np.repeat(np.arange(n_files, dtype=np.int64), rows)
    same_file = files[1:] == files[:-1]

    def stats(pos_of: np.ndarray, order: np.ndarray) -> dict:
        d = np.abs(pos_of[1:] - pos_of[:-1])[same_file]
        per_chunk = [len(np.unique(files[order[a:a + chunk]])) for a in range(0, n, chunk)]
        by_file = pos_of.reshape(n_files, rows)
        span = (by_file.max(axis=1) - by_file.min(axis=1)) / n
        return {"neighbour_distance_median": round(float(np.median(d)) / n, 4),
                "neighbours_within_chunk": round(float(np.mean(d < chunk)), 4),
                "file_span_median": round(float(np.median(span)), 4),
                "files_per_chunk": float(np.median(per_chunk))}

    out = {}
    for label, shards in (("shards_1", 1), ("shards_2", 2), ("shards_4", 4), ("shards_8", 8), ("shards_all", 0)):
        seq = GroupSequence(np.arange(n, dtype=np.int64), 1, 0, Shuffle(shards=shards), files=files)
        order = seq.positions(0, 0, n)
        pos_of = np.empty(n, np.int64)
        pos_of[order] = np.arange(n)
        out[label] = stats(pos_of, order)
    order = np.random.Generator(np.random.PCG64(1)).permutation(n)
    pos_of = np.empty(n, np.int64)
    pos_of[order] = np.arange(n)
    out["uniform"] = stats(pos_of, order)
    out["group"] = f"{n_files} files x {rows} rows, block 16, window 64"
    return out


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def run(quick: bool = False) -> dict:
    import boto3

    from . import storage_peers
    from .s3server import CREDENTIALS, MotoServer

    mb, big_mb = (60, 100) if quick else (500, 1000)
    reg_rounds = peer_rounds = ROUNDS   # every figure a median of 5 interleaved rounds
    data = ROOT / f"corpus-{mb}mb"
    if not (data / "manifest.json").exists():
        corpus_mod.generate(data, mb=mb, seed=0, parquet=False, shard_mb=mb / 16)
    shards = sorted((data / "jsonl").glob("*.jsonl.zst"))
    server = MotoServer()
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": server.url, "S3_ENDPOINT_URL": server.url}
    os.environ.update(env)
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
        for _ in range(reg_rounds):
            reg["local"].append(_register(cats["local"], str(data / "jsonl" / "*.jsonl.zst"), env))
            reg["s3"].append(_register(cats["s3"], f"s3://{BUCKET}/web/*.jsonl.zst", env))
        _register(cats["big"], f"s3://{BUCKET}/big/*.jsonl.zst", env)

        def cold_warm(where: str, seed: int) -> None:
            cache = ROOT / f"cache-{where}"
            shutil.rmtree(cache, ignore_errors=True)
            runs[f"{where}_cold"].append(_child("stream", cats[where], cache, mix_sql(seed), env=env))
            runs[f"{where}_warm"].append(_child("stream", cats[where], cache, mix_sql(seed), env=env))

        def unbounded(seed: int) -> None:
            cache = ROOT / "cache-unbounded"
            shutil.rmtree(cache, ignore_errors=True)
            runs["local_cold_unbounded"].append(_child("stream", cats["local"], cache, mix_sql(seed, 0), env=env))

        def torch_workers(seed: int) -> None:
            cache = ROOT / "cache-torch"
            shutil.rmtree(cache, ignore_errors=True)
            runs["torch_cold"].append(_child("stream_torch", cats["local"], cache, mix_sql(seed), 2, env=env))
            runs["torch"].append(_child("stream_torch", cats["local"], ROOT / "cache-local", mix_sql(seed), 2,
                                        env=env))

        steps = [lambda seed: runs["seq"].append(sequential(shards)),
                 lambda seed: cold_warm("local", seed), lambda seed: cold_warm("s3", seed), unbounded]
        runs: dict = {k: [] for k in ("seq", "local_cold", "local_warm", "s3_cold", "s3_warm",
                                      "local_cold_unbounded", "torch", "torch_cold")}
        loads = []
        for r in range(ROUNDS):   # every measurement once per round, in an order rotated every round
            loads.append(_load())
            for step in steps[r % len(steps):] + steps[:r % len(steps)]:
                step(r + 1)
            torch_workers(r + 1)   # warm: after the local warm pass of the round (its cache is filled)
        cache = ROOT / "cache-big"
        cold, cached = [], []
        for r in range(ROUNDS):
            shutil.rmtree(cache, ignore_errors=True)
            where = (0.37, 0.71, 0.93, 0.18, 0.55)[r]
            cold.append(_child("random_row", cats["big"], cache, where, env=env)["seconds"])
            cached.append(_child("random_row", cats["big"], cache, where / 2, env=env)["seconds"])
        peers = _peers(storage_peers, shards, server.url, peer_rounds, env)
    finally:
        server.stop()

    def med(key, field="mb_s"):
        return _median([x[field] for x in runs[key]])

    seq = _median([x["mb_s"] for x in runs["seq"]])["median"]
    out = {
        "corpus_mb": mb, "shards": len(shards), "rounds": ROUNDS, "load_average_1min_per_round": loads,
        "sequential_mb_s": med("seq"),
        "local_cold_mb_s": med("local_cold"), "local_warm_mb_s": med("local_warm"),
        "local_cold_vs_sequential": round(med("local_cold")["median"] / seq, 3),
        "local_warm_vs_sequential": round(med("local_warm")["median"] / seq, 3),
        # CPU seconds per byte, sequential / stream: the same comparison, independent of how much of
        # the shared machine each measurement got (the stream's CPU counts all its threads)
        "cpu_s": {k: med(k, "cpu_s") for k in ("seq", "local_cold", "local_warm")},
        "local_cold_vs_sequential_cpu": _cpu_ratio(runs["seq"], runs["local_cold"]),
        "local_warm_vs_sequential_cpu": _cpu_ratio(runs["seq"], runs["local_warm"]),
        "local_cold_unbounded_mb_s": med("local_cold_unbounded"),
        "steady_mb_s": {k: med(k, "steady_mb_s") for k in ("local_cold", "local_warm", "s3_cold", "s3_warm")},
        "first_sample_s": {k: med(k, "first_sample_s") for k in ("local_warm", "local_cold", "s3_warm", "s3_cold")},
        "plan_s": med("local_warm", "plan_s"),
        "files_per_chunk": {"shards_4": {"mean": med("local_cold", "files_per_chunk_mean")["median"],
                                         "max": max(x["files_per_chunk_max"] for x in runs["local_cold"])},
                            "shards_all": {"mean": med("local_cold_unbounded", "files_per_chunk_mean")["median"],
                                           "max": max(x["files_per_chunk_max"] for x in runs["local_cold_unbounded"])}},
        "torch_cold": {"workers": 2, "mb_s": med("torch_cold"), "first_sample_s": med("torch_cold", "first_sample_s"),
                       "worker_peak_rss_mb": round(max(x["worker_peak_rss_mb"] for x in runs["torch_cold"]), 1)},
        "torch": {"workers": 2, "mb_s": med("torch"), "first_sample_s": med("torch", "first_sample_s"),
                  "worker_peak_rss_mb": round(max(x["worker_peak_rss_mb"] for x in runs["torch"]), 1),
                  "worker_private_mb": round(max(x["worker_private_mb"] for x in runs["torch"]), 1),
                  "main_peak_rss_mb": round(max(x["max_rss_mb"] for x in runs["torch"]), 1)},
        "max_rss_mb": {w: round(max(x["max_rss_mb"] for k in ("cold", "warm") for x in runs[f"{w}_{k}"]), 1)
                       for w in ("local", "s3")},
        "s3_cold_mb_s": med("s3_cold"), "s3_warm_mb_s": med("s3_warm"),
        "s3_warm_vs_local": round(med("s3_warm")["median"] / med("local_warm")["median"], 3),
        "register_local_mb_s": _median(reg["local"]), "register_s3_mb_s": _median(reg["s3"]),
        f"random_row_{big_mb}mb_cold_s": _median(cold), f"random_row_{big_mb}mb_cached_s": _median(cached),
        "shuffle_quality": shuffle_quality(),
        "peers": {**peers, "mixsql_s3_cold_mb_s": med("s3_cold"), "mixsql_s3_warm_mb_s": med("s3_warm")},
        "targets": TARGETS,
    }
    out["_notes"] = ("Shared 2-core machine (1-minute load averages per round above): absolute figures are "
                     "noisy; medians [min, max] of %d interleaved rounds (registration, the random row and the "
                     "peers too). Text MB/s = millions of characters/s (ASCII corpus), from the end "
                     "of planning (mixsql) or the dataset's construction (peers) to the last sample. "
                     "Peers read in one process with shuffle on; mixsql_s3_* are the matching mixsql figures."
                     % ROUNDS)
    return out


def _peers(storage_peers, shards: list[Path], endpoint: str, rounds: int, env: dict) -> dict:
    """Mosaic Streaming / LitData over the same bucket: cold and warm text MB/s, first sample, RSS."""
    conv = storage_peers.convert_all(shards, ROOT / "peers", BUCKET, endpoint)
    out: dict = {}
    runs: dict = {}
    for r in range(rounds):
        for peer, c in (list(conv.items()) if r % 2 == 0 else list(conv.items())[::-1]):
            if c["status"] != "ok":
                continue
            cache = ROOT / f"peer-cache-{peer}"
            shutil.rmtree(cache, ignore_errors=True)
            for kind in ("cold", "warm"):
                runs.setdefault(peer, {}).setdefault(kind, []).append(
                    _child_module("bench.storage_peers", "read", peer, c["remote"], cache, env=env))
    for peer, c in conv.items():
        if c["status"] != "ok":
            out[peer] = c["status"]
            continue
        got = runs[peer]
        out[peer] = {"version": storage_peers.version(peer), "convert_s": c["convert_s"],
                     **{f"{k}_mb_s": _median([x["mb_s"] for x in got[k]]) for k in ("cold", "warm")},
                     **{f"{k}_first_sample_s": _median([x["first_sample_s"] for x in got[k]]) for k in ("cold", "warm")},
                     "max_rss_mb": round(max(x["max_rss_mb"] for k in got for x in got[k]), 1)}
    return out


def main(argv: list[str]) -> None:
    kind, args = argv[0], argv[1:]
    if kind == "stream":
        out = stream(*args)
    elif kind == "stream_torch":
        out = stream_torch(*args)
    elif kind == "random_row":
        out = random_row(args[0], args[1], float(args[2]))
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    print(json.dumps({**out, "max_rss_mb": _peak_rss_mb()}))


if __name__ == "__main__":
    main(sys.argv[1:])
