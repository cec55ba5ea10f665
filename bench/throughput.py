"""Delivered tokens per CPU-second: mixsql (read .jsonl.zst + BPE + pack + batch) against the
tokenizer alone on the same texts, and mixsql over pre-tokenized Parquet (read + pack only).

    python -m bench throughput [--quick]

Corpus: shards of the SlimPajama-shaped bench corpus (bench.corpus; quick: 3 shards, full: all 5
shards of the 20 MB corpus). Tokenizer alone: the texts in memory, one ``encode_batch_fast`` call
per 512 documents (mixsql's chunk size, and mixsql's own call). mixsql: ``MixDataLoader(batch_size=8,
num_workers=0)`` over ``MixDataset(tokenizer=..., seq_len=2048)`` of every document exactly once
(``MIX BY redpajama_set_name WITH NATURAL``, ``on_exhausted = 'redistribute'``).

Both clocks cover everything: mixsql's from before ``iter()`` (query, first chunk included) to the
last batch. CPU time is process CPU time of the whole process tree (all threads, psutil); the
tokenizer is pinned to one thread (RAYON_NUM_THREADS=1) on both sides so both use the same
compute. Wall time is reported separately. The three sides run ``reps`` times, interleaved;
every figure is the median with its min..max. Target: mixsql's overhead < 10%.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHUNK = 512
SEQ_LEN = 2048
TARGET_OVERHEAD_PCT = 10


def _link_shards(corpus: Path, sub: str, pattern: str, n: int, dest: Path) -> list[Path]:
    dest.mkdir(parents=True)
    out = []
    for p in sorted((corpus / sub).glob(pattern))[:n]:
        (dest / p.name).symlink_to(p)
        out.append(p)
    return out


def run(quick: bool = True, reps: int = 5) -> dict:
    import pyarrow.parquet as pq

    from mixsql.catalog import Catalog
    from mixsql.registration import create_source
    from mixsql.torch import MixDataLoader, MixDataset

    from . import corpus as corpus_mod
    from .peers.common import TreeMeter, encode_flat
    from .results import fmt_spread, spread
    from .tokenizer import load

    corpus = corpus_mod.ensure_corpus(20)
    shards = 3 if quick else 5
    tmp = Path(tempfile.mkdtemp(prefix="mixsql-bench-throughput-"))
    try:
        _link_shards(corpus, "jsonl", "*.jsonl.zst", shards, tmp / "zst")
        pq_files = _link_shards(corpus, "parquet", "*.parquet", shards, tmp / "pq")
        _link_shards(corpus, "tokenized", "*.parquet", shards, tmp / "tok")
        tok_path = str(corpus / "tokenizer.json")
        texts = [t for p in pq_files for t in pq.read_table(p, columns=["text"]).column("text").to_pylist()]
        cat_dir = tmp / "cat"
        with Catalog(cat_dir) as cat:
            create_source(cat, "zst", str(tmp / "zst" / "*.jsonl.zst"), options={"preset": "slimpajama"},
                          progress=False)
            create_source(cat, "pretok", str(tmp / "tok" / "*.parquet"), format="parquet",
                          options={"tokens": "tokens"}, progress=False)
        tok = load(tok_path)
        meter = TreeMeter()

        def tokenizer_alone():
            c0, w0 = meter.read()
            n = 0
            for i in range(0, len(texts), CHUNK):
                _, lengths = encode_flat(tok, texts[i:i + CHUNK])
                n += int(lengths.sum()) + len(lengths)          # + EOS per document, as packed
            c1, w1 = meter.read()
            return n, c1 - c0, w1 - w0

        def mixsql(source: str):
            sql = (f"SELECT * FROM samples WHERE source = '{source}' MIX BY redpajama_set_name WITH NATURAL "
                   f"SETTINGS (chunk_size = {CHUNK}, seed = 1, on_exhausted = 'redistribute')")
            c0, w0 = meter.read()
            ds = MixDataset(sql, catalog=str(cat_dir), tokenizer=tok_path, seq_len=SEQ_LEN)
            n = 0
            for b in MixDataLoader(ds, batch_size=8, num_workers=0):
                n += int(b["length"].sum())
            c1, w1 = meter.read()
            return n, c1 - c0, w1 - w0

        sides = {"tokenizer_alone": tokenizer_alone, "mixsql_zst_bpe": lambda: mixsql("zst"),
                 "mixsql_pretokenized": lambda: mixsql("pretok")}
        runs = {k: [] for k in sides}
        names = list(sides)
        for r in range(reps):                                   # interleaved, rotated order
            for k in names[r % 3:] + names[:r % 3]:
                runs[k].append(sides[k]())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def per_core(k):
        return spread([n / c for n, c, _ in runs[k]])

    def wall(k):
        return spread([n / w for n, _, w in runs[k]])

    # overhead per round (each round's mixsql against the same round's tokenizer), then the median
    overhead = spread([100 * (1 - (m[0] / m[1]) / (b[0] / b[1]))
                       for m, b in zip(runs["mixsql_zst_bpe"], runs["tokenizer_alone"])])
    out = {"shards": shards, "docs": len(texts), "seq_len": SEQ_LEN, "reps": reps,
           "tokens": {k: runs[k][0][0] for k in runs}}
    for k in sides:
        out[f"{k}_tokens_per_cpu_s"] = fmt_spread(per_core(k))
        out[f"{k}_tokens_per_wall_s"] = fmt_spread(wall(k))
    out["overhead_pct"] = fmt_spread(overhead)
    out["target_overhead_pct"] = TARGET_OVERHEAD_PCT
    out["overhead_target_met"] = overhead["median"] < TARGET_OVERHEAD_PCT
    out["_notes"] = (f"Each figure: median (min..max) of {reps} interleaved runs per side; overhead_pct per round "
                     "= 1 - (mixsql tokens per CPU-s) / (tokenizer-alone tokens per CPU-s of the same round). "
                     "Clocks include mixsql's query and first chunk. Shared 2-core machine: other jobs ran "
                     "at the same time.")
    return out


if __name__ == "__main__":
    import sys

    print(json.dumps(run(quick="--full" not in sys.argv), indent=2, default=str))
