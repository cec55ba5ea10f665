"""MixDataset / MixDataLoader with real DataLoader workers over a real catalog and MIX statement."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch

from conftest import lang_catalog, write_jsonl_catalog
from mixsql.catalog import Catalog
from mixsql.errors import ProgrammingError
from mixsql.torch import MixDataLoader, MixDataset, mix_collate

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")

SQL = ("SELECT * FROM samples MIX BY lang WITH (en 0.5, de 0.3, fr 0.2) "
       "SETTINGS (chunk_size = 8, on_exhausted = 'redistribute', seed = 3)")
SQL_TOKENS = ("SELECT * FROM samples MIX BY lang WITH (en 0.5, de 0.3, fr 0.2) "
              "SETTINGS (chunk_size = 96, unit = 'tokens', on_exhausted = 'redistribute', seed = 3)")


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    return lang_catalog(tmp_path_factory.mktemp("t") / "cat", 150, seed=11)


def _selection(cat):
    c = Catalog(cat, read_only=True)
    try:
        return collections.Counter(map(tuple, c.con.execute('SELECT file, "row" FROM samples').fetchall()))
    finally:
        c.close()


def _batch_key(b):
    if "input_ids" in b:
        return b["input_ids"].tolist(), b["group"], b["mask"].tolist()
    return b["text"], b["group"]


def _run(cat, kw, nw, stop=None, state=None, batch_size=3):
    kw = dict(kw)
    sql = kw.pop("sql", SQL)
    dl = MixDataLoader(MixDataset(sql, catalog=cat, **kw), batch_size=batch_size, num_workers=nw)
    if state is not None:
        dl.load_state_dict(json.loads(json.dumps(state)))  # checkpoints are JSON
    out = []
    for i, b in enumerate(dl):
        out.append(_batch_key(b))
        if stop is not None and i + 1 == stop:
            break
    return out, dl.state_dict()


@pytest.mark.parametrize("nw", [0, 2, 3])
def test_workers_union_equals_selection(cat, nw):
    dl = MixDataLoader(MixDataset(SQL, catalog=cat, columns=("file", "row")), batch_size=4, num_workers=nw)
    got = collections.Counter((f, r) for b in dl for f, r in zip(b["file"], b["row"]))
    assert got == _selection(cat)


MODES = {"text": {}, "packed": {"seq_len": 16}, "by_group": {"seq_len": 16, "sql": SQL_TOKENS}}


@pytest.mark.parametrize("mode,nw", [("text", 0), ("text", 2), ("text", 3), ("packed", 0), ("packed", 2),
                                     ("by_group", 3), ("by_group", 0)])
def test_kill_and_resume_same_batches(cat, mode, nw):
    kw = MODES[mode]
    full, _ = _run(cat, kw, nw)
    stop = int(np.random.Generator(np.random.PCG64(nw * 7 + len(mode))).integers(1, len(full) - 1))
    head, state = _run(cat, kw, nw, stop=stop)
    tail, _ = _run(cat, kw, nw, state=state)
    assert head + tail == full


def _token_counter(batches):
    cnt = collections.Counter()
    for b in batches:
        if len(b) == 3:
            for ids, mask in zip(b[0], b[2]):
                cnt.update(t for t, m in zip(ids, mask) if m)
        else:
            cnt.update(b[0])
    return cnt


@pytest.mark.parametrize("mode", ["text", "by_group"])
def test_resume_with_other_worker_counts_loses_nothing(cat, mode):
    kw = MODES[mode]
    full, _ = _run(cat, kw, 2)
    a, s1 = _run(cat, kw, 2, stop=7)
    b, s2 = _run(cat, kw, 3, stop=5, state=s1)
    c, _ = _run(cat, kw, 0, state=s2)
    assert _token_counter(a + b + c) == _token_counter(full)


def test_by_group_sequences_hold_one_group(cat):
    ds = MixDataset(SQL_TOKENS, catalog=cat, seq_len=16)
    items = list(ds)
    names = {"en", "de", "fr"}
    for it in items:
        real = it["group_ids"][: it["length"]].unique().tolist()
        assert len(real) == 1 and it["group"] in names
    assert sum(it["length"] < 17 for it in items) <= 3      # only the final flushed sequences are short
    # every byte of the selection is delivered once (byte tokenizer: token = byte, plus one EOS per doc)
    c = Catalog(cat, read_only=True)
    nbytes, ndocs = c.con.execute("SELECT sum(n_bytes), count(*) FROM samples").fetchone()
    c.close()
    assert sum(it["length"] for it in items) == nbytes + ndocs


def test_direct_iteration_state_and_rank_check(cat):
    ds = MixDataset(SQL, catalog=cat)
    it = iter(ds)
    first = [next(it)["text"] for _ in range(10)]
    state = json.loads(json.dumps(ds.state_dict()))
    ds2 = MixDataset(SQL, catalog=cat)
    ds2.load_state_dict(state)
    rest = [x["text"] for x in ds2]
    assert first + rest == [x["text"] for x in MixDataset(SQL, catalog=cat)]
    with pytest.raises(ProgrammingError, match="data-parallel"):
        MixDataset(SQL, catalog=cat, dp_rank=1, dp_world=2).load_state_dict(state)
    with pytest.raises(ProgrammingError, match="different MIX statement"):
        MixDataset(SQL_TOKENS, catalog=cat).load_state_dict(state)


def test_feedback_refused_for_static_mixture(cat):
    ds = MixDataset(SQL, catalog=cat)
    with pytest.raises(ProgrammingError, match="dynamic mixture"):
        ds.feedback(0, [1.0, 1.0, 1.0], [10, 10, 10])


def test_worker_batches_equal_in_process_batches(cat):
    """Workers ship packed batches as one buffer (_wire_collate); the loop sees mix_collate's batch."""
    kw = {"sql": SQL_TOKENS, "seq_len": 16}
    a, _ = _run(cat, kw, 0)
    dl = MixDataLoader(MixDataset(SQL_TOKENS, catalog=cat, seq_len=16), batch_size=3, num_workers=1)
    b = [(x["input_ids"].tolist(), x["group"], x["mask"].tolist(), x["group_ids"].dtype, x["length"].tolist())
         for x in dl]
    assert [(k[0], k[1], k[2]) for k in b] == a
    assert all(k[3] == torch.long and len(k[4]) == len(k[1]) for k in b)


def _per_item_collate(items):
    """Not mix_collate itself: MixDataLoader then takes the per-item path (DataLoader batching)."""
    return mix_collate(items)


def _loader_batches(cat, kw, nw, collate, stop=None, state=None, **dl_kw):
    kw = dict(kw)
    sql = kw.pop("sql", SQL)
    dl = MixDataLoader(MixDataset(sql, catalog=cat, **kw), num_workers=nw, collate_fn=collate, **dl_kw)
    if state is not None:
        dl.load_state_dict(json.loads(json.dumps(state)))
    out = []
    for i, b in enumerate(dl):
        out.append((b["input_ids"].tolist(), b["group_ids"].tolist(), b["length"].tolist(), b["mask"].tolist(),
                    b["group"], list(b), b["input_ids"].dtype, b["group_ids"].dtype, b["mask"].dtype))
        if stop is not None and i + 1 == stop:
            break
    return out, json.loads(json.dumps(dl.state_dict()))


@pytest.mark.parametrize("mode,nw,bs,drop_last", [("packed", 0, 3, False), ("packed", 2, 4, True),
                                                  ("by_group", 1, 3, False), ("by_group", 3, 2, False),
                                                  ("by_group", 2, 5, True)])
def test_fast_batches_equal_per_item_batches(cat, mode, nw, bs, drop_last):
    """Packed mode with mix_collate: workers build whole batches (and send them in bundles); the
    batches, their order and every state_dict equal DataLoader's per-item batching."""
    kw = MODES[mode]
    dl_kw = dict(batch_size=bs, drop_last=drop_last)
    fast, _ = _loader_batches(cat, kw, nw, mix_collate, **dl_kw)
    slow, _ = _loader_batches(cat, kw, nw, _per_item_collate, **dl_kw)
    assert fast == slow and len(fast) > 3
    dl = MixDataLoader(MixDataset(kw.get("sql", SQL), catalog=cat, seq_len=16), batch_size=bs, drop_last=drop_last,
                       num_workers=nw)
    assert (dl.batch_size, dl.drop_last) == (bs, drop_last)
    for stop in (len(fast) // 2, len(fast) - 1):   # mid-epoch, and inside the final flush
        a, sa = _loader_batches(cat, kw, nw, mix_collate, stop=stop, **dl_kw)
        b, sb = _loader_batches(cat, kw, nw, _per_item_collate, stop=stop, **dl_kw)
        assert a == b and sa == sb
        tail, _ = _loader_batches(cat, kw, nw, mix_collate, state=sa, **dl_kw)
        assert a + tail == fast


def test_fast_path_resume_with_other_worker_counts(cat):
    kw = MODES["by_group"]
    full, _ = _loader_batches(cat, kw, 2, mix_collate, batch_size=3)
    a, s1 = _loader_batches(cat, kw, 2, mix_collate, stop=5, batch_size=3)
    b, s2 = _loader_batches(cat, kw, 3, mix_collate, stop=4, state=s1, batch_size=3)
    c, _ = _loader_batches(cat, kw, 1, mix_collate, state=s2, batch_size=3)
    key = lambda bs: [(x[0], x[3]) for x in bs]   # noqa: E731
    assert _token_counter([(i, None, m) for i, m in key(a + b + c)]) == _token_counter([(i, None, m) for i, m in key(full)])


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_size_none_with_default_collate_yields_items(cat, workers):
    dl = MixDataLoader(MixDataset(SQL_TOKENS, catalog=cat, seq_len=16), batch_size=None, num_workers=workers)
    items = list(dl)
    assert items and all(it["input_ids"].shape == (17,) for it in items)
    assert sum(it["length"] for it in items) == sum(it["length"] for it in MixDataset(SQL_TOKENS, catalog=cat, seq_len=16))
    assert dl.state_dict()["mixsql"]["end"] is not None        # consumption was tracked to the end


def test_batch_size_none_keeps_per_item_path(cat):
    dl = MixDataLoader(MixDataset(SQL_TOKENS, catalog=cat, seq_len=16), batch_size=None, num_workers=0,
                       collate_fn=lambda item: {**item, "_mix": [item["_mix"]]})
    items = list(dl)
    assert all(it["input_ids"].shape == (17,) for it in items)
    assert sum(it["length"] for it in items) == sum(it["length"] for it in MixDataset(SQL_TOKENS, catalog=cat, seq_len=16))


def test_elastic_resume_4_3_6_ranks_from_lists_of_states(tmp_path):
    """Checkpoint on 4 data-parallel ranks, resume on 3 from the list of all 4 states, then on 6:
    a redistribute epoch is covered exactly once."""
    import collections
    import json

    from conftest import lang_catalog
    from mixsql.catalog import Catalog
    from mixsql.torch import MixDataLoader, MixDataset

    recs = [{"text": f"doc {i}", "lang": ["en", "de", "fr"][i % 3]} for i in range(90)]
    cat = str(write_jsonl_catalog(tmp_path / "cat", recs, properties={"lang": "VARCHAR"}, rows_per_file=25))
    sql = ("SELECT * FROM samples MIX BY lang WITH (en 0.5, de 0.3, fr 0.2) "
           "SETTINGS (chunk_size = 6, on_exhausted = 'redistribute', seed = 5)")
    seen, states = [], None
    for world, stop in ((4, 2), (3, 1), (6, None)):
        new_states = []
        for r in range(world):
            dl = MixDataLoader(MixDataset(sql, catalog=cat, dp_rank=r, dp_world=world, columns=("file", "row")),
                               batch_size=2, num_workers=0)
            if states is not None:
                dl.load_state_dict(json.loads(json.dumps(states)))
            for i, b in enumerate(dl):
                seen += list(zip(b["file"], b["row"]))
                if stop is not None and i + 1 == stop:
                    break
            new_states.append(dl.state_dict())
        states = new_states
    c = Catalog(cat, read_only=True)
    sel = collections.Counter(map(tuple, c.con.execute('SELECT file, "row" FROM samples').fetchall()))
    c.close()
    assert collections.Counter(seen) == sel
