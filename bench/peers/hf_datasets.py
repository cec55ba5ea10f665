"""Hugging Face ``datasets``: per-domain Arrow datasets, streamed with ``to_iterable_dataset`` and
mixed with ``interleave_datasets(probabilities=...)``; read in batches with ``IterableDataset.iter``
(Arrow-backed, no per-row Python dicts), pre-tokenized ids as numpy (``with_format('numpy')``)."""
from __future__ import annotations

import time
from pathlib import Path

from ..corpus import DOMAIN_NAMES
from .common import parquet_batches, sample_weights

PACKAGE = "datasets"
N_SHARDS = 4


def convert(corpus: Path, work: Path, mode: str) -> dict:
    """Arrow datasets on disk, one per domain (what load_dataset + filter + save_to_disk produce)."""
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc
    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    key = "text" if mode == "text" else "tokens"
    src = sorted((corpus / ("parquet" if mode == "text" else "tokenized")).glob("*.parquet"))
    table = pa.concat_tables(pa.table({key: c[0], "domain": c[1]})
                             for c in parquet_batches(src, [key, "redpajama_set_name"]))
    for d in DOMAIN_NAMES:
        part = table.filter(pc.equal(table.column("domain"), d))
        ds = datasets.Dataset(part)
        ds.save_to_disk(str(work / d), num_shards=min(N_SHARDS, max(1, len(part))))
    return {"conversion_s": round(time.perf_counter() - t0, 2)}


class Source:
    def __init__(self, corpus: Path, work: Path, mode: str, seed: int, state=None):
        import datasets
        datasets.disable_progress_bars()
        self.key = "text" if mode == "text" else "tokens"
        w = sample_weights(corpus)
        parts = [datasets.load_from_disk(str(work / d)).to_iterable_dataset(num_shards=N_SHARDS)
                 for d in DOMAIN_NAMES]
        # all_exhausted: oversample the small domains (restart them) instead of stopping early
        ds = datasets.interleave_datasets(parts, probabilities=[w[d] for d in DOMAIN_NAMES], seed=seed,
                                          stopping_strategy="all_exhausted")
        self.ds = ds.with_format("numpy") if mode == "tokens" else ds
        if state is not None:
            self.ds.load_state_dict(state)

    def _sharded(self):
        """In a DataLoader worker: this worker's share (HF's own node split, as for ranks)."""
        from torch.utils.data import get_worker_info
        info = get_worker_info()
        if info is None or info.num_workers == 1:
            return self.ds
        from datasets.distributed import split_dataset_by_node
        return split_dataset_by_node(self.ds, rank=info.id, world_size=info.num_workers)

    def sample_batches(self, n: int):
        ds = self._sharded()
        while True:
            for b in ds.iter(batch_size=n):
                yield b[self.key], b["domain"]

    def samples(self):
        while True:
            for ex in self.ds:
                yield ex[self.key], ex["domain"]

    def state(self, consumed: int):
        return self.ds.state_dict()


def open(corpus, work, mode, seed, state=None):  # noqa: A001 - adapter protocol
    return Source(Path(corpus), Path(work), mode, seed, state)
