"""Packed selections (mixsql.packed): the node's stored form of a statement without ORDER BY,
about a byte per selected sample, streams exactly what in-process planning streams."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import write_jsonl_catalog
from mixsql import packed
from mixsql.errors import ProgrammingError
from mixsql.packed import BLOCK, PackedSelection
from mixsql.stream import MixStream

TOKEN_STATEMENTS = [
    # composed in tokens, NATURAL weights from token counts (books has none: excluded)
    "SELECT * FROM samples WHERE source <> 'books' MIX BY lang WITH NATURAL SETTINGS (chunk_size = 400, "
    "unit = 'tokens', on_exhausted = 'redistribute', seed = 3)",
    # samples with a token budget
    "SELECT * FROM samples WHERE source <> 'books' MIX BY source WITH (web 0.7, code 0.3) LIMIT 20000 TOKENS "
    "SETTINGS (chunk_size = 40, on_exhausted = 'repeat', seed = 6)",
]
STATEMENTS = [
    # nested groups, repeat with an epoch limit
    "SELECT * FROM samples WHERE quality > 2 MIX BY source WITH (web 0.5, code 0.3 MIX BY lang WITH "
    "(py 0.6, OTHER 0.4), books 0.2) SETTINGS (chunk_size = 37, on_exhausted = 'repeat', max_epochs = 2, seed = 9)",
    # discovered groups, redistribute, small shuffle blocks
    "SELECT * FROM samples WHERE quality <> 3 MIX BY lang SETTINGS (chunk_size = 64, "
    "on_exhausted = 'redistribute', seed = 2, shuffle_block = 8)",
    # a schedule and a sample budget, stop
    "SELECT * FROM samples MIX BY source WITH SCHEDULE (AT STEP 0 (web 0.6, code 0.3, books 0.1), "
    "AT STEP 20 (web 0.2, code 0.4, books 0.4)) LIMIT 1500 SAMPLES "
    "SETTINGS (chunk_size = 50, batch_size = 25, on_exhausted = 'stop', seed = 5)",
]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    cat = tmp_path_factory.mktemp("packed") / "cat"
    langs = ["en", "de", "py", "go"]
    for src, n, per_file, tokens in (("web", 3000, 700, True), ("code", 2000, 450, True), ("books", 600, 90, False)):
        recs = [{"text": f"{src} {'y' * (i % 13)} {i}", "lang": langs[(i * 7) % 4], "quality": (i * 31) % 5}
                for i in range(n)]
        write_jsonl_catalog(cat, recs, source=src, properties={"lang": "VARCHAR", "quality": "INTEGER"},
                            rows_per_file=per_file, n_tokens=tokens)
    return str(cat)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXSQL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("sql", STATEMENTS)
def test_a_packed_selection_streams_what_planning_streams(catalog, cache, sql):
    s = MixStream.open_cached(catalog, sql)
    assert s.built and isinstance(s.pointers, PackedSelection)
    ref = MixStream.open(catalog, sql, user_columns=False)
    got, exp = list(s.chunks()), list(ref.chunks())
    assert len(got) == len(exp) > 5
    for a, b in zip(got, exp):
        assert a.equals(b), a.column_names
    assert MixStream.open_cached(catalog, sql).built is False   # the second open maps it
    assert s.files.column("file_id").to_pylist() == ref.files.column("file_id").to_pylist()   # only used files
    # chunk k computed directly on a fresh engine equals the stream's chunk k
    rng = np.random.default_rng(1)
    for k in rng.integers(0, len(exp), 6).tolist():
        assert s.engine().chunk(k).equals(exp[k])


@pytest.mark.parametrize("sql", TOKEN_STATEMENTS)
def test_token_composed_statements_are_packed_with_their_token_counts(catalog, cache, sql):
    s = MixStream.open_cached(catalog, sql)
    assert s.built and isinstance(s.pointers, PackedSelection) and s.pointers.tokens is not None
    ref = MixStream.open(catalog, sql, user_columns=False)
    assert s.spec == ref.spec   # NATURAL weights resolved from the same token counts
    got, exp = list(s.chunks()), list(ref.chunks())
    assert len(got) == len(exp) > 5 and all(a.equals(b) for a, b in zip(got, exp))
    for k in np.random.default_rng(2).integers(0, len(exp), 4).tolist():
        assert s.engine().chunk(k).equals(exp[k])


def test_token_errors_are_the_table_paths(catalog, cache):
    for sql in ("SELECT * FROM samples MIX BY source WITH (web 0.5, books 0.5) SETTINGS (unit = 'tokens')",
                "SELECT * FROM samples MIX BY source WITH (web 0.5, books 0.5) LIMIT 500 TOKENS"):
        with pytest.raises(Exception) as packed_err:
            MixStream.open_cached(catalog, sql).engine()
        with pytest.raises(Exception) as table_err:
            MixStream.open(catalog, sql, user_columns=False).engine()
        assert str(packed_err.value) == str(table_err.value) and "token" in str(packed_err.value)


def test_null_token_counts_and_locations_survive_packing(catalog, cache):
    sql = STATEMENTS[0]
    s = MixStream.open_cached(catalog, sql)
    rows = [r for c in s.chunks() for r in c.select(["source", "file", "row", "n_tokens", "loc_offset"]).to_pylist()]
    assert {r["source"] for r in rows if r["n_tokens"] is None} == {"books"}
    assert all(r["n_tokens"] is not None for r in rows if r["source"] != "books")


def test_locate_occurrences_and_pointer_match_the_table_engine(catalog, cache):
    sql = STATEMENTS[1]
    pk = MixStream.open_cached(catalog, sql).engine()
    tb = MixStream.open(catalog, sql, user_columns=False).engine()
    chunk = tb.chunk(3).to_pylist()
    for r in chunk[:5] + chunk[-3:]:
        i = pk.locate(r["file"], r["row"], r["file_id"])
        assert i is not None and pk.pointer(i)["row"] == r["row"] and pk.pointer(i)["file"] == r["file"]
        assert list(pk.occurrences(r["file"], r["row"], r["file_id"])) == \
            list(tb.occurrences(r["file"], r["row"], r["file_id"]))
    assert pk.locate(chunk[0]["file"], 10**6) is None
    quality3 = [r for c in MixStream.open(catalog, "SELECT * FROM samples WHERE quality = 3 MIX BY lang "
                                          "SETTINGS (chunk_size = 64)", user_columns=False).chunks()
                for r in c.to_pylist()][0]   # excluded by the statement's WHERE
    assert pk.locate(quality3["file"], quality3["row"], quality3["file_id"]) is None


def test_the_packed_form_costs_about_a_byte_per_sample(catalog, cache):
    s = MixStream.open_cached(catalog, STATEMENTS[1])
    sel = s.pointers
    assert sel.num_rows > 4000
    per_sample = (sel.deltas.nbytes + sel.base.nbytes + sel.off.nbytes + sel.width.nbytes) / sel.num_rows
    assert per_sample < 1.5, per_sample


def test_data_errors_are_the_planners(catalog, cache):
    sql = ("SELECT * FROM samples WHERE source <> 'books' MIX BY source WITH (web 0.5, books 0.5) "
           "SETTINGS (chunk_size = 8)")
    with pytest.raises(Exception) as packed_err:
        MixStream.open_cached(catalog, sql)
    with pytest.raises(Exception) as table_err:
        MixStream.open(catalog, sql, user_columns=False)
    assert str(packed_err.value) == str(table_err.value) and "books" in str(packed_err.value)
    assert not any(p.is_dir() for p in (cache / "selections").iterdir())   # nothing published, no temporaries


def test_a_query_returning_a_sample_twice_is_refused(catalog, cache):
    sql = ("SELECT samples.* FROM samples JOIN (SELECT 1 AS x UNION ALL SELECT 2) t ON true "
           "MIX BY source WITH (web 0.5, code 0.5) SETTINGS (chunk_size = 10)")
    with pytest.raises(ProgrammingError, match="more than once"):
        MixStream.open_cached(catalog, sql)
    assert not [p for p in (cache / "selections").iterdir() if p.is_dir()]


def _codec(tmp_path, groups: list[np.ndarray]) -> PackedSelection:
    """A PackedSelection over given sorted row numbers per group (one file: runs are groups)."""
    sizes = np.array([len(g) for g in groups], np.int64)
    srt = np.concatenate(groups).astype(np.int64) if groups else np.zeros(0, np.int64)
    rows = SimpleNamespace(file_ids=np.array([7], np.int64), file_pos=lambda g: np.zeros(len(g), np.int32))
    packed._write_blocks(srt, sizes, rows, tmp_path, SimpleNamespace(show=lambda _: None))
    sel = PackedSelection.__new__(PackedSelection)
    sel.group_sizes, sel.num_rows = sizes, int(sizes.sum())
    sel.bounds = np.concatenate([[0], np.cumsum(sizes)])
    sel.block_start = np.concatenate([[0], np.cumsum(-(-sizes // BLOCK))])
    sel.base, sel.off, sel.width = (np.load(tmp_path / f"{n}.npy") for n in ("base", "off", "width"))
    sel.runs_pos, sel.runs_file = np.load(tmp_path / "runs_pos.npy"), np.load(tmp_path / "runs_file.npy")
    sel.runs_start = np.searchsorted(sel.runs_pos, sel.bounds)
    sel.deltas = np.fromfile(tmp_path / "deltas.bin", np.uint8)
    return sel


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**40), min_size=1, max_size=700, unique=True), min_size=1, max_size=5),
       st.integers(0, 2**20))
def test_block_codec_round_trips_every_gap_width(tmp_path_factory, groups, contiguous):
    """Gaps of 0, 1, 2, 4 and 8 bytes decode exactly, for any positions asked."""
    tmp = tmp_path_factory.mktemp("codec")
    arrays = [np.sort(np.array(g, np.int64)) for g in groups]
    arrays.append(np.arange(contiguous, contiguous + 300, dtype=np.int64))   # a contiguous run: 0-byte gaps
    sel = _codec(tmp, arrays)
    want = np.concatenate(arrays)
    assert (sel.gidx(np.arange(len(want))) == want).all()
    pick = np.random.default_rng(len(want)).integers(0, len(want), 50)
    assert (sel.gidx(pick) == want[pick]).all()
    assert sel.runs_pos.tolist() == sel.bounds[:-1].tolist()   # one file: one run per group
    assert sel.position_of(int(want[-1])) == len(want) - 1


def test_a_stale_row_index_is_named(catalog, cache, tmp_path):
    s = MixStream.open_cached(catalog, STATEMENTS[1])
    meta = json.loads((s.pointers.directory / "meta.json").read_text())
    import shutil
    shutil.rmtree(cache / "rowindex" / meta["rowindex"])
    with pytest.raises(ProgrammingError, match="row index"):
        MixStream.open_cached(catalog, STATEMENTS[1])
