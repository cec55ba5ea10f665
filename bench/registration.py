"""Registration throughput and index size on a generated SlimPajama-shaped corpus.

``run(quick)`` generates (once, cached under ``bench/.data/``) ``.jsonl.zst`` shards shaped like
SlimPajama (``{"text": ..., "meta": {"redpajama_set_name": ...}}``), registers them into a fresh
catalog with the ``slimpajama`` preset, and reports:

* ``mb_per_s``       decompressed input MB/s (MB = 1e6 bytes), end to end (glob to COMMIT)
* ``samples_per_s``  registered samples per second
* ``cpu_seconds``, ``mb_per_cpu_s``  CPU time of this process and its workers (robust to a busy host)
* ``index_bytes_per_sample``  the source's segment file size *on disk* / samples (target
  < 16; the RAM a node needs at query time is a different figure, not measured here)

Also registers a corpus shaped like the one Mixtera was measured on (36k documents of ~14 KB,
~520 MB decompressed, 16 ``.jsonl.zst`` shards; texts with JSON escapes and non-ASCII) and reports
the same figures (``mixtera_shape_*``). Mixtera's own rate is not measured here: it is a figure
quoted from its paper (other machine), shown in the table's ``source`` column as quoted, and the
ratio to it is labelled as a ratio to a quoted figure.
Also registers a Parquet copy of part of the corpus and reports the same figures (``parquet_*``).
Every registration runs ``reps`` times, the corpora interleaved; each figure is the median with
its min..max. Run: ``python -m bench.registration [--quick]``.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / ".data" / "registration"
# quoted, not measured: Mixtera's paper reports 520 MB of 36k-doc .jsonl.zst registered in 2.5 s on 2 cores
MIXTERA_QUOTED = {"mb_per_s": 520 / 2.5, "source": "quoted: Mixtera paper (arXiv 2502.19790), 520 MB of "
                  ".jsonl.zst (36k docs) in 2.5 s on 2 cores of its own machine; not run here"}
TARGET_X_MIXTERA = 5
TARGET_INDEX_BYTES_PER_SAMPLE = 16
SETS = ["RedPajamaCommonCrawl", "RedPajamaC4", "RedPajamaGithub", "RedPajamaBook", "RedPajamaArXiv",
        "RedPajamaWikipedia", "RedPajamaStackExchange"]
SET_P = np.array([0.52, 0.267, 0.052, 0.042, 0.046, 0.038, 0.035])
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her she there one all we their been has would when who will more no if "
         "out so said what up its about into than them can only other new some could time these two may "
         "data model training language learning mixture sample token corpus query").split()


def _base_text(rng: np.random.Generator, n_bytes: int) -> str:
    words = rng.choice(np.array(WORDS, dtype=object), size=n_bytes // 5)
    return " ".join(words)[:n_bytes]


def _write_shards(out: Path, n_samples: int, n_shards: int, seed: int, base_text, lengths, cut, path_of) -> Path:
    """Write ``n_shards`` SlimPajama-style .jsonl.zst shards of spans of one seeded base text
    (idempotent: reuses a complete directory). ``lengths(rng, n)`` draws span lengths, ``cut``
    trims a span, ``path_of(k)`` names shard k inside ``out``."""
    import zstandard

    if (out / ".complete").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.Generator(np.random.PCG64(seed))
    base = base_text(rng)
    cctx = zstandard.ZstdCompressor(level=3, threads=-1)
    per = -(-n_samples // n_shards)
    left = n_samples
    for k in range(n_shards):
        n = min(per, left)
        left -= n
        lens = lengths(rng, n)
        offs = rng.integers(0, len(base) - lens.max() - 8, n)
        sets = rng.choice(len(SETS), size=n, p=SET_P / SET_P.sum())
        lines = [f'{{"text": "{cut(base[o:o + m])}", "meta": {{"redpajama_set_name": "{SETS[st]}"}}}}'
                 for o, m, st in zip(offs.tolist(), lens.tolist(), sets.tolist())]
        path = out / path_of(k)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(cctx.compress(("\n".join(lines) + "\n").encode()))
    (out / ".complete").write_text("ok")
    return out


def generate(n_samples: int, n_shards: int, mean_len: int = 400, seed: int = 0) -> Path:
    """The 1M-small-documents corpus (plain word soup, four sub-directories)."""
    return _write_shards(
        DATA / f"slim_{n_samples}_{n_shards}_{mean_len}", n_samples, n_shards, seed,
        base_text=lambda rng: _base_text(rng, 16 << 20),
        lengths=lambda rng, n: np.clip(rng.lognormal(np.log(mean_len), 0.6, n), 20, 20 * mean_len).astype(np.int64),
        cut=lambda t: t,
        path_of=lambda k: f"chunk{k % 4}/example_train_{k}.jsonl.zst",
    )


def _rich_base(rng: np.random.Generator, n_bytes: int) -> str:
    """Word soup with what real web text has in JSON: paragraph breaks (``\\n``), quotes (``\\"``),
    raw non-ASCII UTF-8 and ``\\uXXXX`` escapes, so n_bytes != the raw span length."""
    extra = np.array(["\\n\\n", "\\n", '\\"quoted\\"', "caf\u00e9", "na\u00efve \u2014", "\u4e2d\u6587",
                      "\\u00e9t\\u00e9", "\\ud83d\\ude00", "tab\\there", "C:\\\\path"], dtype=object)
    words = rng.choice(np.array(WORDS, dtype=object), size=n_bytes // 5)
    pos = rng.integers(0, len(words), len(words) // 12)
    words[pos] = rng.choice(extra, size=len(pos), p=[.3, .25, .1, .08, .06, .05, .05, .03, .04, .04])
    return " ".join(words)[:n_bytes]


def generate_mixtera(n_samples: int = 36_000, n_shards: int = 16, mean_len: int = 14_400, seed: int = 1) -> Path:
    """Mixtera's measured corpus shape: 36k SlimPajama-style documents of ~14 KB (~520 MB of
    decompressed JSONL) in 16 ``.jsonl.zst`` shards; texts carry JSON escapes and non-ASCII."""
    return _write_shards(
        DATA / f"mixtera_{n_samples}_{n_shards}_{mean_len}", n_samples, n_shards, seed,
        base_text=lambda rng: _rich_base(rng, 64 << 20),
        lengths=lambda rng, n: np.clip(rng.lognormal(np.log(mean_len) - 0.18, 0.6, n), 200,
                                       40 * mean_len).astype(np.int64),
        cut=lambda t: t[t.find(" ") + 1:t.rfind(" ")],  # cut at spaces: never inside an escape
        path_of=lambda k: f"train_{k:02d}.jsonl.zst",
    )


def generate_parquet(src: Path, max_shards: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    out = src.parent / (src.name + "_parquet")
    if (out / ".complete").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for i, f in enumerate(sorted(src.glob("**/*.jsonl.zst"))[:max_shards]):
        rows = [json.loads(x) for x in zstandard.ZstdDecompressor().decompress(
            f.read_bytes(), max_output_size=1 << 31).splitlines()]
        pq.write_table(pa.table({"text": [r["text"] for r in rows],
                                 "redpajama_set_name": [r["meta"]["redpajama_set_name"] for r in rows]}),
                       out / f"part-{i:03d}.parquet", row_group_size=8192)
    (out / ".complete").write_text("ok")
    return out


def _register(tmp: Path, name: str, pattern: str, options: dict) -> dict:
    from mixsql.catalog import Catalog
    from mixsql.registration import create_source

    shutil.rmtree(tmp, ignore_errors=True)
    cat = Catalog(tmp)
    import resource

    def cpu():
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    c0 = cpu()
    t0 = time.perf_counter()
    s = create_source(cat, name, pattern, options=options, progress=sys.stderr.isatty())
    secs = time.perf_counter() - t0
    cpu_s = cpu() - c0
    cat.close()
    size = sum(f.stat().st_size for f in (tmp / "segments").iterdir())
    return {"samples": s["samples"], "files": s["files"], "decompressed_mb": round(s["raw_bytes"] / 1e6, 1),
            "seconds": round(secs, 3), "mb_per_s": round(s["raw_bytes"] / secs / 1e6, 1),
            "samples_per_s": round(s["samples"] / secs), "cpu_seconds": round(cpu_s, 2),
            "mb_per_cpu_s": round(s["raw_bytes"] / max(cpu_s, 1e-9) / 1e6, 1), "index_bytes": size,
            "index_bytes_per_sample": round(size / max(s["samples"], 1), 2)}


def run(quick: bool = False, reps: int = 5) -> dict:
    """Generate (cached) and register each corpus ``reps`` times, interleaved; medians (min..max)."""
    from .results import fmt_spread, markdown_table, spread

    n = 200_000 if quick else 1_000_000
    shards = 16
    corpus = generate(n, shards)
    mix = generate_mixtera()
    tmp = DATA / "catalogs"
    cases = {"jsonl_zst": ("slim", str(corpus / "**" / "*.jsonl.zst"), {"preset": "slimpajama"}),
             "mixtera_shape": ("slim14k", str(mix / "*.jsonl.zst"), {"preset": "slimpajama"})}
    if not quick:
        cases["parquet"] = ("slimpq", str(generate_parquet(corpus, 8) / "*.parquet"), {})
    runs = {k: [] for k in cases}
    names = list(cases)
    for r in range(reps):
        for k in names[r % len(names):] + names[:r % len(names)]:
            name, pattern, options = cases[k]
            runs[k].append(_register(tmp / k, name, pattern, options))
    shutil.rmtree(tmp, ignore_errors=True)
    res = {"corpus": str(corpus), "cores": os.cpu_count(), "reps": reps}
    rows = []
    for k, rs in runs.items():
        for f in ("samples", "files", "decompressed_mb", "index_bytes", "index_bytes_per_sample"):
            res[f"{k}_{f}"] = rs[0][f]                     # the same every run
        for f in ("seconds", "mb_per_s", "samples_per_s", "cpu_seconds", "mb_per_cpu_s"):
            res[f"{k}_{f}"] = fmt_spread(spread([x[f] for x in rs]))
        rows.append({"figure": f"{k}: registration MB/s", "value": res[f"{k}_mb_per_s"],
                     "source": f"measured here, {reps} runs"})
    mixtera = spread([x["mb_per_s"] / MIXTERA_QUOTED["mb_per_s"] for x in runs["mixtera_shape"]])
    res["mixtera_shape_x_quoted_mixtera"] = fmt_spread(mixtera)
    res["target_x_mixtera"] = TARGET_X_MIXTERA
    res["target_met"] = mixtera["median"] >= TARGET_X_MIXTERA
    res["target_index_bytes_per_sample_on_disk"] = TARGET_INDEX_BYTES_PER_SAMPLE
    res["index_target_met"] = res["jsonl_zst_index_bytes_per_sample"] < TARGET_INDEX_BYTES_PER_SAMPLE
    rows.append({"figure": "Mixtera registration MB/s (same corpus shape)", "value": f"{MIXTERA_QUOTED['mb_per_s']:g}",
                 "source": MIXTERA_QUOTED["source"]})
    rows.append({"figure": "mixtera_shape MB/s / Mixtera's quoted MB/s", "value": res["mixtera_shape_x_quoted_mixtera"],
                 "source": "ratio of a measurement here to a quoted figure from another machine"})
    res["_table"] = markdown_table(rows, ["figure", "value", "source"])
    res["_notes"] = ("Each measured figure: median (min..max) of the runs, corpora interleaved; index sizes are the "
                     "catalog file on disk. Shared 2-core machine: other jobs ran at the same time.")
    return res


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    res = run(quick="--quick" in argv)
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}, indent=2))


if __name__ == "__main__":
    main()
