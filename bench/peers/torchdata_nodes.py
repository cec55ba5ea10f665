"""torchdata.nodes: per-domain parquet readers + ``MultiNodeWeightedSampler`` + ``ParallelMapper``."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ..corpus import DOMAIN_NAMES
from .common import iter_parquet, sample_weights

PACKAGE = "torchdata"


def convert(corpus: Path, work: Path, mode: str) -> dict:
    """Split the corpus into one parquet file per domain (a source node reads one domain)."""
    import pyarrow.compute as pc
    t0 = time.perf_counter()
    src = "parquet" if mode == "text" else "tokenized"
    key = "text" if mode == "text" else "tokens"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    tables = [pq.read_table(p, columns=[key, "redpajama_set_name"]) for p in sorted((corpus / src).glob("*.parquet"))]
    import pyarrow as pa
    t = pa.concat_tables(tables)
    for d in DOMAIN_NAMES:
        pq.write_table(t.filter(pc.equal(t.column("redpajama_set_name"), d)), work / f"{d}.parquet",
                       row_group_size=256)
    return {"conversion_s": round(time.perf_counter() - t0, 2)}


def _domain_gen(path: Path, key: str):
    while True:  # cycle the domain forever
        yield from iter_parquet([path], [key, "redpajama_set_name"])


class Source:
    def __init__(self, corpus: Path, work: Path, mode: str, seed: int, state=None):
        from torchdata.nodes import IterableWrapper, Loader, MultiNodeWeightedSampler
        self.mode, self.key = mode, ("text" if mode == "text" else "tokens")
        w = sample_weights(corpus)
        nodes = {d: IterableWrapper(_domain_gen(work / f"{d}.parquet", self.key)) for d in DOMAIN_NAMES}
        self.node = MultiNodeWeightedSampler(nodes, w, stop_criteria="CYCLE_FOREVER", seed=seed)
        self._state = state
        self.loader = Loader(self.node)
        if state is not None:
            self.loader.load_state_dict(state)

    def samples(self):
        for payload, dom in self.loader:
            yield payload, dom

    def state(self, consumed: int):
        return self.loader.state_dict()

    def batches(self, num_workers: int, batch_size: int, seq_len: int, tokenizer_path: str):
        """ParallelMapper (processes) tokenizes; packing + batching in the main process."""
        import torch
        from torchdata.nodes import Loader, ParallelMapper

        from .common import DOM_INDEX, Packer
        from ..tokenizer import EOS, load
        node = self.node
        if self.mode == "text":
            node = ParallelMapper(node, _Tokenize(tokenizer_path), num_workers=num_workers, method="process",
                                  in_order=True, multiprocessing_context="fork")
        tok = load(tokenizer_path)
        packer = Packer(seq_len, tok.token_to_id(EOS))
        ids_b, dom_b = [], []
        for payload, dom in Loader(node):
            for seq, counts in packer.add(payload, DOM_INDEX[dom]):
                ids_b.append(seq)
                dom_b.append(counts)
                if len(ids_b) == batch_size:
                    yield {"input_ids": torch.from_numpy(np.stack(ids_b)), "dom": torch.from_numpy(np.stack(dom_b))}
                    ids_b, dom_b = [], []


class _Tokenize:
    def __init__(self, path: str):
        self.path, self.tok = path, None

    def __call__(self, item):
        if self.tok is None:
            from ..tokenizer import load
            self.tok = load(self.path)
        text, dom = item
        return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, np.int32), dom


def open(corpus, work, mode, seed, state=None):  # noqa: A001
    return Source(Path(corpus), Path(work), mode, seed, state)
