"""mixsql itself, through its public API: ``create_source`` + ``mixsql.torch.MixDataset``.

Two rows in the comparison:

* ``mixsql``: the native path users run, ``MixDataLoader`` over ``MixDataset(tokenizer=...,
  seq_len=...)`` (mixsql reads, tokenizes, packs by group and batches in its workers);
* ``mixsql_harness``: ``MixDataset(seq_len=None)`` only *reads* (text or ids plus group, one item
  per sample), and the shared tokenizer call / packer / collation of ``common`` do the rest, the
  same as for every peer: mixsql's reading against the peers' reading, all else equal.

Weights are token shares (``unit = 'tokens'``), so no per-sample conversion is needed; the native
path packs ``seq_len - 1`` so its ``input_ids`` of ``seq_len + 1`` ids match the peers' length minus one.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from ..corpus import DOMAIN_NAMES, MIX_TARGET
from .common import batched

PACKAGE = "mixsql"


def mix_sql(seed: int, target: dict = MIX_TARGET) -> str:
    groups = ",\n    ".join(f"{d} {target[d]}" for d in DOMAIN_NAMES)
    return (f"SELECT * FROM samples\nMIX BY redpajama_set_name WITH (\n    {groups}\n)\n"
            f"SETTINGS (seed = {seed}, unit = 'tokens', on_exhausted = 'repeat', max_epochs = 100000)")


def convert(corpus: Path, work: Path, mode: str) -> dict:
    """Registration (read-only index over the original files) instead of a conversion."""
    from mixsql.catalog import Catalog
    from mixsql.registration import create_source
    t0 = time.perf_counter()
    cat_dir = work / "catalog"
    if cat_dir.exists():
        shutil.rmtree(cat_dir)
    tok = str(corpus / "tokenizer.json")
    with Catalog(cat_dir) as cat:
        if mode == "text":
            s = create_source(cat, "slimpajama", str(corpus / "jsonl" / "*.jsonl.zst"), format="jsonl",
                              options={"preset": "slimpajama", "tokenizer": tok}, progress=False)
        else:
            s = create_source(cat, "slimpajama", str(corpus / "tokenized" / "*.parquet"), format="parquet",
                              options={"tokens": "tokens"}, progress=False)
    return {"conversion_s": round(time.perf_counter() - t0, 2), "samples": s.get("samples"),
            "registration_mb_per_s": s.get("mb_per_s")}


class Source:
    def __init__(self, corpus: Path, work: Path, mode: str, seed: int, state=None, cache_bytes: int | None = None):
        self.corpus, self.work, self.mode, self.seed, self.state0 = corpus, work, mode, seed, state
        self.tok = str(corpus / "tokenizer.json")
        self.sql = mix_sql(seed)
        self.cache_bytes = cache_bytes

    def _dataset(self, seq_len: int | None, tokenizer=None):
        from mixsql.torch import MixDataset
        kw = {} if self.cache_bytes is None else {"cache_bytes": self.cache_bytes}
        ds = MixDataset(self.sql, catalog=str(self.work / "catalog"), tokenizer=tokenizer, seq_len=seq_len, **kw)
        if self.state0 is not None:
            ds.load_state_dict(self.state0)
        return ds

    def batches(self, num_workers: int, batch_size: int, seq_len: int, tokenizer_path: str):
        """The native path: MixDataLoader over a packing MixDataset."""
        import torch

        from mixsql.torch import MixDataLoader

        from .common import DOM_INDEX, N_DOM
        dl = MixDataLoader(self._dataset(seq_len - 1, self.tok), batch_size=batch_size, num_workers=num_workers,
                           multiprocessing_context="fork" if num_workers else None,
                           prefetch_factor=4 if num_workers else None)
        for b in dl:
            dom = np.zeros((len(b["group"]), N_DOM), dtype=np.int64)
            lengths = b["length"].tolist()
            for i, g in enumerate(b["group"]):
                dom[i, DOM_INDEX[g.split("/")[-1]]] = lengths[i]
            yield {"input_ids": b["input_ids"], "dom": torch.from_numpy(dom)}

    def sample_batches(self, n: int):
        """The reading side only: one item per sample (text, or ids when pre-tokenized)."""
        key = "text" if self.mode == "text" else "tokens"
        items = ((it[key], it["group"].split("/")[-1]) for it in self._dataset(None))
        return batched(items, n)

    def sequences(self, seq_len: int):
        self.ds = self._dataset(seq_len, self.tok)
        return iter(self.ds)

    def state(self, consumed):
        return self.ds.state_dict()


def open(corpus, work, mode, seed, state=None, cache_bytes=None):  # noqa: A001
    return Source(Path(corpus), Path(work), mode, seed, state, cache_bytes)
