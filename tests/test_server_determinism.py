"""Feedback-driven weights over the real Flight server land at a chunk fixed by the reporting
step: two runs whose ranks run at different speeds, and a run whose server is killed (-9) and
restarted in the middle, apply every ADO change at the same chunk and stream the same data.
Ranks need no catalog: 4 gloo ranks stream through the server with none on their side."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import write_jsonl_catalog
from servers import REPO, Running, free_port, start_server_process
from mixsql.client import MixClient

# two chunks per training step (batch_size 10, chunk_size 5): rank r reads chunk 2s + r of step s
ADO = ("SELECT * FROM samples MIX BY kind WITH (a 0.5, b 0.5) USING ADO (update_every = 3, fit_skip = 0, "
       "subsample = 1, smooth_window = 3, fit_lag = 1) "
       "SETTINGS (chunk_size = 5, batch_size = 10, on_exhausted = 'repeat', seed = 7)")
RANKS, STEPS = 2, 24
TOPOLOGY = {"dp_world": RANKS, "num_workers": 1}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    recs = [{"text": f"{k} {i}", "kind": k} for k in "ab" for i in range(300)]
    return write_jsonl_catalog(tmp_path_factory.mktemp("det") / "cat", recs, properties={"kind": "VARCHAR"},
                               rows_per_file=100)


def _losses(seen: dict, groups: list[str], counts: dict) -> tuple[list[float], list[float]]:
    """A deterministic loss per group from how much of it the run has seen: a learns faster."""
    sums, toks = [], []
    for g in groups:
        seen[g] = seen.get(g, 0) + counts.get(g, 0)
        curve = 2.0 + 6.0 * (seen[g] + 1) ** -0.6 if g == "a" else 2.5 + 0.3 * (seen[g] + 1) ** -0.05
        sums.append(curve * counts.get(g, 0))
        toks.append(float(counts.get(g, 0)))
    return sums, toks


def run_training(location: str, delayed_rank: int, on_step=None) -> dict:
    """RANKS rank threads pull their chunks as fast as the server lets them (one of them slowed
    down); a trainer thread reports each step's losses once every rank has read that step."""
    jobs = [MixClient(location, retry_for=60).register(ADO, topology=TOPOLOGY) for _ in range(RANKS)]
    job = jobs[0]["job"]
    assert {j["job"] for j in jobs} == {job}
    groups = jobs[0]["groups"]
    delivered: queue.Queue = queue.Queue()
    stream: dict[int, list] = {}

    def rank_main(r):
        client = MixClient(location, retry_for=60)
        for s in range(STEPS):
            k = RANKS * s + r
            t = client.get_chunk(job, k, rank=r, worker=0)
            stream[k] = list(zip(t.column("file").to_pylist(), t.column("row").to_pylist(),
                                 t.column("group").to_pylist()))
            if r == delayed_rank:
                time.sleep(0.02)
            delivered.put((s, r))

    threads = [threading.Thread(target=rank_main, args=(r,), daemon=True) for r in range(RANKS)]
    for t in threads:
        t.start()
    trainer = MixClient(location, retry_for=60)
    arrived: dict[int, int] = {}
    seen: dict = {}
    for s in range(STEPS):
        while arrived.get(s, 0) < RANKS:
            step, _ = delivered.get(timeout=120)
            arrived[step] = arrived.get(step, 0) + 1
        counts: dict = {}
        for k in range(RANKS * s, RANKS * s + RANKS):
            for _, _, g in stream[k]:
                counts[g] = counts.get(g, 0) + 1
        trainer.feedback(job, s, *_losses(seen, groups, counts))
        if on_step is not None:
            on_step(s)
    for t in threads:
        t.join(60)
    info = trainer.job_info(job)
    trainer.drop_job(job)
    return {"stream": [stream[k] for k in range(RANKS * STEPS)], "weight_log": info["weight_log"],
            "lag": info["feedback_lag"]}


def _in_process_run(catalog, delayed_rank):
    srv = Running(catalog)
    try:
        return run_training(srv.location, delayed_rank)
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def reference(catalog):
    return _in_process_run(catalog, delayed_rank=1)


def test_rank_speeds_do_not_move_weight_changes(catalog, reference):
    other = _in_process_run(catalog, delayed_rank=0)
    log = reference["weight_log"]
    assert len(log) >= 3, "ADO changed the weights several times"
    # step s's change lands at the first chunk of step s + feedback_lag: 2 chunks a step
    assert all(at == RANKS * (int(reason.split()[-1]) + reference["lag"]) for at, _, reason in log)
    assert other["weight_log"] == log
    assert other["stream"] == reference["stream"]
    shares = [sum(g == "a" for *_, g in chunk) for chunk in reference["stream"]]
    assert sum(shares[:4]) == 10 and sum(shares[-4:]) > 14              # the prior, then more of a


def test_kill9_and_restart_mid_run_gives_the_identical_stream(catalog, reference):
    port = free_port()
    procs = [start_server_process(catalog, port)]

    def kill_and_restart(step):
        if step == STEPS // 2:
            procs[-1].send_signal(signal.SIGKILL)
            procs[-1].wait(10)
            procs.append(start_server_process(catalog, port))

    try:
        got = run_training(f"grpc://127.0.0.1:{port}", delayed_rank=1, on_step=kill_and_restart)
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
    assert len(procs) == 2
    assert got["weight_log"] == reference["weight_log"]
    assert got["stream"] == reference["stream"]


RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch.distributed as dist
    import mixsql.catalog

    def no_catalog(*a, **k):
        raise AssertionError("a rank opened a catalog")

    mixsql.catalog.Catalog.__init__ = no_catalog
    location, sql, out = sys.argv[1], sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo")
    from mixsql.torch import MixDataLoader, MixDataset
    ds = MixDataset(sql, server=location, even_end="off")   # the raw partition over ranks
    texts = [t for batch in MixDataLoader(ds, batch_size=4) for t in batch["text"]]
    with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump({"texts": texts, "dp": [ds.dp_rank, ds.dp_world]}, f)
    dist.barrier()
    dist.destroy_process_group()
""")


def test_four_gloo_ranks_stream_without_a_catalog(catalog, tmp_path):
    sql = ("SELECT * FROM samples MIX BY kind WITH (a 0.6, b 0.4) "
           "SETTINGS (chunk_size = 8, on_exhausted = 'redistribute', seed = 3)")
    srv = Running(catalog)
    rank_dir = tmp_path / "rank_side"              # the ranks' working directory: no catalog there
    rank_dir.mkdir()
    try:
        port = free_port()
        procs = []
        for r in range(4):
            env = {**os.environ, "PYTHONPATH": str(REPO), "RANK": str(r), "WORLD_SIZE": "4",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            procs.append(subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, srv.location, sql, str(tmp_path)],
                                          cwd=rank_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        for p in procs:
            _, err = p.communicate(timeout=240)
            assert p.returncode == 0, err[-3000:]
    finally:
        srv.stop()
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    assert [x["dp"] for x in res] == [[r, 4] for r in range(4)]
    texts = [t for x in res for t in x["texts"]]
    assert len(texts) == len(set(texts)) == 600                     # disjoint and complete
    assert all(x["texts"] for x in res)
    assert list(rank_dir.iterdir()) == []
