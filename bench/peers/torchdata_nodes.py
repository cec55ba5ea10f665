"""torchdata.nodes: one parquet file per domain, a source node per domain (``IterableWrapper`` over
its row groups), ``MultiNodeWeightedSampler`` mixing them, ``Batcher`` + ``ParallelMapper``
(processes) running the shared tokenizer call on each batch, packing in the main process (the
pipeline shape torchdata.nodes documents: source -> sampler -> batch -> parallel map -> Loader)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ..corpus import DOMAIN_NAMES
from .common import DOM_INDEX, READ_BATCH, encode_flat, flat_ids, parquet_batches, sample_weights

PACKAGE = "torchdata"


def convert(corpus: Path, work: Path, mode: str) -> dict:
    """Split the corpus into one parquet file per domain (a source node reads one domain)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    t0 = time.perf_counter()
    src = "parquet" if mode == "text" else "tokenized"
    key = "text" if mode == "text" else "tokens"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t = pa.concat_tables(pq.read_table(p, columns=[key, "redpajama_set_name"])
                         for p in sorted((corpus / src).glob("*.parquet")))
    for d in DOMAIN_NAMES:
        pq.write_table(t.filter(pc.equal(t.column("redpajama_set_name"), d)), work / f"{d}.parquet",
                       row_group_size=1024)
    return {"conversion_s": round(time.perf_counter() - t0, 2)}


def _domain_gen(path: Path, key: str, dom: str):
    """Samples of one domain, cycled forever; token lists become numpy slices of the Arrow buffer."""
    while True:
        for (col,) in parquet_batches([path], [key]):
            if key == "text":
                for text in col.to_pylist():
                    yield text, dom
            else:
                arr = col.combine_chunks()
                values = arr.values.to_numpy()
                offs = arr.offsets.to_numpy()
                for a, b in zip(offs[:-1].tolist(), offs[1:].tolist()):
                    yield values[a:b], dom


class Source:
    def __init__(self, corpus: Path, work: Path, mode: str, seed: int, state=None):
        from torchdata.nodes import IterableWrapper, Loader, MultiNodeWeightedSampler
        self.mode, self.key = mode, ("text" if mode == "text" else "tokens")
        w = sample_weights(corpus)
        nodes = {d: IterableWrapper(_domain_gen(work / f"{d}.parquet", self.key, d)) for d in DOMAIN_NAMES}
        self.node = MultiNodeWeightedSampler(nodes, w, stop_criteria="CYCLE_FOREVER", seed=seed)
        self.loader = Loader(self.node)
        if state is not None:
            self.loader.load_state_dict(state)

    def samples(self):
        for payload, dom in self.loader:
            yield payload, dom

    def state(self, consumed: int):
        return self.loader.state_dict()

    def batches(self, num_workers: int, batch_size: int, seq_len: int, tokenizer_path: str):
        """Batcher -> ParallelMapper (processes) tokenizes each read batch with the shared call
        (pre-tokenized: an in-process Mapper); the shared vectorised packer runs in the main process."""
        import torch
        from torchdata.nodes import Batcher, Loader, Mapper, ParallelMapper

        from ..tokenizer import EOS, load
        from .common import VecPacker
        node = Batcher(self.node, batch_size=READ_BATCH)
        fn = _TokenizeBatch(tokenizer_path if self.mode == "text" else None)
        if self.mode == "text":
            node = ParallelMapper(node, fn, num_workers=max(1, num_workers), method="process", in_order=True,
                                  multiprocessing_context="fork")
        else:   # pre-tokenized: nothing worth a process hop
            node = Mapper(node, fn)
        packer = VecPacker(seq_len, batch_size, load(tokenizer_path).token_to_id(EOS))
        for ids, lengths, doms in Loader(node):
            packer.add(ids, lengths, doms)
            for rows, counts in packer.batches():
                yield {"input_ids": torch.from_numpy(rows), "dom": torch.from_numpy(counts)}


class _TokenizeBatch:
    """ParallelMapper function: a read batch -> (flat ids, lengths, domain indices)."""

    def __init__(self, path: str | None):
        self.path, self.tok = path, None

    def __call__(self, batch):
        payloads, doms = zip(*batch)
        if self.path is None:
            ids, lengths = flat_ids(payloads)
        else:
            if self.tok is None:
                from ..tokenizer import load
                self.tok = load(self.path)
            ids, lengths = encode_flat(self.tok, list(payloads))
        return ids, lengths, np.fromiter((DOM_INDEX[d] for d in doms), np.int8, count=len(doms))


def open(corpus, work, mode, seed, state=None):  # noqa: A001
    return Source(Path(corpus), Path(work), mode, seed, state)
