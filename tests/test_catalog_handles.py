"""Readers of a catalog release it: after streaming, the same process can open it read-write.

DuckDB refuses a read-write connection while a read-only one to the same file is alive in the
process, so a leaked handle breaks e.g. "train, then register more data" in one script.
"""
from __future__ import annotations

import gc

import pytest

from mixsql.catalog import Catalog
from mixsql.stream import MixStream

SQL = "SELECT * FROM samples MIX BY language WITH NATURAL SETTINGS (chunk_size = 16, seed = 3)"


@pytest.fixture
def no_gc():
    """Handles must be released by reference counting, not by a lucky garbage collection."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _reopen_read_write(path) -> None:
    with Catalog(path) as cat:
        assert cat.snapshot >= 1


def test_mix_stream_releases_catalog(langs_catalog, no_gc):
    stream = MixStream.open(langs_catalog, SQL)
    assert sum(c.num_rows for c in stream.chunks()) == 100
    _reopen_read_write(langs_catalog)


def test_mix_dataset_releases_catalog(langs_catalog, no_gc):
    from mixsql import torch as torch_mod
    ds = torch_mod.MixDataset(SQL, catalog=str(langs_catalog), seq_len=32)
    assert sum(int(x["length"]) for x in ds) > 0
    _reopen_read_write(langs_catalog)
    # and a second pass over the same dataset still works after the catalog was written to
    assert sum(int(x["length"]) for x in ds) > 0
