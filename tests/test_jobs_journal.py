"""The server's job persistence journals ADO's loss history instead of rewriting it.

A feedback call must cost O(groups) bytes of writes however long training has run, and a
job reloaded from disk (server restart) must hold exactly the committed history."""
from __future__ import annotations

import json

import pytest

from conftest import write_jsonl_catalog
from mixsql.errors import OperationalError
from mixsql.jobs import JobManager

ADO_SQL = ("SELECT * FROM samples MIX BY kind WITH (a 0.5, b 0.5) USING ADO (update_every = 40, "
           "fit_skip = 0, subsample = 1, smooth_window = 5, fit_lag = 2) "
           "SETTINGS (chunk_size = 10, on_exhausted = 'repeat', batch_size = 10)")


@pytest.fixture
def catalog(tmp_path):
    recs = [{"text": f"{g} {i}", "kind": g} for g in ("a", "b") for i in range(200)]
    return write_jsonl_catalog(tmp_path / "cat", recs, properties={"kind": "VARCHAR"}, rows_per_file=100)


def _losses(step: int) -> tuple[list[float], list[float]]:
    n = step + 1
    return [(2.0 + 6.0 * n ** -0.6) * 100, (2.5 + 0.3 * n ** -0.05) * 100], [100.0, 100.0]


def _feed(job, steps) -> list:
    out = []
    for step in steps:
        out.append(job.feedback(step, *_losses(step))["weights"])
    return out


def _reload(catalog, jid):
    return JobManager(catalog).get(jid)


def _new_job(catalog, steps: int):
    """A registered ADO job that received feedback for ``steps`` steps: (manager, job id, job)."""
    jm = JobManager(catalog)
    jid = jm.register(ADO_SQL)["job"]
    job = jm.get(jid)
    _feed(job, range(steps))
    return jm, jid, job


def _state_bytes(job) -> int:
    """Size of the job file without its weight log (the newest ``LOG_KEEP`` changes: bounded,
    whatever the number of steps)."""
    doc = json.loads(job.path.read_bytes())
    doc.pop("weight_log")
    return len(json.dumps(doc))


def test_job_file_does_not_grow_with_steps(catalog):
    jm, _, job = _new_job(catalog, 20)
    size_20, journal_20 = _state_bytes(job), job.journal.path.stat().st_size
    _feed(job, range(20, 400))
    size_400, journal_400 = _state_bytes(job), job.journal.path.stat().st_size
    assert journal_400 > 10 * journal_20                     # the history went to the journal ...
    assert size_400 - size_20 < 4096, (size_20, size_400)    # ... not into the rewritten job file
    assert (job.path.stat().st_mode & 0o777) == (job.journal.path.stat().st_mode & 0o777) == 0o600
    jm.close()


def test_reload_restores_exact_history_and_continues_identically(catalog):
    jm, jid, job = _new_job(catalog, 100)
    back = _reload(catalog, jid)
    want, got = job.algorithm.state_dict(), back.algorithm.state_dict()
    assert got["history"] == want["history"] and got["steps"] == want["steps"] == list(range(100))
    assert _feed(back, range(100, 160)) == _feed(job, range(100, 160))
    jm.close()
    back.close()


def test_uncommitted_and_torn_journal_lines_are_ignored(catalog):
    jm, jid, job = _new_job(catalog, 30)
    job.close()
    # a crash after appending to the journal but before the job file was rewritten,
    # then a torn half line from a second crash
    with open(job.journal.path, "ab") as f:
        f.write(b'["history", [[9.0, 9.0]]]\n["steps", [999]]\n["hist')
    back = _reload(catalog, jid)
    st = back.algorithm.state_dict()
    assert st["steps"] == list(range(30)) and len(st["history"]) == 30
    _feed(back, range(30, 35))                       # the next save writes a clean journal
    again = _reload(catalog, jid).algorithm.state_dict()
    assert again["steps"] == list(range(35))
    lines = [json.loads(x) for x in job.journal.path.read_bytes().splitlines()]   # no torn line left
    assert [s for key, items in lines if key == "steps" for s in items] == list(range(35))
    back.close()


def test_missing_journal_is_a_clear_error(catalog):
    jm, jid, job = _new_job(catalog, 10)
    jm.close()
    job.journal.path.unlink()
    with pytest.raises(OperationalError, match="journal .* missing committed entries .*restore"):
        _reload(catalog, jid)


def test_restore_replaces_the_journaled_history(catalog):
    jm, jid, job = _new_job(catalog, 50)
    ckpt = job.checkpoint()
    assert len(ckpt["algorithm_state"]["history"]) == 50 and "journal" not in ckpt
    _feed(job, range(50, 120))
    job.restore(ckpt)
    back = _reload(catalog, jid)
    assert back.algorithm.state_dict()["steps"] == list(range(50))
    assert _feed(back, range(50, 70)) == _feed(job, range(50, 70))
    jm.close()
    back.close()
