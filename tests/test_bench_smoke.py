"""Smoke tests of the benchmark harness: corpus generator and results writer (never timings)."""
from __future__ import annotations

import io
import json

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from bench import corpus, results


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    m = corpus.generate(out, mb=2, seed=3, shard_mb=0.3)
    return out, m


def _read_jsonl_zst(path):
    with open(path, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as r:
        return [orjson.loads(line) for line in io.TextIOWrapper(r, encoding="utf-8") if line.strip()]


def test_zst_shards_are_slimpajama_shaped(small_corpus):
    out, m = small_corpus
    shards = sorted((out / "jsonl").glob("*.jsonl.zst"))
    assert len(shards) == m["n_shards"] >= 8
    recs = [r for p in shards for r in _read_jsonl_zst(p)]
    assert len(recs) == m["n_docs"]
    assert set(recs[0]) == {"text", "meta"}
    assert {r["meta"]["redpajama_set_name"] for r in recs} == set(corpus.DOMAIN_NAMES)
    words = recs[0]["text"].split()
    assert len(words) > 3 and all(w.isprintable() for w in words)


def test_domain_proportions_follow_slimpajama(small_corpus):
    _, m = small_corpus
    total = sum(d["bytes"] for d in m["domains"].values())
    assert abs(total - 2e6) / 2e6 < 0.1
    for name, share in corpus.TARGET_SHARES.items():
        assert abs(m["domains"][name]["bytes"] / total - share) < 0.02, name


def test_lengths_span_orders_of_magnitude(tmp_path):
    m = corpus.generate(tmp_path, mb=6, seed=1, parquet=False)
    lo = min(d["min_words"] for d in m["domains"].values())
    hi = max(d["max_words"] for d in m["domains"].values())
    assert hi / lo >= 1000


def test_deterministic_by_seed(small_corpus, tmp_path):
    out, _ = small_corpus
    again = tmp_path / "again"
    corpus.generate(again, mb=2, seed=3, shard_mb=0.3)
    for p in sorted((out / "jsonl").glob("*.zst")):
        assert (again / "jsonl" / p.name).read_bytes() == p.read_bytes()
    other = tmp_path / "other"
    corpus.generate(other, mb=2, seed=4, shard_mb=0.3)
    assert (other / "jsonl" / "chunk-00000.jsonl.zst").read_bytes() != (out / "jsonl" / "chunk-00000.jsonl.zst").read_bytes()


def test_parquet_copy_matches_jsonl(small_corpus):
    out, _ = small_corpus
    recs = _read_jsonl_zst(out / "jsonl" / "chunk-00002.jsonl.zst")
    t = pq.read_table(out / "parquet" / "part-00002.parquet")
    assert t.column("text").to_pylist() == [r["text"] for r in recs]
    assert t.column("redpajama_set_name").to_pylist() == [r["meta"]["redpajama_set_name"] for r in recs]


def test_tokenizer_and_pretokenized_copy(small_corpus):
    import tokenizers  # noqa: F401 (a test dependency: fail, never skip, when missing)
    from bench import tokenizer
    out, _ = small_corpus
    tok = tokenizer.train(out, out / "tokenizer.json", vocab_size=600)
    assert tokenizer.eos_id(tok) is not None
    corpus.tokenize_corpus(out, tokenizer.load(out / "tokenizer.json"))
    t = pq.read_table(out / "tokenized" / "part-00000.parquet")
    typ = t.schema.field("tokens").type
    assert pa.types.is_list(typ) and typ.value_type == pa.int32()
    first = t.slice(0, 1).to_pylist()[0]
    assert tok.decode(first["tokens"]) == first["text"]
    assert first["n_tokens"] == len(first["tokens"])


def test_metadata_catalog(tmp_path):
    from mixsql.catalog import Catalog
    info = corpus.write_metadata_catalog(tmp_path / "cat", 25_000, seed=2, rows_per_file=10_000)
    assert info["rows"] == 25_000 and info["files"] == 3
    with Catalog(tmp_path / "cat", read_only=True) as cat:
        n, k = cat.con.execute("SELECT count(*), count(DISTINCT redpajama_set_name) FROM samples").fetchone()
        assert (n, k) == (25_000, 7)
        lo, hi = cat.con.execute("SELECT min(quality), max(quality) FROM samples").fetchone()
        assert 0 <= lo < hi < 1


def test_results_writer(tmp_path):
    path = tmp_path / "RESULTS.md"
    text = results.append("compare", "python -m bench compare --quick",
                          figures={"a": 1.5, "nested": {"b": None}},
                          table=results.markdown_table([{"system": "x|y", "v": 2.0}]), notes="n1", path=path)
    results.append("engine", "python -m bench engine", figures={"c": 3}, path=path)
    body = path.read_text()
    assert body.startswith("# mixsql benchmark results")
    assert body.count("\n## ") == 2 and text in body
    assert "- command: `python -m bench compare --quick`" in body and "- machine: " in body
    assert "| nested.b | — |" in body and "x\\|y" in body and "n1" in body


def test_shared_packer_keeps_every_token_in_order():
    import numpy as np
    from bench.peers.common import N_DOM, VecPacker
    rng = np.random.default_rng(0)
    packer = VecPacker(seq_len=16, batch_size=3, eos=9999)
    docs = [rng.integers(0, 100, rng.integers(1, 40)).astype(np.int32) for _ in range(60)]
    doms = rng.integers(0, N_DOM, len(docs))
    expect_ids = np.concatenate([np.append(d, 9999) for d in docs])
    expect_dom = np.concatenate([np.full(len(d) + 1, g) for d, g in zip(docs, doms)])
    got, counts = [], []
    for i in range(0, len(docs), 7):
        part = docs[i:i + 7]
        packer.add(np.concatenate(part), np.array([len(d) for d in part]), doms[i:i + 7])
        for rows, c in packer.batches():
            assert rows.shape == (3, 16) and c.shape == (3, N_DOM)
            got.append(rows)
            counts.append(c)
    flat = np.concatenate(got).ravel()
    assert len(flat) == len(expect_ids) // 48 * 48
    assert (flat == expect_ids[:len(flat)]).all()
    per_row = np.stack([np.bincount(expect_dom[i:i + 16], minlength=N_DOM) for i in range(0, len(flat), 16)])
    assert (np.concatenate(counts) == per_row).all()
    assert len(packer.ids) == len(expect_ids) - len(flat)


def test_resumed_run_skips_only_recorded_benches(monkeypatch):
    """``--run RUN_ID`` finishes an interrupted run: recorded benches are skipped, failed ones rerun."""
    import bench.__main__ as bench_main
    recorded = {"registration": "| bench_seconds | 5 |", "cluster": "- notes: FAILED: RuntimeError: boom"}
    monkeypatch.setattr(results, "sections", lambda run_id: recorded if run_id == "2026-01-01T00:00Z" else {})
    calls = []
    monkeypatch.setattr(bench_main, "run_one", lambda name, quick, command, run_id: calls.append((name, command, run_id)) or {})
    assert bench_main.main(["all", "--quick", "--run", "2026-01-01T00:00Z"]) == 0
    expected = [n for n in bench_main.NAMES if n not in bench_main.NOT_IN_ALL and n != "registration"]
    assert [c[0] for c in calls] == expected
    assert calls[0][1] == "python -m bench all --quick  [cluster]"
    assert {c[2] for c in calls} == {"2026-01-01T00:00Z"}


def test_compare_progress_continues_only_the_same_comparison(tmp_path):
    """An interrupted comparison's completed steps are reused by the same parameters, never by others."""
    from bench.compare import Progress

    path = tmp_path / "compare-progress.json"
    first = Progress(path, {"mb": 200, "reps": 5}, log=lambda *_: None)
    first.state.setdefault("runs", {"mixsql": {"cpu_tok_s_w1": []}})["mixsql"]["cpu_tok_s_w1"].append(1.5)
    first.save(0.0, rounds=2)
    again = Progress(path, {"mb": 200, "reps": 5}, log=lambda *_: None)
    assert again.state["rounds"] == 2 and again.state["runs"]["mixsql"]["cpu_tok_s_w1"] == [1.5]
    assert Progress(path, {"mb": 1000, "reps": 5}, log=lambda *_: None).state == {}
    again.finish()
    assert not path.exists()
