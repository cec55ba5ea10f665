"""The Hugging Face datasets adapter (skipped when `datasets` is not installed)."""
from __future__ import annotations

import sys

import pytest

SQL = "SELECT * FROM samples MIX BY language WITH NATURAL SETTINGS (chunk_size = 10)"


def test_missing_datasets_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    from mixsql.hf import hf_dataset

    with pytest.raises(ImportError, match="pip install datasets"):
        hf_dataset(SQL)


def test_hf_iterable_dataset(langs_catalog):
    import datasets  # noqa: F401 (a test dependency: fail, never skip, when missing)
    from mixsql.hf import hf_dataset

    rows = list(hf_dataset(SQL, catalog=langs_catalog))
    assert len(rows) == 100 and {r["group"] for r in rows} == {"JavaScript", "HTML", "Python"}
    packed = next(iter(hf_dataset(SQL, catalog=langs_catalog, seq_len=8)))
    assert len(packed["input_ids"]) == 9
