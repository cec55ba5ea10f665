"""Registration end to end: real files, real DuckDB catalogs, every error, incremental refresh."""
from __future__ import annotations

import gzip
import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mixsql import formats, registration
from mixsql.catalog import Catalog
from mixsql.errors import IntegrityError, ProgrammingError, RegistrationError, StaleFileError
from mixsql.registration import check_file, create_source, drop_source, refresh_source, show_sources

SETS = ["RedPajamaC4", "RedPajamaGithub", "RedPajamaWikipedia"]


def slim_lines(n, start=0):
    return [json.dumps({"text": f"document {i} " + "lorem ipsum é " * (i % 4),
                        "meta": {"redpajama_set_name": SETS[i % 3]}}) for i in range(start, start + n)]


def write_zst(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))


def slim_dir(root, shards=3, per=40):
    for k in range(shards):
        write_zst(root / f"chunk{k % 2}" / f"example_train_{k}.jsonl.zst", slim_lines(per, k * per))
    return root


def write_parquet_dir(root, files=2, per=30):
    root.mkdir(parents=True, exist_ok=True)
    for k in range(files):
        pq.write_table(pa.table({"text": [f"row {k}-{i}" for i in range(per)],
                                 "lang": [["en", "de", "fr"][i % 3] for i in range(per)],
                                 "score": [i / per for i in range(per)]}), root / f"part-{k}.parquet",
                       row_group_size=16)
    return root


def dump(cat):
    """Every table's full content (to prove a failure changed nothing)."""
    out = {}
    for t in ("sources", "files", "sample_index", "catalog_meta"):
        out[t] = cat.con.sql(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
    out["cols"] = cat.con.sql("SELECT column_name, data_type FROM information_schema.columns "
                              "WHERE table_name = 'sample_index' ORDER BY ordinal_position").fetchall()
    return out


@pytest.fixture
def cat(tmp_path):
    c = Catalog(tmp_path / "cat")
    yield c
    c.close()


def test_done_when_query_slimpajama_zst_and_parquet(cat, tmp_path):
    slim_dir(tmp_path / "slim")
    write_parquet_dir(tmp_path / "pq")
    s1 = create_source(cat, "slim", str(tmp_path / "slim" / "**" / "*.jsonl.zst"), options={"preset": "slimpajama"},
                       progress=False)
    s2 = create_source(cat, "web", str(tmp_path / "pq"), format="parquet", progress=False)
    assert s1["samples"] == 120 and s1["files"] == 3 and s2["samples"] == 60
    got = {r[0]: (r[1], r[2]) for r in cat.con.sql(
        "SELECT source, count(*), sum(n_bytes) FROM samples GROUP BY ALL").fetchall()}
    exp_bytes = sum(len(json.loads(x)["text"].encode()) for x in slim_lines(120))
    assert got["slim"] == (120, exp_bytes)
    assert got["web"] == (60, sum(len(f"row {k}-{i}") for k in range(2) for i in range(30)))
    sets = dict(cat.con.sql("SELECT redpajama_set_name, count(*) FROM samples WHERE source='slim' "
                            "GROUP BY ALL").fetchall())
    assert sets == {s: 40 for s in SETS}
    types = dict(cat.con.sql("SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name='samples'").fetchall())
    assert types["score"] == "DOUBLE" and types["lang"] == "VARCHAR"
    assert cat.snapshot == 2
    srcs = show_sources(cat)
    assert srcs.column("name").to_pylist() == ["slim", "web"]
    assert srcs.column("n_samples").to_pylist() == [120, 60]
    opts = json.loads(srcs.column("options")[0].as_py())
    assert opts["text"] == "text" and opts["properties"] == {"redpajama_set_name": "meta.redpajama_set_name"}


def test_jsonl_gz_plain_and_relative_recursive_glob(cat, tmp_path, monkeypatch):
    d = tmp_path / "data" / "deep" / "er"
    d.mkdir(parents=True)
    (d / "a.jsonl.gz").write_bytes(gzip.compress(("\n".join(slim_lines(5)) + "\n").encode()))
    (tmp_path / "data" / "b.jsonl").write_text("\n".join(slim_lines(4)) + "\n")
    monkeypatch.chdir(tmp_path)
    s = create_source(cat, "mixed", "data/**/*.jsonl*", options={"set": "meta.redpajama_set_name"}, progress=False)
    assert s["samples"] == 9 and s["files"] == 2
    paths = [r[0] for r in cat.con.sql("SELECT path FROM files ORDER BY path").fetchall()]
    assert all(os.path.isabs(p) for p in paths) and {os.path.basename(p) for p in paths} == {"a.jsonl.gz", "b.jsonl"}
    comps = dict(cat.con.sql("SELECT compression, count(*) FROM files GROUP BY ALL").fetchall())
    assert comps == {"gzip": 1, "none": 1}


def test_webdataset_source(cat, tmp_path):
    p = tmp_path / "wds" / "shard-000.tar"
    p.parent.mkdir()
    with tarfile.open(p, "w") as tf:
        for i in range(5):
            for ext, data in (("txt", f"sample text {i}".encode()), ("json", json.dumps({"lang": "en", "q": i}).encode())):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    s = create_source(cat, "wds", str(tmp_path / "wds"), progress=False)
    assert s["format"] == "webdataset" and s["samples"] == 5
    rows = cat.con.sql("SELECT q, lang, loc_offset, loc_length FROM samples ORDER BY q").fetchall()
    raw = p.read_bytes()
    assert [raw[o:o + n].decode() for _, _, o, n in rows] == [f"sample text {i}" for i in range(5)]
    assert json.loads(show_sources(cat).column("options")[0].as_py())["text"] == "txt"


def test_declared_types_inline_and_string_and_missing_property(cat, tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "a", "m": {"score": 1, "n": "7"}}\n{"text": "b", "m": {"score": 2.5}}\n'
                 '{"text": "c", "m": {}}\n')
    create_source(cat, "a", str(p), options={"quality": "m.score::DOUBLE", "num": "m.n", "types": "num BIGINT",
                                             "absent": "m.zzz?"}, progress=False)
    rows = cat.con.sql("SELECT quality, num, absent FROM samples ORDER BY row").fetchall()
    assert rows == [(1.0, 7, None), (2.5, None, None), (None, None, None)]
    types = dict(cat.con.sql("SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name='sample_index'").fetchall())
    assert types["quality"] == "DOUBLE" and types["num"] == "BIGINT" and types["absent"] == "VARCHAR"


def test_tokenizer_counts_tokens(cat, tmp_path):
    import tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    tok = tokenizers.Tokenizer(WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tp = tmp_path / "tokenizer.json"
    tok.save(str(tp))
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "a b a"}\n{"text": "b"}\n{"text": "zz yy xx ww"}\n')
    s = create_source(cat, "a", str(p), options={"tokenizer": str(tp)}, progress=False)
    assert [r[0] for r in cat.con.sql("SELECT n_tokens FROM samples ORDER BY row").fetchall()] == [3, 1, 4]
    assert cat.con.sql("SELECT n_tokens FROM sources").fetchall() == [(8,)]
    assert s["samples"] == 3


def test_parquet_pretokenized_and_fineweb_preset(cat, tmp_path):
    d = tmp_path / "fw"
    d.mkdir()
    pq.write_table(pa.table({"text": ["hello", "world!"], "id": ["x1", "x2"], "dump": ["CC-1", "CC-2"],
                             "url": ["u1", "u2"], "date": ["d", "d"], "language": ["en", "en"],
                             "language_score": [0.9, 0.8], "token_count": [2, 3]}), d / "000.parquet")
    create_source(cat, "fw", str(d / "*.parquet"), options={"preset": "fineweb"}, progress=False)
    rows = cat.con.sql("SELECT id, dump, language, language_score, n_tokens FROM samples ORDER BY id").fetchall()
    assert rows == [("x1", "CC-1", "en", 0.9, 2), ("x2", "CC-2", "en", 0.8, 3)]
    d2 = tmp_path / "tok"
    d2.mkdir()
    pq.write_table(pa.table({"text": ["a", "b"], "ids": [[1, 2, 3], [4]]}), d2 / "t.parquet")
    create_source(cat, "tok", str(d2), options={"tokens": "ids"}, progress=False)
    assert cat.con.sql("SELECT n_tokens FROM samples WHERE source='tok' ORDER BY row").fetchall() == [(3,), (1,)]
    assert json.loads(show_sources(cat).column("options")[1].as_py())["tokens"] == "ids"


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_parallel_pool_path(cat, tmp_path, monkeypatch, pool):
    """Both pools; the process pool forks a parent that already used the scanners' DuckDB."""
    monkeypatch.setattr(registration.scan, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setenv("MIXSQL_SCAN_POOL", pool)
    warm = slim_dir(tmp_path / "warm", shards=1, per=3) / "chunk0" / "example_train_0.jsonl.zst"
    assert formats.scan_file(formats.ScanTask(str(warm), "jsonl", "zstd", "text",
                                              {"s": "meta.redpajama_set_name"}))["error"] is None
    slim_dir(tmp_path / "slim", shards=4, per=25)
    s = create_source(cat, "slim", str(tmp_path / "slim"), options={"preset": "slimpajama", "workers": 2},
                      progress=False)
    assert s["samples"] == 100
    rows = cat.con.sql("SELECT file, row FROM samples ORDER BY file_id, row").fetchall()
    assert [r[1] for r in rows[:25]] == list(range(25))
    assert sorted(cat.con.sql("SELECT path FROM files ORDER BY file_id").fetchall()) == \
        cat.con.sql("SELECT path FROM files ORDER BY file_id").fetchall()  # file ids follow path order


# ----------------------------------------------------------------------------- errors

def test_malformed_line_names_file_and_line_then_skip(cat, tmp_path):
    lines = slim_lines(5)
    lines[2] = '{"text": "oops" "meta": 1}'
    p = tmp_path / "bad.jsonl.zst"
    write_zst(p, lines)
    before = dump(cat)
    with pytest.raises(RegistrationError) as ei:
        create_source(cat, "bad", str(p), progress=False)
    assert ei.value.path == str(p) and ei.value.line == 3 and f"{p}:3:" in str(ei.value)
    assert "on_error" in str(ei.value)
    assert dump(cat) == before
    s = create_source(cat, "bad", str(p), options={"on_error": "skip"}, progress=False)
    assert s["skipped"] == 1 and s["skipped_lines"] == {str(p): [3]} and s["samples"] == 4


def test_required_property(cat, tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "a", "lang": "en"}\n{"text": "b"}\n')
    with pytest.raises(RegistrationError) as ei:
        create_source(cat, "a", str(p), options={"lang": "lang", "required": "lang"}, progress=False)
    assert ei.value.line == 2 and "required property 'lang'" in str(ei.value)
    s = create_source(cat, "a", str(p), options={"lang": "lang", "required": ["lang"], "on_error": "skip"},
                      progress=False)
    assert s["samples"] == 1 and s["skipped"] == 1


def test_truncated_zst_names_file(cat, tmp_path):
    p = tmp_path / "t.jsonl.zst"
    blob = zstandard.ZstdCompressor().compress(("\n".join(slim_lines(500)) + "\n").encode())
    p.write_bytes(blob[:-20])
    with pytest.raises(RegistrationError, match="truncated") as ei:
        create_source(cat, "t", str(p), progress=False)
    assert ei.value.path == str(p)
    assert cat.source_names() == []


def test_glob_matching_nothing(cat, tmp_path):
    with pytest.raises(RegistrationError, match="nothing-here"):
        create_source(cat, "x", str(tmp_path / "nothing-here" / "*.jsonl"), progress=False)


def test_name_taken_suggests_refresh(cat, tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "a"}\n')
    create_source(cat, "corpus", str(p), progress=False)
    with pytest.raises(IntegrityError, match="REFRESH SOURCE corpus"):
        create_source(cat, "Corpus", str(p), progress=False)


def test_reserved_and_bad_options(cat, tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "a", "source": "web"}\n')
    with pytest.raises(ProgrammingError, match="reserved"):
        create_source(cat, "a", str(p), options={"source": "source"}, progress=False)
    with pytest.raises(ProgrammingError, match="unknown preset"):
        create_source(cat, "a", str(p), options={"preset": "slimpj"}, progress=False)
    with pytest.raises(ProgrammingError, match="unknown type"):
        create_source(cat, "a", str(p), options={"q": "q::FLOATY"}, progress=False)
    with pytest.raises(ProgrammingError, match="on_error"):
        create_source(cat, "a", str(p), options={"on_error": "ignore"}, progress=False)
    # auto-discovery leaves the reserved field out and says so
    s = create_source(cat, "a", str(p), progress=False)
    assert s["skipped_columns"] == ["source"] and s["properties"] == {}
    assert cat.con.sql("SELECT source FROM samples").fetchall() == [("a",)]


def test_type_conflict_with_existing_column_leaves_catalog_unchanged(cat, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"text": "a", "q": 0.5}\n')
    b.write_text('{"text": "b", "q": "high"}\n')
    create_source(cat, "a", str(a), progress=False)
    before = dump(cat)
    with pytest.raises(RegistrationError, match="already has column 'q' of type DOUBLE"):
        create_source(cat, "b", str(b), progress=False)
    assert dump(cat) == before
    # widening BIGINT data into an existing DOUBLE column is fine
    c = tmp_path / "c.jsonl"
    c.write_text('{"text": "c", "q": 2}\n')
    create_source(cat, "c", str(c), progress=False)
    assert cat.con.sql("SELECT q FROM samples WHERE source='c'").fetchall() == [(2.0,)]


def test_type_conflict_between_files(cat, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "1.jsonl").write_text('{"text": "a", "q": 1}\n')
    (tmp_path / "d" / "2.jsonl").write_text('{"text": "a", "q": "x"}\n')
    with pytest.raises(RegistrationError, match="property 'q'"):
        create_source(cat, "d", str(tmp_path / "d"), progress=False)
    create_source(cat, "d", str(tmp_path / "d"), options={"types": {"q": "VARCHAR"}}, progress=False)
    assert sorted(cat.con.sql("SELECT q FROM samples").fetchall()) == [("1",), ("x",)]


def test_failure_inside_transaction_rolls_back_everything(cat, tmp_path, monkeypatch):
    slim_dir(tmp_path / "s1", shards=1)
    create_source(cat, "s1", str(tmp_path / "s1"), options={"preset": "slimpajama"}, progress=False)
    write_parquet_dir(tmp_path / "pq")
    before = dump(cat)
    real = registration._write

    def boom(*a, **k):
        real(*a, **k)  # rows, files, the new columns are all written ...
        raise RuntimeError("disk on fire")  # ... then the process fails

    monkeypatch.setattr(registration, "_write", boom)
    with pytest.raises(RuntimeError):
        create_source(cat, "pq", str(tmp_path / "pq"), progress=False)
    assert dump(cat) == before
    names = [d[0] for d in cat.con.execute("SELECT * FROM samples LIMIT 0").description]
    assert "lang" not in names


# ----------------------------------------------------------------------------- incremental

def test_refresh_add_modify_delete(cat, tmp_path):
    root = slim_dir(tmp_path / "s", shards=3, per=10)
    create_source(cat, "s", str(root / "**" / "*.zst"), options={"preset": "slimpajama"}, progress=False)
    ids = dict(cat.con.sql("SELECT path, file_id FROM files").fetchall())
    f0, f1, f2 = (str(root / f"chunk{k % 2}" / f"example_train_{k}.jsonl.zst") for k in range(3))
    # nothing changed: no new snapshot
    snap = cat.snapshot
    s = refresh_source(cat, "s", progress=False)
    assert (s["new_files"], s["changed_files"], s["removed_files"], s["unchanged_files"]) == (0, 0, 0, 3)
    assert cat.snapshot == snap
    # add one, modify one, delete one
    write_zst(root / "chunk1" / "example_train_9.jsonl.zst", slim_lines(7, 900))
    write_zst(root / "chunk1" / "example_train_1.jsonl.zst", slim_lines(4, 500))
    os.remove(f2)
    with pytest.raises(StaleFileError, match="REFRESH SOURCE"):
        size, mtime, fp = cat.con.sql(f"SELECT size, mtime_ns, fingerprint FROM files WHERE path='{f1}'").fetchall()[0]
        check_file(f1, size, mtime, fp)
    s = refresh_source(cat, "s", progress=False)
    assert (s["new_files"], s["changed_files"], s["removed_files"], s["unchanged_files"]) == (1, 1, 1, 1)
    assert s["samples"] == 11
    now = dict(cat.con.sql("SELECT path, file_id FROM files").fetchall())
    assert now[f0] == ids[f0] and f2 not in now and now[f1] != ids[f1]
    assert cat.con.sql("SELECT count(*) FROM samples").fetchall() == [(10 + 4 + 7,)]
    assert cat.con.sql("SELECT n_files, n_samples FROM sources").fetchall() == [(3, 21)]
    size, mtime, fp = cat.con.sql(f"SELECT size, mtime_ns, fingerprint FROM files WHERE path='{f1}'").fetchall()[0]
    check_file(f1, size, mtime, fp)  # fresh again
    assert cat.snapshot == snap + 1


def test_refresh_keeps_catalog_on_bad_new_file(cat, tmp_path):
    root = slim_dir(tmp_path / "s", shards=2, per=5)
    create_source(cat, "s", str(root), options={"preset": "slimpajama"}, progress=False)
    before = dump(cat)
    (root / "chunk0" / "zz.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(RegistrationError) as ei:
        refresh_source(cat, "s", progress=False)
    assert ei.value.line == 2
    assert dump(cat) == before


def test_drop_source_removes_rows_and_unused_columns(cat, tmp_path):
    slim_dir(tmp_path / "slim", shards=1)
    write_parquet_dir(tmp_path / "pq")
    create_source(cat, "slim", str(tmp_path / "slim"), options={"preset": "slimpajama"}, progress=False)
    create_source(cat, "web", str(tmp_path / "pq"), progress=False)
    drop_source(cat, "web")
    names = [d[0] for d in cat.con.execute("SELECT * FROM samples LIMIT 0").description]
    assert "lang" not in names and "redpajama_set_name" in names
    assert cat.con.sql("SELECT DISTINCT source FROM samples").fetchall() == [("slim",)]
    assert cat.con.sql("SELECT count(*) FROM files").fetchall() == [(1,)]
    with pytest.raises(ProgrammingError, match="no source named 'web'"):
        drop_source(cat, "web")
    with pytest.raises(ProgrammingError, match="no source named"):
        refresh_source(cat, "web", progress=False)


def test_check_file_detects_missing_and_changed(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text('{"text": "a"}\n')
    st = os.stat(p)
    check_file(str(p), st.st_size, st.st_mtime_ns)
    p.write_text('{"text": "ab"}\n')
    with pytest.raises(StaleFileError, match="size"):
        check_file(str(p), st.st_size, st.st_mtime_ns)
    os.remove(p)
    with pytest.raises(StaleFileError, match="no longer exists"):
        check_file(str(p), st.st_size, st.st_mtime_ns)


def test_register_source_creates_then_refreshes(cat, tmp_path):
    p = tmp_path / "d"
    p.mkdir()
    (p / "a.jsonl").write_text('{"text": "a"}\n')
    s = registration.register_source(cat, "d", str(p), progress=False)
    assert s["new_files"] == 1
    (p / "b.jsonl").write_text('{"text": "b"}\n')
    s = registration.register_source(cat, "d", str(p), progress=False)
    assert (s["new_files"], s["unchanged_files"]) == (1, 1)
    with pytest.raises(IntegrityError, match="--replace"):
        registration.register_source(cat, "d", str(tmp_path), progress=False)


def test_all_null_property_adopts_existing_column_type(cat, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"text": "a", "q": 0.5}\n')
    b.write_text('{"text": "b", "q": null}\n')
    create_source(cat, "a", str(a), progress=False)
    s = create_source(cat, "b", str(b), options={"q": "q"}, progress=False)
    assert s["properties"] == {"q": "DOUBLE"}
