"""Flight server under many ranks (real client processes), plus the cost of ADO feedback and refits.

Method: the server runs in its own process (``python -m mixsql.server``) over a generated
catalog (8 domains, 5000 samples each, 256 tokens per sample). 256 ranks run as threads spread
over 16 client processes (16 ranks each, 2 ``MixClient`` connections per process), started once
and driven phase by phase. Every rank is data-parallel rank r of ``dp_world = 256`` and pulls its
own chunks (``r, r + 256, ...``) with ``get_chunk(job, k, rank=r)``; each phase uses a fresh job.

* paced phases: every rank pulls one chunk every ``256 / rate`` seconds (start times spread over
  one interval), for aggregate rates from half to four times the demand of 256 GPUs at 16,000
  tokens/s each (125 chunks/s of 128 x 256 tokens); p50/p99 latency per chunk, client side.
  A 1 s paced warm-up phase after the clients connect is not recorded.
* unpaced phase: every rank pulls back to back; the server's throughput and its latencies.
* ``p99_crosses_50ms_at``: the lowest swept rate whose median p99 exceeds 50 ms.
* Rounds: all phases run ``reps`` times (rounds interleave the phases); each figure is the median
  over rounds with its min..max.
* ADO: one feedback call through the server (median of 50) on a 8-group ADO job, and one
  refit of a 22-group (The Pile's domains) 5000-step loss history, measured in-process.
* ADO at depth: the job's own persistence cost per feedback call (in-process ``Job.feedback``,
  median of 50) after 100 and after 100,000 reported steps (history restored from a
  checkpoint); equal medians mean a call does not grow with training length.

All processes share this machine's cores (2 here), so client overhead is included.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TOKENS_PER_SAMPLE = 256
SQL = ("SELECT * FROM samples MIX BY domain SETTINGS (chunk_size = {chunk}, on_exhausted = 'repeat', "
       "seed = 1)")
ADO_SQL = ("SELECT * FROM samples MIX BY domain USING ADO (update_every = 1000) "
           "SETTINGS (chunk_size = {chunk}, batch_size = {chunk}, on_exhausted = 'repeat', seed = 2)")

CLIENT = r"""
import json, sys, threading, time
from mixsql.client import MixClient
loc, ranks, world, conns = sys.argv[1:5]
ranks = [int(x) for x in ranks.split(",")]
world, conns = int(world), int(conns)
clients = [MixClient(loc) for _ in range(conns)]
for c in clients:
    c.ping()
print("ready", flush=True)
for line in sys.stdin:
    phase = json.loads(line)
    if phase is None:
        break
    job, interval, duration, start = phase["job"], phase["interval"], phase["duration"], phase["start"]
    lat, tokens, errors = [], [0], []
    lock = threading.Lock()
    def rank_loop(i, r):
        c = clients[i % conns]
        k = r
        nxt = start + (interval * (r / world) if interval > 0 else 0.0)
        while True:
            now = time.time()
            if now < nxt:
                time.sleep(nxt - now)
            if time.time() > start + duration:
                return
            t0 = time.perf_counter()
            try:
                t = c.get_chunk(job, k, rank=r, worker=0)
            except Exception as exc:
                with lock: errors.append(str(exc)[:200])
                return
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                tokens[0] += int(sum(t.column("n_tokens").to_pylist())) if t is not None else 0
            k += world
            nxt = nxt + interval if interval > 0 else time.time()
    threads = [threading.Thread(target=rank_loop, args=(i, r)) for i, r in enumerate(ranks)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(json.dumps({"lat": lat, "tokens": tokens[0], "errors": errors[:3]}), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_catalog(root: Path, domains: int = 8, per_domain: int = 5000) -> Path:
    from mixsql.catalog import Catalog
    from mixsql.registration import create_source

    data = root / "data"
    data.mkdir(parents=True)
    rng = np.random.Generator(np.random.PCG64(0))
    for d in range(domains):
        with open(data / f"d{d}.jsonl", "w") as f:
            for i in range(per_domain):
                f.write(json.dumps({"text": f"domain {d} sample {i} " + "x" * int(rng.integers(20, 60)),
                                    "domain": f"d{d}", "n_tokens": TOKENS_PER_SAMPLE}) + "\n")
    cat = Catalog(root / "cat")
    try:
        create_source(cat, "bench", str(data / "*.jsonl"), options={"domain": "domain", "n_tokens": "n_tokens"},
                      progress=False)
    finally:
        cat.close()
    return root / "cat"


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1000, q)) if xs else float("nan")


class ClientPool:
    """``procs`` client processes holding ``clients`` ranks between them, driven phase by phase."""

    def __init__(self, loc: str, clients: int, procs: int, conns: int, env: dict):
        per = [list(range(p, clients, procs)) for p in range(procs)]
        self.ps = [subprocess.Popen([sys.executable, "-c", CLIENT, loc, ",".join(map(str, rs)), str(clients),
                                     str(conns)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env) for rs in per]
        for p in self.ps:                      # every process imported and connected
            if p.stdout.readline().strip() != "ready":
                self.close()
                raise RuntimeError(f"bench client failed to start: {p.stderr.read()[-2000:]}")

    def phase(self, job: str, interval: float, duration: float) -> dict:
        start = time.time() + 0.5
        for p in self.ps:
            p.stdin.write(json.dumps({"job": job, "interval": interval, "duration": duration, "start": start}) + "\n")
            p.stdin.flush()
        lat, tokens, errors = [], 0, []
        for p in self.ps:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"bench client died: {p.stderr.read()[-2000:]}")
            r = json.loads(line)
            lat += r["lat"]
            tokens += r["tokens"]
            errors += r["errors"]
        return {"chunks": len(lat), "chunks_per_s": len(lat) / duration, "tokens_per_s": tokens / duration,
                "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "max_ms": _pct(lat, 100), "errors": errors}

    def close(self) -> None:
        for p in self.ps:
            try:
                p.stdin.write("null\n")
                p.stdin.close()
            except (OSError, ValueError):
                pass
        for p in self.ps:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def ado_costs(client, cat_job) -> dict:
    from mixsql.algorithms import ADO

    k = 8
    times = []
    for step in range(50):
        n = step + 1
        losses = [2 + (g + 1) * n ** -0.3 for g in range(k)]
        t0 = time.perf_counter()
        client.feedback(cat_job, step, [x * 1000 for x in losses], [1000] * k)
        times.append(time.perf_counter() - t0)
    groups = 22
    algo = ADO([f"g{g}" for g in range(groups)], [1 / groups] * groups, update_every=10**9)
    rng = np.random.Generator(np.random.PCG64(1))
    for step in range(5000):
        n = step + 1
        losses = [2 + (1 + g / 4) * n ** -(0.1 + g / 50) + rng.normal(0, 0.01) for g in range(groups)]
        algo.update(step, losses, [1.0] * groups)
    t0 = time.perf_counter()
    algo.fit(5000)
    refit = time.perf_counter() - t0
    algo.close()
    return {"ado_feedback_ms_p50": _pct(times, 50), "ado_feedback_ms_max": _pct(times, 100),
            "ado_refit_s_22_groups_5000_steps": refit}


def ado_feedback_at_depth(catalog: Path, chunk: int, depths=(100, 100_000)) -> dict:
    """Median ``Job.feedback`` time (persistence included) after ``depth`` reported steps."""
    from mixsql.jobs import JobManager

    jm = JobManager(catalog)
    sql = ADO_SQL.format(chunk=chunk).replace("update_every = 1000", "update_every = 1000000000")
    job = jm.get(jm.register(sql)["job"])
    k = len(job.spec.groups)
    rng = np.random.Generator(np.random.PCG64(3))
    out = {}
    try:
        for depth in depths:
            ckpt = job.checkpoint()
            hist = (2.0 + rng.random((depth, k))).tolist()
            ckpt["algorithm_state"] = {**(ckpt["algorithm_state"] or job.algorithm.state_dict()),
                                       "history": hist, "steps": list(range(depth))}
            ckpt["last_step"] = depth - 1
            job.restore(ckpt)
            times = []
            for step in range(depth, depth + 50):
                t0 = time.perf_counter()
                job.feedback(step, [2000.0] * k, [1000.0] * k)
                times.append(time.perf_counter() - t0)
            out[f"ado_feedback_ms_at_step_{depth}"] = _pct(times, 50)
        out["ado_job_file_bytes"] = job.path.stat().st_size
    finally:
        jm.close()
    return out


CLIENTS, CLIENT_PROCS, CONNS = 256, 16, 2
CHUNK = 128
DEMAND = 16_000                      # tokens/s per GPU
RATE_FACTORS = (0.5, 1, 2, 3, 4)     # paced aggregate rates, in multiples of the demand of CLIENTS GPUs
TARGET_P99_MS = 50


def run(quick: bool, reps: int = 5) -> dict:
    from mixsql.client import MixClient

    from .results import fmt_spread, spread

    duration = 3.0 if quick else 10.0
    chunk_tokens = CHUNK * TOKENS_PER_SAMPLE
    demand_rate = CLIENTS * DEMAND / chunk_tokens                   # chunks/s of CLIENTS GPUs
    rates = [round(f * demand_rate, 1) for f in RATE_FACTORS]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    phases = {f"paced_{r:g}": r for r in rates}
    phases["unpaced"] = 0.0
    by_phase: dict[str, list[dict]] = {k: [] for k in phases}
    with tempfile.TemporaryDirectory() as tmp:
        cat = make_catalog(Path(tmp))
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "mixsql.server", str(cat), str(port)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pool = None
        try:
            server.stdout.readline()
            loc = f"grpc://127.0.0.1:{port}"
            c = MixClient(loc)
            topo = {"dp_world": CLIENTS, "num_workers": 1}
            pool = ClientPool(loc, CLIENTS, CLIENT_PROCS, CONNS, env)
            warm = c.register_job(SQL.format(chunk=CHUNK).replace("seed = 1", "seed = 9"), topology=topo)
            pool.phase(warm, CLIENTS / demand_rate, 1.0)     # warm-up, not recorded
            c.drop_job(warm)
            names = list(phases)
            seed = 10
            for r in range(reps):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    seed += 1
                    job = c.register_job(SQL.format(chunk=CHUNK).replace("seed = 1", f"seed = {seed}"), topology=topo)
                    rate = phases[name]
                    by_phase[name].append(pool.phase(job, CLIENTS / rate if rate else 0.0, duration))
                    c.drop_job(job)                    # a token may hold only so many jobs
            ado_job = c.register_job(ADO_SQL.format(chunk=CHUNK))
            ado = ado_costs(c, ado_job)
        finally:
            if pool is not None:
                pool.close()
            server.terminate()
            server.wait(10)
        ado.update(ado_feedback_at_depth(cat, CHUNK))
    out = {"clients": CLIENTS, "client_processes": CLIENT_PROCS, "connections_per_process": CONNS,
           "chunk_samples": CHUNK, "chunk_tokens": chunk_tokens, "demand_tokens_per_s_per_gpu": DEMAND,
           "demand_chunks_per_s": round(demand_rate, 1), "phase_s": duration, "reps": reps}
    p99_median = {}
    for name, res in by_phase.items():
        fig = {k: fmt_spread(spread([x[k] for x in res])) for k in ("chunks_per_s", "p50_ms", "p99_ms")}
        errors = [e for x in res for e in x["errors"]]
        if errors:
            fig["errors"] = errors[:3]
        out[name] = fig
        p99_median[name] = spread([x["p99_ms"] for x in res])["median"]
    crossing = next((r for r in rates if p99_median[f"paced_{r:g}"] > TARGET_P99_MS), None)
    out["p99_crosses_50ms_at_chunks_per_s"] = crossing if crossing is not None else f"> {rates[-1]:g} (not reached)"
    out["p99_at_demand_ms"] = out[f"paced_{demand_rate:g}"]["p99_ms"]
    out["target_p99_ms"] = TARGET_P99_MS
    out["p99_ok_at_demand"] = p99_median[f"paced_{demand_rate:g}"] < TARGET_P99_MS
    out.update(ado)
    out["_notes"] = (f"{CLIENTS} ranks as threads in {CLIENT_PROCS} client processes, {CONNS} connections each; "
                     f"phases of {duration:g} s, {reps} rounds, interleaved; each cell median (min..max) over rounds. "
                     f"Paced rates are aggregate chunks/s ({demand_rate:g} = {CLIENTS} GPUs at {DEMAND:,} tokens/s). "
                     "Server, clients and any other jobs share this machine's 2 cores.")
    return out


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
