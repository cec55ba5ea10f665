"""Deterministic SlimPajama-shaped benchmark corpora.

``generate(out_dir, mb, seed)`` writes, under ``out_dir``:

* ``jsonl/chunk-NNNNN.jsonl.zst``  ``{"text": ..., "meta": {"redpajama_set_name": ...}}`` per line,
  documents of all seven domains interleaved, as in SlimPajama's own chunks;
* ``parquet/part-NNNNN.parquet``    the same documents, columns ``text``, ``redpajama_set_name``
  (same shard partition, same order);
* ``manifest.json``                 seed, sizes and per-domain documents / bytes / words.

``tokenize_corpus(out_dir, tokenizer)`` adds ``tokenized/part-NNNNN.parquet`` (``text``,
``tokens`` list<int32>, ``redpajama_set_name``, ``n_tokens``).

Domain byte shares follow SlimPajama's published token proportions (``DOMAINS``); document
lengths are log-normal per domain and span three orders of magnitude (Pile-like: books and
papers long, web and Q&A short); text is word-like (a seeded syllable vocabulary drawn with a
Zipf law, domain-specific words and separators), so a BPE tokenizer sees realistic input.
Same ``(mb, seed)`` gives byte-identical files.

``write_metadata_catalog(catalog_dir, n_rows, seed)`` fills a mixsql catalog with n_rows
metadata-only samples (no data files) for planner / engine scale benchmarks.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

DEFAULT_ROOT = Path(os.environ.get("MIXSQL_BENCH_DIR", "/tmp/mixsql_bench"))


@dataclass(frozen=True)
class Domain:
    name: str            # meta.redpajama_set_name
    share: float         # SlimPajama token share
    median_words: int    # median document length (words)
    sigma: float         # log-normal sigma of the length
    extra: tuple = ()    # domain-specific high-frequency words
    seps: tuple = (0.86, 0.06, 0.06, 0.02)  # P(" "), P(", "), P(". "), P("\n")


DOMAINS: tuple[Domain, ...] = (
    Domain("RedPajamaCommonCrawl", 0.522, 450, 1.1),
    Domain("RedPajamaC4", 0.267, 280, 0.9),
    Domain("RedPajamaGithub", 0.052, 300, 1.2,
           ("def", "return", "self", "=", "(", ")", "{", "}", "import", "if", "for", "in", "int", "None"),
           (0.70, 0.08, 0.02, 0.20)),
    Domain("RedPajamaBook", 0.042, 6000, 0.9),
    Domain("RedPajamaArXiv", 0.046, 3000, 0.8, ("$", "\\frac", "theorem", "\\cite", "lemma", "eq", "=")),
    Domain("RedPajamaWikipedia", 0.038, 350, 1.1, ("born", "century", "references", "category")),
    Domain("RedPajamaStackExchange", 0.033, 220, 1.0, ("Q:", "A:", "answer", "question", "code", "error")),
)
DOMAIN_NAMES = tuple(d.name for d in DOMAINS)
TARGET_SHARES = {d.name: d.share for d in DOMAINS}
# The benchmark's mixture target: upweights the small domains (so it differs from the natural mix).
MIX_TARGET = {
    "RedPajamaCommonCrawl": 0.35, "RedPajamaC4": 0.20, "RedPajamaGithub": 0.12, "RedPajamaBook": 0.08,
    "RedPajamaArXiv": 0.10, "RedPajamaWikipedia": 0.10, "RedPajamaStackExchange": 0.05,
}

SEPARATORS = (" ", ", ", ". ", "\n")
VOCAB_SIZE = 30_000
LENGTH_SPAN = 40.0  # lengths clipped to [median/40, median*40]: a 1600x (3+ orders) span


def _vocabulary(seed: int) -> np.ndarray:
    """VOCAB_SIZE distinct pseudo-words built from syllables (deterministic by seed)."""
    rng = np.random.Generator(np.random.PCG64([seed, 1]))
    onsets = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
              "z", "st", "tr", "pr", "ch", "sh", "th", "gr", "bl", "pl"]
    nuclei = ["a", "e", "i", "o", "u", "ea", "ou", "io", "ai", "y"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "st", "x"]
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < VOCAB_SIZE:
        n_syl = int(rng.choice([1, 1, 2, 2, 2, 3, 3, 4]))
        w = "".join(onsets[rng.integers(len(onsets))] + nuclei[rng.integers(len(nuclei))]
                    + codas[rng.integers(len(codas))] for _ in range(n_syl))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return np.array(words, dtype=object)


class _DomainText:
    """Draws word-like text for one domain: Zipf ranks over a domain-permuted vocabulary."""

    def __init__(self, dom: Domain, vocab: np.ndarray, seed: int, index: int):
        rng = np.random.Generator(np.random.PCG64([seed, 2, index]))
        head, tail = vocab[:300], vocab[300:]
        order = np.concatenate([np.array(dom.extra, dtype=object), head, rng.permutation(tail)])
        ranks = np.arange(1, len(order) + 1, dtype=np.float64)
        p = 1.0 / (ranks + 2.7) ** 1.07
        self.cdf = np.cumsum(p / p.sum())
        # token table: word i with separator j is entry i * 4 + j
        self.table = np.array([w + s for w in order for s in SEPARATORS], dtype=object)
        self.sep_cdf = np.cumsum(dom.seps)
        self.seed, self.index = seed, index

    def words(self, n: int, stream: int = 0) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64([self.seed, 3, self.index, stream]))
        w = np.searchsorted(self.cdf, rng.random(n), side="right").clip(0, len(self.cdf) - 1)
        s = np.searchsorted(self.sep_cdf, rng.random(n) * self.sep_cdf[-1], side="right").clip(0, 3)
        return self.table[w * 4 + s]


def _doc_lengths(dom: Domain, budget_words: int, seed: int, index: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64([seed, 4, index]))
    lo = max(4, int(dom.median_words / LENGTH_SPAN))
    hi = max(lo + 1, int(min(dom.median_words * LENGTH_SPAN, max(budget_words / 3, lo + 1))))
    out: list[np.ndarray] = []
    total = 0
    while total < budget_words:
        n = max(16, int((budget_words - total) / dom.median_words * 1.2) + 16)
        x = np.exp(rng.normal(np.log(dom.median_words), dom.sigma, n)).astype(np.int64).clip(lo, hi)
        cum = np.cumsum(x) + total
        k = int(np.searchsorted(cum, budget_words, side="left")) + 1
        out.append(x[:k])
        total = int(cum[min(k, len(cum)) - 1])
    return np.concatenate(out)


def _avg_bytes_per_word(gen: _DomainText) -> float:
    sample = gen.words(20_000, stream=-1 % 2**32)
    return sum(len(x) for x in sample.tolist()) / len(sample)


def generate(out_dir: str | os.PathLike, mb: float = 30, seed: int = 0, shard_mb: float | None = None,
             parquet: bool = True, progress: bool = False) -> dict:
    """Write a corpus of about ``mb`` MB of text (UTF-8, before compression); return the manifest."""
    out = Path(out_dir)
    (out / "jsonl").mkdir(parents=True, exist_ok=True)
    if parquet:
        (out / "parquet").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    total_bytes = int(mb * 1e6)
    shard_bytes = int((shard_mb or max(4.0, min(256.0, mb / 8))) * 1e6)
    n_shards = max(8, -(-total_bytes // shard_bytes))
    vocab = _vocabulary(seed)
    gens = [_DomainText(d, vocab, seed, i) for i, d in enumerate(DOMAINS)]
    lengths = []
    for i, (d, g) in enumerate(zip(DOMAINS, gens)):
        bpw = _avg_bytes_per_word(g)
        lengths.append(_doc_lengths(d, int(total_bytes * d.share / bpw), seed, i))
    # assign every document a shard and a position: a seeded interleaving of all domains
    dom_of = np.concatenate([np.full(len(x), i, dtype=np.int8) for i, x in enumerate(lengths)])
    rng = np.random.Generator(np.random.PCG64([seed, 5]))
    order = rng.permutation(len(dom_of))
    shard_of = np.empty(len(dom_of), dtype=np.int32)
    shard_of[order] = (np.arange(len(order)) * n_shards) // len(order)
    # documents of each domain are generated in a fixed order (their index within the domain)
    doc_index = np.concatenate([np.arange(len(x)) for x in lengths])
    stats = {d.name: {"docs": 0, "bytes": 0, "words": 0, "min_words": None, "max_words": 0} for d in DOMAINS}
    cctx = zstandard.ZstdCompressor(level=3)
    # texts are generated shard by shard (bounded memory): words of domain i in shard s come from
    # the seeded stream (seed, i, s), so the corpus is a pure function of (mb, seed)
    by_shard = [[] for _ in range(n_shards)]
    for j in order.tolist():
        by_shard[int(shard_of[j])].append(j)
    for s, members in enumerate(by_shard):
        doms = dom_of[members]
        nwords = np.array([lengths[int(dom_of[j])][int(doc_index[j])] for j in members], dtype=np.int64)
        texts: dict[int, str] = {}
        for i, g in enumerate(gens):
            sel = np.flatnonzero(doms == i)
            if not len(sel):
                continue
            words = g.words(int(nwords[sel].sum()), stream=s).tolist()
            pos = 0
            for k in sel.tolist():
                n = int(nwords[k])
                texts[k] = "".join(words[pos:pos + n]).rstrip()
                pos += n
        names, bodies, lines = [], [], []
        for k in range(len(members)):
            d = DOMAINS[int(doms[k])]
            text = texts[k]
            names.append(d.name)
            bodies.append(text)
            lines.append(orjson.dumps({"text": text, "meta": {"redpajama_set_name": d.name}}))
            st = stats[d.name]
            nw = int(nwords[k])
            st["docs"] += 1
            st["bytes"] += len(text.encode())
            st["words"] += nw
            st["min_words"] = nw if st["min_words"] is None else min(st["min_words"], nw)
            st["max_words"] = max(st["max_words"], nw)
        (out / "jsonl" / f"chunk-{s:05d}.jsonl.zst").write_bytes(cctx.compress(b"\n".join(lines) + b"\n"))
        if parquet:
            pq.write_table(pa.table({"text": pa.array(bodies, pa.string()),
                                     "redpajama_set_name": pa.array(names, pa.string())}),
                           out / "parquet" / f"part-{s:05d}.parquet", row_group_size=1024)
        if progress:
            print(f"  shard {s + 1}/{n_shards}", flush=True)
    tot = sum(v["bytes"] for v in stats.values())
    for v in stats.values():
        v["share"] = v["bytes"] / tot
    manifest = {"seed": seed, "mb": mb, "n_shards": n_shards, "n_docs": int(len(dom_of)), "bytes": tot,
                "domains": stats, "target_shares": TARGET_SHARES, "mix_target": MIX_TARGET,
                "seconds": round(time.perf_counter() - t0, 2)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def iter_docs(corpus_dir: str | os.PathLike):
    """Yield (text, domain) for every document of the JSONL shards, in file order."""
    dctx = zstandard.ZstdDecompressor()
    for p in sorted((Path(corpus_dir) / "jsonl").glob("*.jsonl.zst")):
        with open(p, "rb") as fh, dctx.stream_reader(fh) as r:
            import io
            for line in io.TextIOWrapper(r, encoding="utf-8"):
                if line.strip():
                    rec = orjson.loads(line)
                    yield rec["text"], rec["meta"]["redpajama_set_name"]


def tokenize_corpus(corpus_dir: str | os.PathLike, tokenizer) -> Path:
    """Write ``tokenized/`` next to ``parquet/``: pre-tokenized ids (list<int32>) per document
    (the text is kept too, as in most pre-tokenized releases; readers project ``tokens``)."""
    corpus = Path(corpus_dir)
    out = corpus / "tokenized"
    out.mkdir(exist_ok=True)
    for p in sorted((corpus / "parquet").glob("*.parquet")):
        t = pq.read_table(p)
        enc = tokenizer.encode_batch(t.column("text").to_pylist(), add_special_tokens=False)
        ids = [np.asarray(e.ids, dtype=np.int32) for e in enc]
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum([len(x) for x in ids], out=offsets[1:])
        flat = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        col = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()))
        pq.write_table(pa.table({"text": t.column("text"), "tokens": col,
                                 "redpajama_set_name": t.column("redpajama_set_name"),
                                 "n_tokens": pa.array(np.diff(offsets).astype(np.int64))}),
                       out / p.name, row_group_size=1024)
    return out


def ensure_corpus(mb: float, seed: int = 0, root: str | os.PathLike | None = None,
                  tokenized: bool = True) -> Path:
    """Return the cached corpus directory for (mb, seed), generating (and tokenizing) it if missing."""
    from . import tokenizer as tok
    out = Path(root or DEFAULT_ROOT) / f"corpus-{mb:g}mb-s{seed}"
    if not (out / "manifest.json").exists():
        generate(out, mb=mb, seed=seed)
    tpath = out / "tokenizer.json"
    if not tpath.exists():
        tok.train(out, tpath, seed=seed)
    if tokenized and not (out / "tokenized").exists():
        tokenize_corpus(out, tok.load(tpath))
    return out


# ---------------------------------------------------------------- metadata-only catalogs
def write_metadata_catalog(catalog_dir: str | os.PathLike, n_rows: int, seed: int = 0,
                           rows_per_file: int = 100_000, source: str = "slimpajama_meta") -> dict:
    """Fill a mixsql catalog with ``n_rows`` metadata-only samples (no data files on disk).

    Properties: ``redpajama_set_name`` (the seven domains in SlimPajama's document proportions),
    ``language`` (5 values), ``quality`` DOUBLE in [0, 1), ``year`` INTEGER. ``n_bytes`` and
    ``n_tokens`` are log-normal per domain. Rows are generated inside DuckDB (10M rows take
    seconds); the result is a real catalog that the planner and engine can query.
    """
    from mixsql.catalog import Catalog
    t0 = time.perf_counter()
    cat = Catalog(catalog_dir)
    names = ", ".join(f"'{d.name}'" for d in DOMAINS)
    # document-count shares: token share / median length, normalised
    w = np.array([d.share / d.median_words for d in DOMAINS])
    cum = np.cumsum(w / w.sum())
    case = " ".join(f"WHEN u < {c!r} THEN {i}" for i, c in enumerate(cum[:-1].tolist()))
    med = "[" + ", ".join(str(d.median_words * 5) for d in DOMAINS) + "]"
    props = [("redpajama_set_name", "VARCHAR"), ("language", "VARCHAR"), ("quality", "DOUBLE"), ("year", "INTEGER")]
    n_files = -(-n_rows // rows_per_file)
    try:
        with cat.write(f"bench metadata corpus {source}") as wr:
            source_id, first_file = wr.next_source_id(), wr.reserve_file_ids(n_files)
            seg = wr.segment(props)
            con = seg.con
            con.execute(
                "INSERT INTO files SELECT ? + i, ?, '/nonexistent/" + source + "/part-' || lpad(i::VARCHAR, 6, '0') "
                "|| '.jsonl.zst', 'zstd', 0, 0, 'synthetic', least(?, ? - i * ?), 0 FROM range(?) t(i)",
                [first_file, source_id, rows_per_file, n_rows, rows_per_file, n_files])
            # hash-based pseudo-random columns: deterministic in (seed, row id)
            con.execute(f"""
                INSERT INTO sample_index (file_id, "row", loc_offset, loc_length, n_bytes, n_tokens,
                                          redpajama_set_name, language, quality, year)
                SELECT {first_file} + i // {rows_per_file}, i % {rows_per_file}, (i % {rows_per_file}) * 4096, 4096,
                       nb, greatest(1, nb // 4),
                       ([{names}])[dom + 1],
                       (['en', 'de', 'fr', 'es', 'code'])[1 + (hash(i, {seed}, 3) % 5)::INTEGER],
                       (hash(i, {seed}, 4) % 1000000) / 1e6,
                       1990 + (hash(i, {seed}, 5) % 35)::INTEGER
                FROM (SELECT i, dom,
                             greatest(16, ({med})[dom + 1] * exp(0.9 * sqrt(-2 * ln(greatest(u2, 1e-12)))
                                      * cos(6.283185307 * u3)))::BIGINT AS nb
                      FROM (SELECT i, CASE {case} ELSE {len(DOMAINS) - 1} END AS dom, u2, u3
                            FROM (SELECT i, (hash(i, {seed}, 1) % 1000000) / 1e6 AS u,
                                         (hash(i, {seed}, 2) % 1000000 + 1) / 1000001.0 AS u2,
                                         (hash(i, {seed}, 6) % 1000000) / 1e6 AS u3
                                  FROM range({n_rows}) t(i))))
            """)
            tot = con.execute("SELECT count(*), sum(n_bytes), sum(n_tokens) FROM sample_index").fetchone()
            con.execute("UPDATE files SET n_bytes = s.b FROM (SELECT file_id, sum(n_bytes) b FROM sample_index "
                        "GROUP BY file_id) s WHERE files.file_id = s.file_id")
            wr.put_source({"source_id": source_id, "name": source, "format": "jsonl",
                           "pattern": f"/nonexistent/{source}/*.jsonl.zst", "options": json.dumps({"text": "text"}),
                           "property_types": [list(p) for p in props]}, seg)
            seg_path = seg.path
    finally:
        cat.close()
    return {"rows": int(tot[0]), "files": n_files, "seconds": round(time.perf_counter() - t0, 2),
            "db_bytes": os.path.getsize(seg_path)}


def run(quick: bool = False) -> dict:
    """`python -m bench corpus`: generation rate of the corpus generator."""
    import tempfile
    mb = 20 if quick else 200
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        m = generate(d, mb=mb, seed=0)
        dt = time.perf_counter() - t0
    return {"corpus_mb": mb, "docs": m["n_docs"], "generate_s": round(dt, 2),
            "generate_mb_per_s": round(m["bytes"] / 1e6 / dt, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.corpus", description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output directory")
    ap.add_argument("--mb", type=float, default=30, help="text size in MB (10 to 10000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-parquet", action="store_true")
    ap.add_argument("--tokenize", action="store_true", help="train the BPE tokenizer and write tokenized/")
    a = ap.parse_args(argv)
    m = generate(a.out, mb=a.mb, seed=a.seed, parquet=not a.no_parquet, progress=True)
    if a.tokenize:
        from . import tokenizer as tok
        tok.train(a.out, Path(a.out) / "tokenizer.json", seed=a.seed)
        tokenize_corpus(a.out, tok.load(Path(a.out) / "tokenizer.json"))
    print(json.dumps({k: m[k] for k in ("n_docs", "bytes", "n_shards", "seconds")}))


if __name__ == "__main__":
    main()
