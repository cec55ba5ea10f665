"""Token counting at registration runs in a process pool; counts equal the tokenizer's own."""
from __future__ import annotations

import json

import pytest
import zstandard
from conftest import random_texts, train_bpe

from mixsql.catalog import Catalog
from mixsql.registration import create_source

import tokenizers  # noqa: F401 (a test dependency: fail, never skip, when missing)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two .jsonl.zst shards, together above the pool threshold for token counting (256 KB)."""
    d = tmp_path_factory.mktemp("tok")
    texts = random_texts(7, 1600, vocabulary=5000, max_words=400)
    for s in range(2):
        blob = "".join(json.dumps({"text": t, "meta": {"k": i % 3}}) + "\n" for i, t in enumerate(texts[s::2]))
        (d / f"part{s}.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=1).compress(blob.encode()))
    tok = train_bpe(texts[:300], d / "tokenizer.json", vocab_size=600)
    assert sum(p.stat().st_size for p in d.glob("*.zst")) > 256 * 1024
    return d, tok, texts


def _counts(cat_dir, corpus_dir, **extra):
    with Catalog(cat_dir) as cat:
        create_source(cat, "s", str(corpus_dir / "*.jsonl.zst"),
                      options={"tokenizer": str(corpus_dir / "tokenizer.json"), **extra}, progress=False)
        return cat.con.execute("SELECT f.path, s.row, s.n_tokens FROM samples s JOIN files f USING (file_id) "
                               "ORDER BY 1, 2").fetchall()


def test_pool_counts_match_in_process_and_tokenizer(corpus, tmp_path):
    d, tok, texts = corpus
    pooled = _counts(tmp_path / "pool", d)                 # default: one process per core
    single = _counts(tmp_path / "one", d, workers=1)       # in-process scan
    assert pooled == single and len(pooled) == len(texts)
    want = {}
    for s in range(2):
        for row, t in enumerate(texts[s::2]):
            want[(f"part{s}.jsonl.zst", row)] = len(tok.encode(t, add_special_tokens=False).ids)
    assert {(p.rsplit("/", 1)[-1], r): n for p, r, n in pooled} == want


def test_pretokenized_parquet_needs_no_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mixsql.errors import RegistrationError

    d = tmp_path / "pt"
    d.mkdir()
    ids = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    pq.write_table(pa.table({"ids": pa.array(ids, pa.list_(pa.int32())), "domain": ["a", "b", "a"]}),
                   d / "x.parquet")
    with Catalog(tmp_path / "cat") as cat:
        with pytest.raises(RegistrationError, match="no text column .*tokens option"):
            create_source(cat, "bad", str(d / "*.parquet"), progress=False)
        create_source(cat, "pt", str(d / "*.parquet"), options={"tokens": "ids"}, progress=False)
        rows = cat.con.execute("SELECT row, n_bytes, n_tokens, domain FROM samples ORDER BY row").fetchall()
    assert rows == [(0, 0, 3, "a"), (1, 0, 2, "b"), (2, 0, 4, "a")]
    from mixsql import torch as torch_mod
    ds = torch_mod.MixDataset("SELECT * FROM samples WHERE domain = 'a' MIX BY domain WITH NATURAL",
                              catalog=str(tmp_path / "cat"), seq_len=4, eos_id=0)
    got = [x["input_ids"].tolist() for x in ds]
    flat = [t for seq in got for t in seq]
    assert [t for t in flat if t] in ([5, 6, 7, 10, 11, 12, 13], [10, 11, 12, 13, 5, 6, 7])   # each document once, whole
    samples = list(torch_mod.MixDataset("SELECT * FROM samples MIX BY domain WITH NATURAL",
                                        catalog=str(tmp_path / "cat")))
    assert sorted(x["tokens"].tolist() for x in samples) == sorted(ids)    # seq_len=None: the documents' ids
    assert all("text" not in x for x in samples)
