"""A stream that ends short of its LIMIT, or because a group ran dry under 'stop', says so."""
from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

import mixsql
from mixsql.errors import ExhaustedWarning
from mixsql.torch import MixDataset

STOP = "SELECT * FROM samples MIX BY language WITH (JavaScript 0.2, HTML 0.4, Python 0.4) SETTINGS (chunk_size = 10)"
SHORT = ("SELECT * FROM samples MIX BY language WITH NATURAL LIMIT 5000 SAMPLES "
         "SETTINGS (chunk_size = 10, on_exhausted = 'redistribute')")
FULL = "SELECT * FROM samples MIX BY language WITH NATURAL SETTINGS (chunk_size = 10, on_exhausted = 'redistribute')"


def _rows(catalog, sql):
    con = mixsql.connect(str(catalog))
    try:
        cur = con.cursor()
        cur.execute(sql)
        return cur.fetchall()
    finally:
        con.close()


def test_group_dry_under_stop_warns_with_group_and_counts(langs_catalog):
    with pytest.warns(ExhaustedWarning, match=r"group 'Python' ran dry under on_exhausted = 'stop'") as rec:
        rows = _rows(langs_catalog, STOP)
    msg = str(rec[0].message)
    assert f"after {len(rows)} samples" in msg and "HTML" in msg and "JavaScript" in msg


def test_stream_short_of_its_limit_warns(langs_catalog):
    with pytest.warns(ExhaustedWarning, match=r"short of its LIMIT 5000 SAMPLES: 100 delivered"):
        assert len(_rows(langs_catalog, SHORT)) == 100


def test_expected_endings_are_quiet(langs_catalog):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExhaustedWarning)
        assert len(_rows(langs_catalog, FULL)) == 100
        assert len(_rows(langs_catalog, FULL + " LIMIT 40")) == 40
        # under 'stop', groups weighted by their sizes all run dry together: the whole selection
        assert len(_rows(langs_catalog, STOP.replace("0.2, HTML 0.4, Python 0.4", "0.5, HTML 0.3, Python 0.2"))) == 100


def test_torch_dataset_warns(langs_catalog):
    with pytest.warns(ExhaustedWarning, match="ran dry"):
        assert list(MixDataset(STOP, catalog=langs_catalog))


def test_cli_prints_the_warning(langs_catalog):
    res = subprocess.run([sys.executable, "-m", "mixsql", "sql", SHORT, "--format", "csv", "--catalog",
                          str(langs_catalog)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "mixsql: warning: the mixed stream ended short of its LIMIT 5000 SAMPLES" in res.stderr
