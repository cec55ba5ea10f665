"""LitData: ``optimize`` per domain + ``CombinedStreamingDataset(weights=...)`` of shuffled
``StreamingDataset``s, iterated by each DataLoader worker as ``StreamingDataLoader`` does (LitData
partitions chunks over workers itself); ``StreamingDataLoader`` for resume."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from ..corpus import DOMAIN_NAMES
from .common import batched, iter_parquet, sample_weights

PACKAGE = "litdata"


def _emit(arg):
    """optimize() worker fn: one input = (parquet file, domain, key) -> yields that domain's rows."""
    path, dom, key = arg
    for payload, d in iter_parquet([path], [key, "redpajama_set_name"]):
        if d == dom:
            yield {key: payload if key == "text" else np.asarray(payload, np.int32), "domain": d}


def convert(corpus: Path, work: Path, mode: str) -> dict:
    from litdata import optimize
    t0 = time.perf_counter()
    src = "parquet" if mode == "text" else "tokenized"
    key = "text" if mode == "text" else "tokens"
    files = [str(p) for p in sorted((corpus / src).glob("*.parquet"))]
    for d in DOMAIN_NAMES:
        if (work / d).exists():
            shutil.rmtree(work / d)
        optimize(fn=_emit, inputs=[(f, d, key) for f in files], output_dir=str(work / d), chunk_bytes="8MB",
                 num_workers=1, verbose=False, reorder_files=False, start_method="fork")
    return {"conversion_s": round(time.perf_counter() - t0, 2)}


def _first(items):
    return items[0]


class Source:
    def __init__(self, corpus: Path, work: Path, mode: str, seed: int, state=None):
        from litdata import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset
        self.key = "text" if mode == "text" else "tokens"
        w = sample_weights(corpus)
        parts = [StreamingDataset(str(work / d), shuffle=True, seed=seed) for d in DOMAIN_NAMES]
        self.ds = CombinedStreamingDataset(parts, seed=seed, weights=[w[d] for d in DOMAIN_NAMES],
                                           iterate_over_all=False)
        self.loader = StreamingDataLoader(self.ds, batch_size=1, num_workers=0, collate_fn=_first)
        if state is not None:
            self.loader.load_state_dict(state)

    def sample_batches(self, n: int):
        return batched(self.samples(), n)

    def samples(self):
        """In a DataLoader worker: the combined dataset itself. In the main process (resume test):
        through ``StreamingDataLoader``, LitData's resumable entry point for combined datasets."""
        from torch.utils.data import get_worker_info
        src = self.loader if get_worker_info() is None else self.ds
        epoch = 0
        while True:
            if src is self.ds:
                self.ds.set_epoch(epoch)
            for ex in src:
                payload = ex[self.key]
                yield (payload if self.key == "text" else np.asarray(payload)), ex["domain"]
            epoch += 1

    def state(self, consumed: int):
        return self.loader.state_dict()


def open(corpus, work, mode, seed, state=None):  # noqa: A001
    return Source(Path(corpus), Path(work), mode, seed, state)
