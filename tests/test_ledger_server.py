"""The data ledger of server-mode runs: a real Flight server on 127.0.0.1 (a subprocess, stopped
by pid), 2 ranks x 2 DataLoader workers, ADO feedback; the job's whole weight history (journaled,
never pruned with the snapshots) reaches the checkpoint through the ``ledger`` action."""
from __future__ import annotations

import collections
import json
import os
import signal

import pytest
import torch  # noqa: F401  (the torch extra is part of the test set-up)
from conftest import LANGS_PROPERTIES, langs_records, write_jsonl_catalog
from servers import free_port, start_server_process

import mixsql
from mixsql.errors import ProgrammingError
from mixsql.jobs import JobManager
from mixsql.ledger import Ledger
from mixsql.torch import MixDataLoader, MixDataset

ADO_SQL = ("SELECT * FROM samples MIX BY language WITH (JavaScript 0.4, HTML 0.3, Python 0.3) "
           "USING ADO (update_every = 4, fit_skip = 0, subsample = 1, smooth_window = 3, fit_lag = 1) "
           "SETTINGS (chunk_size = 4, on_exhausted = 'repeat', seed = 4, batch_size = 12)")
GROUPS = ("JavaScript", "HTML", "Python")
STEPS = 24


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    return str(write_jsonl_catalog(tmp_path_factory.mktemp("lsrv") / "cat", langs_records(),
                                   properties=LANGS_PROPERTIES, rows_per_file=40))


@pytest.fixture
def server(cat):
    proc = start_server_process(cat, free_port())
    try:
        yield proc.args[-1]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except Exception:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _losses(step: int, groups: list) -> tuple[list, list]:
    counts = collections.Counter(groups)
    n = step + 1
    loss = {"JavaScript": 2 + 5 * n ** -0.8, "HTML": 2 + 0.5 * n ** -0.1, "Python": 2.2}
    return [loss[g] * counts[g] for g in GROUPS], [float(counts[g]) for g in GROUPS]


def test_server_mode_two_ranks_two_workers_feedback_every_step_matches(cat, server, tmp_path):
    location = f"grpc://127.0.0.1:{server}"
    ranks = [MixDataset(ADO_SQL, server=location, dp_rank=r, dp_world=2, columns=("file", "row")) for r in range(2)]
    loaders = [MixDataLoader(ds, batch_size=6, num_workers=2) for ds in ranks]
    logged: dict = {}
    for step, batches in enumerate(zip(*loaders)):
        for r, b in enumerate(batches):
            logged[(step, r)] = [[f, row] for f, row in zip(b["file"], b["row"])]
            ranks[r].feedback(step, *_losses(step, b["group"]))   # every rank reports; repeats are ignored
        if step + 1 == STEPS:
            break
    states = [dl.state_dict() for dl in loaders]
    job = states[0]["run"]["job"]
    assert states[0]["run"]["steps"] == STEPS and states[0]["run"]["server"] == location
    assert job["weight_changes"] and job["weight_changes"][0][0] < STEPS * 3, "ADO changed the weights in the run"
    assert job == states[1]["run"]["job"] and job["job"] == states[0]["mixsql"]["engine"]["job"]
    path = tmp_path / "rank1.json"
    path.write_text(json.dumps(states[1]))
    torch.save({"data": states[0]}, tmp_path / "rank0.pt")
    for src in (path, tmp_path / "rank0.pt"):
        with Ledger(src, catalog=cat) as led:
            got = {}
            for x in led.steps(0, STEPS + 2).to_pylist():
                got.setdefault((x["step"], x["rank"]), []).append([x["file"], x["row"]])
        beyond = {k: v for k, v in got.items() if k[0] >= STEPS}
        assert {k: v for k, v in got.items() if k[0] < STEPS} == logged
        assert sorted(beyond) == [(s, r) for s in range(STEPS, STEPS + 3) for r in range(2)]   # the stream goes on
    static = {**states[0], "run": {**states[0]["run"], "job": {**job, "weight_changes": []}}}
    with Ledger(static, catalog=cat) as led:   # the weight changes matter
        assert [[x["file"], x["row"]] for x in led.steps(STEPS - 1, STEPS - 1, [0]).to_pylist()] != logged[(STEPS - 1, 0)]
    # the ledger in SQL over the server's catalog, and the inverse lookup
    f, row = logged[(STEPS - 1, 1)][2]
    with mixsql.connect(cat) as con:
        rows = con.execute(f"SELECT step, rank, file, row FROM mix_ledger('{path}') WHERE step BETWEEN 5 AND 7 "
                           "ORDER BY step, rank, sequence").fetchall()
        seen = con.execute(f"SELECT step, rank FROM mix_ledger('{path}') WHERE file = '{f}' AND row = {row}").fetchall()
    assert [list(x[2:]) for x in rows] == [p for s in (5, 6, 7) for r in range(2) for p in logged[(s, r)]]
    assert sorted(set(seen) & {(s, r) for s, r in logged}) == sorted((s, r) for (s, r), b in logged.items()
                                                                    if [f, row] in b)


def test_server_ledger_over_another_catalog_is_refused(cat, server, tmp_path):
    location = f"grpc://127.0.0.1:{server}"
    sql = ADO_SQL.replace("USING ADO (update_every = 4, fit_skip = 0, subsample = 1, smooth_window = 3, fit_lag = 1) ", "")
    dl = MixDataLoader(MixDataset(sql, server=location), batch_size=4)
    logged = [list(zip(b["group"], b["text"])) for _, b in zip(range(3), dl)]
    state = dl.state_dict()
    assert state["run"]["job"]["weight_changes"] == [] and not state["run"]["job"]["dynamic"]
    with Ledger(state, catalog=cat) as led:
        assert led.steps(0, 2).num_rows == sum(map(len, logged))
    recs = [{**r, "text": r["text"] + " (changed)"} for r in langs_records()][:-5]
    other = write_jsonl_catalog(tmp_path / "other", recs, properties=LANGS_PROPERTIES, rows_per_file=40)
    with pytest.raises(ProgrammingError, match="does not plan the stream that the server's job"):
        Ledger(state, catalog=other)
    old = {**state, "run": {k: v for k, v in state["run"].items() if k != "job"}}
    with pytest.raises(ProgrammingError, match="carries no record of the server's job"):
        Ledger(old, catalog=cat)


def test_job_weight_history_is_journaled_whole_and_survives_reload(cat, monkeypatch):
    from test_jobs_journal import _losses as journal_losses

    import mixsql.jobs.job as job_module

    monkeypatch.setattr(job_module, "LOG_KEEP", 2)   # the job file's weight log keeps the newest 2
    sql = ADO_SQL.replace("update_every = 4", "update_every = 2").replace("batch_size = 12", "batch_size = 4")
    jm = JobManager(cat)
    jid = jm.register(sql)["job"]
    job = jm.get(jid)
    for step in range(40):
        job.feedback(step, [x / 100 for x in journal_losses(step)[0]] + [2.0], [1.0, 1.0, 1.0])
        job.chunk(step)
    record = job.ledger()
    changes = record["weight_changes"]
    assert len(changes) > 5 and len(job.doc["weight_log"]) == 2
    assert changes[0][0] < min(e[0] for e in job.doc["weight_log"])
    assert [at for at, _ in changes] == sorted({at for at, _ in changes})
    assert json.loads(job.path.read_bytes())["weight_history"] == []   # in the journal, not the job file
    back = JobManager(cat).get(jid)
    assert back.ledger() == record
    assert all(back.chunk(k).equals(job.chunk(k)) for k in range(0, 40, 3))   # the whole history re-applied
    jm.close()
    back.close()
