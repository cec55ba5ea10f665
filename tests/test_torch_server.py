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
