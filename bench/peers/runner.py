"""One system, one task, in its own process (clean RSS and CPU accounting): ``python -m bench.peers.runner``.

Tasks: ``convert`` (the system's own data preparation, timed), ``stream`` (one or more stream
configurations in sequence, each measured by ``common.measure_stream``: first batch, tokens/s
wall, tokens per CPU-second of the process tree, share error, peak RSS), ``resume`` (time from a
checkpoint taken after 0 and after K sequences to the next sample, in-process).
The result is printed as the last line, prefixed ``@@RESULT``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from .common import harness_dataset, measure_stream, write_json_result

MODULES = {"mixsql": "mixsql_sys", "mixsql_harness": "mixsql_sys", "hf_datasets": "hf_datasets",
           "mosaic_streaming": "mosaic_streaming", "litdata": "litdata_peer", "torchdata_nodes": "torchdata_nodes"}
# systems sharing another's prepared data (the same registration)
DATA_OF = {"mixsql_harness": "mixsql"}
# systems whose reading is driven through the shared harness even though the module has a native path
FORCE_HARNESS = {"mixsql_harness"}
# stream configurations: name -> (input mode, DataLoader workers, mixsql cache_bytes or None)
CONFIGS = {
    "w2": ("text", 2, None),
    "w1": ("text", 1, None),
    "pretok": ("tokens", 1, None),
    "w1_small_cache": ("text", 1, 2 << 20),
}
RESUME = "resume"          # a configuration too: restore times, in the same process as the streams
RESUME_SEQ_LEN = 256


def adapter(system: str):
    return importlib.import_module(f"bench.peers.{MODULES[system]}")


def work_dir(work_root: Path, system: str, mode: str) -> Path:
    return Path(work_root) / f"{DATA_OF.get(system, system)}-{mode}"


def _stream_one(a, mod, config: str) -> dict:
    mode, workers, cache = CONFIGS[config]
    tok_path = str(Path(a.corpus) / "tokenizer.json")
    work = work_dir(a.work_root, a.system, mode)
    kw = {"cache_bytes": cache} if cache is not None else {}
    n = a.pretok_batches if mode == "tokens" else a.batches

    def open_source():
        return mod.open(a.corpus, work, mode, a.seed, **kw)

    def make_batches():
        src = open_source()
        if hasattr(src, "batches") and a.system not in FORCE_HARNESS:
            return src.batches(workers, a.batch_size, a.seq_len, tok_path)
        from torch.utils.data import DataLoader
        ds = harness_dataset(src, tok_path, mode, a.seq_len, a.batch_size)
        return DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
                          multiprocessing_context="fork" if workers else None)

    return measure_stream(make_batches, n, share_batches=1000)


def _resume(a, mod, seq_len: int = RESUME_SEQ_LEN) -> dict:
    """Checkpoint after `steps` sequences of ``seq_len`` (batch of 1, in-process, pre-tokenized),
    then time restore -> next sample."""
    from ..tokenizer import load
    from .common import encode_flat
    tok = load(Path(a.corpus) / "tokenizer.json")
    work = work_dir(a.work_root, a.system, "tokens")
    out = {}
    warm = mod.open(a.corpus, work, "tokens", a.seed)  # imports and caches warm, for both timings alike
    next(warm.sequences(seq_len) if hasattr(warm, "sequences") else warm.samples())
    for steps in (0, a.steps):
        src = mod.open(a.corpus, work, "tokens", a.seed)
        t0 = time.perf_counter()
        if hasattr(src, "sequences"):  # the system packs itself
            it = src.sequences(seq_len)
            for _ in range(steps):
                next(it)
            state = src.state(steps)
        else:                          # sequences of seq_len tokens (documents + EOS) consumed
            consumed, tokens, it = 0, 0, src.samples()
            while tokens < steps * seq_len:
                payload, _ = next(it)
                consumed += 1
                tokens += (len(payload) if not isinstance(payload, str) else len(encode_flat(tok, [payload])[0])) + 1
            state = src.state(consumed)
        out[f"reach_s_{steps}"] = round(time.perf_counter() - t0, 2)
        t1 = time.perf_counter()
        src2 = mod.open(a.corpus, work, "tokens", a.seed, state=state)
        next(src2.sequences(seq_len) if hasattr(src2, "sequences") else iter(src2.samples()))
        out[f"resume_s_at_{steps}"] = round(time.perf_counter() - t1, 4)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.peers.runner")
    ap.add_argument("system", choices=sorted(MODULES))
    ap.add_argument("task", choices=["convert", "stream", "resume"])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--work-root", required=True)
    ap.add_argument("--mode", choices=["text", "tokens"], default="text", help="convert: which copy")
    ap.add_argument("--configs", default="w1", help=f"stream: comma-separated of {', '.join(CONFIGS)}, {RESUME}")
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--pretok-batches", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    a.corpus, a.work_root = Path(a.corpus), Path(a.work_root)
    mod = adapter(a.system)
    if a.task == "convert":
        work = work_dir(a.work_root, a.system, a.mode)
        work.mkdir(parents=True, exist_ok=True)
        res = mod.convert(a.corpus, work, a.mode)
    elif a.task == "stream":
        res = {c: _resume(a, mod) if c == RESUME else _stream_one(a, mod, c) for c in a.configs.split(",")}
    else:
        res = _resume(a, mod)
    write_json_result(res)


def _leave() -> None:
    """The result is written: stop this process' children (a peer's worker processes), then leave
    without running exit handlers. A peer's multiprocessing finalizers can block at exit (a queue
    feeder thread writing to a worker that is gone: seen with torchdata.nodes), and a worker left
    running would hold the result pipe open: either holds the comparison until its timeout."""
    sys.stdout.flush()
    sys.stderr.flush()
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass
    os._exit(0)


if __name__ == "__main__":
    main()
    _leave()
