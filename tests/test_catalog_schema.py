import pytest

from mixsql.catalog import Catalog
from mixsql.errors import OperationalError


def test_samples_view_has_public_columns(langs_catalog):
    cat = Catalog(langs_catalog, read_only=True)
    names = [d[0] for d in cat.con.execute("SELECT * FROM samples LIMIT 0").description]
    assert names[:5] == ["source", "file", "row", "n_bytes", "n_tokens"]
    assert {"language", "license", "quality", "file_id", "loc_offset", "loc_length"} <= set(names)
    got = dict(cat.con.execute("SELECT language, count(*) FROM samples GROUP BY ALL").fetchall())
    assert got == {"JavaScript": 50, "HTML": 30, "Python": 20}
    assert cat.snapshot == 1


def test_read_only_open_of_missing_catalog_is_clear(tmp_path):
    with pytest.raises(OperationalError, match="no mixsql catalog"):
        Catalog(tmp_path / "nope", read_only=True)
