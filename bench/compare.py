"""mixsql side by side with the loaders users would pick instead (``python -m bench compare``).

Same corpus (bench.corpus, SlimPajama-shaped), same target token shares (``corpus.MIX_TARGET``),
same BPE tokenizer (bench.tokenizer), same ``seq_len`` and batch size, every run in its own
subprocess (bench.peers.runner) so peak RSS is clean. Figures per system:

* ``convert_s``       the system's own preparation (peers: conversion to their format; mixsql:
                      registration, an index over the unchanged files, with BPE token counting)
* ``first_batch_s``   loader construction to first batch (1 DataLoader worker)
* ``tok_s_core_w1`` / ``tok_s_core_w2``  steady tokens/s divided by worker count (tokenizing on the fly)
* ``tok_s_core_pretok``  same with pre-tokenized input, 1 worker (data-plane overhead only), over
                      at least 3,000 batches (a long enough window at millions of tokens/s)
* ``rss_mb``          peak RSS of the process tree (2 workers)
* ``share_err_pp``    max |realised - target| token share over the first 1,000 batches (percentage points)
* ``resume0_s`` / ``resume10k_s``  restore a checkpoint taken at step 0 / 10,000 (batch 1,
                      seq_len 256, pre-tokenized) and deliver the next sequence
Every figure also as a ratio to mixsql's.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

from . import corpus as corpus_mod
from .peers import SYSTEMS
from .peers.common import env_for_subprocess
from .results import markdown_table

REPO = Path(__file__).resolve().parent.parent
FIGURES = ("convert_s", "first_batch_s", "tok_s_core_w1", "tok_s_core_w2", "tok_s_core_pretok", "rss_mb",
           "share_err_pp", "resume0_s", "resume10k_s")
HIGHER_IS_BETTER = {"tok_s_core_w1", "tok_s_core_w2", "tok_s_core_pretok"}
IMPORTS = {"mixsql": "mixsql.torch", "hf_datasets": "datasets", "mosaic_streaming": "streaming",
           "litdata": "litdata", "torchdata_nodes": "torchdata.nodes"}
PIP = {"mixsql": "mixsql", "hf_datasets": "datasets", "mosaic_streaming": "mosaicml-streaming",
       "litdata": "litdata", "torchdata_nodes": "torchdata"}


def _version(system: str) -> str:
    try:
        from importlib.metadata import version
        return version(PIP[system])
    except Exception:
        return "?"


def _call(system: str, task: str, corpus: Path, work: Path, timeout: float, **kw) -> dict:
    cmd = [sys.executable, "-m", "bench.peers.runner", system, task, "--corpus", str(corpus), "--work", str(work)]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env_for_subprocess(), capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("@@RESULT "):
            res = json.loads(line[len("@@RESULT "):])
            res["_wall_s"] = round(time.perf_counter() - t0, 1)
            return res
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {p.returncode}: {tail[0][:300]}"}


def available(system: str) -> str | None:
    """None when the system can be imported, else the reason."""
    mod = IMPORTS[system]
    try:
        if importlib.util.find_spec(mod.split(".")[0]) is None:
            return f"{PIP[system]} not installed (pip install -e '.[bench]')"
    except (ImportError, ValueError) as exc:
        return str(exc)
    if system == "mixsql":
        try:
            importlib.import_module("mixsql.torch")
            importlib.import_module("mixsql.registration")
        except Exception as exc:
            return f"mixsql.torch / mixsql.registration not importable: {exc}"
    return None


def compare(mb: float = 20, batches: int = 300, batch_size: int = 8, seq_len: int = 512, steps: int = 10_000,
            seed: int = 0, systems=SYSTEMS, timeout: float = 240, log=print, pretok_batches: int = 3000) -> dict:
    t0 = time.perf_counter()
    corpus = corpus_mod.ensure_corpus(mb, seed=seed)
    work_root = corpus.parent / "work" / corpus.name
    rows, raw, notes = {}, {}, []
    for system in systems:
        why = available(system)
        if why:
            rows[system] = {"status": f"not run: {why}"}
            log(f"[compare] {system}: not run ({why})")
            continue
        r: dict = {}
        errors = []

        def step(key, task, mode, **kw):
            res = _call(system, task, corpus, work_root / f"{system}-{mode}", timeout, mode=mode, seed=seed, **kw)
            raw[f"{system}.{key}"] = res
            if "error" in res:
                errors.append(f"{key}: {res['error']}")
            return res

        c = step("convert_text", "convert", "text")
        r["convert_s"] = c.get("conversion_s")
        step("convert_tokens", "convert", "tokens")
        s1 = step("stream_w1", "stream", "text", workers=1, batches=batches, batch_size=batch_size, seq_len=seq_len)
        s2 = step("stream_w2", "stream", "text", workers=2, batches=batches, batch_size=batch_size, seq_len=seq_len)
        # pre-tokenized runs at millions of tokens/s: 200 batches would be a ~0.1 s window
        sp = step("stream_pretok", "stream", "tokens", workers=1, batches=max(batches, pretok_batches),
                  batch_size=batch_size, seq_len=seq_len)
        rs = step("resume", "resume", "tokens", steps=steps, seq_len=256)
        r["first_batch_s"] = s1.get("first_batch_s")
        r["tok_s_core_w1"] = s1.get("tokens_per_s")
        r["tok_s_core_w2"] = s2["tokens_per_s"] / 2 if s2.get("tokens_per_s") else None
        r["tok_s_core_pretok"] = sp.get("tokens_per_s")
        r["rss_mb"] = s2.get("peak_rss_mb")
        r["share_err_pp"] = s1.get("share_err_pp")
        r["resume0_s"] = rs.get("resume_s_at_0")
        r["resume10k_s"] = rs.get(f"resume_s_at_{steps}")
        r["status"] = "ok" if not errors else "partial: " + "; ".join(errors)
        rows[system] = r
        log(f"[compare] {system}: {json.dumps(r)}")
    ref = rows.get("mixsql", {})
    table_rows = []
    for system, r in rows.items():
        row = {"system": f"{system} {_version(system)}"}
        for f in FIGURES:
            v, m = r.get(f), ref.get(f)
            if v is None:
                row[f] = "—"
            elif m:
                row[f] = f"{_fmt(v)} ({v / m:.2f}x)"
            else:
                row[f] = _fmt(v)
        row["status"] = r.get("status", "")
        table_rows.append(row)
    table = markdown_table(table_rows, ["system", *FIGURES, "status"])
    notes.append(
        f"Corpus {mb:g} MB SlimPajama-shaped (bench.corpus, seed {seed}); target token shares "
        f"{json.dumps(corpus_mod.MIX_TARGET)}; batch {batch_size} x seq_len {seq_len}; {batches} batches per "
        f"stream run (share error over min({batches}, 1000) batches); resume at step 0 vs {steps} (batch 1, "
        "seq_len 256, pre-tokenized). Ratios are system / mixsql (for tokens/s higher is better, for all "
        "other columns lower is better). Peers get per-sample weights target_d / mean_tokens_d, mixsql "
        "weights tokens directly (unit = 'tokens').")
    return {"_table": table, "_notes": "\n".join(notes), "systems": rows,
            "compare_seconds": round(time.perf_counter() - t0, 1), "raw": raw}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


def run(quick: bool = False) -> dict:
    if quick:
        out = compare(mb=20, batches=200, batch_size=8, seq_len=512, steps=10_000)
    else:
        out = compare(mb=200, batches=1000, batch_size=8, seq_len=1024, steps=10_000, timeout=900)
    out.pop("raw", None)
    return out


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(prog="python -m bench.compare")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    from .__main__ import main
    sys.exit(main(["compare"] + (["--quick"] if a.quick else [])))
