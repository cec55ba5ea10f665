"""Planner: MIX statements -> DuckDB query + MixSpec, on real catalogs built by conftest."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mixsql.catalog import Catalog
from mixsql.errors import SQLError
from mixsql.planner import execute_plan, explain, plan, registration_request
from mixsql.spec import MIX_COLUMNS, ORDER_COLUMN, MixSpec

from conftest import write_jsonl_catalog

LANGS = {"JavaScript": 50, "HTML": 30, "Python": 20}


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    recs = []
    for lang, n in LANGS.items():
        for i in range(n):
            recs.append({"text": f"{lang} sample {i} " + "x" * (i % 7), "language": lang,
                         "license": "MIT" if i % 3 == 0 else "CC", "quality": (i % 10) / 10})
    path = write_jsonl_catalog(tmp_path_factory.mktemp("planner") / "cat", recs,
                               properties={"language": "VARCHAR", "license": "VARCHAR", "quality": "DOUBLE"},
                               rows_per_file=40)
    c = Catalog(path)
    yield c
    c.close()


def run(cat, sql, params=None):
    p = plan(cat, sql, params)
    table, spec = execute_plan(cat, p)
    return p, table, spec


def per_group(table, spec):
    gid = table.column("__mix_group").to_numpy()
    return {g.path: int((gid == g.id).sum()) for g in spec.groups}


def languages(table, spec):
    out = {}
    gid = table.column("__mix_group").to_pylist()
    for g, lang in zip(gid, table.column("language").to_pylist()):
        out.setdefault(spec.groups[g].path, set()).add(lang)
    return out


def test_simple_groups(cat):
    p, t, spec = run(cat, "SELECT * FROM samples MIX BY language WITH (JavaScript 0.5, HTML 0.3, Python 0.2)")
    assert t.column_names[:len(MIX_COLUMNS)] == list(MIX_COLUMNS)
    assert t.column_names[len(MIX_COLUMNS):] == p.user_columns
    assert "language" in p.user_columns and "source" in p.user_columns
    assert per_group(t, spec) == LANGS
    assert [g.weight for g in spec.groups] == [0.5, 0.3, 0.2]
    assert spec.weighting == "static" and spec.unit == "samples" and not spec.ordered
    assert t.schema.field("__mix_group").type == pa.int32()
    # canonical order: by group, then file, then row
    keys = list(zip(*(t.column(c).to_pylist() for c in ("__mix_group", "__mix_file_id", "__mix_row"))))
    assert keys == sorted(keys)
    assert MixSpec.from_json(spec.to_json()) == spec


def test_pointer_columns_match_catalog(cat):
    _, t, _ = run(cat, "SELECT language FROM samples MIX BY language WITH (JavaScript 1, OTHER 1)")
    ref = cat.con.sql("SELECT file_id, \"row\", loc_offset, n_bytes, file FROM samples ORDER BY file_id, \"row\"").fetchall()
    got = list(zip(*(t.column(c).to_pylist() for c in ("__mix_file_id", "__mix_row", "__mix_offset",
                                                         "__mix_n_bytes", "__mix_file"))))
    assert sorted(got) == ref
    assert set(t.column("__mix_source").to_pylist()) == {"corpus"}


def test_pointer_only_and_subset_columns(cat):
    sql = "SELECT * FROM samples WHERE quality >= 0 MIX BY language WITH (JavaScript 0.5, HTML 0.3, Python 0.2)"
    p = plan(cat, sql)
    full, spec = execute_plan(cat, p)
    # straight from sample_index: the samples view (a join with files and sources) is not read
    assert "FROM sample_index AS samples" in p.pointer_sql and "FROM samples" not in p.pointer_sql
    ptr, spec2 = execute_plan(cat, p, user_columns=False)
    assert ptr.column_names == list(MIX_COLUMNS) and spec2 == spec
    assert ptr.equals(full.select(list(MIX_COLUMNS)))
    sub, _ = execute_plan(cat, p, user_columns=["quality", "file"])
    assert sub.column_names == [*MIX_COLUMNS, "quality", "file"]
    assert sub.column("quality").equals(full.column("quality"))
    # SELECT *'s pointer columns are shared with the pointer arrays, not fetched twice
    assert {"row", "file", "source", "n_bytes"} <= set(p.shared)
    assert full.column("row").to_pylist() == full.column("__mix_row").to_pylist()
    assert full.column("file").to_pylist() == full.column("__mix_file").to_pylist()
    ref = cat.con.sql("SELECT file, \"row\", source, n_tokens FROM samples WHERE quality >= 0").fetchall()
    assert sorted(zip(*(full.column(c).to_pylist() for c in ("file", "row", "source", "n_tokens")))) == sorted(ref)
    raw, _ = execute_plan(cat, p, user_columns=False, canonical=False)
    assert sorted(zip(*(raw.column(c).to_pylist() for c in ptr.column_names))) == \
        sorted(zip(*(ptr.column(c).to_pylist() for c in ptr.column_names)))
    with pytest.raises(Exception, match="not in the statement's projection"):
        execute_plan(cat, p, user_columns=["nope"])
    # a view-only column (source) in MIX BY: pointer query falls back to the view
    p2 = plan(cat, "SELECT language FROM samples MIX BY source WITH (corpus 1)")
    assert "sample_index" not in p2.pointer_sql
    assert execute_plan(cat, p2, user_columns=False)[0].num_rows == execute_plan(cat, p2)[0].num_rows


def test_multi_value_and_other(cat):
    _, t, spec = run(cat, "SELECT * FROM samples MIX BY language WITH ((JavaScript, HTML) 0.6, OTHER 0.4)")
    assert [g.path for g in spec.groups] == ["JavaScript,HTML", "OTHER"]
    assert languages(t, spec) == {"JavaScript,HTML": {"JavaScript", "HTML"}, "OTHER": {"Python"}}
    assert spec.groups[0].values == ("JavaScript", "HTML") and spec.groups[1].values == ()


def test_rows_in_no_group_are_excluded(cat):
    _, t, spec = run(cat, "SELECT * FROM samples MIX BY language WITH (HTML 1, 'Python' 3)")
    assert t.num_rows == 50
    assert [g.weight for g in spec.groups] == [0.25, 0.75]


def test_nested_groups(cat):
    sql = ("SELECT language, license FROM samples MIX BY language WITH (\n"
           "  JavaScript 0.5 MIX BY license WITH (MIT 0.4, OTHER 0.6),\n"
           "  (HTML, Python) 0.5)")
    _, t, spec = run(cat, sql)
    assert [g.path for g in spec.groups] == ["JavaScript/MIT", "JavaScript/OTHER", "HTML,Python"]
    assert [round(g.weight, 6) for g in spec.groups] == [0.2, 0.3, 0.5]
    gid = np.array(t.column("__mix_group").to_pylist())
    lic = np.array(t.column("license").to_pylist())
    lang = np.array(t.column("language").to_pylist())
    assert set(lic[gid == 0]) == {"MIT"} and set(lang[gid == 0]) == {"JavaScript"}
    assert set(lic[gid == 1]) == {"CC"} and set(lang[gid == 1]) == {"JavaScript"}
    assert (gid == 2).sum() == 50


def test_expression_group(cat):
    _, t, spec = run(cat, "SELECT quality FROM samples MIX BY quality > 0.5 WITH (true 0.7, false 0.3)")
    q = np.array(t.column("quality").to_pylist())
    gid = np.array(t.column("__mix_group").to_pylist())
    assert [g.path for g in spec.groups] == ["true", "false"]
    assert (q[gid == 0] > 0.5).all() and (q[gid == 1] <= 0.5).all()


def test_function_group_and_alias(cat):
    _, t, spec = run(cat, "SELECT lower(language) AS lang FROM samples MIX BY lang WITH (html 1, python 1)")
    assert per_group(t, spec) == {"html": 30, "python": 20}


def test_order_by_gives_order_column(cat):
    p, t, spec = run(cat, "SELECT quality FROM samples MIX BY language WITH (HTML 1, Python 1) ORDER BY quality DESC")
    assert spec.ordered and ORDER_COLUMN in t.column_names
    order = np.array(t.column(ORDER_COLUMN).to_pylist())
    q = np.array(t.column("quality").to_pylist())
    gid = np.array(t.column("__mix_group").to_pylist())
    for g in range(len(spec.groups)):   # the rank orders each group's consumption
        ranked = q[gid == g][np.argsort(order[gid == g])]
        assert len(ranked) and (np.diff(ranked) <= 0).all()


def test_natural_weights_samples_and_tokens(cat):
    _, t, spec = run(cat, "SELECT * FROM samples MIX BY language WITH NATURAL")
    assert {g.path: g.weight for g in spec.groups} == {"HTML": 0.3, "JavaScript": 0.5, "Python": 0.2}
    assert spec.weighting == "natural"
    _, t, spec = run(cat, "SELECT * FROM samples MIX BY language SETTINGS (unit = 'tokens')")
    # tokens as packed: each sample's n_tokens plus the EOS the packer appends
    toks = cat.con.sql("SELECT language, sum(n_tokens + 1) FROM samples GROUP BY 1").fetchall()
    total = sum(v for _, v in toks)
    assert {g.path: pytest.approx(g.weight) for g in spec.groups} == {k: v / total for k, v in toks}


def test_nested_natural(cat):
    _, t, spec = run(cat, "SELECT * FROM samples MIX BY language WITH (JavaScript 0.5 MIX BY license WITH NATURAL, OTHER 0.5)")
    w = {g.path: g.weight for g in spec.groups}
    mit = sum(1 for i in range(50) if i % 3 == 0)
    assert w["JavaScript/MIT"] == pytest.approx(0.5 * mit / 50)
    assert w["OTHER"] == 0.5


def test_settings_budget_schedule_algorithm(cat):
    sql = ("SELECT * FROM samples MIX BY language WITH SCHEDULE (AT STEP 0 (JavaScript 0.9, OTHER 0.1),\n"
           " AT STEP 100 (OTHER 1, JavaScript 1)) LIMIT 2e3 TOKENS\n"
           "SETTINGS (seed = 7, chunk_size = 32, unit = tokens, on_exhausted = 'repeat', max_epochs = 4,\n"
           " shuffle_block = 4, shuffle_window = 8, shuffle_shards = 2, batch_size = 64)")
    _, _, spec = run(cat, sql)
    assert spec.seed == 7 and spec.chunk_size == 32 and spec.unit == "tokens"
    assert spec.on_exhausted == "repeat" and spec.max_epochs == 4
    assert spec.shuffle.block == 4 and spec.shuffle.window == 8 and spec.shuffle.shards == 2
    assert run(cat, "SELECT * FROM samples MIX BY language WITH NATURAL")[2].shuffle.shards == 4   # the default
    assert run(cat, "SELECT * FROM samples MIX BY language WITH NATURAL SETTINGS (shuffle_shards = 0)")[2].shuffle.shards == 0
    assert spec.budget.amount == 2000 and spec.budget.kind == "tokens"
    assert spec.weighting == "schedule"
    assert [(s.step, s.weights) for s in spec.schedule] == [(0, (0.9, 0.1)), (100, (0.5, 0.5))]
    assert spec.batch_size == 64
    _, _, spec = run(cat, "SELECT * FROM samples MIX BY language USING ADO (prior = NATURAL, update_every = 10) LIMIT 40")
    assert spec.algorithm.name == "ado" and spec.algorithm.kwargs() == {"prior": "natural", "update_every": 10}
    assert spec.budget.kind == "samples" and spec.budget.amount == 40
    assert sum(g.weight for g in spec.groups) == pytest.approx(1.0)


def test_join_and_parameters(cat):
    sql = ("SELECT s.language, f.size FROM samples s JOIN files f ON s.file_id = f.file_id\n"
           "WHERE s.quality >= ? MIX BY s.language WITH (JavaScript 1, OTHER 1)")
    p, t, spec = run(cat, sql, [0.5])
    assert t.num_rows == cat.con.execute("SELECT count(*) FROM samples WHERE quality >= 0.5").fetchone()[0]
    assert p.user_columns == ["language", "size"]


def test_explain(cat):
    t = explain(cat, "EXPLAIN MIX SELECT * FROM samples MIX BY language WITH (JavaScript 0.5, (HTML, Python) 0.5)\n"
                     "LIMIT 80 SETTINGS (chunk_size = 10)")
    rows = t.to_pylist()
    assert [r["group"] for r in rows] == ["JavaScript", "HTML,Python"]
    assert [r["rows"] for r in rows] == [50, 50]
    assert [r["weight"] for r in rows] == [0.5, 0.5]
    assert rows[0]["tokens"] == cat.con.sql(   # as packed: n_tokens plus one EOS per sample
        "SELECT sum(n_tokens + 1) FROM samples WHERE language='JavaScript'").fetchall()[0][0]
    assert {"samples_needed", "epochs_needed", "dry_at_chunk", "bytes", "tokens_needed"} <= set(t.column_names)
    assert rows[0]["samples_needed"] == 40 and rows[0]["epochs_needed"] == pytest.approx(0.8)


def test_registration_request():
    r = registration_request("CREATE SOURCE web FROM 'd/*.jsonl' FORMAT JSONL WITH (text = 'body.text', preset = 'pile')")
    assert (r.kind, r.name, r.pattern, r.format) == ("create_source", "web", "d/*.jsonl", "jsonl")
    assert r.options == {"text": "body.text", "preset": "pile"}
    assert registration_request("REFRESH SOURCE web").kind == "refresh_source"
    r = registration_request("DROP SOURCE IF EXISTS web")
    assert r.kind == "drop_source" and r.if_exists and r.name == "web"
    assert registration_request("SHOW SOURCES").kind == "show_sources"


# ------------------------------------------------------------------ validation errors
ERRORS = [
    # (sql, message substring, line, col, suggestion)
    ("SELECT * FROM samples\nMIX BY lnguage WITH (HTML 1)", "unknown column 'lnguage'", 2, 8, "'language'"),
    ("SELECT * FROM samples s\nWHERE s.qualty > 1 MIX BY language WITH (HTML 1)", "unknown column 'qualty'", 2, 9, "'quality'"),
    ("SELECT * FROM samples MIX BY language WITH (HTML 1, Python 1)\nORDER BY qality", "unknown column", 2, 10, "'quality'"),
    ("SELECT * FROM samples MIX BY language WITH (HTML 1, 'HTML' 2)", "listed twice", 1, 53, None),
    ("SELECT * FROM samples MIX BY language WITH ((HTML, Python) 1, Python 2)", "listed twice", 1, 63, None),
    ("SELECT * FROM samples MIX BY language WITH (HTML 1, OTHER 1, OTHER 2)", "OTHER is listed twice", 1, 62, None),
    ("SELECT * FROM samples MIX BY language WITH (HTML 1, Python -1)", "negative", 1, 60, None),
    ("SELECT * FROM samples MIX BY language WITH (HTML 0, Python 0.0)", "all weights are zero", 1, 50, None),
    ("SELECT * FROM samples MIX BY language WITH (HTML 1)\nSETTINGS (chunksize = 3)", "unknown setting", 2, 11, "'chunk_size'"),
    ("SELECT * FROM samples MIX BY language WITH (HTML 1) SETTINGS (unit = 'tokns')", "bad value for unit", 1, 70, "'tokens'"),
    ("SELECT * FROM samples MIX BY language WITH (HTML 1) SETTINGS (chunk_size = 0)", "positive integer", 1, 76, None),
    ("SELECT * FROM samples MIX BY language WITH (HTML 1) SETTINGS (seed = 1, seed = 2)", "given twice", 1, 73, None),
    ("SELECT * FROM samples MIX BY language WITH (HTML 1) SETTINGS (shuffle_shards = -1)", "non-negative integer", 1, 80, None),
    ("SELECT * FROM samples MIX BY language WITH SCHEDULE (AT STEP 0 (HTML 1, OTHER 1),\n"
     "  AT STEP 10 (HTML 1, OTHER 1), AT STEP 10 (HTML 2, OTHER 1))", "steps must increase", 2, 41, None),
    ("SELECT * FROM samples MIX BY language WITH SCHEDULE (AT STEP 5 (HTML 1, OTHER 1))", "AT STEP 0", 1, 62, None),
    ("SELECT * FROM samples MIX BY language WITH SCHEDULE (AT STEP 0 (HTML 1, OTHER 1), AT STEP 9 (HTML 1))",
     "same groups", 1, 83, None),
    ("SELECT * FROM samples MIX BY language USING LOSS_AVERAGES", "unknown mixing algorithm", 1, 45, "LOSS_AVERAGE"),
    ("SELECT * FROM samples MIX BY language WITH (HTML 1, Pyton 1)", "matches no selected row", 1, 53, "'Python'"),
    ("SELECT * FROM samples MIX BY language WITH ((HTML, Javascript) 1, Python 1)", "'Javascript' matches no", 1, 52, "'JavaScript'"),
    ("SELECT * FROM samples\nMIX BY language WITH ((HTML, Python, JavaScript) 1, OTHER 1)", "OTHER matches no row", 2, 53, None),
    ("SELECT * FROM samples WHERE language <> 'HTML'\nMIX BY language WITH (HTML 1 MIX BY license WITH (MIT 1), OTHER 1)",
     "nested MIX BY", 2, 23, None),
    ("SELECT language, count(*) FROM samples GROUP BY language MIX BY language WITH (HTML 1)", "GROUP BY", 1, 49, None),
    ("SELECT DISTINCT language FROM samples MIX BY language WITH (HTML 1)", "DISTINCT", 1, 8, None),
    ("SELECT max(quality) FROM samples MIX BY language WITH (HTML 1)", "aggregate", 1, 8, None),
    ("SELECT * FROM samples MIX BY quality WITH (web 1)", "not a number", 1, 44, None),
    ("SELECT * FROM samples MIX BY language WITH (HTML 1) LIMIT 1.5 SAMPLES", "whole number", 1, 59, None),
    ("SELECT * FROM (SELECT * FROM samples MIX BY language WITH (HTML 1))", "outermost", 1, 38, None),
]


@pytest.mark.parametrize("sql,message,line,col,suggestion", ERRORS, ids=[e[1][:30] for e in ERRORS])
def test_validation_errors(cat, sql, message, line, col, suggestion):
    with pytest.raises(SQLError) as info:
        run(cat, sql)
    err = info.value
    assert message in str(err)
    assert (err.line, err.col) == (line, col), str(err)
    assert err.suggestion == suggestion
    text_line = sql.splitlines()[line - 1]
    assert f"{text_line}\n{' ' * (col - 1)}^" in str(err)


def test_tokens_unit_needs_token_counts(tmp_path):
    path = write_jsonl_catalog(tmp_path / "c", [{"text": "abc", "k": "a"}, {"text": "de", "k": "b"}],
                               properties={"k": "VARCHAR"}, n_tokens=False)
    with Catalog(path) as c:
        with pytest.raises(SQLError, match="n_tokens is NULL") as info:
            run(c, "SELECT * FROM samples MIX BY k WITH (a 1, b 1) SETTINGS (unit = 'tokens')")
        assert (info.value.line, info.value.col) == (1, 65)
        _, t, spec = run(c, "SELECT * FROM samples MIX BY k WITH (a 1, b 1)")
        assert t.num_rows == 2


def test_not_a_mix_statement(cat):
    with pytest.raises(SQLError, match="not a MIX statement"):
        plan(cat, "SELECT * FROM samples")
