"""Registration never silently produces empty properties (misspelled paths and options, reserved
option names, the ``source`` collision), and reports each property's non-null fraction."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_registration import dump, write_zst

import mixsql
from mixsql.catalog import Catalog
from mixsql.errors import Error, ProgrammingError, RegistrationError
from mixsql.registration import create_source, show_source


def docs(n=30):
    return [json.dumps({"text": f"doc {i}", "meta": {"language": ["en", "de"][i % 2],
                                                     **({"score": i / n} if i % 3 == 0 else {})},
                        "source": "cc" if i % 2 else "books"}) for i in range(n)]


@pytest.fixture
def data(tmp_path):
    write_zst(tmp_path / "d" / "shard_0000.jsonl.zst", docs())
    return tmp_path / "d" / "shard_0000.jsonl.zst"


@pytest.fixture
def cat(tmp_path, data):
    c = Catalog(tmp_path / "cat")
    create_source(c, "base", str(data), options={"lang": "meta.language"}, progress=False)
    yield c
    c.close()


def _fails_unchanged(cat, data, options, match, exc=Error):
    before = dump(cat)
    with pytest.raises(exc, match=match):
        create_source(cat, "d", str(data), options=options, progress=False)
    assert dump(cat) == before


def test_misspelled_path_suggests_the_closest_seen_path(cat, data):
    _fails_unchanged(cat, data, {"lang": "meta.langauge"}, r"meta\.langauge.*did you mean 'meta\.language'",
                     RegistrationError)


def test_path_missing_its_prefix_suggests_the_full_path(cat, data):
    _fails_unchanged(cat, data, {"lang": "language"}, r"did you mean 'meta\.language'", RegistrationError)


@pytest.mark.parametrize("key, option", [("on_eror", "on_error"), ("tokeniser", "tokenizer"),
                                         ("presets", "preset")])
def test_misspelled_option_suggests_the_option(cat, data, key, option):
    _fails_unchanged(cat, data, {"lang": "meta.language", key: "skip"}, f"did you mean '{option}'",
                     ProgrammingError)


def test_engine_is_an_option_not_a_property(cat, data):
    _fails_unchanged(cat, data, {"engine": "spark"}, r"engine must be 'local' or 'ray'", ProgrammingError)


def test_source_mapping_says_how_to_keep_the_field(cat, data):
    _fails_unchanged(cat, data, {"source": "source"}, r"origin = 'source'", ProgrammingError)


def test_colliding_names_go_in_the_properties_map(cat, data):
    s = create_source(cat, "d", str(data), options={"properties": {"engine": "meta.language"}}, progress=False)
    assert s["property_stats"]["engine"]["non_null_fraction"] == 1.0


def test_optional_path_registers_nulls_and_summary_reports_fractions(cat, data):
    s = create_source(cat, "d", str(data), options={"lang": "meta.language", "score": "meta.score?",
                                                     "extra": "meta.nothing?", "origin": "source"},
                      progress=False)
    st = s["property_stats"]
    assert st["lang"] == {"type": "VARCHAR", "non_null": 30, "non_null_fraction": 1.0}
    assert st["score"]["non_null"] == 10 and st["score"]["non_null_fraction"] == pytest.approx(1 / 3, abs=1e-3)
    assert st["extra"]["non_null"] == 0 and st["score"]["type"] == "DOUBLE"
    assert cat.con.sql("SELECT count(extra), count(*) FROM samples WHERE source = 'd'").fetchall() == [(0, 30)]
    rows = {r["property"]: r for r in show_source(cat, "d").to_pylist()}
    assert rows["score"]["non_null"] == 10 and rows["score"]["path"] == "meta.score"
    assert rows["score"]["optional"] and not rows["lang"]["optional"]
    assert rows["origin"]["non_null_fraction"] == 1.0


def test_sql_surface_with_map_and_show_source(tmp_path, data):
    with mixsql.connect(tmp_path / "c2") as con:
        cur = con.cursor()
        with pytest.raises(mixsql.ProgrammingError, match="did you mean 'on_error'"):
            cur.execute(f"CREATE SOURCE d FROM '{data}' FORMAT jsonl WITH (lang = 'meta.language', on_eror = 'skip')")
        with pytest.raises(mixsql.DatabaseError, match="did you mean 'meta.language'"):
            cur.execute(f"CREATE SOURCE d FROM '{data}' WITH (lang = 'meta.langauge')")
        cur.execute(f"CREATE SOURCE d FROM '{data}' WITH (properties = {{'text_kind': 'meta.language'}})")
        cur.execute("SHOW SOURCE d")
        names = [c[0] for c in cur.description]
        got = {r[names.index("property")]: r[names.index("non_null_fraction")] for r in cur.fetchall()}
        assert got == {"text_kind": 1.0}


def test_parquet_column_and_struct_field_suggestions(tmp_path):
    pq.write_table(pa.table({"text": ["a", "b"], "meta": [{"lang": "en"}, {"lang": "de"}]}), tmp_path / "p.parquet")
    with Catalog(tmp_path / "cat") as c:
        with pytest.raises(RegistrationError, match=r"did you mean 'meta\.lang'"):
            create_source(c, "p", str(tmp_path / "p.parquet"), options={"lang": "meta.lnag"}, progress=False)
        assert c.source_names() == []
