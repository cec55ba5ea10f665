"""The Flight server on 127.0.0.1: jobs, ranks, auth, malformed requests, crash recovery,
schedules and feedback-driven weights."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pyarrow.flight as flight
import pytest

from conftest import write_jsonl_catalog
from servers import REPO, Running, free_port, start_server_process
from mixsql.client import MixClient
from mixsql.errors import OperationalError, ProgrammingError

STATIC = ("SELECT * FROM samples MIX BY language WITH (JavaScript 0.4, HTML 0.2, Python 0.4) "
          "SETTINGS (chunk_size = 10, on_exhausted = 'redistribute', seed = 3)")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    recs = []
    for lang, n in (("JavaScript", 120), ("HTML", 60), ("Python", 120)):
        recs += [{"text": f"{lang} {i}", "language": lang} for i in range(n)]
    return write_jsonl_catalog(tmp_path_factory.mktemp("srv") / "cat", recs,
                               properties={"language": "VARCHAR"}, rows_per_file=50)


@pytest.fixture(scope="module")
def two_groups(tmp_path_factory):
    recs = [{"text": f"{g} {i}", "kind": g} for g in ("a", "b") for i in range(400)]
    return write_jsonl_catalog(tmp_path_factory.mktemp("two") / "cat", recs,
                               properties={"kind": "VARCHAR"}, rows_per_file=200)


@pytest.fixture
def server(catalog):
    srv = Running(catalog)
    yield srv
    srv.stop()


def rows(table):
    return list(zip(table.column("file").to_pylist(), table.column("row").to_pylist()))


def drain(client, job, start=0):
    out, k = [], start
    while (t := client.get_chunk(job, k)) is not None:
        out.append(t)
        k += 1
    return out


def test_same_job_for_every_rank_and_identical_chunks(server):
    a, b = MixClient(server.location), MixClient(server.location)
    ja, jb = a.register_job(STATIC), b.register_job(STATIC)
    assert ja == jb
    assert a.get_chunk(ja, 3).equals(b.get_chunk(jb, 3))
    chunks = drain(a, ja)
    seen = [r for t in chunks for r in rows(t)]
    assert len(seen) == len(set(seen)) == 300             # redistribute: every sample once
    assert chunks[0].column_names[:3] == ["chunk", "position", "group"]
    assert a.get_chunk(ja, len(chunks) + 5) is None       # past the end


CLIENT_SCRIPT = textwrap.dedent("""
    import json, sys
    from mixsql.client import MixClient
    loc, sql, rank, world = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    c = MixClient(loc)
    job = c.register_job(sql, topology={"dp_world": world, "num_workers": 1})
    out, k = {}, rank
    while (t := c.get_chunk(job, k, rank=rank, worker=0)) is not None:
        out[k] = list(zip(t.column("file").to_pylist(), t.column("row").to_pylist()))
        k += world
    print(json.dumps({"job": job, "chunks": out}))
""")


def test_eight_client_processes_ranks_disjoint_replicas_identical(server):
    world = 4   # 4 data-parallel ranks x 2 replicas (tensor-parallel peers) = 8 processes
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, server.location, STATIC, str(p % world),
                               str(world)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
             for p in range(2 * world)]
    res = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        res.append(json.loads(out))
    assert len({r["job"] for r in res}) == 1
    for r in range(world):
        assert res[r]["chunks"] == res[r + world]["chunks"]          # replicas identical
    owned = [set(map(int, res[r]["chunks"])) for r in range(world)]
    assert all(k % world == r for r in range(world) for k in owned[r])
    samples = [tuple(x) for r in range(world) for rs in res[r]["chunks"].values() for x in rs]
    assert len(samples) == len(set(samples)) == 300                 # disjoint and complete
    info = MixClient(server.location).job_info(res[0]["job"])
    assert set(info["consumption"]) == {f"{r}/0" for r in range(world)}


def test_auth_rejects_missing_and_wrong_token(catalog):
    srv = Running(catalog, token="s3cret")
    try:
        for tok in (None, "wrong"):
            with pytest.raises(OperationalError, match="rejected the token"):
                MixClient(srv.location, token=tok, retry_for=1).ping()
        raw = flight.FlightClient(srv.location)
        with pytest.raises(flight.FlightUnauthenticatedError):
            list(raw.do_action(flight.Action("ping", b"{}")))
        assert MixClient(srv.location, token="s3cret").ping()
    finally:
        srv.stop()


def test_malformed_requests_get_clear_errors_and_server_keeps_serving(server):
    c = MixClient(server.location)
    job = c.register_job(STATIC)
    with pytest.raises(ProgrammingError, match="unknown job 'deadbeef'"):
        c.get_chunk("deadbeef", 0)
    with pytest.raises(ProgrammingError, match="unknown job"):
        c.feedback("../etc/passwd", 0, [1, 1, 1], [1, 1, 1])
    with pytest.raises(ProgrammingError, match="non-negative integer, got -1"):
        c.get_chunk(job, -1)
    endless = c.register_job(STATIC.replace("'redistribute'", "'repeat'"))
    assert c.get_chunk(endless, 10**9).num_rows == 10               # computed directly
    with pytest.raises(ProgrammingError, match="beyond the largest chunk index"):
        c.get_chunk(endless, 2**40)
    with pytest.raises(ProgrammingError, match="belongs to dp_rank 0"):
        c.get_chunk(job, 2, rank=1, worker=0)
    with pytest.raises(ProgrammingError, match=r"(?s)unknown column 'langage'.*\^.*Did you mean 'language'"):
        c.register_job("SELECT * FROM samples MIX BY langage WITH (x 1)")
    with pytest.raises(ProgrammingError, match="3 finite numbers, one per group"):
        c.feedback(job, 0, [1.0], [1.0])
    with pytest.raises(ProgrammingError, match="topology.dp_world"):
        c.register_job(STATIC, topology={"dp_world": 0})
    raw = flight.FlightClient(server.location)
    with pytest.raises(flight.FlightServerError, match="body must be a JSON object"):
        list(raw.do_action(flight.Action("feedback", b"{not json")))
    with pytest.raises(flight.FlightServerError, match="unknown action 'exec'"):
        list(raw.do_action(flight.Action("exec", b"{}")))
    with pytest.raises(flight.FlightServerError, match="ticket: body must be a JSON object"):
        raw.do_get(flight.Ticket(b"\x80\x04pickle")).read_all()
    assert c.ping() and c.get_chunk(job, 0).num_rows == 10


def test_evicted_chunks_are_computed_again_identically(catalog):
    srv = Running(catalog, window=4)
    try:
        c = MixClient(srv.location)
        job = c.register_job(STATIC.replace("seed = 3", "seed = 4"))
        first = [c.get_chunk(job, k) for k in range(25)]
        for k in (21, 0, 13, 2, 7):                                 # evicted, asked out of order
            assert c.get_chunk(job, k).equals(first[k])
    finally:
        srv.stop()


def test_checkpoint_restore_replays_same_chunks(server):
    c = MixClient(server.location)
    job = c.register_job(STATIC.replace("seed = 3", "seed = 5"))
    for k in range(4):
        c.get_chunk(job, k)
    state = json.loads(json.dumps(c.checkpoint(job)))
    after = [c.get_chunk(job, k) for k in range(4, 10)]
    c.restore(job, state)
    assert [c.get_chunk(job, k) for k in range(4, 10)] == after
    with pytest.raises(ProgrammingError, match="restore needs a checkpoint"):
        c.restore(job, {"job": "other"})


def test_schedule_switches_at_the_mapped_chunk(two_groups):
    srv = Running(two_groups, feedback_lag=2)
    try:
        c = MixClient(srv.location)
        sql = ("SELECT * FROM samples MIX BY kind WITH SCHEDULE (AT STEP 0 (a 0.8, b 0.2), "
               "AT STEP 3 (a 0.2, b 0.8)) SETTINGS (chunk_size = 10, batch_size = 20)")
        job = c.register_job(sql)
        comp = [Counter(c.get_chunk(job, k).column("group").to_pylist()) for k in range(10)]
        switch = 3 * 20 // 10                                       # AT STEP 3 -> chunk 6
        assert all(x == {"a": 8, "b": 2} for x in comp[:switch])
        assert all(x == {"a": 2, "b": 8} for x in comp[switch:])
        # without batch_size a step cannot be mapped onto a chunk: refused, not timing-dependent
        with pytest.raises(ProgrammingError, match=r"needs SETTINGS \(batch_size"):
            c.register_job(sql.replace(", batch_size = 20", ""))
    finally:
        srv.stop()


def test_loss_average_mixtera_scenario_5(two_groups):
    srv = Running(two_groups, feedback_lag=2)
    try:
        c = MixClient(srv.location)
        # one chunk per step; feedback of step s lands at the first chunk of step s + 2
        job = c.register_job("SELECT * FROM samples MIX BY kind WITH (a 0.5, b 0.5) USING LOSS_AVERAGE "
                             "SETTINGS (chunk_size = 12, batch_size = 12)")
        assert Counter(c.get_chunk(job, 0).column("group").to_pylist()) == {"a": 6, "b": 6}
        r = c.feedback(job, 0, [2.0, 1.0], [1, 1])
        assert r["at_chunk"] == 2
        assert Counter(c.get_chunk(job, 1).column("group").to_pylist()) == {"a": 6, "b": 6}
        assert Counter(c.get_chunk(job, 2).column("group").to_pylist()) == {"a": 8, "b": 4}
        assert c.feedback(job, 0, [9.0, 9.0], [1, 1])["duplicate"]   # a resent step is ignored
        c.feedback(job, 1, [0.0, 3.0], [1, 1])                        # cumulative (2, 4)
        assert Counter(c.get_chunk(job, 3).column("group").to_pylist()) == {"a": 4, "b": 8}
        log = c.job_info(job)["weight_log"]
        assert [e[0] for e in log] == [2, 3]
    finally:
        srv.stop()


def test_ado_reacts_to_synthetic_losses(two_groups):
    srv = Running(two_groups, feedback_lag=2)
    try:
        c = MixClient(srv.location)
        job = c.register_job("SELECT * FROM samples MIX BY kind WITH (a 0.5, b 0.5) USING ADO (update_every = 30, "
                             "fit_skip = 0, subsample = 1, smooth_window = 5, fit_lag = 2) "
                             "SETTINGS (chunk_size = 10, on_exhausted = 'repeat', batch_size = 10)")
        for step in range(40):
            n = step + 1
            la, lb = 2.0 + 6.0 * n ** -0.6, 2.5 + 0.3 * n ** -0.05     # a improves much faster
            t0 = time.perf_counter()
            r = c.feedback(job, step, [la * 100, lb * 100], [100, 100])
            assert time.perf_counter() - t0 < 5
            if step < 31:
                assert r["at_chunk"] is None                         # prior until the fit lands
        assert r["weights"][0] > 0.6 and r["at_chunk"] == 41        # step 39 + lag 2, one chunk a step
        assert Counter(c.get_chunk(job, 0).column("group").to_pylist()) == {"a": 5, "b": 5}   # the prior
        assert Counter(c.get_chunk(job, 41).column("group").to_pylist())["a"] >= 7
    finally:
        srv.stop()


def test_kill9_and_restart_resumes_without_lost_or_repeated_samples(catalog):
    port = free_port()
    proc = start_server_process(catalog, port)
    try:
        c = MixClient(f"grpc://127.0.0.1:{port}", retry_for=30)
        sql = STATIC.replace("WITH (JavaScript 0.4, HTML 0.2, Python 0.4)",
                             "WITH (JavaScript 0.4, HTML 0.2, Python 0.4) USING LOSS_AVERAGE").replace(
            "seed = 3", "seed = 9, batch_size = 10")
        job = c.register_job(sql)
        before = {}
        for k in range(12):
            before[k] = c.get_chunk(job, k)
            c.feedback(job, k, [1.0 + k % 3, 2.0, 1.5], [10, 10, 10])
        info = c.job_info(job)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc = start_server_process(catalog, port)
        after_info = c.job_info(job)                          # same client reconnects
        assert after_info["last_step"] == info["last_step"] == 11
        assert after_info["weight_log"] == info["weight_log"]  # no acknowledged feedback lost
        for k in (0, 5, 11):                                   # served chunks are reproduced exactly
            assert c.get_chunk(job, k).equals(before[k])
        k, stream = 12, dict(before)
        while (t := c.get_chunk(job, k)) is not None:
            stream[k] = t
            c.feedback(job, k, [1.0, 2.0, 3.0], [10, 10, 10])
            k += 1
        samples = [r for i in sorted(stream) for r in rows(stream[i])]
        assert len(samples) == len(set(samples)) == 300        # nothing lost, nothing repeated
    finally:
        proc.kill()
        proc.wait(10)
