"""MosaicML Streaming: one MDS directory per domain (``MDSWriter``) + ``StreamingDataset(streams=
[Stream(local=..., proportion=...)])``, iterated by each DataLoader worker (Mosaic partitions the
samples over workers itself)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from ..corpus import DOMAIN_NAMES
from ._compat import stub_torchvision
from .common import batched, iter_parquet, sample_weights

PACKAGE = "mosaicml-streaming"
READ_BATCH = 64   # documents per harness read (bench.peers.common: one tokenizer call per 64)


def convert(corpus: Path, work: Path, mode: str) -> dict:
    stub_torchvision()
    from streaming import MDSWriter
    t0 = time.perf_counter()
    cols = {"text": "str", "domain": "str"} if mode == "text" else {"tokens": "ndarray:int32", "domain": "str"}
    writers = {}
    for d in DOMAIN_NAMES:
        if (work / d).exists():
            shutil.rmtree(work / d)
        writers[d] = MDSWriter(out=str(work / d), columns=cols, size_limit="8mb", progress_bar=False)
    src = "parquet" if mode == "text" else "tokenized"
    key = "text" if mode == "text" else "tokens"
    for payload, dom in iter_parquet(sorted((corpus / src).glob("*.parquet")), [key, "redpajama_set_name"]):
        writers[dom].write({key: payload if mode == "text" else np.asarray(payload, np.int32), "domain": dom})
    for w in writers.values():
        w.finish()
    return {"conversion_s": round(time.perf_counter() - t0, 2)}


class Source:
    def __init__(self, corpus: Path, work: Path, mode: str, seed: int, state=None):
        stub_torchvision()
        from streaming import Stream, StreamingDataset
        from streaming.base.util import clean_stale_shared_memory
        clean_stale_shared_memory()
        self.key = "text" if mode == "text" else "tokens"
        w = sample_weights(corpus)
        streams = [Stream(local=str(work / d), proportion=w[d]) for d in DOMAIN_NAMES]
        # batch_size: Mosaic's per-device batch (it partitions samples by it and prefetches
        # 8 x batch_size samples ahead); the harness reads 64 documents a batch. With batch_size=1
        # its reader waits on 7 ms ticks for an 8-sample lead: about 5x slower (measured)
        self.ds = StreamingDataset(streams=streams, shuffle=True, shuffle_seed=seed, num_canonical_nodes=1,
                                   batch_size=READ_BATCH, epoch_size=200_000, replication=None)
        if state is not None:
            self.ds.load_state_dict(state)

    def sample_batches(self, n: int):
        return batched(self.samples(), n)

    def samples(self):
        while True:
            for ex in self.ds:
                yield ex[self.key], ex["domain"]

    def state(self, consumed: int):
        return self.ds.state_dict(consumed, from_beginning=True)


def open(corpus, work, mode, seed, state=None):  # noqa: A001
    return Source(Path(corpus), Path(work), mode, seed, state)
