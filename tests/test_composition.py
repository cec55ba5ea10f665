"""Random-access composition: chunk k computed directly equals chunk k of the sequential stream."""
from __future__ import annotations

import itertools

import json

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from mixsql.composition import SplitTree
from mixsql.engine import MixEngine
from mixsql.spec import Budget, ScheduleStep
from test_engine import make_spec, pointer_table

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(w=st.lists(st.integers(0, 20), min_size=1, max_size=8).filter(lambda w: sum(w) > 0),
       n=st.lists(st.integers(0, 5000), min_size=1, max_size=30))
def test_apportionment_is_house_monotone_exact_and_within_its_bound(w, n):
    wn = np.asarray(w, float) / sum(w)
    tree = SplitTree(wn)
    seats = np.unique(np.asarray(n, np.int64))
    got = tree.apportion(seats)
    assert (got.sum(0) == seats).all()
    assert (np.diff(got, axis=1) >= 0).all()
    assert (got[wn == 0] == 0).all()
    assert (np.abs(got - wn[:, None] * seats[None, :]) <= tree.share_bound + 1e-9).all()
    if np.count_nonzero(wn) <= 3:
        assert tree.share_bound < 1


def test_thousands_of_groups_stay_within_the_bound():
    G = 5000
    tree = SplitTree(np.full(G, 1 / G))
    assert tree.share_bound < 1.2
    seats = np.array([1, 511, 512 * 977, 10**9 + 7])
    got = tree.apportion(seats)
    assert (got.sum(0) == seats).all()
    assert (np.abs(got - seats[None, :] / G) <= tree.share_bound).all()


def _keys(t):
    return [tuple(r) for r in zip(*(t.column(c).to_pylist() for c in ("chunk", "group_id", "file_id", "row", "epoch")))]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=st.lists(st.integers(0, 9), min_size=1, max_size=6).filter(lambda w: sum(w) > 0),
       chunk=st.integers(1, 20), seed=st.integers(0, 2**32),
       policy=st.sampled_from(["stop", "redistribute", "repeat"]), unit=st.sampled_from(["samples", "tokens"]),
       data=st.data())
def test_chunk_k_directly_equals_chunk_k_of_the_sequential_stream(w, chunk, seed, policy, unit, data):
    sizes = [data.draw(st.integers(0, 60)) for _ in w]
    kind = data.draw(st.sampled_from([None, "samples", "tokens", "chunks"]))
    budget = {None: None, "samples": Budget(data.draw(st.integers(1, 150)), "samples"),
              "tokens": Budget(data.draw(st.integers(1, 4000)), "tokens"),
              "chunks": Budget(data.draw(st.integers(1, 40)), "chunks")}[kind]
    sched = ()
    if data.draw(st.booleans()):
        sched = (ScheduleStep(0, tuple(np.asarray(w, float) / sum(w))),
                 ScheduleStep(data.draw(st.integers(1, 6)), tuple(np.full(len(w), 1 / len(w)))))
    spec = make_spec(w, chunk_size=chunk * (20 if unit == "tokens" else 1), seed=seed, on_exhausted=policy,
                     max_epochs=2 if policy == "repeat" else None, unit=unit, budget=budget,
                     schedule=sched, weighting="schedule" if sched else "static")
    changes = data.draw(st.lists(st.tuples(st.integers(0, 25), st.lists(st.integers(0, 9), min_size=len(w),
                                                                       max_size=len(w)).filter(lambda x: sum(x) > 0)),
                                 max_size=3))
    t = pointer_table(sizes)

    def engine():
        e = MixEngine(t, spec, batch_size=2 * chunk)
        for at, nw in changes:
            e.set_weights(nw, at_chunk=at)
        return e

    seq = list(itertools.islice(engine(), 5000))   # every stream here ends well before (<= 720 samples)
    assert len(seq) < 5000, "the stream did not end"
    for k in data.draw(st.lists(st.integers(0, len(seq) + 3), min_size=1, max_size=6)):
        direct = engine().chunk(k)
        if k >= len(seq):
            assert direct is None
        else:
            assert _keys(direct) == _keys(seq[k])
    # a state saved anywhere restores to the same continuation, and seek() lands on chunk k
    k = data.draw(st.integers(0, len(seq)))
    e = engine()
    e.seek(k)
    e.next_chunk()
    r = MixEngine(t, spec, state=json.loads(json.dumps(e.state_dict())), batch_size=2 * chunk)
    assert [_keys(c) for c in r] == [_keys(c) for c in seq[k + 1:]]


def test_chunk_ten_million_is_reached_without_composing_the_ones_before():
    t = pointer_table([3000, 2000, 1000])
    spec = make_spec([.5, .3, .2], chunk_size=512, on_exhausted="repeat")
    e = MixEngine(t, spec)
    e.set_weights([.2, .3, .5], at_chunk=5_000_000)
    c = e.chunk(10_000_000)
    assert c.num_rows == 512
    samples, _ = e.totals(10_000_000)
    T = 10_000_000 * 512
    target = np.array([.5, .3, .2]) * 5_000_000 * 512 + np.array([.2, .3, .5]) * 5_000_000 * 512
    assert samples.sum() == T and (np.abs(samples - target) < 1).all()
    assert len(e._comp.segs) == 2


def test_weights_moved_onto_dry_groups_only_end_the_stream():
    """Under redistribute, a change that puts all weight on groups already dry leaves nothing to
    draw: the stream ends there (it used to emit empty chunks forever; found by the test above)."""
    sched = (ScheduleStep(0, (0.0, 0.0, 0.0, 0.0, 1.0)), ScheduleStep(1, (0.2,) * 5))
    spec = make_spec([0, 0, 0, 0, 1], chunk_size=1, seed=40076893, on_exhausted="redistribute",
                     schedule=sched, weighting="schedule")
    e = MixEngine(pointer_table([0, 0, 0, 0, 3]), spec, batch_size=2)
    e.set_weights([0, 0, 0, 1, 0], at_chunk=3)
    chunks = list(itertools.islice(e, 10))
    assert [c.num_rows for c in chunks] == [1, 1, 1] and e.stream_end() == 3
