"""The mixsql dialect: classify, parse (positioned errors only), generate (round-trip)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixsql import dialect
from mixsql.dialect import classify, generate, parse
from mixsql.errors import SQLError

DUCKDB_STATEMENTS = [
    "SELECT 1",
    "SELECT * FROM samples WHERE language = 'en'",
    "SELECT source, count(*) FROM samples GROUP BY ALL ORDER BY 2 DESC",
    "CREATE TABLE t (a INTEGER, b VARCHAR)",
    "INSERT INTO t VALUES (1, 'mix by'), (2, 'x')",
    "UPDATE t SET b = 'MIX BY source' WHERE a = 1",
    "DELETE FROM t WHERE a = ?",
    "DROP TABLE t",
    "CREATE VIEW v AS SELECT * FROM samples",
    "SELECT s.file, f.size FROM samples s JOIN files f USING (file_id)",
    "SELECT row_number() OVER (PARTITION BY source ORDER BY n_bytes) FROM samples",
    "SELECT $1::INT + $name",
    "EXPLAIN SELECT * FROM samples",
    "EXPLAIN ANALYZE SELECT 1",
    "SHOW TABLES",
    "DESCRIBE samples",
    "PRAGMA version",
    "WITH mix AS (SELECT 1 AS source) SELECT * FROM mix",
    "SELECT mix FROM (SELECT 1 AS mix)",
    "-- MIX BY source\nSELECT 1",
    "SELECT 'CREATE SOURCE x FROM y'",
    "COPY t TO 'out.csv'",
    "SELECT * FROM read_json_auto('x.jsonl')",
    "SELECT [x * 2 FOR x IN [1, 2]]",
    "SELECT list_transform([1, 2], x -> x + 1)",
    "SELECT 'unterminated",
    "this is not sql at all ((",
    "",
]


@pytest.mark.parametrize("sql", DUCKDB_STATEMENTS)
def test_plain_sql_is_duckdb(sql):
    assert classify(sql) == "duckdb"


@pytest.mark.parametrize("sql,kind", [
    ("SELECT * FROM samples MIX BY source WITH (web 1)", "mix"),
    ("with x as (select 1) select * from samples mix by source", "mix"),
    ("  explain   mix select * from samples mix by source", "explain_mix"),
    ("CREATE SOURCE web FROM 'a/*.jsonl'", "create_source"),
    ("refresh source web", "refresh_source"),
    ("DROP SOURCE web", "drop_source"),
    ("show sources", "show_sources"),
    ("/* c */ SHOW SOURCES;", "show_sources"),
])
def test_classify_mixsql(sql, kind):
    assert classify(sql) == kind


def test_classify_never_raises_on_garbage():
    for junk in [None, 3, "MIX BY", "'", "mix by '", "\x00\x01", "SELECT $$ mix by"]:
        assert classify(junk) in dialect.KINDS


def test_brief_statement_tree():
    sql = """SELECT * FROM samples
MIX BY source WITH (
    (web, c4)  0.6,
    code       0.25  MIX BY language WITH (python 0.5, javascript 0.3, OTHER 0.2),
    OTHER      0.15
)
ORDER BY curriculum
LIMIT 2e9 TOKENS
SETTINGS (seed = 7, chunk_size = 512, unit = 'tokens', on_exhausted = 'repeat', max_epochs = 4)"""
    tree = parse(sql)
    mix = tree.args["mix"]
    assert isinstance(mix, dialect.MixBy) and mix.this.name == "source"
    web, code, other = mix.expressions
    assert [v.name for v in web.expressions] == ["web", "c4"] and web.args["wrapped"]
    assert code.args["mix"].this.name == "language" and len(code.args["mix"].expressions) == 3
    assert other.args["other"]
    limit = tree.args["limit"]
    assert isinstance(limit, dialect.MixLimit) and limit.args["unit"] == "TOKENS" and limit.expression.this == "2e9"
    assert [o.this.name for o in tree.args["mix_settings"].expressions][:2] == ["seed", "chunk_size"]
    assert tree.args["order"] is not None
    assert parse(generate(tree)) == tree


def test_table_sample_still_parses():
    tree = parse("SELECT * FROM samples USING SAMPLE 10% MIX BY source WITH (a 1)")
    assert tree.args.get("sample") is not None and tree.args.get("mix") is not None


def test_error_has_position_caret_and_suggestion():
    sql = "SELECT *\nFROM samples\nMIX BY source WTIH (web 1)"
    with pytest.raises(SQLError) as info:
        parse(sql)
    err = info.value
    assert (err.line, err.col) == (3, 15)
    assert err.suggestion == "WITH"
    assert "MIX BY source WTIH (web 1)\n              ^^^^" in str(err)


def test_multiple_statements_rejected():
    with pytest.raises(SQLError, match="one statement"):
        parse("SHOW SOURCES; SHOW SOURCES")


# ------------------------------------------------------------------ property tests
NAMES = ["web", "c4", "code", "books", "arxiv", "en", "de", "python", "wiki", "stack"]
values = st.one_of(
    st.sampled_from(NAMES),
    st.sampled_from(NAMES).map(lambda s: f"'{s}'"),
    st.integers(-5, 2020).map(str),
    st.sampled_from(["TRUE", "FALSE"]),
)
weights = st.one_of(st.integers(0, 100).map(str), st.floats(0, 10, allow_nan=False).map(lambda f: f"{f:.3f}"),
                    st.sampled_from(["1e-3", "2E2", "-1"]))
keys = st.sampled_from(["source", "language", "lower(language)", "quality > 0.5", "s.license",
                        "coalesce(lang, 'x')", "year % 4"])


@st.composite
def group_list(draw, depth=0):
    n = draw(st.integers(1, 4))
    items = []
    for _ in range(n):
        kind = draw(st.sampled_from(["one", "many", "other"]))
        if kind == "one":
            key = draw(values)
        elif kind == "many":
            key = "(" + ", ".join(draw(st.lists(values, min_size=1, max_size=3))) + ")"
        else:
            key = "OTHER"
        item = f"{key} {draw(weights)}"
        if depth < 2 and draw(st.booleans()):
            item += " " + draw(mix_clause(depth + 1))
        items.append(item)
    return "(" + ", ".join(items) + ")"


@st.composite
def mix_clause(draw, depth=0):
    key = draw(keys)
    form = draw(st.sampled_from(["list", "list", "natural", "none", "schedule"] if depth == 0 else ["list", "natural"]))
    if form == "list":
        return f"MIX BY {key} WITH {draw(group_list(depth))}"
    if form == "natural":
        return f"MIX BY {key} WITH NATURAL"
    if form == "none":
        return f"MIX BY {key}"
    steps = [f"AT STEP {s} {draw(group_list(2))}" for s in draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=3))]
    return f"MIX BY {key} WITH SCHEDULE ({', '.join(steps)})"


@st.composite
def mix_statement(draw):
    parts = [draw(st.sampled_from(["SELECT * FROM samples", "SELECT source, text_len FROM samples s",
                                   "SELECT * FROM samples JOIN files USING (file_id)"]))]
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from(["WHERE language = 'en'", "WHERE quality > ? AND source <> 'x'"])))
    parts.append(draw(mix_clause()))
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from(["USING ADO (prior = NATURAL, update_every = 1000)", "USING loss_average",
                                           "USING ADO ()"])))
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from(["ORDER BY quality", "ORDER BY quality DESC, n_bytes"])))
    if draw(st.booleans()):
        parts.append(f"LIMIT {draw(st.sampled_from(['10', '2e9', '1000']))} "
                     f"{draw(st.sampled_from(['SAMPLES', 'TOKENS', 'CHUNKS', '']))}")
    if draw(st.booleans()):
        opts = draw(st.lists(st.sampled_from(["seed = 7", "unit = 'tokens'", "unit = samples", "chunk_size = 64",
                                              "on_exhausted = 'repeat'", "max_epochs = 4"]), min_size=1, max_size=3))
        parts.append(f"SETTINGS ({', '.join(opts)})")
    sep = draw(st.sampled_from([" ", "\n", "  \n\t"]))
    stmt = sep.join(parts)
    if draw(st.booleans()):
        stmt = "EXPLAIN MIX " + stmt
    return stmt


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mix_statement())
def test_random_statements_round_trip(sql):
    tree = parse(sql)
    assert classify(sql) in ("mix", "explain_mix")
    text = generate(tree)
    again = parse(text)
    assert again == tree
    assert generate(again) == text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mix_statement(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3),
                                           st.sampled_from(list("(),'\"=-;. 0xABy") + ["MIX", "BY", "WITH", "OTHER",
                                                                                         "LIMIT", "NATURAL", "\n"])),
                                 min_size=1, max_size=4))
def test_mutations_raise_only_mixsql_errors(sql, edits):
    for pos, op, text in edits:
        pos %= len(sql) + 1
        if op == 0:
            sql = sql[:pos] + sql[pos + 1:]
        elif op == 1:
            sql = sql[:pos] + text + sql[pos:]
        elif op == 2:
            sql = sql[:pos] + text + sql[pos + len(text):]
        else:
            sql = sql[:pos]
    try:
        parse(sql)
    except SQLError as err:  # the only exception type allowed out of the parser
        assert err.message


def test_long_plain_group_lists_parse_like_any_group_list():
    # plain entries (name, "quoted", 'string' or number, then a number) take the parser's tight
    # loop; OTHER, keywords, nested MIX BY, comments and value lists around them do not
    plain = [f"v{i} {i % 7 + 1}" for i in range(3000)]
    entries = (["'s x' 2", '"q" 1.5', "42 1e2", "(a, b) 3", "NULL 1", "c 2 MIX BY y WITH (d 1, OTHER 2)",
                "e /* kept */ 1", "-- note\n f 1"] + plain[:1500] + ["true 2"] + plain[1500:] + ["OTHER 0"])
    sql = "SELECT * FROM samples MIX BY x WITH (\n  " + ",\n  ".join(entries) + "\n)"
    mix = parse(sql).args["mix"]
    groups = mix.expressions
    assert len(groups) == len(entries)
    assert parse(generate(parse(sql))) == parse(sql)
    for g, text in zip(groups, entries):   # every value and weight node points at its own text
        if g.args.get("other") or g.args.get("wrapped") or "--" in text or "MIX" in text:
            continue
        start = sql.index("\n  " + text + ",") + 3
        assert g.meta["start"] == g.expressions[0].meta["start"] == start, text
        assert g.args["weight"].meta["start"] == start + text.rindex(" ") + 1, text
    v = groups[9]   # the second plain entry: v1 2
    assert (v.expressions[0].this, v.expressions[0].args.get("quoted"), v.args["weight"].this) == ("v1", False, "2")
    assert [type(g.expressions[0]).__name__ for g in groups[:3]] == ["Literal", "Identifier", "Literal"]
    assert groups[1].expressions[0].args["quoted"] and groups[0].expressions[0].is_string


def test_error_inside_a_long_plain_group_list_points_at_the_token():
    entries = [f"v{i} 1" for i in range(2000)]
    entries[1234] = "v1234 1 v9"   # a missing comma
    sql = "SELECT * FROM samples MIX BY x WITH (" + ", ".join(entries) + ")"
    with pytest.raises(SQLError) as info:
        parse(sql)
    assert info.value.col == sql.index("v1234 1 v9") + len("v1234 1 ") + 1
    assert "expected , or )" in str(info.value)
