"""mixsql side by side with the loaders users would pick instead (``python -m bench compare``).

Same corpus (bench.corpus, SlimPajama-shaped), same target token shares (``corpus.MIX_TARGET``),
same BPE tokenizer (bench.tokenizer), same ``seq_len`` and batch size. After reading, every peer
and the ``mixsql_harness`` row do identical work (``bench.peers.common``: one ``encode_batch_fast``
call per 64 documents, a vectorised packer, whole-batch collation); ``mixsql`` is mixsql's native
path. Every run is its own subprocess (bench.peers.runner). ``reps`` rounds run every system once
each, in a rotated order (interleaved), and every figure is the median over the rounds with its
min..max. Figures per system:

* ``convert_s``         the system's own preparation (peers: conversion to their format; mixsql:
                        registration, an index over the unchanged files, with BPE token counting)
* ``first_batch_s``     loader construction to first batch, in a fresh process (its first
                        configuration: 2 DataLoader workers in the full run, 1 in ``--quick``)
* ``rss_mb``            peak RSS of the process tree during that first configuration
* ``cpu_tok_s_w1|w2``   tokens per CPU-second of the whole process tree (main process, workers,
                        all threads; psutil), BPE on the fly, 1 or 2 DataLoader workers
* ``wall_tok_s_w1|w2``  tokens per wall-second of the same window
* ``cpu_tok_s_pretok`` / ``wall_tok_s_pretok``  same with pre-tokenized input, 1 worker
* ``share_err_max_pp``  max over batches 10..N of the cumulative |realised - target| token share
                        (percentage points), N = min(batches, 1000), 1 worker
* ``resume0_s`` / ``resume10k_s``  restore a checkpoint taken at step 0 / 10,000 (batch 1,
                        seq_len 256, pre-tokenized) and deliver the next sample (in the same process,
                        after the stream configurations)
* mixsql only: ``cpu_tok_s_w1_small_cache``: 1 worker with a 2 MiB reader cache, below the
                        corpus' compressed size, so chunks keep re-decompressing shard prefixes
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

from . import corpus as corpus_mod
from .peers import SYSTEMS
from .peers.common import SHARE_FROM, env_for_subprocess
from .peers.runner import CONFIGS
from .results import fmt_spread, markdown_table, spread

REPO = Path(__file__).resolve().parent.parent
IMPORTS = {"mixsql": "mixsql.torch", "mixsql_harness": "mixsql.torch", "hf_datasets": "datasets",
           "mosaic_streaming": "streaming", "litdata": "litdata", "torchdata_nodes": "torchdata.nodes"}
PIP = {"mixsql": "mixsql", "mixsql_harness": "mixsql", "hf_datasets": "datasets",
       "mosaic_streaming": "mosaicml-streaming", "litdata": "litdata", "torchdata_nodes": "torchdata"}
# figure -> (stream config, key of the runner's result); FIRST: the first configuration of a process
FIRST = "first"
STREAM_FIGURES = {
    "first_batch_s": (FIRST, "first_batch_s"), "rss_mb": (FIRST, "peak_rss_mb"),
    "cpu_tok_s_w1": ("w1", "tokens_per_cpu_s"), "wall_tok_s_w1": ("w1", "tokens_per_s"),
    "cpu_tok_s_w2": ("w2", "tokens_per_cpu_s"), "wall_tok_s_w2": ("w2", "tokens_per_s"),
    "cpu_tok_s_pretok": ("pretok", "tokens_per_cpu_s"), "wall_tok_s_pretok": ("pretok", "tokens_per_s"),
    "share_err_max_pp": ("w1", "share_err_max_pp"),
    "cpu_tok_s_w1_small_cache": ("w1_small_cache", "tokens_per_cpu_s"),
    "wall_tok_s_w1_small_cache": ("w1_small_cache", "tokens_per_s"),
    "resume0_s": ("resume", "resume_s_at_0"), "resume10k_s": ("resume", "resume_s_at_10000"),
}
FIGURES = ("convert_s", *STREAM_FIGURES)
HIGHER_IS_BETTER = {f for f in FIGURES if "tok_s" in f}
RESUMES = ("mixsql", "hf_datasets", "mosaic_streaming", "litdata", "torchdata_nodes")
# Mosaic's StreamingDataset keeps worker barriers in shared memory that a second dataset in the
# same process waits on forever: one stream configuration per process there
ONE_CONFIG_PER_PROCESS = {"mosaic_streaming"}
PEERS = ("hf_datasets", "mosaic_streaming", "litdata", "torchdata_nodes")
TARGET_PRETOK_X_BEST_PEER = 1.5     # BRIEF: pre-tokenized tokens/s per core >= 1.5x the best peer


def _version(system: str) -> str:
    try:
        from importlib.metadata import version
        return version(PIP[system])
    except Exception:
        return "?"


def _call(system: str, task: str, corpus: Path, work_root: Path, timeout: float, **kw) -> dict:
    cmd = [sys.executable, "-m", "bench.peers.runner", system, task, "--corpus", str(corpus),
           "--work-root", str(work_root)]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env_for_subprocess(), capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("@@RESULT "):
            return json.loads(line[len("@@RESULT "):])
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {p.returncode}: {tail[0][:300]}"}


def available(system: str) -> str | None:
    """None when the system can be imported, else the reason."""
    mod = IMPORTS[system]
    try:
        if importlib.util.find_spec(mod.split(".")[0]) is None:
            return f"{PIP[system]} not installed (see bench/README.md)"
    except (ImportError, ValueError) as exc:
        return str(exc)
    if system.startswith("mixsql"):
        try:
            importlib.import_module("mixsql.torch")
            importlib.import_module("mixsql.registration")
        except Exception as exc:
            return f"mixsql.torch / mixsql.registration not importable: {exc}"
    return None


def compressed_mb(corpus: Path) -> float:
    return round(sum(p.stat().st_size for p in (corpus / "jsonl").glob("*.jsonl.zst")) / 1e6, 1)


def compare(mb: float = 20, batches: int = 300, pretok_batches: int = 3000, batch_size: int = 8,
            seq_len: int = 512, steps: int = 10_000, reps: int = 5, convert_reps: int | None = None,
            configs=("w2", "w1", "pretok", "resume"), seed: int = 0, systems=SYSTEMS, timeout: float = 600,
            budget_s: float | None = None, log=print) -> dict:
    """Run the comparison; returns figures (median/min/max per system), a table and notes.

    ``convert_reps=0`` reuses the conversions already under the work directory (``convert_s`` is
    then not measured). ``budget_s``: start no further round once the next one would end past
    it (estimated from the last round); the notes give the rounds completed."""
    t0 = time.perf_counter()
    corpus = corpus_mod.ensure_corpus(mb, seed=seed)
    work_root = corpus.parent / "work" / corpus.name
    convert_reps = reps if convert_reps is None else convert_reps
    params = dict(mb=mb, batches=batches, pretok_batches=pretok_batches, batch_size=batch_size, seq_len=seq_len,
                  steps=steps, reps=reps, convert_reps=convert_reps, configs=list(configs), seed=seed,
                  systems=list(systems))
    progress = Progress(work_root / "compare-progress.json", params, log)
    runs = progress.state.setdefault("runs", {s: {f: [] for f in FIGURES} for s in systems})
    errors = progress.state.setdefault("errors", {s: [] for s in systems})
    t0 -= progress.state.get("seconds", 0.0)   # an interrupted run's time counts
    skipped = {}
    for s in systems:
        why = available(s)
        if why:
            skipped[s] = why
            log(f"[compare] {s}: not run ({why})")
    live = [s for s in systems if s not in skipped]
    own_data = [s for s in live if s != "mixsql_harness"]

    def note_error(s, what, res):
        if "error" in res:
            errors[s].append(f"{what}: {res['error']}")
            log(f"[compare] {s} {what}: {res['error']}")
            return True
        return False

    for r in range(progress.state.get("converted", 0), convert_reps):   # preparation, interleaved
        for s in own_data[r % len(own_data):] + own_data[:r % len(own_data)]:
            res = _call(s, "convert", corpus, work_root, timeout, mode="text")
            if not note_error(s, "convert", res):
                runs[s]["convert_s"].append(res["conversion_s"])
        progress.save(t0, converted=r + 1)
    if convert_reps and ("pretok" in configs or "resume" in configs) and not progress.state.get("tokens"):
        for s in own_data:   # the pre-tokenized copies
            note_error(s, "convert tokens", _call(s, "convert", corpus, work_root, timeout, mode="tokens"))
        progress.save(t0, tokens=True)
    done, t_round = progress.state.get("rounds", 0), 0.0
    for r in range(done, reps):                            # streams and resumes, interleaved
        if budget_s is not None and done and time.perf_counter() - t0 + t_round > budget_s:
            log(f"[compare] time budget: stopping after {done} of {reps} rounds")
            break
        t_start = time.perf_counter()
        for s in live[r % len(live):] + live[:r % len(live)]:
            cfgs = [c for c in configs if c != "resume" or s in RESUMES]
            if s == "mixsql" and "w1" in cfgs:
                cfgs.insert(cfgs.index("w1") + 1, "w1_small_cache")
            groups = [[c] for c in cfgs] if s in ONE_CONFIG_PER_PROCESS else [cfgs]
            res = {}
            for g in groups:
                part = _call(s, "stream", corpus, work_root, timeout, configs=",".join(g), batches=batches,
                             pretok_batches=pretok_batches, batch_size=batch_size, seq_len=seq_len, seed=seed + r,
                             steps=steps)
                if "error" in part:
                    res = part
                    break
                res.update(part)
            if not note_error(s, "stream", res):
                for fig, (cfg, key) in STREAM_FIGURES.items():
                    v = res.get(cfgs[0] if cfg == FIRST else cfg, {}).get(key)
                    if v is not None:
                        runs[s][fig].append(v)
        done, t_round = done + 1, time.perf_counter() - t_start
        progress.save(t0, rounds=done)
        log(f"[compare] round {r + 1}/{reps} done ({time.perf_counter() - t0:.0f} s)")
    stats = {s: {f: spread(v) for f, v in runs[s].items() if v} for s in live}
    shown = [f for f in FIGURES if any(f in stats[s] for s in live)]
    rows = []
    for s in systems:
        row = {"system": f"{s} {_version(s)}"}
        for f in shown:
            row[f] = fmt_spread(stats[s][f]) if s in stats and f in stats[s] else "—"
        row["status"] = (f"not run: {skipped[s]}" if s in skipped else
                         "ok" if not errors[s] else "errors: " + "; ".join(errors[s])[:400])
        rows.append(row)
    ratio_rows = []
    ref = stats.get("mixsql", {})
    for s in live:
        row = {"system": s}
        for f in shown:
            m, v = ref.get(f, {}).get("median"), stats[s].get(f, {}).get("median")
            row[f] = f"{v / m:.2f}x" if m and v is not None else "—"
        ratio_rows.append(row)
    table = (markdown_table(rows, ["system", *shown, "status"]) + "\n\nMedians as a ratio to mixsql's "
             "(for tok_s higher is better, for the rest lower is better):\n\n"
             + markdown_table(ratio_rows, ["system", *shown]))
    notes = (
        f"Corpus {mb:g} MB of text SlimPajama-shaped (bench.corpus, seed {seed}), {compressed_mb(corpus)} MB of "
        f".jsonl.zst shards; target token shares {json.dumps(corpus_mod.MIX_TARGET)}; batch {batch_size} x "
        f"seq_len {seq_len}; {batches} batches per BPE stream run, {pretok_batches} pre-tokenized (CPU and "
        f"wall over the batches after the first {max(2, min(20, batches // 10))}); share error over batches "
        f"{SHARE_FROM}..{min(batches, 1000)}; resume at step 0 vs {steps} (batch 1, seq_len 256, pre-tokenized); "
        f"configurations per process, in order: {', '.join(configs)} (first batch and peak RSS: the first). "
        f"Each cell: median (min..max) of {done} interleaved rounds"
        + (f" ({reps} planned; the time budget of {budget_s:g} s stopped the rest)" if done < reps else "")
        + (f" (preparation: {convert_reps})" if convert_reps else
           " (preparation not timed in this run: the conversions already on disk were reused)")
        + ". Peers get "
        "per-sample weights target_d / mean_tokens_d, mixsql weights tokens directly (unit = 'tokens'). "
        "Shared 2-core machine: other jobs ran at the same time, so the spreads include their load.")
    vs_best = {}
    for f in shown:
        peers = [(p, stats[p][f]["median"]) for p in PEERS if p in stats and f in stats[p]]
        m = ref.get(f, {}).get("median")
        if not peers or m is None:
            continue
        best, v = (max if f in HIGHER_IS_BETTER else min)(peers, key=lambda pv: pv[1])
        vs_best[f] = {"best_peer": best, "best_peer_value": fmt_spread(stats[best][f]),
                      "mixsql_over_best_peer": f"{m / v:.2f}x" if v else "—",
                      "mixsql_ahead": (m > v) if f in HIGHER_IS_BETTER else (m < v)}
    figures = {"systems": {s: {f: fmt_spread(v) for f, v in stats[s].items()} for s in live},
               "vs_best_peer": vs_best, "target_pretok_x_best_peer": TARGET_PRETOK_X_BEST_PEER,
               "corpus_mb": mb, "corpus_compressed_mb": compressed_mb(corpus), "reps": done,
               "compare_seconds": round(time.perf_counter() - t0, 1)}
    if "cpu_tok_s_pretok" in vs_best:
        m, v = ref["cpu_tok_s_pretok"]["median"], stats[vs_best["cpu_tok_s_pretok"]["best_peer"]]["cpu_tok_s_pretok"]["median"]
        figures["pretok_target_met"] = m >= TARGET_PRETOK_X_BEST_PEER * v
    if skipped:
        figures["not_run"] = skipped
    if done == reps:
        progress.finish()
    return {"_table": table, "_notes": notes, **figures, "_stats": stats}


class Progress:
    """What an interrupted comparison completed (conversions, rounds, their figures), kept in the
    work directory after every step, so that running the same comparison again (``python -m bench
    all --run RUN_ID``) continues from there instead of starting over; removed when it completes.
    A file written for other parameters is ignored."""

    def __init__(self, path: Path, params: dict, log=print):
        self.path, self.params, self.state = path, params, {}
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if saved.get("params") == params:
            self.state = saved["state"]
            log(f"[compare] continuing an interrupted run: {self.state.get('converted', 0)} conversions and "
                f"{self.state.get('rounds', 0)} rounds already done ({path})")

    def save(self, t0: float, **done) -> None:
        self.state.update(done, seconds=time.perf_counter() - t0)
        tmp = self.path.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"params": self.params, "state": self.state}))
        tmp.replace(self.path)

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


def run(quick: bool = False) -> dict:
    if quick:
        # preparation once: five conversions per system (mixsql's registration counts BPE tokens of
        # every document) alone take ~45 min on the busy 2-core VM
        out = compare(mb=20, batches=150, pretok_batches=1500, batch_size=8, seq_len=512, reps=5, convert_reps=1,
                      configs=("w1", "pretok", "resume"))
    else:
        # several hours on 2 cores: an interrupted run continues where it stopped (Progress), so
        # ``python -m bench all --run RUN_ID`` finishes it in a later sitting
        out = compare(mb=200, batches=300, pretok_batches=3000, batch_size=8, seq_len=1024, reps=5, convert_reps=2,
                      timeout=1800)
        big = compare(mb=1000, batches=300, pretok_batches=3000, batch_size=8, seq_len=1024, reps=5,
                      convert_reps=1, configs=("w1",), timeout=3600)
        out["_table"] += "\n\n1 GB corpus (BPE on the fly, 1 worker, default caches):\n\n" + big["_table"]
        out["_notes"] += "\n\n" + big["_notes"]
        out["gb_run"] = {k: v for k, v in big.items() if not k.startswith("_")}
    out.pop("_stats", None)
    return out


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(prog="python -m bench.compare")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    from .__main__ import main
    sys.exit(main(["compare"] + (["--quick"] if a.quick else [])))
