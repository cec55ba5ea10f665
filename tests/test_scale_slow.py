"""Scale tests, kept out of CI: ``python -m pytest -m slow`` (a few minutes on 2 cores).

A 5M-row metadata-only catalog (``bench.corpus.write_metadata_catalog``: index rows, no data
files) with a WHERE clause and a nested mixture: chunk k computed directly equals the sequential
stream's chunk k far into the stream, a redistribute epoch delivers every selected sample exactly
once, and the realised shares stay within the engine's documented bound after every chunk.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from bench import corpus
from mixsql.catalog import Catalog
from mixsql.stream import MixStream

pytestmark = pytest.mark.slow

ROWS = 5_000_000
SQL = ("SELECT * FROM samples WHERE quality > 0.2 "
       "MIX BY redpajama_set_name WITH (RedPajamaCommonCrawl 0.5 MIX BY language WITH (en 3, OTHER 1), "
       "RedPajamaGithub 0.2, RedPajamaArXiv 0.1, OTHER 0.2) "
       "SETTINGS (seed = 11, on_exhausted = 'redistribute')")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    path = tmp_path_factory.mktemp("scale") / "cat"
    corpus.write_metadata_catalog(path, ROWS, seed=3, rows_per_file=250_000)
    with Catalog(path, read_only=True) as cat:
        yield cat


@pytest.fixture(scope="module")
def sequential(catalog):
    """Every chunk of the statement's first epoch, composed sequentially."""
    stream = MixStream.open(catalog, SQL, user_columns=False)
    eng = stream.engine()
    chunks = []
    while (t := eng.next_chunk()) is not None:
        chunks.append(t.select(["chunk", "group_id", "file_id", "row"]))
    return stream, chunks


def test_every_selected_sample_exactly_once_in_a_redistribute_epoch(catalog, sequential):
    _, chunks = sequential
    (selected,) = catalog.con.execute("SELECT count(*) FROM samples WHERE quality > 0.2").fetchone()
    table = pa.concat_tables(chunks)
    key = table.column("file_id").to_numpy().astype(np.int64) << 32 | table.column("row").to_numpy()
    assert len(key) == selected > ROWS // 2
    assert len(np.unique(key)) == selected


def test_chunk_k_computed_directly_equals_the_sequential_chunk_k(sequential):
    stream, chunks = sequential
    rng = np.random.default_rng(5)
    ks = sorted({0, len(chunks) - 1, *rng.integers(0, len(chunks), 12).tolist()})
    for k in ks:
        direct = stream.engine().chunk(k).select(["chunk", "group_id", "file_id", "row"])
        assert direct.equals(chunks[k]), k


def test_shares_stay_within_the_documented_bound_after_every_chunk(sequential):
    stream, chunks = sequential
    eng = stream.engine()
    for _ in range(len(chunks)):
        eng.next_chunk()
        assert np.all(np.abs(eng.delivered() - eng.targets()) < max(1.0, eng.share_bound) + 1e-9)
