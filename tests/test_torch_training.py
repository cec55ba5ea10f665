"""Training-loop conventions: document boundaries in packed sequences, mixed-group packing under
unit = 'tokens', schedules that follow the training step, persistent DataLoader workers."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import lang_catalog
from mixsql.catalog import Catalog
from mixsql.errors import InterfaceError, ProgrammingError
from mixsql.packing import Packer, cu_seqlens, document_positions
from mixsql.torch import MixDataLoader, MixDataset
from test_torch import SQL, SQL_TOKENS

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")

SQL_SCHEDULE = ("SELECT * FROM samples MIX BY lang WITH SCHEDULE (AT STEP 0 (en 1, de 0, fr 0), "
                "AT STEP 3 (en 0, de 1, fr 0)) SETTINGS (chunk_size = 4, on_exhausted = 'stop', seed = 3)")


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    return lang_catalog(tmp_path_factory.mktemp("tr") / "cat", 150, seed=17)


# ------------------------------------------------------------------ document boundaries
EOS = 256


@settings(max_examples=60, deadline=None)
@given(docs=st.lists(st.lists(st.integers(0, 255), max_size=12), min_size=1, max_size=12),
       seq_len=st.integers(1, 9), bos=st.booleans())
def test_positions_and_cu_seqlens_match_the_documents_packed(docs, seq_len, bos):
    packer = Packer(seq_len, EOS, 257 if bos else None)
    values = np.array([t for d in docs for t in d], dtype=np.int32)
    pb = packer.add_chunk(values, np.array([len(d) for d in docs]), np.zeros(len(docs), np.int32))
    rows = pb.rows() + packer.flush()
    ids = np.stack([r.ids for r in rows])
    lengths = np.array([r.length for r in rows])
    pos = document_positions(ids, lengths, EOS)
    # expected: the framed documents cut into rows; a position counts tokens of the same document
    # since that document's first token in the row
    doc_of = np.concatenate([np.full(len(d) + 1 + bos, i) for i, d in enumerate(docs)])
    L = seq_len + 1
    for r, n in enumerate(lengths):
        owner = doc_of[r * L:r * L + n]
        want = [i - int(np.argmax(owner == owner[i])) for i in range(n)]
        assert pos[r, :n].tolist() == want
        assert not pos[r, n:].any()
    cu = cu_seqlens(pos, lengths)
    inputs = [doc_of[r * L:r * L + min(n, L - 1)] for r, n in enumerate(lengths)]
    runs = []   # lengths of runs of one document inside each row's inputs
    for owner in inputs:
        if len(owner):
            cuts = np.flatnonzero(np.diff(owner)) + 1
            runs += np.diff(np.r_[0, cuts, len(owner)]).tolist()
    assert cu.dtype == np.int32 and cu[0] == 0
    assert np.diff(cu).tolist() == runs


@pytest.mark.parametrize("nw", [0, 2])
def test_loader_batches_carry_boundaries(cat, nw):
    ds = MixDataset(SQL, catalog=cat, seq_len=16, boundaries=True)
    for b in MixDataLoader(ds, batch_size=3, num_workers=nw):
        ids, pos, length = b["input_ids"], b["position_ids"], b["length"]
        want = document_positions(ids.numpy(), length.numpy(), ds.eos)
        assert (pos.numpy() == want).all()
        assert b["cu_seqlens"].dtype == torch.int32
        assert int(b["cu_seqlens"][-1]) == int(b["mask"][:, :-1].sum())
        assert b["max_seqlen"] == int(torch.diff(b["cu_seqlens"]).max())
    items = list(MixDataset(SQL, catalog=cat, seq_len=16, boundaries=True))
    assert all((it["position_ids"].numpy() == document_positions(it["input_ids"][None].numpy(),
                np.array([it["length"]]), ds.eos)[0]).all() for it in items)


def test_mixed_groups_under_unit_tokens_keep_token_shares(cat):
    one = list(MixDataset(SQL_TOKENS, catalog=cat, seq_len=16))
    mixed = list(MixDataset(SQL_TOKENS, catalog=cat, seq_len=16, by_group=False))

    def per_group(items):
        c = collections.Counter()
        for it in items:
            c.update(it["group_ids"][: it["length"]].tolist())
        return c

    assert any(len(set(it["group_ids"][: it["length"]].tolist())) > 1 for it in mixed)
    assert per_group(mixed) == per_group(one)          # the same tokens of every group
    c = Catalog(cat, read_only=True)
    total = c.con.execute("SELECT sum(n_bytes) + count(*) FROM samples").fetchone()[0]
    c.close()
    assert sum(per_group(mixed).values()) == total
    assert sum(it["length"] < 17 for it in mixed) <= 1   # one buffer: one short final sequence


# ------------------------------------------------------------------ schedules
def _groups_by_step(ds, steps, batch_size=4, drive=True):
    dl = MixDataLoader(ds, batch_size=batch_size)
    out = []
    for step, b in enumerate(dl):
        out.append(collections.Counter(b["group"]))
        if drive:
            ds.set_step(step + 1)
        if step + 1 == steps:
            break
    return out, dl


def test_schedule_without_batch_size_follows_set_step(cat):
    ds = MixDataset(SQL_SCHEDULE, catalog=cat, seq_len=8)   # packed: batches are not samples
    got, _ = _groups_by_step(ds, 20)
    assert set(got[0]) == {"en"}
    assert set(got[-1]) == {"de"}                         # the step-3 weights took over
    still, _ = _groups_by_step(MixDataset(SQL_SCHEDULE, catalog=cat, seq_len=8), 20, drive=False)
    assert all(set(c) == {"en"} for c in still)          # without set_step: step 0's weights


def test_schedule_follows_batches_with_a_known_batch_size(cat):
    got, _ = _groups_by_step(MixDataset(SQL_SCHEDULE, catalog=cat), 6, drive=False)
    # 4 samples per step, chunks of 4: step 3 starts at chunk 3
    assert [dict(c) for c in got[:3]] == [{"en": 4}] * 3 and all(set(c) == {"de"} for c in got[3:])
    nw, _ = _groups_by_step(MixDataset(SQL_SCHEDULE, catalog=cat), 6, drive=False)
    assert nw == got


def test_schedule_resume_keeps_set_step_changes(cat):
    full, _ = _groups_by_step(MixDataset(SQL_SCHEDULE, catalog=cat, seq_len=8), 16)
    ds = MixDataset(SQL_SCHEDULE, catalog=cat, seq_len=8)
    head, dl = _groups_by_step(ds, 7)
    ds2 = MixDataset(SQL_SCHEDULE, catalog=cat, seq_len=8)
    dl2 = MixDataLoader(ds2, batch_size=4)
    dl2.load_state_dict(dl.state_dict())
    tail = []
    for step, b in enumerate(dl2, start=7):
        tail.append(collections.Counter(b["group"]))
        ds2.set_step(step + 1)
        if step + 1 == 16:
            break
    assert head + tail == full


def test_unmappable_schedule_errors_before_data_moves(cat):
    dl = MixDataLoader(MixDataset(SQL_SCHEDULE, catalog=cat, seq_len=8), batch_size=4, num_workers=2)
    with pytest.raises(Exception, match="WITH SCHEDULE needs to know the training step"):
        next(iter(dl))
    with pytest.raises(ProgrammingError, match="WITH SCHEDULE"):
        ds = MixDataset(SQL, catalog=cat)
        next(iter(ds))
        ds.set_step(3)


# ------------------------------------------------------------------ persistent workers
@pytest.mark.parametrize("seq_len", [None, 16])
def test_persistent_workers_epochs_equal_fresh_epochs(cat, seq_len):
    def epochs(persistent):
        dl = MixDataLoader(MixDataset(SQL, catalog=cat, seq_len=seq_len), batch_size=3, num_workers=2,
                           persistent_workers=persistent)
        out = []
        for stop in (5, 7, None):     # three epochs, the first two cut short
            got = []
            for i, b in enumerate(dl):
                got.append((b["input_ids"].tolist() if seq_len else b["text"], b["group"]))
                if stop is not None and i + 1 == stop:
                    break
            out.append(got)
        return out

    fresh = epochs(False)
    assert [len(e) for e in fresh[:2]] == [5, 7] and fresh[2]
    assert epochs(True) == fresh
