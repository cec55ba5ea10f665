"""Every statement in grammar/examples parses, round-trips, and (MIX ones) plans on a real catalog;
every invalid one fails with the error named in its leading ``-- error:`` comment."""
from __future__ import annotations

from pathlib import Path

import pytest

from mixsql import dialect
from mixsql.catalog import Catalog
from mixsql.errors import SQLError
from mixsql.planner import execute_plan, plan, registration_request

from conftest import LANGS_PROPERTIES, langs_records, write_jsonl_catalog  # noqa: E402

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "grammar" / "examples").glob("*.sql"))


@pytest.fixture(scope="module")
def langs_catalog(tmp_path_factory):
    """Module-wide copy of conftest's langs catalog (read-only use keeps the tests fast)."""
    return write_jsonl_catalog(tmp_path_factory.mktemp("grammar") / "cat", langs_records(),
                               properties=LANGS_PROPERTIES, rows_per_file=40)


def expected_error(text: str) -> str | None:
    first = text.lstrip().splitlines()[0]
    return first.split("-- error:", 1)[1].strip() if first.startswith("-- error:") else None


def run(catalog_dir, text):
    tree = dialect.parse(text)
    kind = dialect.classify(text)
    if kind in ("mix", "explain_mix"):
        with Catalog(catalog_dir) as cat:
            return tree, execute_plan(cat, plan(cat, text))
    if kind != "duckdb":
        return tree, registration_request(text)
    return tree, None


def test_examples_exist():
    assert len([p for p in EXAMPLES if p.name.startswith("valid")]) >= 15
    assert len([p for p in EXAMPLES if p.name.startswith("invalid")]) >= 15


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example(path, langs_catalog):
    text = path.read_text()
    want = expected_error(text)
    if want is None:
        assert path.name.startswith("valid")
        tree, _ = run(langs_catalog, text)
        again = dialect.parse(dialect.generate(tree))
        assert again == tree
        assert dialect.classify(text) != "duckdb"
    else:
        assert path.name.startswith("invalid")
        with pytest.raises(SQLError) as info:
            run(langs_catalog, text)
        assert want in str(info.value)
        err = info.value
        if "cannot tokenize" not in want:
            assert err.line is not None and err.col is not None
            assert "^" in str(err)
