"""One system, one task, in its own process (clean peak RSS): ``python -m bench.peers.runner``.

Tasks: ``convert`` (the system's own data preparation, timed), ``stream`` (first batch, tokens/s,
share error, peak RSS through a torch DataLoader with N workers), ``resume`` (time from a
checkpoint taken after 0 and after K sequences to the next sequence, in-process).
The result is printed as the last line, prefixed ``@@RESULT``.
"""
from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from .common import DOM_INDEX, Packer, measure_stream, packed_iterable, write_json_result

MODULES = {"mixsql": "mixsql_sys", "hf_datasets": "hf_datasets", "mosaic_streaming": "mosaic_streaming",
           "litdata": "litdata_peer", "torchdata_nodes": "torchdata_nodes"}


def adapter(system: str):
    return importlib.import_module(f"bench.peers.{MODULES[system]}")


def _stream(a, mod) -> dict:
    tok_path = str(Path(a.corpus) / "tokenizer.json")

    def make_batches():
        src = mod.open(a.corpus, a.work, a.mode, a.seed)
        if hasattr(src, "batches"):
            return src.batches(a.workers, a.batch_size, a.seq_len, tok_path)
        from torch.utils.data import DataLoader
        ds = packed_iterable(src.samples, tok_path, a.seq_len, a.mode)
        return DataLoader(ds, batch_size=a.batch_size, num_workers=a.workers, prefetch_factor=4 if a.workers else None,
                          multiprocessing_context="fork" if a.workers else None)

    return measure_stream(make_batches, a.batches, share_batches=1000)


def _resume(a, mod) -> dict:
    """Checkpoint after `steps` sequences (batch of 1, in-process), then time restore -> next sequence."""
    from ..tokenizer import EOS, load
    tok = load(Path(a.corpus) / "tokenizer.json")
    out = {}
    warm = mod.open(a.corpus, a.work, a.mode, a.seed)  # imports and caches warm, for both timings alike
    next(warm.sequences(a.seq_len) if hasattr(warm, "sequences") else warm.samples())
    for steps in (0, a.steps):
        src = mod.open(a.corpus, a.work, a.mode, a.seed)
        if hasattr(src, "sequences"):  # the system packs itself
            t0 = time.perf_counter()
            it = src.sequences(a.seq_len)
            for _ in range(steps):
                next(it)
            reach = time.perf_counter() - t0
            state = src.state(steps)
            t1 = time.perf_counter()
            next(mod.open(a.corpus, a.work, a.mode, a.seed, state=state).sequences(a.seq_len))
            out[f"resume_s_at_{steps}"] = round(time.perf_counter() - t1, 4)
            out[f"reach_s_{steps}"] = round(reach, 2)
            continue
        packer = Packer(a.seq_len, tok.token_to_id(EOS))
        consumed, seqs = 0, 0
        t0 = time.perf_counter()
        it = src.samples()
        while seqs < steps:
            payload, dom = next(it)
            consumed += 1
            ids = tok.encode(payload, add_special_tokens=False).ids if a.mode == "text" else payload
            seqs += sum(1 for _ in packer.add(ids, DOM_INDEX[dom]))
        reach = time.perf_counter() - t0
        state = src.state(consumed)
        t1 = time.perf_counter()
        src2 = mod.open(a.corpus, a.work, a.mode, a.seed, state=state)
        next(iter(src2.samples()))
        out[f"resume_s_at_{steps}"] = round(time.perf_counter() - t1, 4)
        out[f"reach_s_{steps}"] = round(reach, 2)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.peers.runner")
    ap.add_argument("system", choices=sorted(MODULES))
    ap.add_argument("task", choices=["convert", "stream", "resume"])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--mode", choices=["text", "tokens"], default="text")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    a.corpus, a.work = Path(a.corpus), Path(a.work)
    mod = adapter(a.system)
    if a.task == "convert":
        a.work.mkdir(parents=True, exist_ok=True)
        res = mod.convert(a.corpus, a.work, a.mode)
    elif a.task == "stream":
        res = _stream(a, mod)
    else:
        res = _resume(a, mod)
    write_json_result(res)


if __name__ == "__main__":
    main()
