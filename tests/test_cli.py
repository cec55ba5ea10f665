"""The ``mixsql`` command line through ``main(argv)``: formats, inputs, exit codes."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys


from mixsql import cli

MIX = ("SELECT language FROM samples MIX BY language WITH (JavaScript 0.5, HTML 0.3, Python 0.2) "
       "SETTINGS (chunk_size = 10)")
COUNTS = "SELECT language, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1"


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_shows_examples(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "examples:" in out and "mixsql register" in out and "--catalog" in out
    code, out, _ = run(capsys, "sql", "--help")
    assert code == 0 and "--format" in out and "examples:" in out


def test_usage_errors_exit_2(capsys):
    assert run(capsys, "bogus")[0] == 2
    code, _, err = run(capsys, "sql", "--format", "xml", "SELECT 1")
    assert code == 2 and "invalid choice" in err


def test_sql_table(capsys, langs_catalog):
    code, out, err = run(capsys, "sql", COUNTS, "--catalog", langs_catalog)
    assert code == 0, err
    assert "JavaScript" in out and "50" in out and "3 rows" in out


def test_sql_csv_and_json(capsys, langs_catalog):
    code, out, _ = run(capsys, "sql", COUNTS, "--format", "csv", "--catalog", langs_catalog)
    assert code == 0
    assert list(csv.reader(io.StringIO(out))) == [["language", "n"], ["HTML", "30"], ["JavaScript", "50"],
                                                   ["Python", "20"]]
    code, out, _ = run(capsys, "sql", COUNTS, "--format", "json", "--catalog", langs_catalog)
    assert code == 0
    assert json.loads(out) == [{"language": "HTML", "n": 30}, {"language": "JavaScript", "n": 50},
                               {"language": "Python", "n": 20}]


def test_sql_from_file_and_stdin(capsys, langs_catalog, tmp_path, monkeypatch):
    f = tmp_path / "q.sql"
    f.write_text("CREATE TABLE x AS SELECT 1 AS a;\n-- comment\nSELECT a + 1 AS b FROM x;\n")
    code, out, _ = run(capsys, "sql", "-f", f, "--format", "csv", "--catalog", langs_catalog)
    assert code == 0 and out.endswith("b\n2\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT 3 AS c"))
    code, out, _ = run(capsys, "sql", "--format", "csv", "--catalog", langs_catalog)
    assert code == 0 and out == "c\n3\n"


def test_catalog_from_environment(capsys, langs_catalog, monkeypatch):
    monkeypatch.setenv("MIXSQL_CATALOG", str(langs_catalog))
    code, out, _ = run(capsys, "sql", "SELECT count(*) AS n FROM samples", "--format", "csv")
    assert code == 0 and out == "n\n100\n"


def test_user_errors_exit_1_without_traceback(capsys, langs_catalog, tmp_path):
    code, out, err = run(capsys, "sql", "SELEC 1", "--catalog", langs_catalog)
    assert code == 1 and err.startswith("mixsql: ") and "syntax error" in err and "Traceback" not in err
    code, _, err = run(capsys, "sql", "-f", tmp_path / "missing.sql", "--catalog", langs_catalog)
    assert code == 1 and "cannot read" in err
    code, _, err = run(capsys, "sql", "SELECT 1", "-f", tmp_path / "x.sql", "--catalog", langs_catalog)
    assert code == 1 and "not both" in err
    code, _, err = run(capsys, "sql", "   ;  ", "--catalog", langs_catalog)
    assert code == 1 and "no SQL statement" in err


def test_mix_stream_with_limit(capsys, langs_catalog):
    code, out, err = run(capsys, "sql", MIX, "--limit", 5, "--format", "csv", "--catalog", langs_catalog)
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][:6] == ["chunk", "position", "group", "source", "file", "row"] and len(rows) == 6
    code, out, _ = run(capsys, "sql", MIX, "--limit", 3, "--catalog", langs_catalog)
    assert code == 0 and "first 3 rows shown" in out


def test_unbounded_mix_needs_limit_in_table_format(capsys, langs_catalog):
    unbounded = MIX.replace("chunk_size = 10", "chunk_size = 10, on_exhausted = 'repeat'")
    code, _, err = run(capsys, "sql", unbounded, "--catalog", langs_catalog)
    assert code == 1 and "--limit" in err and "Traceback" not in err
    code, out, _ = run(capsys, "sql", unbounded, "--limit", 250, "--format", "json", "--catalog", langs_catalog)
    assert code == 0 and len(json.loads(out)) == 250


def test_mix_error_has_caret(capsys, langs_catalog):
    code, _, err = run(capsys, "sql", "SELECT * FROM samples MIX BY langauge WITH (Python 1)",
                       "--catalog", langs_catalog)
    assert code == 1 and "^" in err and "language" in err


def test_explain(capsys, langs_catalog):
    code, out, err = run(capsys, "explain", MIX, "--catalog", langs_catalog)
    assert code == 0, err
    assert "EXPLAIN MIX" in out and "Python" in out and "HTML" in out
    code, out, _ = run(capsys, "explain", "EXPLAIN MIX " + MIX, "--format", "json", "--catalog", langs_catalog)
    assert code == 0 and len(json.loads(out)) >= 3


def test_register_sources_and_refresh(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "meta": {"lang": "en"}}) + "\n"
                                          for i in range(5)))
    cat = tmp_path / "cat"
    code, out, err = run(capsys, "register", "web", f"{data}/*.jsonl", "--map", "lang=meta.lang",
                         "--catalog", cat)
    assert code == 0, err
    assert "registered source web" in out and "5 samples" in out
    code, out, _ = run(capsys, "sources", "--catalog", cat)
    assert code == 0 and "web" in out and "1 row" in out
    (data / "b.jsonl").write_text(json.dumps({"text": "more", "meta": {"lang": "de"}}) + "\n")
    code, out, _ = run(capsys, "register", "web", f"{data}/*.jsonl", "--catalog", cat)
    assert code == 0 and "refreshed source web" in out
    code, out, _ = run(capsys, "sql", "SELECT lang, count(*) FROM samples GROUP BY 1 ORDER BY 1",
                       "--format", "csv", "--catalog", cat)
    assert out.splitlines()[1:] == ["de,1", "en,5"]


def test_register_errors(capsys, tmp_path):
    code, _, err = run(capsys, "register", "web", tmp_path / "*.jsonl", "--map", "nonsense",
                       "--catalog", tmp_path / "cat")
    assert code == 1 and "PROP=PATH" in err
    code, _, err = run(capsys, "register", "web", tmp_path / "nothing" / "*.jsonl", "--catalog", tmp_path / "cat")
    assert code == 1 and "Traceback" not in err and err.startswith("mixsql: ")


def test_serve_calls_server(capsys, tmp_path, monkeypatch):
    import mixsql.server

    calls = []
    monkeypatch.setattr(mixsql.server, "serve", lambda *a, **k: calls.append((a, k)))
    code, _, err = run(capsys, "serve", "--catalog", tmp_path, "--port", 9999, "--token-file", "t.txt",
                       "--query-timeout", "5", "--feedback-lag", "3")
    assert code == 0, err
    assert calls == [((str(tmp_path),), {"host": "127.0.0.1", "port": 9999, "token_file": "t.txt",
                                         "tls_cert": None, "tls_key": None, "insecure": False,
                                         "query_timeout": 5.0, "feedback_lag": 3})]
    code, _, err = run(capsys, "serve", "--token", "s3cret")          # would show in ps
    assert code == 1 and "MIXSQL_TOKEN" in err and "s3cret" not in err
    code, _, err = run(capsys, "serve", "--tls-cert", "c.pem")
    assert code == 1 and "--tls-key" in err


def test_python_dash_m(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mixsql", "sql", "SELECT 6 * 7 AS x", "--format", "csv",
                          "--catalog", str(tmp_path / "c")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "x\n42\n"
