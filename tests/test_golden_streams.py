"""Golden chunk streams: the exact output of a fixed set of statements, pinned by hash.

A refactor must not change what a statement streams. Each case below hashes the sample
pointers (chunk, group, file name, row) of a statement over a fixed synthetic catalog, in
order; the packed case hashes the token ids a ``MixDataset`` yields. The hashes live in
``tests/golden_streams.json``. A change that *means* to alter streams (a new shuffle, a new
apportionment) regenerates them on purpose and says so in its commit:

    MIXSQL_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_streams.py
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import write_jsonl_catalog

from mixsql.stream import MixStream
from mixsql.topology import Topology

GOLDEN = Path(__file__).with_name("golden_streams.json")
UPDATE = os.environ.get("MIXSQL_UPDATE_GOLDEN") == "1"
PROPERTIES = {"language": "VARCHAR", "license": "VARCHAR", "quality": "DOUBLE", "level": "INTEGER"}
LANGS = ("JavaScript", "HTML", "Python", "Rust")

CASES = {
    "static_redistribute": "SELECT * FROM samples MIX BY language WITH (JavaScript 0.5, HTML 0.3, Python 0.2) "
                           "SETTINGS (chunk_size = 64, seed = 11, on_exhausted = 'redistribute')",
    "nested_other": "SELECT * FROM samples MIX BY language WITH (JavaScript 0.5 MIX BY license WITH "
                    "(MIT 0.3, OTHER 0.7), (HTML, Python) 0.3, OTHER 0.2) "
                    "SETTINGS (chunk_size = 50, seed = 5, on_exhausted = 'redistribute')",
    "where_natural": "SELECT * FROM samples WHERE quality >= 0.2 MIX BY language WITH NATURAL "
                     "SETTINGS (chunk_size = 40, seed = 2)",
    "ordered_curriculum": "SELECT * FROM samples MIX BY language WITH (JavaScript 0.6, OTHER 0.4) "
                          "ORDER BY level DESC, quality SETTINGS (chunk_size = 32, seed = 1)",
    "tokens_budget": "SELECT * FROM samples MIX BY language WITH (JavaScript 0.5, HTML 0.5) "
                     "LIMIT 20000 TOKENS SETTINGS (unit = 'tokens', chunk_size = 30, seed = 4, "
                     "on_exhausted = 'repeat')",
    "repeat_epochs": "SELECT * FROM samples MIX BY language WITH (Python 0.7, Rust 0.3) "
                     "SETTINGS (chunk_size = 25, seed = 9, on_exhausted = 'repeat', max_epochs = 2)",
    "schedule": "SELECT * FROM samples MIX BY language WITH SCHEDULE (AT STEP 0 (JavaScript 0.9, OTHER 0.1), "
                "AT STEP 6 (JavaScript 0.2, OTHER 0.8)) "
                "SETTINGS (batch_size = 16, chunk_size = 16, seed = 3, on_exhausted = 'repeat', max_epochs = 1)",
    "limit_chunks_shuffle": "SELECT * FROM samples MIX BY license WITH (MIT 1, CC 1, BSD 1) LIMIT 40 CHUNKS "
                            "SETTINGS (chunk_size = 20, seed = 8, shuffle_block = 4, shuffle_window = 3, "
                            "on_exhausted = 'repeat')",
}
TOPOLOGY_CASE = "static_redistribute"


def _records() -> list[dict]:
    recs = []
    for i in range(1200):
        lang = LANGS[(i * 7) % 11 % 4]
        recs.append({"text": f"{lang} document {i} " + "word " * (i % 13), "language": lang,
                     "license": ("MIT", "CC", "BSD")[(i * 5) % 3], "quality": ((i * 37) % 100) / 100,
                     "level": i % 5})
    return recs


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return write_jsonl_catalog(tmp_path_factory.mktemp("golden") / "cat", _records(), properties=PROPERTIES,
                               rows_per_file=150)


def _digest(rows) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(repr(row).encode())
    return h.hexdigest()


def _pointer_rows(chunks):
    for c in chunks:
        for k, g, f, r in zip(c.column("chunk").to_pylist(), c.column("group").to_pylist(),
                              c.column("file").to_pylist(), c.column("row").to_pylist()):
            yield k, g, Path(f).name, r


def _actual(catalog: Path) -> dict[str, str]:
    out = {name: _digest(_pointer_rows(MixStream.open(catalog, sql).chunks())) for name, sql in CASES.items()}
    stream = MixStream.open(catalog, CASES[TOPOLOGY_CASE])
    for rank in range(2):
        for worker in range(2):
            top = Topology(dp_rank=rank, dp_world=2, worker=worker, num_workers=2)
            out[f"{TOPOLOGY_CASE}@rank{rank}.worker{worker}"] = _digest(_pointer_rows(stream.chunks(top)))
    from mixsql.torch import MixDataset

    ds = MixDataset(CASES["static_redistribute"], catalog=str(catalog), seq_len=32)
    out["packed_sequences"] = _digest(tuple(item["input_ids"].tolist()) for item in ds)
    return out


def test_streams_equal_the_golden_hashes(catalog):
    actual = _actual(catalog)
    if UPDATE:
        GOLDEN.write_text(json.dumps(actual, indent=1, sort_keys=True) + "\n")
    expected = json.loads(GOLDEN.read_text())
    changed = sorted(k for k in actual if expected.get(k) != actual[k])
    assert not changed, (f"chunk streams changed for {changed}; if that is intended, regenerate with "
                         "MIXSQL_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_streams.py and say why")
    assert sorted(expected) == sorted(actual)
