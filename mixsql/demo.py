"""``mixsql demo``: the quickstart job, end to end, on the embedded default catalog.

1. writes a small SlimPajama-shaped corpus of ``.jsonl.zst`` shards (three sources, two
   languages, a quality score) under ``<catalog>/../mixsql_demo_data``;
2. registers it as source ``demo`` (re-running refreshes it instead);
3. runs ``EXPLAIN MIX`` and a MIX statement through the DB-API cursor;
4. reads the chunks' samples, tokenizes them (byte-level) and packs them into sequences,
   printing the realised share of every group next to its target.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zstandard

DEMO_SQL = """SELECT * FROM samples
WHERE language = 'en' AND quality > 0.2
MIX BY source_domain WITH (web 0.6, code 0.3, books 0.1)
LIMIT 64 CHUNKS
SETTINGS (seed = 7, chunk_size = 64)"""

_DOMAINS = {  # name: (share of documents, mean words, vocabulary flavour)
    "web": (0.6, 120, ["the", "data", "model", "news", "city", "market", "people", "world"]),
    "code": (0.25, 80, ["def", "return", "import", "class", "self", "for", "in", "if"]),
    "books": (0.15, 400, ["chapter", "she", "said", "night", "river", "king", "long", "ago"]),
}


def write_demo_corpus(out_dir: str | Path, n_docs: int = 6000, n_shards: int = 6, seed: int = 0) -> Path:
    """Write a deterministic demo corpus of ``n_shards`` .jsonl.zst files; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.Generator(np.random.PCG64(seed))
    names = list(_DOMAINS)
    shares = np.array([_DOMAINS[n][0] for n in names])
    domains = rng.choice(len(names), size=n_docs, p=shares / shares.sum())
    cctx = zstandard.ZstdCompressor(level=3)
    per_shard = -(-n_docs // n_shards)
    for shard in range(n_shards):
        lines = []
        for i in range(shard * per_shard, min(n_docs, (shard + 1) * per_shard)):
            name = names[domains[i]]
            _, mean_words, vocab = _DOMAINS[name]
            n_words = max(3, int(rng.lognormal(np.log(mean_words), 0.8)))
            words = rng.choice(vocab, size=n_words)
            record = {
                "text": " ".join(words),
                "meta": {
                    "redpajama_set_name": name,
                    "language": "en" if rng.random() < 0.85 else "de",
                    "quality": round(float(rng.random()), 3),
                },
            }
            lines.append(json.dumps(record))
        (out / f"shard-{shard:03d}.jsonl.zst").write_bytes(cctx.compress(("\n".join(lines) + "\n").encode()))
    return out
