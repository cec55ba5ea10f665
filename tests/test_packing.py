"""Packer: fixed seq_len+1 sequences, per-group buffers, carry never dropped, drop-on-resume."""
from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings, strategies as st

from mixsql.packing import Packer


def _docs(seed, n=40):
    rng = np.random.Generator(np.random.PCG64(seed))
    return [(rng.integers(0, 200, rng.integers(0, 30)).astype(np.int32), int(rng.integers(0, 3))) for _ in range(n)]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 20), st.booleans())
def test_tokens_conserved_and_groups_pure(seed, seq_len, by_group):
    docs = _docs(seed)
    p = Packer(seq_len, eos_id=999, bos_id=998 if seed % 2 else None, by_group=by_group)
    out = [s for d, g in docs for s in p.add(d, g)] + p.flush()
    assert all(len(s.ids) == seq_len + 1 for s in out)
    assert all(s.length == seq_len + 1 for s in out[:-3])
    per_group: dict = {}
    for s in out:
        for t, g in zip(s.ids[:s.length].tolist(), s.groups[:s.length].tolist()):
            per_group.setdefault(g, []).append(t)
        if by_group:
            assert len(set(s.groups[:s.length].tolist())) == 1
    for g in range(3):
        want = []
        for d, gg in docs:
            if gg == g:
                want += ([998] if seed % 2 else []) + d.tolist() + [999]
        assert per_group.get(g, []) == want


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12), st.booleans(), st.integers(0, 39))
def test_carry_and_drop_resume_exactly(seed, seq_len, by_group, cut):
    """Carry + drop reproduce the rest of the stream: split the docs at `cut`, checkpoint the
    carry, continue with a fresh packer from the JSON carry."""
    docs = _docs(seed)
    p = Packer(seq_len, eos_id=999, by_group=by_group)
    full = [s for d, g in docs for s in p.add(d, g)]
    p1 = Packer(seq_len, eos_id=999, by_group=by_group)
    first = [s for d, g in docs[:cut] for s in p1.add(d, g)]
    carry = json.loads(json.dumps(p1.carry()))
    p2 = Packer(seq_len, eos_id=999, by_group=by_group)
    rest = p2.load_carry(carry) + [s for d, g in docs[cut:] for s in p2.add(d, g)]
    assert [s.ids.tolist() for s in first + rest] == [s.ids.tolist() for s in full]
    # drop: skip the tokens of the first k emitted sequences of the stream
    k = min(len(full), 3)
    drop: dict = {}
    for s in full[:k]:
        drop[s.key] = drop.get(s.key, 0) + s.length
    p3 = Packer(seq_len, eos_id=999, by_group=by_group, drop=drop)
    again = [s for d, g in docs for s in p3.add(d, g)]
    assert [s.ids.tolist() for s in again] == [s.ids.tolist() for s in full[k:]]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 20), st.booleans(), st.booleans(), st.integers(0, 60))
def test_add_chunk_equals_per_document_add(seed, seq_len, by_group, bos, drop_n):
    """The vectorised chunk path emits exactly what per-document add() emits, in the same order,
    with the same carry (also with a carry loaded first and drop on resume)."""
    docs = _docs(seed)
    keys = ["0", "1", "2"] if by_group else ["*"]
    drop = {keys[seed % len(keys)]: drop_n}
    carry = {k: {"ids": list(range(seed % (seq_len + 3))), "groups": [int(k) if by_group else 1] * (seed % (seq_len + 3))}
             for k in keys[: 1 + seed % len(keys)]}
    kw = dict(eos_id=999, bos_id=998 if bos else None, by_group=by_group, drop=drop)
    a = Packer(seq_len, **kw)
    ra = a.load_carry(carry) + [s for d, g in docs for s in a.add(d, g)]
    b = Packer(seq_len, **kw)
    rb = b.load_carry_batch(carry).rows() + b.add_chunk(np.concatenate([d for d, _ in docs]),
                                                        [len(d) for d, _ in docs], [g for _, g in docs]).rows()
    assert [(s.key, s.ids.tolist(), s.groups.tolist(), s.length) for s in ra] == \
           [(s.key, s.ids.tolist(), s.groups.tolist(), s.length) for s in rb]
    assert json.dumps(a.carry()) == json.dumps(b.carry())
