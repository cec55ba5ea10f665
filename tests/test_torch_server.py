"""MixDataset against a real Flight server on 127.0.0.1, and in-process feedback."""
from __future__ import annotations

import threading
from collections import Counter

import pytest
import torch  # noqa: F401  (the torch extra is part of the test set-up)
from conftest import write_jsonl_catalog

from mixsql.server import MixServer
from mixsql.torch import MixDataLoader, MixDataset

STATIC = ("SELECT * FROM samples MIX BY language WITH (en 0.5, de 0.3, fr 0.2) "
          "SETTINGS (chunk_size = 20, on_exhausted = 'redistribute', seed = 11)")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    recs = [{"text": f"{lang} document {i}", "language": lang}
            for lang, n in (("en", 150), ("de", 90), ("fr", 60)) for i in range(n)]
    return write_jsonl_catalog(tmp_path_factory.mktemp("ts") / "cat", recs,
                               properties={"language": "VARCHAR"}, rows_per_file=70)


@pytest.fixture
def server(catalog):
    srv = MixServer(catalog, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    yield srv.location
    srv.shutdown()
    thread.join(10)


def texts(loader):
    return [t for batch in loader for t in batch["text"]]


@pytest.mark.parametrize("workers", [0, 2])
def test_server_mode_streams_what_in_process_streams(catalog, server, workers):
    local = MixDataset(STATIC, catalog=catalog)
    remote = MixDataset(STATIC, catalog=catalog, server=server)
    expected = texts(MixDataLoader(local, batch_size=8, num_workers=workers))
    got = texts(MixDataLoader(remote, batch_size=8, num_workers=workers))
    assert got == expected
    assert len(got) == 300 and len(set(got)) == 300  # redistribute: every sample exactly once


def test_in_process_feedback_moves_the_weights(catalog):
    sql = ("SELECT * FROM samples MIX BY language WITH (en 0.5, de 0.5) USING LOSS_AVERAGE () "
           "LIMIT 200 SAMPLES SETTINGS (chunk_size = 20, seed = 1)")
    ds = MixDataset(sql, catalog=catalog)
    it = iter(ds)
    first = [next(it)["group"] for _ in range(20)]
    assert Counter(first) == {"en": 10, "de": 10}
    ds.feedback(0, [9.0, 1.0], [1.0, 1.0])  # en is far harder: it should get most of the next chunks
    rest = [item["group"] for item in it]
    shares = Counter(rest[20:])  # the chunk after the one in flight uses the new weights
    assert shares["en"] > 3 * shares["de"]


ADO_SQL = ("SELECT * FROM samples MIX BY language WITH (en 0.4, de 0.3, fr 0.3) USING ADO (update_every = 6, "
           "fit_skip = 0, subsample = 1, smooth_window = 3, fit_lag = 1) "
           "SETTINGS (chunk_size = 5, on_exhausted = 'repeat', seed = 4)")


def _ado_run(catalog, steps: int, start_state=None, stop_at=None):
    """Items grouped per step (10 per step), with in-process ADO feedback after every step."""
    ds = MixDataset(ADO_SQL, catalog=catalog)
    if start_state is not None:
        ds.load_state_dict(start_state)
    first = 0 if start_state is None else start_state["_step"]
    it = iter(ds)
    out, state = [], None
    for step in range(first, steps):
        batch = [next(it) for _ in range(10)]
        out.append([(x["group"], x["text"]) for x in batch])
        n = step + 1
        losses = {"en": 2 + 5 * n ** -0.8, "de": 2 + 0.5 * n ** -0.1, "fr": 2.2}
        counts = Counter(x["group"] for x in batch)
        groups = ["en", "de", "fr"]
        ds.feedback(step, [losses[g] * counts[g] for g in groups], [float(counts[g]) for g in groups])
        if stop_at is not None and step + 1 == stop_at:
            state = {**ds.state_dict(), "_step": stop_at}
    return out, state, ds


@pytest.mark.parametrize("stop", [9, 17, 26])
def test_in_process_ado_resume_continues_identically(catalog, stop):
    full, _, ds_full = _ado_run(catalog, 30)
    _, state, _ = _ado_run(catalog, 30, stop_at=stop)
    assert state["dynamic"]["algorithm"]["steps"] == list(range(stop))
    assert state["dynamic"]["weights"], "ADO changed the weights before the checkpoint"
    rest, _, ds_rest = _ado_run(catalog, 30, start_state=state)
    assert rest == full[stop:]
    assert ds_rest._algo.state_dict()["history"] == ds_full._algo.state_dict()["history"]


def _server_ado_run(server, workers: int) -> tuple[list, list]:
    """Groups per step of MixDataset(server=...) with ADO feedback after every step."""
    from mixsql.client import MixClient

    sql = ADO_SQL.replace("seed = 4", "seed = 4, batch_size = 10")
    ds = MixDataset(sql, server=server)
    out = []
    for step, batch in enumerate(MixDataLoader(ds, batch_size=10, num_workers=workers)):
        counts = Counter(batch["group"])
        out.append(list(batch["group"]))
        losses = {"en": 2 + 5 * (step + 1) ** -0.8, "de": 2 + 0.5 * (step + 1) ** -0.1, "fr": 2.2}
        ds.feedback(step, [losses[g] * counts[g] for g in ("en", "de", "fr")],
                    [float(counts[g]) for g in ("en", "de", "fr")])
        if step == 29:
            break
    client = MixClient(server)
    job = client.register_job(sql)
    log = client.job_info(job)["weight_log"]
    client.drop_job(job)
    return out, log


def test_server_mode_ado_feedback_is_reproducible(server):
    first, log = _server_ado_run(server, workers=0)
    again, log_again = _server_ado_run(server, workers=0)
    assert log and log == log_again                     # ADO moved the weights, at the same chunks
    assert first == again
