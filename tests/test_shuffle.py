"""Locality-aware seeded permutation: a permutation per epoch, random access, locality."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings, strategies as st

from mixsql.shuffle import GroupSequence
from mixsql.spec import Shuffle


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), block=st.integers(1, 20), window=st.integers(1, 10), seed=st.integers(0, 2**40),
       epoch=st.integers(0, 3), cuts=st.lists(st.integers(0, 300), max_size=5))
def test_each_epoch_is_a_permutation_and_random_access_agrees(n, block, window, seed, epoch, cuts):
    members = np.arange(n, dtype=np.int64) * 3
    seq = GroupSequence(members, seed, 2, Shuffle(block, window))
    full = seq.indices(epoch, 0, n)
    assert sorted(full.tolist()) == members.tolist()
    fresh = GroupSequence(members, seed, 2, Shuffle(block, window))  # no cached state
    bounds = sorted({0, n, *[min(c, n) for c in cuts]})
    parts = [fresh.indices(epoch, a, b) for a, b in zip(bounds, bounds[1:])]
    assert (np.concatenate(parts) if parts else np.zeros(0)).tolist() == full.tolist()


def test_epochs_and_seeds_differ_and_no_global_rng():
    members = np.arange(1000, dtype=np.int64)
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    a = GroupSequence(members, 1, 0, Shuffle(4, 8))
    e0, e1 = a.indices(0, 0, 1000), a.indices(1, 0, 1000)
    assert not np.array_equal(e0, e1)
    assert not np.array_equal(e0, GroupSequence(members, 2, 0, Shuffle(4, 8)).indices(0, 0, 1000))
    assert not np.array_equal(e0, GroupSequence(members, 1, 1, Shuffle(4, 8)).indices(0, 0, 1000))
    assert np.array_equal(e0, GroupSequence(members, 1, 0, Shuffle(4, 8)).indices(0, 0, 1000))
    assert np.array_equal(before, np.random.get_state()[1])


def test_locality_bounded_blocks_per_window():
    n, B, W = 100_000, 16, 8
    seq = GroupSequence(np.arange(n, dtype=np.int64), 7, 0, Shuffle(B, W))
    chunk = seq.indices(0, 5000, 5000 + 100)
    assert len(np.unique(chunk // B)) <= 2 * W  # a window spans W blocks; 100 < B*W crosses at most one edge
    uniform = GroupSequence(np.arange(n, dtype=np.int64), 7, 0, Shuffle(1, 1)).indices(0, 5000, 5100)
    assert len(np.unique(uniform // B)) > 90


def test_ordered_keeps_base_order_every_epoch():
    members = np.array([5, 3, 9, 1], dtype=np.int64)
    seq = GroupSequence(members, 0, 0, None)
    assert seq.indices(0, 0, 4).tolist() == [5, 3, 9, 1] == seq.indices(3, 0, 4).tolist()


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(0, 30), min_size=1, max_size=200), block=st.integers(1, 9),
       window=st.integers(1, 5), target=st.integers(0, 7000))
def test_token_prefix_and_search(tokens, block, window, target):
    tok = np.asarray(tokens, dtype=np.int64)
    seq = GroupSequence(np.arange(len(tok), dtype=np.int64), 3, 0, Shuffle(block, window), tokens=tok)
    order = seq.positions(0, 0, len(tok))
    cum = np.concatenate([[0], np.cumsum(tok[order])])
    for p in (0, len(tok) // 2, len(tok)):
        assert seq.token_prefix(0, p) == cum[p]
    q = seq.find_tokens(0, target)
    if target > cum[-1]:
        assert q is None
    else:
        assert cum[q] >= target and (q == 0 or cum[q - 1] < target)


# --- ORDER BY ranking matches DuckDB's ORDER BY ------------------------------------------------
import datetime as _dt  # noqa: E402
import decimal as _dec  # noqa: E402

import duckdb  # noqa: E402

from mixsql.shuffle import ordered_permutation  # noqa: E402

_KEY_TYPES = {
    "i": (pa.int64(), st.one_of(st.none(), st.integers(-3, 3), st.integers(-2**62, 2**62))),
    "f": (pa.float64(), st.one_of(st.none(), st.sampled_from([0.0, -0.0, 1.5, -1.5, float("nan"),
                                                                float("inf"), float("-inf")]),
                                  st.floats(allow_nan=True))),
    "s": (pa.string(), st.one_of(st.none(), st.sampled_from(["", "a", "B", "b", "ab", "é", "Z"]), st.text(max_size=3))),
    "b": (pa.bool_(), st.one_of(st.none(), st.booleans())),
    "d": (pa.date32(), st.one_of(st.none(), st.dates(_dt.date(1900, 1, 1), _dt.date(2100, 1, 1)))),
    "t": (pa.timestamp("us"), st.one_of(st.none(), st.datetimes(_dt.datetime(1960, 1, 1), _dt.datetime(2090, 1, 1)))),
    "m": (pa.decimal128(10, 2), st.one_of(st.none(), st.decimals(-1000, 1000, places=2, allow_nan=False))),
}


@st.composite
def _order_tables(draw):
    n = draw(st.integers(1, 40))
    kinds = draw(st.lists(st.sampled_from(sorted(_KEY_TYPES)), min_size=1, max_size=3))
    cols = {"g": pa.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), pa.int32())}
    fid_row = draw(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 50)), min_size=n, max_size=n, unique=True))
    cols["fid"] = pa.array([f for f, _ in fid_row], pa.int32())
    cols["rw"] = pa.array([r for _, r in fid_row], pa.int64())
    keys = []
    for i, k in enumerate(kinds):
        typ, strat = _KEY_TYPES[k]
        cols[f"k{i}"] = pa.array(draw(st.lists(strat, min_size=n, max_size=n)), typ)
        keys.append((f"k{i}", draw(st.booleans()), draw(st.sampled_from([None, True, False]))))
    return pa.table(cols), keys


@settings(max_examples=80, deadline=None)
@given(case=_order_tables())
def test_ordered_permutation_matches_duckdb_order_by(case):
    """Same order as DuckDB's ORDER BY g, keys (ASC/DESC, default/explicit NULLS), fid, row:
    NaN above +inf, -0.0 == 0.0, bytewise strings, NULLS LAST by default for ASC and DESC."""
    table, keys = case
    con = duckdb.connect()
    con.register("t", table)
    terms = ", ".join(f"{n}{' DESC' if d else ''}{'' if nf is None else (' NULLS FIRST' if nf else ' NULLS LAST')}"
                      for n, d, nf in keys)
    ref = [r[0] for r in con.execute(
        f"SELECT i FROM (SELECT *, row_number() OVER () - 1 AS i FROM t) ORDER BY g, {terms}, fid, rw").fetchall()]
    got = ordered_permutation(table.column("g").to_numpy(), table.column("fid").to_numpy(),
                              table.column("rw").to_numpy(),
                              [(table.column(n), d, bool(nf)) for n, d, nf in keys])
    assert got.tolist() == ref


# --- shard windows: a bounded working set ------------------------------------------------------
def _files(sizes) -> np.ndarray:
    """Per-sample file ids in base order: file i holds sizes[i] consecutive samples."""
    return np.repeat(np.arange(len(sizes), dtype=np.int64) * 5 + 11, sizes)


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=25), block=st.integers(1, 9),
       window=st.integers(1, 6), shards=st.integers(0, 6), seed=st.integers(0, 2**40), epoch=st.integers(0, 3),
       cuts=st.lists(st.integers(0, 1000), max_size=6), with_tokens=st.booleans())
def test_shard_windows_permutation_random_access_and_tokens(sizes, block, window, shards, seed, epoch, cuts,
                                                            with_tokens):
    files = _files(sizes)
    n = len(files)
    members = np.arange(n, dtype=np.int64) * 2 + 1
    tok = (np.arange(n, dtype=np.int64) * 7) % 13 if with_tokens else None
    shuffle = Shuffle(block, window, shards)
    seq = GroupSequence(members, seed, 4, shuffle, tokens=tok, files=files)
    full = seq.indices(epoch, 0, n)
    assert sorted(full.tolist()) == members.tolist()   # every sample exactly once per epoch
    fresh = GroupSequence(members, seed, 4, shuffle, tokens=tok, files=files)
    bounds = sorted({0, n, *[min(c, n) for c in cuts]})
    parts = [fresh.indices(epoch, a, b) for a, b in reversed(list(zip(bounds, bounds[1:])))][::-1]
    assert np.concatenate(parts).tolist() == full.tolist()   # random access == sequential
    pos = seq.positions(epoch, 0, n)
    if shards:   # a file is open from its first sample to its last: never more than `shards` at once
        f = files[pos]
        uniq, first = np.unique(f, return_index=True)
        last = n - 1 - np.unique(f[::-1], return_index=True)[1]
        opened = np.zeros(n + 1, np.int64)
        np.add.at(opened, first, 1)
        np.add.at(opened, last + 1, -1)
        assert np.cumsum(opened).max() <= shards
    if with_tokens:
        cum = np.concatenate([[0], np.cumsum(tok[pos])])
        for p in sorted({0, n // 3, n // 2, n}):
            assert seq.token_prefix(epoch, p) == cum[p]
        for target in (1, int(cum[-1]) // 2, int(cum[-1]), int(cum[-1]) + 1):
            q = seq.find_tokens(epoch, target)
            if target > cum[-1]:
                assert q is None
            else:
                assert cum[q] >= target and (q == 0 or cum[q - 1] < target)


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=40), block=st.integers(1, 9),
       window=st.integers(1, 6), shards=st.integers(0, 6), seed=st.integers(0, 2**62), epoch=st.integers(0, 5),
       group=st.integers(0, 10**6))
def test_small_groups_whole_epoch_order_equals_the_window_by_window_order(sizes, block, window, shards, seed,
                                                                         epoch, group):
    """A small group's epoch is computed in one vectorised pass; it must be exactly the order the
    random-access path (one shard window and sub-window at a time) gives."""
    files = _files(sizes)
    seq = GroupSequence(range(len(files)), seed, group, Shuffle(block, window, shards), files=files)
    assert seq._small
    whole = seq._epoch_order(epoch)
    assert whole.tolist() == seq._windowed_positions(epoch, 0, len(files)).tolist()
    assert sorted(whole.tolist()) == list(range(len(files)))


def test_permutations_use_no_global_rng_and_differ_by_every_key_word():
    files = _files([30] * 20)
    state = np.random.get_state()[1].copy()
    base = GroupSequence(range(600), 7, 3, Shuffle(4, 4, 2), files=files).positions(0, 0, 600)
    assert (np.random.get_state()[1] == state).all()
    for seed, group, epoch in ((8, 3, 0), (7, 4, 0), (7, 3, 1)):
        other = GroupSequence(range(600), seed, group, Shuffle(4, 4, 2), files=files).positions(epoch, 0, 600)
        assert other.tolist() != base.tolist()


def _files_per_chunk(n_files, per_file, shards, chunk=512, seed=3):
    files = _files([per_file] * n_files)
    seq = GroupSequence(np.arange(len(files), dtype=np.int64), seed, 0, Shuffle(16, 64, shards), files=files)
    order = files[seq.positions(0, 0, len(files))]
    return [len(np.unique(order[a:a + chunk])) for a in range(0, len(files), chunk)]


def test_files_touched_per_chunk_is_bounded_whatever_the_collection_size():
    for n_files in (16, 200, 2000):
        touched = _files_per_chunk(n_files, 300, shards=4)
        assert max(touched) <= 8          # one shard window, or two where a chunk crosses into the next
    uniform = _files_per_chunk(200, 300, shards=0)
    assert np.median(uniform) > 40        # unbounded: blocks from anywhere in the group


def test_shard_windows_rotate_through_every_file_in_a_seeded_order():
    files = _files([100] * 12)
    seq = GroupSequence(np.arange(1200, dtype=np.int64), 9, 0, Shuffle(4, 8, 3), files=files)
    order = files[seq.positions(0, 0, 1200)]
    windows = [set(order[a:a + 300].tolist()) for a in range(0, 1200, 300)]   # equal shards: 300 per window
    assert all(len(w) == 3 for w in windows) and set().union(*windows) == set(files.tolist())
    other = files[seq.positions(1, 0, 1200)]
    assert [set(other[a:a + 300].tolist()) for a in range(0, 1200, 300)] != windows   # a new order per epoch


def test_groups_sharing_files_read_the_same_shard_window():
    """The shard order is a function of (seed, epoch, file id): groups spread over the same files
    are in the same shard window at the same relative progress."""
    a_files = _files([50] * 20)
    b_files = _files([20] * 20)
    a = GroupSequence(np.arange(1000, dtype=np.int64), 5, 0, Shuffle(8, 8, 4), files=a_files)
    b = GroupSequence(np.arange(400, dtype=np.int64), 5, 1, Shuffle(8, 8, 4), files=b_files)
    for w in range(5):
        assert set(a_files[a.positions(0, w * 200, (w + 1) * 200)]) == set(b_files[b.positions(0, w * 80, (w + 1) * 80)])


def _engine_files_per_chunk(n_files: int, shards: int) -> list[int]:
    """Distinct files of every chunk of a 3-group mixture whose files each hold every group."""
    from mixsql.engine import MixEngine
    from mixsql.spec import Group, MixSpec

    per_file = 60
    fid = np.repeat(np.arange(n_files, dtype=np.int64), per_file)
    row = np.tile(np.arange(per_file, dtype=np.int64), n_files)
    g = row % 3
    n = len(fid)
    t = pa.table({"__mix_group": pa.array(g, pa.int32()), "__mix_source": pa.array(["s"] * n),
                  "__mix_file_id": pa.array(fid, pa.int32()), "__mix_file": pa.array([f"/d/{f}.jsonl" for f in fid]),
                  "__mix_row": pa.array(row), "__mix_offset": pa.array(row * 10), "__mix_length": pa.array(np.full(n, 9), pa.int32()),
                  "__mix_n_bytes": pa.array(np.full(n, 9)), "__mix_n_tokens": pa.array(np.full(n, 3))})
    spec = MixSpec(groups=tuple(Group(i, f"g{i}", 1 / 3, (f"g{i}",)) for i in range(3)), chunk_size=128, seed=5,
                   shuffle=Shuffle(4, 8, shards))
    eng = MixEngine(t, spec)
    out, rows = [], 0
    while (c := eng.next_chunk()) is not None:
        out.append(len(np.unique(c.column("file_id").to_numpy())))
        rows += c.num_rows
    assert rows == n   # every sample delivered
    return out


def test_engine_chunks_read_a_bounded_number_of_files():
    for n_files in (40, 400):
        touched = _engine_files_per_chunk(n_files, shards=4)
        assert max(touched) <= 3 * 2 * 4        # per group: one shard window, two at a crossing
        assert np.median(touched) <= 2 * 4      # groups over the same files read the same window
    assert np.median(_engine_files_per_chunk(400, shards=0)) > 40


def test_the_radix_argsort_is_the_stable_argsort():
    from mixsql.shuffle import _argsort_u64

    rng = np.random.default_rng(4)
    for n in (0, 1, 4095, 4096, 30_000):
        keys = rng.integers(0, 2**64, n, dtype=np.uint64)
        assert np.array_equal(_argsort_u64(keys), np.argsort(keys, kind="stable"))
        keys[: n // 3] = keys[n // 3: 2 * (n // 3)]   # ties keep their index order
        assert np.array_equal(_argsort_u64(keys), np.argsort(keys, kind="stable"))
        keys = (keys & np.uint64(0xFFFF)) | (rng.integers(0, 2**30, n, dtype=np.uint64) << np.uint64(34))
        assert np.array_equal(_argsort_u64(keys), np.argsort(keys, kind="stable"))   # top bits tie, low differ
