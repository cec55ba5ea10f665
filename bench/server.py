"""Flight server under many ranks, plus the cost of ADO feedback and refits.

Method: the server runs in its own process (``python -m mixsql.server``) over a generated
catalog (8 domains, 5000 samples each, 256 tokens per sample). Ranks are threads spread
over 4 client processes; each process shares 2 ``MixClient`` connections among its threads.
Every rank is data-parallel rank r of ``dp_world = clients`` and pulls its own chunks
(``r, r + clients, ...``) with ``get_chunk(job, k, rank=r)``.

* paced phase: each rank pulls one chunk (chunk_size samples * 256 tokens) every
  ``chunk_tokens / demand`` seconds, i.e. a per-GPU demand of ``demand`` tokens/s, with
  start times spread over one interval; reports p50/p99 chunk latency (client side).
* unpaced phase: every rank pulls back to back; reports the server's throughput.
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
loc, job, ranks, world, conns, interval, duration = sys.argv[1:8]
ranks = [int(x) for x in ranks.split(",")]
world, conns, interval, duration = int(world), int(conns), float(interval), float(duration)
clients = [MixClient(loc) for _ in range(conns)]
for c in clients:
    c.ping()
print("ready", flush=True)
start = float(sys.stdin.readline())
lat, tokens, errors = [], [0], []
lock = threading.Lock()
def rank_loop(i, r):
    c = clients[i % conns]
    k = r
    offset = interval * (r / world) if interval > 0 else 0.0
    nxt = start + offset
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
print(json.dumps({"lat": lat, "tokens": tokens[0], "errors": errors[:3]}))
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


def _phase(loc, job, clients, procs, conns, interval, duration, env):
    per = [list(range(p, clients, procs)) for p in range(procs)]
    ps = [subprocess.Popen([sys.executable, "-c", CLIENT, loc, job, ",".join(map(str, rs)), str(clients),
                            str(conns), str(interval), str(duration)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for rs in per]
    for p in ps:                              # every process imported and connected
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"bench client failed to start: {p.stderr.read()[-2000:]}")
    start = time.time() + 0.5
    for p in ps:
        p.stdin.write(f"{start}\n")
        p.stdin.flush()
    lat, tokens, errors = [], 0, []
    for p in ps:
        out, err = p.communicate(timeout=duration + 120)
        if p.returncode != 0:
            raise RuntimeError(f"bench client failed: {err[-2000:]}")
        r = json.loads(out)
        lat += r["lat"]
        tokens += r["tokens"]
        errors += r["errors"]
    return {"chunks": len(lat), "chunks_per_s": len(lat) / duration, "tokens_per_s": tokens / duration,
            "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "max_ms": _pct(lat, 100), "errors": errors}


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


def run(quick: bool) -> dict:
    from mixsql.client import MixClient

    clients = 64 if quick else 256
    duration = 5.0 if quick else 20.0
    chunk = 128
    demand = 16_000                                   # tokens/s per GPU
    chunk_tokens = chunk * TOKENS_PER_SAMPLE
    interval = chunk_tokens / demand
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as tmp:
        cat = make_catalog(Path(tmp))
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "mixsql.server", str(cat), str(port)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            server.stdout.readline()
            loc = f"grpc://127.0.0.1:{port}"
            c = MixClient(loc)
            topo = {"dp_world": clients, "num_workers": 1}
            job = c.register_job(SQL.format(chunk=chunk), topology=topo)
            paced = _phase(loc, job, clients, 4, 2, interval, duration, env)
            job2 = c.register_job(SQL.format(chunk=chunk).replace("seed = 1", "seed = 3"), topology=topo)
            unpaced = _phase(loc, job2, clients, 4, 2, 0.0, duration / 2, env)
            ado_job = c.register_job(ADO_SQL.format(chunk=chunk))
            ado = ado_costs(c, ado_job)
        finally:
            server.terminate()
            server.wait(10)
        ado.update(ado_feedback_at_depth(cat, chunk))
    return {"clients": clients, "client_processes": 4, "connections_per_process": 2,
            "chunk_samples": chunk, "chunk_tokens": chunk_tokens, "demand_tokens_per_s_per_gpu": demand,
            "paced": paced, "unpaced": unpaced, **ado,
            "target_p99_ms": 50, "p99_ok": paced["p99_ms"] < 50}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
