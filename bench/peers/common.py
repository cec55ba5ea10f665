"""What every system in the comparison shares: packing, batches, and the measurements.

Each system yields *samples* ``(text or token ids, domain)``; the shared ``Packed`` wrapper
tokenizes (same BPE tokenizer), appends EOS and packs into ``seq_len`` sequences, and counts
the tokens of every domain in each sequence so share errors are measured in delivered tokens.
Peers that have no notion of per-domain token budgets get per-sample weights derived from the
token target: ``w_d ~ target_d / mean_tokens_per_doc_d`` (what a user would compute).
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..corpus import DOMAIN_NAMES, MIX_TARGET

DOM_INDEX = {n: i for i, n in enumerate(DOMAIN_NAMES)}
N_DOM = len(DOMAIN_NAMES)


def domain_token_stats(corpus: Path) -> dict:
    """Per domain: documents and BPE tokens in the pre-tokenized copy (cached in the corpus dir)."""
    cache = Path(corpus) / "token_stats.json"
    if cache.exists():
        return json.loads(cache.read_text())
    out = {n: {"docs": 0, "tokens": 0} for n in DOMAIN_NAMES}
    for p in sorted((Path(corpus) / "tokenized").glob("*.parquet")):
        t = pq.read_table(p, columns=["redpajama_set_name", "n_tokens"])
        g = t.group_by("redpajama_set_name").aggregate([("n_tokens", "sum"), ("n_tokens", "count")])
        for name, s, c in zip(*(g.column(k).to_pylist() for k in ("redpajama_set_name", "n_tokens_sum",
                                                                   "n_tokens_count"))):
            out[name]["docs"] += c
            out[name]["tokens"] += s
    cache.write_text(json.dumps(out))
    return out


def sample_weights(corpus: Path, target: dict = MIX_TARGET) -> dict:
    """Per-sample sampling probabilities that realise the token target in expectation."""
    st = domain_token_stats(corpus)
    raw = {d: target[d] / (st[d]["tokens"] / max(1, st[d]["docs"])) for d in DOMAIN_NAMES}
    s = sum(raw.values())
    return {d: v / s for d, v in raw.items()}


class Packer:
    """Concatenate documents (each followed by EOS) and cut ``seq_len`` sequences; per-domain counts."""

    def __init__(self, seq_len: int, eos: int):
        self.seq_len, self.eos = seq_len, eos
        self.buf: list[np.ndarray] = []
        self.doms: list[np.ndarray] = []
        self.n = 0

    def add(self, ids, dom: int):
        ids = np.asarray(ids, dtype=np.int32)
        ids = np.append(ids, np.int32(self.eos))
        self.buf.append(ids)
        self.doms.append(np.full(len(ids), dom, dtype=np.int8))
        self.n += len(ids)
        while self.n >= self.seq_len:
            flat = np.concatenate(self.buf)
            fd = np.concatenate(self.doms)
            seq, dom_seq = flat[:self.seq_len], fd[:self.seq_len]
            self.buf, self.doms = [flat[self.seq_len:]], [fd[self.seq_len:]]
            self.n -= self.seq_len
            yield seq, np.bincount(dom_seq, minlength=N_DOM).astype(np.int64)


def packed_iterable(samples_factory, tokenizer_path: str, seq_len: int, mode: str):
    """A torch IterableDataset: samples_factory() -> iterator of (payload, domain name)."""
    import torch
    from torch.utils.data import IterableDataset

    from ..tokenizer import EOS, load

    class Packed(IterableDataset):
        def __iter__(self):
            tok = load(tokenizer_path)
            packer = Packer(seq_len, tok.token_to_id(EOS))
            for payload, dom in samples_factory():
                ids = tok.encode(payload, add_special_tokens=False).ids if mode == "text" else payload
                for seq, counts in packer.add(ids, DOM_INDEX[dom]):
                    yield {"input_ids": torch.from_numpy(seq), "dom": torch.from_numpy(counts)}

    return Packed()


class RSSSampler:
    """Peak resident memory of this process plus its children, sampled every 20 ms."""

    def __init__(self):
        import psutil
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _sample(self):
        import psutil
        total = 0
        try:
            procs = [self.proc] + self.proc.children(recursive=True)
        except psutil.Error:
            return
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def _loop(self):
        while not self._stop.wait(0.02):
            self._sample()

    def stop(self) -> int:
        self._sample()
        self._stop.set()
        self._t.join()
        return self.peak


def measure_stream(make_batches, n_batches: int, target: dict = MIX_TARGET, share_batches: int = 1000) -> dict:
    """Time to first batch, steady tokens/s, share error over the first share_batches, peak RSS.

    ``make_batches()`` builds the system's loader and returns an iterator of dict batches
    (``input_ids`` [B, L], ``dom`` [B, N_DOM] token counts). Construction counts toward the
    first-batch time.
    """
    rss = RSSSampler()
    t0 = time.perf_counter()
    it = iter(make_batches())
    first = next(it)
    t_first = time.perf_counter() - t0
    counts = first["dom"].sum(0).numpy().astype(np.int64)
    warm = max(1, min(20, n_batches // 10))
    tokens, t_start, done = 0, None, 1
    errs = []
    tgt = np.array([target[d] for d in DOMAIN_NAMES])
    for b in it:
        done += 1
        if done <= share_batches:
            counts += b["dom"].sum(0).numpy()
            errs.append(np.abs(counts / counts.sum() - tgt).max())
        if done == warm:
            t_start = time.perf_counter()
        elif done > warm:
            tokens += b["input_ids"].numel()
        if done >= n_batches:
            break
    t_end = time.perf_counter()
    peak = rss.stop()
    share = counts / counts.sum()
    return {
        "first_batch_s": round(t_first, 3),
        "tokens_per_s": round(tokens / (t_end - t_start), 1) if t_start and t_end > t_start else None,
        "batches": done,
        "share_err_pp": round(100 * float(np.abs(share - tgt).max()), 3),
        "share_err_mean_pp": round(100 * float(np.mean(errs)), 3) if errs else None,
        "realised": {d: round(float(s), 4) for d, s in zip(DOMAIN_NAMES, share)},
        "peak_rss_mb": round(peak / 2**20, 1),
    }


def write_json_result(obj: dict) -> None:
    """The subprocess protocol: the last stdout line is a JSON object."""
    print("\n@@RESULT " + json.dumps(obj), flush=True)


def env_for_subprocess() -> dict:
    env = dict(os.environ)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def iter_parquet(paths, cols, shard: tuple[int, int] = (0, 1)):
    """Yield rows (tuples of the given columns) of parquet files, files strided by shard."""
    wi, wn = shard
    for p in list(paths)[wi::wn]:
        pf = pq.ParquetFile(p)
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=cols)
            yield from zip(*(t.column(c).to_pylist() for c in cols))


__all__ = ["Packer", "packed_iterable", "measure_stream", "sample_weights", "domain_token_stats",
           "RSSSampler", "DOM_INDEX", "N_DOM", "pc"]
