"""torchdata's StatefulDataLoader over a MixDataset: per-worker dataset states, exact resume."""
from __future__ import annotations

import collections

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from conftest import lang_catalog
from mixsql.errors import InterfaceError
from mixsql.torch import MixDataset
from test_torch import SQL

pytestmark = [pytest.mark.filterwarnings("ignore:This DataLoader will create"),
              pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")]


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    return lang_catalog(tmp_path_factory.mktemp("s") / "cat", 120, seed=5)


def _key(b):
    if "input_ids" in b:
        return b["input_ids"].tolist(), list(b["group"]), b["length"].tolist()
    return list(b["text"]), list(b["group"])


def _run(cat, kw, nw, stop=None, state=None):
    dl = StatefulDataLoader(MixDataset(SQL, catalog=cat, **kw), batch_size=3, num_workers=nw)
    if state is not None:
        dl.load_state_dict(state)
    out = []
    for i, b in enumerate(dl):
        out.append(_key(b))
        if stop is not None and i + 1 == stop:
            break
    return out, dl.state_dict()


_FULL: dict = {}


def _full(cat, mode, nw):
    if (mode, nw) not in _FULL:
        _FULL[mode, nw] = _run(cat, MODES[mode], nw)[0]
    return _FULL[mode, nw]


MODES = {"text": {}, "packed": {"seq_len": 16}}


@pytest.mark.parametrize("mode,nw", [("packed", 2), ("text", 2), ("packed", 0)])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frac=st.floats(0.0, 1.0))
def test_checkpoint_anywhere_resumes_exactly(cat, mode, nw, frac):
    full = _full(cat, mode, nw)
    stop = 1 + int(frac * (len(full) - 1))
    head, state = _run(cat, MODES[mode], nw, stop=stop)
    tail, _ = _run(cat, MODES[mode], nw, state=state)
    assert head == full[:stop]
    assert head + tail == full


def test_union_of_workers_is_the_selection(cat):
    dl = StatefulDataLoader(MixDataset(SQL, catalog=cat, columns=("file", "row")), batch_size=4, num_workers=2)
    got = collections.Counter((f, int(r)) for b in dl for f, r in zip(b["file"], b["row"]))
    assert len(got) == 120 and set(got.values()) == {1}


def test_stock_dataloader_state_in_main_process_raises(cat):
    ds = MixDataset(SQL, catalog=cat)
    dl = DataLoader(ds, batch_size=4, num_workers=2)
    it = iter(dl)
    first = next(it)
    assert set(first) == {"text", "group"}          # no resume tokens leak into the user's batch
    with pytest.raises(InterfaceError, match="MixDataLoader.*StatefulDataLoader"):
        ds.state_dict()
    del it
    # direct iteration in the main process records its own consumption again
    items = iter(ds)
    next(items)
    assert ds.state_dict()["mixsql"]["frontier"] >= 1
