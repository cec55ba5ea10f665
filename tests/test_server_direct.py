"""The server's structure at scale: one node selection per statement (mapped by every job of it
and by a restarted server), and every served chunk computed directly (``engine.chunk(k)``),
equal to the in-order stream, before and after feedback and restore."""
from __future__ import annotations

import shutil

import pytest

import mixsql.planner
from conftest import write_jsonl_catalog
from servers import Running
from mixsql.client import MixClient
from mixsql.engine import MixEngine
from mixsql.errors import OperationalError, ProgrammingError
from mixsql.selection import cache_root, selection_key
from mixsql.stream import MixStream

REPEAT = ("SELECT * FROM samples MIX BY kind WITH (a 0.5, b 0.3, c 0.2) "
          "SETTINGS (chunk_size = 10, on_exhausted = 'repeat', seed = {seed})")
FEEDBACK = ("SELECT * FROM samples MIX BY kind WITH (a 0.5, b 0.3, c 0.2) USING LOSS_AVERAGE "
            "SETTINGS (chunk_size = 10, batch_size = 10, on_exhausted = 'repeat', seed = 21)")
TOKENS = ["tok-one", "tok-two"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    recs = [{"text": f"{g} {i}", "kind": g} for g, n in (("a", 90), ("b", 70), ("c", 50)) for i in range(n)]
    return write_jsonl_catalog(tmp_path_factory.mktemp("direct") / "cat", recs,
                               properties={"kind": "VARCHAR"}, rows_per_file=40)


def rows(table):
    return list(zip(table.column("file").to_pylist(), table.column("row").to_pylist(),
                    table.column("epoch").to_pylist()))


def test_far_chunk_is_computed_directly_and_equals_the_sequential_stream(catalog, monkeypatch):
    srv = Running(catalog)
    try:
        c = MixClient(srv.location)
        sql = REPEAT.format(seed=5)
        job = c.register_job(sql)
        calls = []
        for name in ("chunk", "next_chunk", "skip_chunk", "seek"):
            real = getattr(MixEngine, name)
            monkeypatch.setattr(MixEngine, name, lambda self, *a, _real=real, _name=name:
                                calls.append((_name, *a)) or _real(self, *a))
        far = c.get_chunk(job, 50_000)
        assert calls == [("chunk", 50_000)]   # no chunk before it was composed, generated or skipped
        monkeypatch.undo()

        seq = MixStream.open_cached(catalog, sql)
        assert not seq.built                  # the server's selection, mapped
        eng = seq.engine()
        first = [eng.next_chunk() for _ in range(40)]
        assert [c.get_chunk(job, k) for k in reversed(range(40))] == first[::-1]   # any order
        while eng.next_index < 50_000:
            assert eng.skip_chunk()
        want = eng.next_chunk()
        assert far.num_rows == 10 and far.equals(want)
        assert c.job_info(job)["end"] is None and c.job_info(job)["served"] == 50_001
    finally:
        srv.stop()


def test_one_selection_per_statement_shared_by_jobs_tenants_and_restarts(catalog, monkeypatch):
    plans = []
    real_plan = mixsql.planner.plan
    monkeypatch.setattr(mixsql.planner, "plan", lambda *a, **k: plans.append(1) or real_plan(*a, **k))
    sql = REPEAT.format(seed=7)
    srv = Running(catalog, token=TOKENS)
    try:
        a, b = srv.client(TOKENS[0]), srv.client(TOKENS[1])
        jobs = [a.register_job(sql), a.register_job(sql, topology={"dp_world": 2, "num_workers": 1}),
                b.register_job(sql)]
        assert len(set(jobs)) == 3 and len(plans) == 1          # three jobs, one planning
        live = [srv.server.jobs.jobs[j] for j in jobs]
        assert [j.stream.built for j in live] == [True, False, False]
        first = a.get_chunk(jobs[0], 3)
        assert a.get_chunk(jobs[1], 3).equals(first) and b.get_chunk(jobs[2], 3).equals(first)
    finally:
        srv.stop()
    key = selection_key(str(srv.server.jobs.catalog), live[0].stream.snapshot, sql, None)
    assert (cache_root() / key).is_dir()

    again = Running(catalog, token=TOKENS)                        # a restarted server maps it
    try:
        assert again.client(TOKENS[0]).get_chunk(jobs[0], 3).equals(first)
        assert len(plans) == 1 and not again.server.jobs.jobs[jobs[0]].stream.built
    finally:
        again.stop()

    shutil.rmtree(cache_root() / key)                             # no cache: planned again, same chunks
    cold = Running(catalog, token=TOKENS)
    try:
        assert cold.client(TOKENS[1]).get_chunk(jobs[2], 3).equals(first)
        assert len(plans) == 2 and cold.server.jobs.jobs[jobs[2]].stream.built
    finally:
        cold.stop()


def _losses(step: int) -> list[float]:
    return [10.0 * (1.0 + step % 3), 10.0 * (2.0 + step % 5), 10.0 * (1.5 + step % 2)]


def _in_order(catalog, sql, changes, n):
    """Chunks 0..n-1 of the sequential stream with ``changes`` applied just before their chunk."""
    eng = MixStream.open_cached(catalog, sql).engine()
    out = []
    for k in range(n):
        for at, w in changes:
            if at == k:
                eng.set_weights(w, at)
        out.append(eng.next_chunk())
    return out


def test_feedback_job_serves_the_in_order_stream_in_any_order_and_after_restore(catalog):
    srv = Running(catalog, feedback_lag=2)
    try:
        c = MixClient(srv.location, feedback_wait=0.5)
        job = c.register_job(FEEDBACK)
        for step in range(20):
            c.feedback(job, step, _losses(step), [10, 10, 10])
        served = {k: c.get_chunk(job, k) for k in reversed(range(22))}   # feedback of step k - 2 is in
        with pytest.raises(OperationalError, match="waits for the feedback of training step 20"):
            c.get_chunk(job, 22)
        state = c.checkpoint(job)
        changes = c.ledger(job)["weight_changes"]
        assert len(changes) >= 5 and all(at >= 2 for at, _ in changes)
        want = _in_order(catalog, FEEDBACK, changes, 22)
        assert [served[k] for k in range(22)] == want

        for step in range(20, 30):                                   # more feedback, more chunks
            c.feedback(job, step, _losses(step), [10, 10, 10])
        later = [c.get_chunk(job, k) for k in range(32)]
        assert later[:22] == want
        with pytest.raises(ProgrammingError, match="weight_history must list"):
            c.restore(job, {**state, "weight_history": [[30, [1.0, "x", 1.0]]]})
        c.restore(job, state)                                        # back to step 19
        assert [c.get_chunk(job, k) for k in (21, 3, 0)] == [want[21], want[3], want[0]]
        for step in range(20, 30):
            c.feedback(job, step, _losses(step), [10, 10, 10])
        assert [c.get_chunk(job, k) for k in reversed(range(32))] == later[::-1]
        assert later == _in_order(catalog, FEEDBACK, c.ledger(job)["weight_changes"], 32)
    finally:
        srv.stop()
