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
import time
from collections import Counter
from pathlib import Path

import numpy as np
import zstandard
from rich.console import Console
from rich.table import Table

DEMO_SQL = """SELECT * FROM samples
WHERE language = 'en' AND quality > 0.2
MIX BY domain WITH (web 0.6, code 0.3, books 0.1)
LIMIT 48 CHUNKS
SETTINGS (seed = 7, chunk_size = 64)"""

EXPLAIN_COLUMNS = ("group", "rows", "bytes", "weight", "samples_needed", "epochs_needed", "dry_at_chunk")

REGISTER_SQL = """CREATE SOURCE demo FROM '{pattern}' FORMAT jsonl WITH (
    domain = 'meta.redpajama_set_name', language = 'meta.language', quality = 'meta.quality::DOUBLE')"""

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


def _arrow_table(console: Console, table, title: str) -> None:
    view = Table(title=title, title_justify="left")
    for name in table.column_names:
        view.add_column(name)
    for row in table.to_pylist():
        view.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(view)


def run_demo(catalog: str | Path = "./mixsql_catalog", seq_len: int = 256, batch_size: int = 8,
             console: Console | None = None) -> dict:
    """Run the quickstart job; returns a summary (sequences, tokens, realised shares)."""
    from . import connect
    from .packing import Packer
    from .readers import ChunkReader
    from .tokenize import ByteTokenizer

    console = console or Console()
    catalog = Path(catalog)
    data_dir = catalog / "demo_data"
    if not data_dir.exists():
        write_demo_corpus(data_dir)
        console.print(f"[bold]1.[/] wrote a demo corpus of 6 .jsonl.zst shards to {data_dir}")
    else:
        console.print(f"[bold]1.[/] demo corpus already at {data_dir}")
    con = connect(str(catalog))
    cur = con.cursor()
    cur.execute("SHOW SOURCES")
    if "demo" in {row[0] for row in cur.fetchall()}:
        cur.execute("REFRESH SOURCE demo")
        console.print("[bold]2.[/] source [cyan]demo[/] already registered: refreshed it")
    else:
        cur.execute(REGISTER_SQL.format(pattern=(data_dir / "*.jsonl.zst").as_posix()))
        console.print("[bold]2.[/] registered source [cyan]demo[/]")
    cur.execute("SELECT domain, language, count(*) AS samples, sum(n_bytes) AS bytes "
                "FROM samples WHERE source = 'demo' GROUP BY ALL ORDER BY ALL")
    _arrow_table(console, cur.fetch_arrow_table(), "what is registered")

    console.print(f"[bold]3.[/] the mixture:\n[green]{DEMO_SQL}[/]")
    cur.execute("EXPLAIN MIX " + DEMO_SQL)
    plan = cur.fetch_arrow_table()
    _arrow_table(console, plan.select([c for c in EXPLAIN_COLUMNS if c in plan.column_names]), "EXPLAIN MIX")

    started = time.perf_counter()
    cur.execute(DEMO_SQL)
    reader = ChunkReader(cur.mix_stream.files)
    tokenizer = ByteTokenizer()
    packer = Packer(seq_len, eos_id=tokenizer.eos_id)
    groups = [g.path for g in cur.mix_stream.spec.groups]
    targets = {g.path: g.weight for g in cur.mix_stream.spec.groups}
    delivered: Counter = Counter()
    batch: list[np.ndarray] = []
    n_batches = n_tokens = 0

    def emit(seqs) -> None:
        nonlocal n_batches, n_tokens
        for seq in seqs:
            batch.append(seq.ids)
            n_tokens += seq.length
            if len(batch) == batch_size:
                n_batches += 1
                if n_batches <= 3:
                    console.print(f"   batch {n_batches}: input_ids {np.stack(batch).shape} int32")
                batch.clear()

    for chunk in cur.pointer_chunks():
        samples = reader.read(chunk)
        delivered.update(samples.column("group").to_pylist())
        ids = tokenizer.encode_batch(samples.column("text").to_pylist())
        for doc, gid in zip(ids, samples.column("group_id").to_pylist()):
            emit(packer.add(doc, gid))
    emit(packer.flush())
    if batch:
        n_batches += 1
    reader.close()
    elapsed = time.perf_counter() - started
    total = sum(delivered.values())
    shares = Table(title="4. streamed: realised share of samples vs target", title_justify="left")
    for col in ("group", "samples", "realised", "target"):
        shares.add_column(col)
    for g in groups:
        shares.add_row(g, str(delivered[g]), f"{delivered[g] / total:.4f}", f"{targets[g]:.4f}")
    console.print(shares)
    console.print(f"streamed {total} samples -> {n_batches} packed batches of {batch_size} x {seq_len + 1} "
                  f"tokens ({n_tokens} tokens) in {elapsed:.2f} s")
    con.close()
    return {"samples": total, "batches": n_batches, "tokens": n_tokens,
            "shares": {g: delivered[g] / total for g in groups}, "targets": targets}
