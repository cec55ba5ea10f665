"""The work every system in the comparison shares, and the measurements.

A peer only *reads*: its ``Source.sample_batches(n)`` yields ``(payloads, domains)`` lists of up
to ``n`` samples (texts, or token-id arrays for pre-tokenized input) read its own recommended way.
Everything after reading is this module's, identical for every peer and for mixsql's
``mixsql_harness`` row:

* :func:`encode_flat`: one ``encode_batch_fast`` call (the fastest batch call of HF
  ``tokenizers``, no offsets) per batch of documents, flattened to one int32 array + lengths;
* :class:`VecPacker`: vectorised packing (each document + EOS appended to one carry buffer, full
  ``seq_len`` rows cut with one reshape, per-row domain token counts with one ``bincount``);
* collation: whole ``[batch, seq_len]`` arrays handed to torch as they are (``DataLoader`` with
  ``batch_size=None``), no per-item collate.

Measurements: :class:`TreeMeter` (CPU seconds of this process and every descendant, threads
included, via psutil; wall separately) and :class:`RSSSampler` (peak RSS of the tree).
Peers mix *samples*, so they get per-sample weights ``target_d / mean_tokens_per_doc_d``.
"""
from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ..corpus import DOMAIN_NAMES, MIX_TARGET

DOM_INDEX = {n: i for i, n in enumerate(DOMAIN_NAMES)}
N_DOM = len(DOMAIN_NAMES)
READ_BATCH = 64           # samples per read batch / per tokenizer call, for every system (~6 batches
                          # of 8 x 512 tokens: windows must not hinge on a few large bursts)


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


def encode_flat(tok, texts: list) -> tuple[np.ndarray, np.ndarray]:
    """One batch call of the tokenizer: (flat int32 ids of all texts, ids per text)."""
    fast = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
    ids = [e.ids for e in fast(texts, add_special_tokens=False)]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())), lengths


def flat_ids(arrays: list) -> tuple[np.ndarray, np.ndarray]:
    """Pre-tokenized payloads (arrays or lists of ids) -> (flat int32 ids, ids per document)."""
    arrs = [np.asarray(a, dtype=np.int32).reshape(-1) for a in arrays]
    lengths = np.fromiter(map(len, arrs), dtype=np.int64, count=len(arrs))
    return (np.concatenate(arrs) if arrs else np.empty(0, np.int32)), lengths


class VecPacker:
    """Documents (each followed by EOS) -> ``[batch, seq_len]`` rows with per-row domain token counts.

    ``add(ids, lengths, doms)`` takes a whole read batch; ``batches()`` drains full batches.
    """

    def __init__(self, seq_len: int, batch_size: int, eos: int):
        self.L, self.B, self.eos = seq_len, batch_size, eos
        self.ids = np.empty(0, np.int32)
        self.dom = np.empty(0, np.int8)

    def add(self, ids: np.ndarray, lengths: np.ndarray, doms: np.ndarray) -> None:
        ends = np.cumsum(lengths)
        framed = np.insert(ids, ends, np.int32(self.eos))            # EOS after every document
        dom = np.repeat(np.asarray(doms, np.int8), np.asarray(lengths) + 1)
        self.ids = np.concatenate([self.ids, framed])
        self.dom = np.concatenate([self.dom, dom])

    def batches(self):
        n = len(self.ids) // (self.L * self.B)
        if n == 0:
            return
        cut = n * self.B * self.L
        rows = self.ids[:cut].reshape(n, self.B, self.L)
        drow = self.dom[:cut].reshape(n * self.B, self.L).astype(np.int64)
        counts = np.bincount((np.arange(n * self.B)[:, None] * N_DOM + drow).ravel(),
                             minlength=n * self.B * N_DOM).reshape(n, self.B, N_DOM)
        self.ids, self.dom = self.ids[cut:], self.dom[cut:]
        for i in range(n):
            yield rows[i], counts[i]


def packed_batches(sample_batches, tok, mode: str, seq_len: int, batch_size: int, eos: int):
    """The shared pipeline after reading: tokenize (one batch call), pack (vectorised), collate."""
    import torch
    packer = VecPacker(seq_len, batch_size, eos)
    for payloads, doms in sample_batches:
        if not len(payloads):
            continue
        ids, lengths = encode_flat(tok, list(payloads)) if mode == "text" else flat_ids(payloads)
        packer.add(ids, lengths, np.fromiter((DOM_INDEX[d] for d in doms), np.int8, count=len(doms)))
        for rows, counts in packer.batches():
            yield {"input_ids": torch.from_numpy(rows), "dom": torch.from_numpy(counts)}


def harness_dataset(source, tokenizer_path: str, mode: str, seq_len: int, batch_size: int):
    """A torch IterableDataset yielding whole batches. ``source`` is built in the main process (as
    each peer documents: Mosaic's StreamingDataset must not be constructed in a worker) and
    iterated in each worker, so the peer's own worker sharding (``get_worker_info``) applies."""
    from torch.utils.data import IterableDataset

    from ..tokenizer import EOS, load

    class HarnessBatches(IterableDataset):
        def __iter__(self):
            tok = load(tokenizer_path)
            yield from packed_batches(source.sample_batches(READ_BATCH), tok, mode, seq_len, batch_size,
                                      tok.token_to_id(EOS))

    return HarnessBatches()


def batched(pairs, n: int):
    """(payload, domain) pairs -> ([payloads], [domains]) lists of up to n."""
    it = iter(pairs)
    while True:
        block = list(itertools.islice(it, n))
        if not block:
            return
        payloads, doms = zip(*block)
        yield list(payloads), list(doms)


class TreeMeter:
    """CPU seconds (user + system, all threads) of this process and all its descendants, plus
    the CPU time of children already reaped; and wall time. ``read()`` -> (cpu_s, wall_s)."""

    def __init__(self):
        import psutil
        self.proc = psutil.Process()

    def read(self) -> tuple[float, float]:
        import psutil
        t = self.proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        try:
            kids = self.proc.children(recursive=True)
        except psutil.Error:
            kids = []
        for p in kids:
            try:
                c = p.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                pass
        return total, time.perf_counter()


class RSSSampler:
    """Peak resident memory of this process plus its descendants, sampled every 50 ms."""

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
        while not self._stop.wait(0.05):
            self._sample()

    def stop(self) -> int:
        self._sample()
        self._stop.set()
        self._t.join()
        return self.peak


SHARE_FROM = 10   # share error: cumulative share after each batch from this one on (one batch of 8
                  # sequences cannot represent 7 shares; a sequence of seq_len tokens is ~1/(8k) after k batches)


def measure_stream(make_batches, n_batches: int, target: dict = MIX_TARGET, share_batches: int = 1000) -> dict:
    """Time to first batch, steady tokens/s (wall) and tokens per CPU-second of the process tree,
    share error, peak RSS.

    ``make_batches()`` builds the system's loader and returns an iterator of dict batches
    (``input_ids`` [B, L], ``dom`` [B, N_DOM] token counts); construction counts toward the
    first-batch time. The steady window starts after ``warm`` batches, once workers run.
    ``share_err_max_pp``: max over batches SHARE_FROM..min(n_batches, share_batches) of the
    cumulative |realised - target| token share; ``share_err_final_pp``: the same at the last one.
    """
    meter = TreeMeter()
    rss = RSSSampler()
    t0 = time.perf_counter()
    it = iter(make_batches())
    first = next(it)
    t_first = time.perf_counter() - t0
    counts = first["dom"].sum(0).numpy().astype(np.int64)
    warm = max(2, min(20, n_batches // 10))
    tgt = np.array([target[d] for d in DOMAIN_NAMES])
    share_upto = min(n_batches, share_batches)
    tokens, start, done, err_max = 0, None, 1, 0.0
    for b in it:
        done += 1
        if done <= share_upto:
            counts += b["dom"].sum(0).numpy()
            if done >= SHARE_FROM:
                err_max = max(err_max, float(np.abs(counts / counts.sum() - tgt).max()))
        if done == warm:
            start = meter.read()
        elif done > warm:
            tokens += b["input_ids"].numel()
        if done >= n_batches:
            break
    end = meter.read()
    peak = rss.stop()
    del it
    share = counts / counts.sum()
    cpu, wall = (end[0] - start[0], end[1] - start[1]) if start else (0.0, 0.0)
    return {
        "first_batch_s": round(t_first, 3),
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "tokens_per_cpu_s": round(tokens / cpu, 1) if cpu > 0 else None,
        "window_cpu_s": round(cpu, 3), "window_wall_s": round(wall, 3), "window_tokens": tokens,
        "batches": done,
        "share_err_max_pp": round(100 * err_max, 3),
        "share_err_final_pp": round(100 * float(np.abs(share - tgt).max()), 3),
        "share_batches": share_upto,
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


def parquet_batches(paths, cols, shard: tuple[int, int] = (0, 1)):
    """Per row group of the given parquet files (files strided by shard): the columns as lists."""
    wi, wn = shard
    for p in list(paths)[wi::wn]:
        pf = pq.ParquetFile(p)
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=cols)
            yield [t.column(c) for c in cols]


def iter_parquet(paths, cols, shard: tuple[int, int] = (0, 1)):
    """Yield rows (tuples of the given columns) of parquet files, files strided by shard."""
    for columns in parquet_batches(paths, cols, shard):
        yield from zip(*(c.to_pylist() for c in columns))
