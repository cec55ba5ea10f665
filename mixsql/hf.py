"""Hugging Face ``datasets`` adapter: a MIX statement as a ``datasets.IterableDataset``.

``hf_dataset(sql, catalog=..., seq_len=..., ...)`` takes the same arguments as
:class:`mixsql.torch.MixDataset` and yields the same items, with tensors as lists of ints.
``datasets`` is optional and imported only here.
"""
from __future__ import annotations

from typing import Any


def _require_datasets():
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            "mixsql.hf needs the Hugging Face 'datasets' package: pip install datasets"
        ) from exc
    return datasets


def _generate(sql: str, catalog: Any, kwargs: dict):
    from .torch import MixDataset

    for item in MixDataset(sql, catalog=catalog, **kwargs):
        out = {}
        for k, v in item.items():
            out[k] = v.tolist() if hasattr(v, "tolist") else v
        yield out


def hf_dataset(sql: str, catalog: Any = "./mixsql_catalog", **kwargs):
    """A ``datasets.IterableDataset`` streaming ``sql`` (keyword arguments as for MixDataset)."""
    datasets = _require_datasets()
    return datasets.IterableDataset.from_generator(
        _generate, gen_kwargs={"sql": sql, "catalog": str(catalog), "kwargs": kwargs})


__all__ = ["hf_dataset"]
