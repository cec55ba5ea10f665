"""Mixtures over thousands of groups: membership as DuckDB evaluates it, exact shares, each
sample exactly once (a real JSONL catalog of 30,000 samples; a few samples per group)."""
from __future__ import annotations

import numpy as np
import pytest

from mixsql.catalog import Catalog
from mixsql.errors import SQLError
from mixsql.planner import execute_plan, explain, plan
from mixsql.stream import MixStream
from mixsql.spec import EOS_TOKENS

from conftest import write_jsonl_catalog

N = 30_000
SITES = 6_000       # 5 samples each; a statement lists 5,000 of them (+ OTHER)
DOMAINS = 20_000    # 1 or 2 samples each: 20,000 discovered groups


def record(i: int) -> dict:
    return {
        "text": f"sample {i} " + "x" * (i % 13),
        "site": None if i % 997 == 0 else f"s{i % SITES:04d}",
        "domain": f"d{(i * 7919) % DOMAINS:05d}",
        "lang": [None, "EN", "en", "De", "fr"][i % 5],
        "quality": None if i % 11 == 0 else (i * 37 % 100) / 100,
    }


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    path = write_jsonl_catalog(
        tmp_path_factory.mktemp("groups") / "cat", [record(i) for i in range(N)],
        properties={"site": "VARCHAR", "domain": "VARCHAR", "lang": "VARCHAR", "quality": "DOUBLE"},
        rows_per_file=2_500)
    c = Catalog(path)
    yield c
    c.close()


def keys_of(cat, exprs: list[str], where: str = "TRUE") -> dict:
    """(file_id, row) -> tuple of DuckDB's values of ``exprs`` for every selected sample."""
    cols = ", ".join(f"{e} AS k{i}" for i, e in enumerate(exprs))
    rows = cat.con.sql(f'SELECT file_id, "row", {cols} FROM samples WHERE {where}').fetchall()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def fmt(v) -> str:
    return "NULL" if v is None else ("true" if v is True else "false" if v is False else str(v))


def compile_tree(tree: list):
    """A statement's groups as ``[(values | 'OTHER' | 'NATURAL', child tree or None)]``, one level
    per key -> (value -> (name, child), OTHER's (name, child) or None, natural?)."""
    lookup, other, natural = {}, None, False
    for values, child in tree:
        sub = compile_tree(child) if child else None
        if values == "NATURAL":
            natural = True
        elif values == "OTHER":
            other = ("OTHER", sub)
        else:
            lookup.update({x: (",".join(fmt(y) for y in values), sub) for x in values})
    return lookup, other, natural


def expected_path(tree, keys: tuple, depth: int = 0) -> str | None:
    """Leaf path of a row with MIX BY values ``keys`` (one per level) under a compiled tree, or None
    when the row is in no group: the statement's semantics, in Python."""
    lookup, other, natural = tree
    v = keys[depth]
    if natural:
        return fmt(v)
    hit = lookup.get(v, other)
    if hit is None:
        return None
    name, sub = hit
    rest = expected_path(sub, keys, depth + 1) if sub is not None else ""
    return None if rest is None else name + (f"/{rest}" if sub is not None else "")


def planned_paths(cat, sql: str):
    """(file_id, row) -> group path of every sample the planned pointer table holds, and the spec."""
    pointers, spec = execute_plan(cat, plan(cat, sql), user_columns=False)
    got = {}
    for f, r, g in zip(*(pointers.column(c).to_pylist() for c in ("__mix_file_id", "__mix_row", "__mix_group"))):
        assert (f, r) not in got, "a sample is in two groups"
        got[(f, r)] = spec.groups[g].path
    return got, spec


def assert_groups_match_duckdb(cat, sql: str, exprs: list[str], tree: list, where: str = "TRUE"):
    got, spec = planned_paths(cat, sql)
    keys = keys_of(cat, exprs, where)
    compiled = compile_tree(tree)
    want = {k: p for k, p in ((k, expected_path(compiled, v)) for k, v in keys.items()) if p is not None}
    assert got == want
    return spec


# ------------------------------------------------------------------ membership = DuckDB's evaluation
def test_expression_groups_with_nulls_match_duckdb(cat):
    # lower(lang): NULL listed as a value; x > 0.8 with NULL qualities (in OTHER unless listed)
    assert_groups_match_duckdb(
        cat, "SELECT * FROM samples MIX BY lower(lang) WITH (en 2, NULL 1, OTHER 1)",
        ["lower(lang)"], [(("en",), None), ((None,), None), ("OTHER", None)])
    assert_groups_match_duckdb(
        cat, "SELECT * FROM samples MIX BY quality > 0.8 WITH (true 1, OTHER 1)",
        ["quality > 0.8"], [((True,), None), ("OTHER", None)])
    assert_groups_match_duckdb(
        cat, "SELECT * FROM samples MIX BY quality > 0.8 WITH (false 1, NULL 1)",
        ["quality > 0.8"], [((False,), None), ((None,), None)])
    spec = assert_groups_match_duckdb(
        cat, "SELECT * FROM samples MIX BY quality > 0.8 WITH NATURAL", ["quality > 0.8"], [("NATURAL", None)])
    assert [g.path for g in spec.groups] == ["false", "true", "NULL"]   # ascending, NULLS LAST


def test_nested_multi_value_and_other_match_duckdb(cat):
    sql = ("SELECT * FROM samples WHERE quality IS DISTINCT FROM 0.5 MIX BY lower(lang) WITH (\n"
           "  (en, de) 3 MIX BY quality > 0.8 WITH NATURAL,\n"
           "  OTHER 1 MIX BY site WITH ((s0004, s0005, NULL) 1, s0009 1, OTHER 2 MIX BY lang WITH (fr 1, NULL 1)))")
    got, _ = planned_paths(cat, sql)
    keys = keys_of(cat, ["lower(lang)", "quality > 0.8", "site", "lang"], "quality IS DISTINCT FROM 0.5")

    def path(k):
        lang, hi, site, raw = k
        if lang in ("en", "de"):
            return f"en,de/{fmt(hi)}"
        if site in ("s0004", "s0005", None):
            return "OTHER/s0004,s0005,NULL"
        if site == "s0009":
            return "OTHER/s0009"
        return {"fr": "OTHER/OTHER/fr", None: "OTHER/OTHER/NULL"}.get(raw)

    want = {k: p for k, p in ((k, path(v)) for k, v in keys.items()) if p is not None}
    assert got == want
    assert "OTHER/OTHER/fr" in set(got.values()) and "en,de/NULL" in set(got.values())


# ------------------------------------------------------------------ thousands of groups
def test_5000_explicit_groups_exact_shares_exactly_once(cat):
    sizes = cat.con.sql("SELECT site, count(*) FROM samples WHERE site < 's5000' GROUP BY 1").fetchall()
    sizes = dict(sizes)
    listed = [f"s{i:04d}" for i in range(5_000)]
    other = N - sum(sizes.values())
    # weights = sizes: groups run dry only near the end
    body = ", ".join(f"{s} {sizes[s]}" for s in listed)
    sql = (f"SELECT * FROM samples MIX BY site WITH ({body}, OTHER {other})\n"
           "SETTINGS (chunk_size = 4096, on_exhausted = 'redistribute')")
    spec = assert_groups_match_duckdb(cat, sql, ["site"], [*(((s,), None) for s in listed), ("OTHER", None)])
    assert len(spec.groups) == 5_001
    check_stream(cat, sql, spec, expect_rows=N)


def test_20000_discovered_groups_exact_shares_exactly_once(cat):
    sql = ("SELECT * FROM samples MIX BY domain WITH NATURAL\n"
           "SETTINGS (chunk_size = 4096, seed = 3, on_exhausted = 'redistribute')")
    spec = assert_groups_match_duckdb(cat, sql, ["domain"], [("NATURAL", None)])
    assert len(spec.groups) == DOMAINS
    assert [g.path for g in spec.groups] == sorted(g.path for g in spec.groups)
    check_stream(cat, sql, spec, expect_rows=N)


def check_stream(cat, sql: str, spec, expect_rows: int):
    """Until a group runs dry, each group's cumulative count is within one sample of weight x
    delivered after every chunk; every selected sample is delivered exactly once (redistribute),
    in the group DuckDB puts it in."""
    stream = MixStream.open(cat, sql, user_columns=False)
    assert stream.spec.groups == spec.groups
    w = np.array([g.weight for g in spec.groups])
    sizes = np.bincount(stream.pointers.column("__mix_group").to_numpy(), minlength=len(w))
    cum = np.zeros(len(w), np.int64)
    checked = 0
    seen = []
    path_of = {}
    for chunk in stream.chunks():
        gids = chunk.column("group_id").to_numpy()
        assert chunk.column("group").to_pylist() == [spec.groups[g].path for g in gids]
        before = cum.copy()
        cum += np.bincount(gids, minlength=len(w))
        if (before < sizes).all():   # no group had run dry before this chunk
            assert np.abs(cum - w * cum.sum()).max() < 1.0
            checked += 1
        fid, row = chunk.column("file_id").to_pylist(), chunk.column("row").to_pylist()
        seen.extend(zip(fid, row))
        for k, g in zip(zip(fid, row), gids.tolist()):
            path_of[k] = stream.spec.groups[g].path
    assert len(seen) == len(set(seen)) == expect_rows
    assert checked >= 3
    assert path_of == planned_paths(cat, sql)[0]


def test_discovered_limit_is_a_setting(cat):
    sql = "SELECT * FROM samples\nMIX BY domain WITH NATURAL SETTINGS (max_discovered_groups = 19999)"
    with pytest.raises(SQLError) as info:
        plan(cat, sql)
    assert "max_discovered_groups" in str(info.value) and "19,999" in str(info.value)
    assert (info.value.line, info.value.col) == (2, 8)
    p = plan(cat, sql.replace("19999", "20000"))
    assert len(p.spec.groups) == DOMAINS


def test_schedule_with_thousands_of_weights_and_tokens_unit(cat):
    listed = [f"s{i:04d}" for i in range(2_000)]
    step0 = ", ".join(f"{s} 1" for s in listed)
    step1 = ", ".join(f"{s} {1 + i % 3}" for i, s in enumerate(reversed(listed)))
    sql = (f"SELECT * FROM samples MIX BY site WITH SCHEDULE (AT STEP 0 ({step0}), AT STEP 1 ({step1}))\n"
           "LIMIT 1.5e5 TOKENS SETTINGS (unit = 'tokens', batch_size = 65536, on_exhausted = 'repeat')")
    spec = plan(cat, sql).spec
    assert len(spec.schedule) == 2 and len(spec.schedule[1].weights) == 2_000
    raw = {s: 1 + i % 3 for i, s in enumerate(reversed(listed))}
    total = sum(raw.values())
    assert spec.schedule[1].weights == pytest.approx([raw[g.path] / total for g in spec.groups])
    stream = MixStream.open(cat, sql, user_columns=False)
    gid = stream.pointers.column("__mix_group").to_numpy()
    longest = np.zeros(len(spec.groups))
    np.maximum.at(longest, gid, stream.pointers.column("__mix_n_tokens").to_numpy() + EOS_TOKENS)
    eng = stream.engine()
    chunks, tokens = 0, []
    while (chunk := eng.next_chunk()) is not None:   # each group within one sample's tokens of its target
        over = eng.delivered() - eng.targets()
        assert (over > -1e-6).all() and (over < longest).all()
        tokens.append(chunk.column("n_tokens").to_numpy() + EOS_TOKENS)   # as packed: + the EOS
        chunks += 1
    assert chunks >= 2   # the second step's weights were in force
    tokens = np.concatenate(tokens)   # the budget: reached by the last sample, not overshot by more
    assert tokens.sum() >= 150_000 > tokens[:-1].sum()


def test_explain_over_thousands_of_groups(cat):
    listed = [f"s{i:04d}" for i in range(3_000)]
    body = ", ".join(f"{s} 1" for s in listed)
    sql = f"SELECT * FROM samples MIX BY site WITH ({body}, OTHER 1) LIMIT 10000"
    t = explain(cat, "EXPLAIN MIX " + sql)
    assert t.num_rows == 3_001
    sizes = dict(cat.con.sql("SELECT site, count(*) FROM samples WHERE site < 's3000' GROUP BY 1").fetchall())
    rows = dict(zip(t.column("group").to_pylist(), t.column("rows").to_pylist()))
    assert rows["OTHER"] == N - sum(sizes.values())
    assert all(rows[s] == sizes[s] for s in listed)
    delivered = np.zeros(t.num_rows, np.int64)   # the forecast is what the stream delivers
    for chunk in MixStream.open(cat, sql, user_columns=False).chunks():
        delivered += np.bincount(chunk.column("group_id").to_numpy(), minlength=t.num_rows)
    assert t.column("samples_needed").to_pylist() == delivered.tolist()


def test_values_equal_after_cast_are_listed_twice(cat):
    sql = ("SELECT * FROM samples MIX BY make_date(2020, 1, 1 + (\"row\" % 3)::INTEGER)\n"
           "WITH ('2020-01-01' 1, '2020-01-02' 1, '2020-1-1' 1)")
    with pytest.raises(SQLError, match="listed twice") as info:
        plan(cat, sql)
    assert (info.value.line, info.value.col) == (2, 39)   # the second spelling
    pointers, spec = execute_plan(cat, plan(cat, sql.replace(", '2020-1-1' 1", ", OTHER 1")), user_columns=False)
    rows = pointers.column("__mix_row").to_numpy() % 3
    gids = pointers.column("__mix_group").to_numpy()
    assert (gids == rows).all() and pointers.num_rows == N
