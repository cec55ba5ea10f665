"""Hugging Face ``datasets``: per-domain Arrow datasets + ``interleave_datasets(probabilities=...)``."""
from __future__ import annotations

import time
from pathlib import Path

from ..corpus import DOMAIN_NAMES
from .common import iter_parquet, sample_weights

PACKAGE = "datasets"
N_SHARDS = 4


def _rows(corpus: Path, mode: str):
    if mode == "text":
        return iter_parquet(sorted((corpus / "parquet").glob("*.parquet")), ["text", "redpajama_set_name"])
    return iter_parquet(sorted((corpus / "tokenized").glob("*.parquet")), ["tokens", "redpajama_set_name"])


def convert(corpus: Path, work: Path, mode: str) -> dict:
    """Arrow datasets on disk, one per domain (what load_dataset + save_to_disk produce)."""
    import datasets
    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    per = {d: [] for d in DOMAIN_NAMES}
    for payload, dom in _rows(corpus, mode):
        per[dom].append(payload)
    key = "text" if mode == "text" else "tokens"
    for d, rows in per.items():
        feats = datasets.Features({key: datasets.Value("string") if mode == "text"
                                   else datasets.Sequence(datasets.Value("int32")),
                                   "domain": datasets.Value("string")})
        ds = datasets.Dataset.from_dict({key: rows, "domain": [d] * len(rows)}, features=feats)
        ds.save_to_disk(str(work / d), num_shards=min(N_SHARDS, max(1, len(rows))))
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
        self.ds = datasets.interleave_datasets(parts, probabilities=[w[d] for d in DOMAIN_NAMES], seed=seed,
                                               stopping_strategy="all_exhausted")
        if state is not None:
            self.ds.load_state_dict(state)

    def samples(self):
        while True:
            for ex in self.ds:
                yield ex[self.key], ex["domain"]

    def state(self, consumed: int):
        return self.ds.state_dict()


def open(corpus, work, mode, seed, state=None):  # noqa: A001 - adapter protocol
    return Source(Path(corpus), Path(work), mode, seed, state)
